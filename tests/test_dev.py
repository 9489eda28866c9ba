"""``taskorch dev`` as a new user runs it: everything up, a working token, clean shutdown."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port


def _run_dev(
    folder: Path, *, with_redis: bool, taskorch: Sequence[str] = (sys.executable, "-m", "taskorch")
) -> tuple[subprocess.Popen[str], int]:
    """``taskorch dev`` started in ``folder`` (``taskorch``: the command, this checkout's by
    default) on a free port, its output piped."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKORCH_")}
    env.update(TASKORCH_PORT=str(port), TASKORCH_FUNCTIONS_DIR=str(folder / "functions"))
    if not with_redis:  # a PATH without redis-server: the fakeredis fallback
        bindir = folder / "bin"
        bindir.mkdir()
        env["PATH"] = str(bindir)
    proc = subprocess.Popen(
        [*taskorch, "dev"],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return proc, port


def _wait_ready(proc: subprocess.Popen[str]) -> str:
    out = []
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    for line in proc.stdout:
        out.append(line)
        if "Ctrl-C stops everything" in line:
            return "".join(out)
        assert time.monotonic() < deadline, "".join(out)
    raise AssertionError("taskorch dev exited:\n" + "".join(out))


@pytest.mark.parametrize("with_redis", [True, False], ids=["redis-server", "fakeredis"])
def test_dev_runs_everything_and_stops_on_sigterm(with_redis: bool) -> None:
    folder = Path(tempfile.mkdtemp(prefix="taskorch-dev-"))
    folder.chmod(0o711)
    proc, port = _run_dev(folder, with_redis=with_redis)
    try:
        banner = _wait_ready(proc)
        assert f"http://127.0.0.1:{port}" in banner
        if not with_redis:
            assert "FOR TRYING OUT ONLY" in banner and "Nothing survives a restart" in banner
        token = (folder / ".taskorch" / "dev-token").read_text().strip()
        assert token in banner
        auth = {"Authorization": f"Bearer {token}"}
        base = f"http://127.0.0.1:{port}"
        task = httpx.post(
            f"{base}/v1/tasks",
            headers=auth,
            json={"url": f"{base}/healthz", "method": "GET", "delay": 0.5},
        ).json()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            got = httpx.get(f"{base}/v1/tasks/{task['id']}", headers=auth).json()
            if got["status"] == "succeeded":
                break
            time.sleep(0.1)
        assert got["status"] == "succeeded", got
        assert got["attempts"][0]["status_code"] == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        if proc.stdout:
            proc.stdout.close()
        shutil.rmtree(folder, ignore_errors=True)
    assert proc.returncode == 0
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)


def test_dev_stops_within_2_s_while_a_status_page_listens() -> None:
    """Ctrl-C with the status page's event stream open (issue #19): the stream ends as the API
    shuts down, instead of holding uvicorn's graceful shutdown until the tab is closed."""
    folder = Path(tempfile.mkdtemp(prefix="taskorch-dev-"))
    folder.chmod(0o711)
    proc, port = _run_dev(folder, with_redis=True)
    try:
        _wait_ready(proc)
        token = (folder / ".taskorch" / "dev-token").read_text().strip()
        base = f"http://127.0.0.1:{port}"
        with (
            httpx.Client(timeout=30) as http,
            http.stream("GET", f"{base}/v1/events", params={"access_token": token}) as stream,
        ):
            assert stream.status_code == 200
            lines = stream.iter_lines()
            assert next(lines) == "retry: 2000"  # the stream is open, as a page holds it
            started = time.monotonic()
            proc.send_signal(signal.SIGINT)
            proc.wait(20)
            took = time.monotonic() - started
            list(lines)  # the server ended the stream; this client never hung up
        assert proc.returncode == 0
        assert took < 2.5, f"taskorch dev took {took:.1f} s to stop with a stream open"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
        shutil.rmtree(folder, ignore_errors=True)
