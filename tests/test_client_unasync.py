"""The blocking client is generated from the async one (taskorch/client/_unasync.py): the file
in the tree is what the generator makes of _async.py today, so neither is edited alone."""

from __future__ import annotations

import subprocess
import sys

import pytest

from taskorch.client import _unasync


def test_the_sync_client_is_what_regenerating_makes_of_the_async_one() -> None:
    expected = _unasync.unasync(_unasync.SOURCE.read_text())
    assert _unasync.TARGET.read_text() == expected, (
        "taskorch/client/_sync.py differs from what _async.py generates:"
        " run `python taskorch/client/_unasync.py`"
    )


def test_an_edit_of_the_async_client_alone_is_caught() -> None:
    source = _unasync.SOURCE.read_text()
    edited = source.replace('"""Close the client\'s connections."""', '"""Closes."""')
    assert edited != source
    assert _unasync.unasync(edited) != _unasync.TARGET.read_text()
    # --check, as scripts/lint runs it, says so too (and writes nothing)
    check = [sys.executable, str(_unasync.HERE / "_unasync.py"), "--check"]
    ok = subprocess.run(check, capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stdout


def test_a_rule_the_async_code_no_longer_needs_is_an_error() -> None:
    source = _unasync.SOURCE.read_text().replace("The API, awaited:", "The API, async:")
    with pytest.raises(ValueError, match="no longer match"):
        _unasync.unasync(source)


def test_an_async_word_without_a_rule_is_an_error() -> None:
    source = _unasync.SOURCE.read_text() + "\n\nasync_limiter = AsyncLimiter()\n"
    with pytest.raises(ValueError, match="without a rule"):
        _unasync.unasync(source)
