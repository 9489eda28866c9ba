"""Request decoding: the one-pass path for valid bodies gives exactly what the full walk gives."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskorch.errors import ApiError
from taskorch.models import TaskCreate, TaskPatch, TokenRequest, _decode_valid, convert, parse_json

# Values that are each valid for some field and invalid for others, and a few near-misses.
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-5, max_value=200),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [
            "http://127.0.0.1:9/x",
            "https://example.com/a?b=1",
            "ftp://example.com/",
            "http://",
            "http://h:99999/",
            "2026-11-26T18:31:06Z",
            "2026-11-26T18:31:06",
            "9999-12-31T23:59:59Z",
            "POST",
            "GET",
            "TRACE",
            "3",
            "1.5",
            "",
        ]
    ),
    st.dictionaries(
        st.sampled_from(["X-A", "Host", "bad name", "Proxy-X", "content-length"]),
        st.sampled_from(["v", "a\r\nb", "\x01", "é"]),
        max_size=3,
    ),
    st.lists(st.integers(), max_size=2),
)
FIELDS = [
    "url",
    "method",
    "headers",
    "payload",
    "retries",
    "retry_delay",
    "backoff",
    "max_retry_delay",
    "timeout",
    "run_at",
    "delay",
    "name",
    "nope",
]


def _outcome(raw: bytes, kind: Any) -> Any:
    """What the full walk answers: the value, or the error's status and details."""
    try:
        return convert(parse_json(raw), kind)
    except ApiError as exc:
        return (exc.status_code, exc.body())


@settings(max_examples=300, deadline=None)
@given(body=st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=6))
@pytest.mark.parametrize("kind", [TaskCreate, TaskPatch])
def test_the_fast_path_agrees_with_the_walk(kind: Any, body: dict[str, Any]) -> None:
    if kind is TaskCreate and "url" not in body:
        body = {**body, "url": "http://127.0.0.1:9/x"}
    raw = msgspec.json.encode(body)
    fast = _decode_valid(raw, kind)
    walked = _outcome(raw, kind)
    if fast is not None:  # it only ever accepts what the walk accepts, as the same value
        assert fast == walked
    else:  # and it declines nothing the walk accepts, or the speed-up would be lost
        assert not isinstance(walked, kind), body


@pytest.mark.parametrize(
    "raw",
    [b"", b"[]", b"{", b'{"username": "a"}', b'{"username": "a", "password": "b", "x": 1}'],
)
def test_bad_bodies_go_the_long_way(raw: bytes) -> None:
    assert _decode_valid(raw, TokenRequest) is None
