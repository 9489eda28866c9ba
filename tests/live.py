"""Real processes for the API's edge tests: a redis-server of a test's own (to freeze or kill
without touching the session's) and ``taskorch serve`` as production runs it (uvloop, uvicorn,
the JSON log on stderr)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import ROOT, SECRET, RedisServer, free_port


@contextlib.contextmanager
def own_redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server for one test alone; resumed (SIGCONT) if frozen, then stopped."""
    folder = tmp_path / "own-redis"
    folder.mkdir()
    server = RedisServer(port=free_port(), folder=folder)
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.proc.send_signal(signal.SIGCONT)
        server.stop()


@contextlib.contextmanager
def frozen(server: RedisServer) -> Iterator[None]:
    """Redis stopped with SIGSTOP (it accepts connections and never answers), then resumed."""
    assert server.proc is not None
    server.proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        server.proc.send_signal(signal.SIGCONT)


@dataclass
class Serve:
    """A ``taskorch serve`` child process and its log."""

    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_serve(redis_url: str, log_path: Path, *, port: int | None = None, **env: str) -> Serve:
    """``taskorch serve`` on ``port`` (a free one by default), once it answers /healthz."""
    port = port or free_port()
    full = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TASKORCH_")},
        "TASKORCH_REDIS_URL": redis_url,
        "TASKORCH_JWT_SECRET": SECRET,
        "TASKORCH_ALLOW_PRIVATE_TARGETS": "1",
        "TASKORCH_PORT": str(port),
        "TASKORCH_FUNCTIONS_DIR": str(log_path.parent / "functions"),
        "TASKORCH_LOG_LEVEL": "info",
        **env,
    }
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "taskorch", "serve"],
            env=full,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return Serve(url, proc, log_path)
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_serve(proc)
            raise RuntimeError(f"taskorch serve did not start:\n{log_path.read_text()}")
        time.sleep(0.1)


def stop_serve(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def serving(redis_url: str, log_path: Path, **env: str) -> Iterator[Serve]:
    s = start_serve(redis_url, log_path, **env)
    try:
        yield s
    finally:
        stop_serve(s.proc)


def raw_socket(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)
