"""The suite's core through a real `taskorch serve` (uvicorn on uvloop), as production runs it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from taskorch.auth import mint_token
from tests.conftest import ROOT, SECRET, free_port, make_settings
from tests.hostile.conftest import ipc_objects, needs_root, nothing_left, processes_of

pytestmark = needs_root

VICTIM = "def handler(event, context):\n    return {'victim': event}\n"

ATTACKER = """
import ctypes, os, socket, subprocess, time

libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p

def attempt(fn):
    try:
        return repr(fn())
    except OSError as exc:
        return type(exc).__name__

def connect(port):
    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    return "connected"

def fill():
    mb = 0
    try:
        with open("/tmp/fill", "wb") as f:
            while mb < 1024:
                f.write(b"x" * (1 << 20))
                f.flush()
                mb += 1
    except OSError:
        pass
    return mb

def handler(event, context):
    subprocess.Popen(["sleep", "600"], start_new_session=True)
    for _ in range(4):
        shmid = libc.shmget(0, 8 << 20, 0o1666)
        ctypes.memset(libc.shmat(shmid, None, 0), 1, 8 << 20)
    return {
        "env": sorted(os.environ),
        "pids": [p for p in os.listdir("/proc") if p.isdigit()],
        "server_environ": attempt(lambda: open(f"/proc/{event['server']}/environ").read()),
        "redis": attempt(lambda: connect(event["redis"])),
        "api": attempt(lambda: connect(event["api"])),
        "kill_server": attempt(lambda: os.kill(event["server"], 9)),
        "filled_mb": fill(),
        "victim_dir": attempt(lambda: os.listdir(event["victim_dir"])),
    }
"""

BOMB = """
import os
def handler(event, context):
    while True:
        try:
            os.fork()
        except OSError:
            pass
"""

DEEP = """
def handler(event, context):
    value = []
    for _ in range(200000):
        value = [value]
    return value
"""


class Serve:
    def __init__(self, url: str, proc: subprocess.Popen[bytes], functions_dir: Path) -> None:
        self.url = url
        self.proc = proc
        self.functions_dir = functions_dir
        self.settings = make_settings("redis://127.0.0.1:1/0")
        self.http = httpx.AsyncClient(base_url=url, timeout=60)

    def auth(self, sub: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {mint_token(self.settings, sub)}"}

    async def create(self, sub: str, body: dict[str, Any]) -> dict[str, Any]:
        r = await self.http.post("/v1/functions", json=body, headers=self.auth(sub))
        assert r.status_code == 201, r.text
        fid = r.json()["id"]
        deadline = time.monotonic() + 120
        while True:
            fn = (await self.http.get(f"/v1/functions/{fid}", headers=self.auth(sub))).json()
            if fn["status"] != "building":
                return fn  # type: ignore[no-any-return]
            assert time.monotonic() < deadline, fn
            await asyncio.sleep(0.1)

    def uid(self, fid: str) -> int:
        return (self.functions_dir / fid).stat().st_uid


@pytest.fixture
def functions_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="taskorch-serve-fn-", dir="/tmp"))
    yield path
    subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], check=False)


@pytest.fixture
async def serve(redis_url: str, functions_dir: Path, tmp_path: Path) -> AsyncIterator[Serve]:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TASKORCH_")},
        "TASKORCH_REDIS_URL": redis_url,
        "TASKORCH_JWT_SECRET": SECRET,
        "TASKORCH_HOST": "127.0.0.1",
        "TASKORCH_PORT": str(port),
        "TASKORCH_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "TASKORCH_FUNCTIONS_DIR": str(functions_dir),
        "TASKORCH_FUNCTION_TIMEOUT_S": "3",
        "TASKORCH_LOG_LEVEL": "warning",
    }
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, "-m", "taskorch", "serve"], env=env, stdout=log, stderr=log, cwd=ROOT
    )
    server = Serve(f"http://127.0.0.1:{port}", proc, functions_dir)
    deadline = time.monotonic() + 30
    while True:
        try:
            if (await server.http.get("/healthz")).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()
        assert time.monotonic() < deadline, "taskorch serve did not start"
        await asyncio.sleep(0.1)
    yield server
    await server.http.aclose()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


async def test_hostile_functions_through_taskorch_serve(serve: Serve, redis_server: Any) -> None:
    ipc_before = ipc_objects()
    victim = await serve.create("bob", {"name": "victim", "runtime": "python", "code": VICTIM})
    assert victim["status"] == "ready", victim

    # 1. The build-time escape: a relative path to the victim's folder as a requirement.
    escape = await serve.create(
        "mallory",
        {
            "name": "escape",
            "runtime": "python",
            "code": "def handler(e, c):\n    return 1\n",
            "requirements": f"tmp/../../{victim['id']}/evil\n",
        },
    )
    assert escape["status"] == "failed" and "is not allowed" in escape["error"], escape

    # 2. Secrets, Redis, the API, signals, processes left, SysV shm, disk.
    attacker = await serve.create("mallory", {"name": "a", "runtime": "python", "code": ATTACKER})
    assert attacker["status"] == "ready", attacker
    uid = serve.uid(attacker["id"])
    event = {
        "server": serve.proc.pid,
        "redis": redis_server.port,
        "api": int(serve.url.rsplit(":", 1)[1]),
        "victim_dir": str(serve.functions_dir / victim["id"]),
    }
    r = await serve.http.post(attacker["url"], json=event)
    assert r.status_code == 200, r.text
    seen = r.json()
    assert seen["env"] == ["HOME", "LANG", "PATH", "PWD", "TMPDIR"] or set(seen["env"]) <= {
        "HOME",
        "LANG",
        "PATH",
        "PWD",
        "TMPDIR",
        "LC_CTYPE",
    }
    assert len(seen["pids"]) <= 2
    assert seen["server_environ"] == seen["victim_dir"] == "FileNotFoundError"
    assert seen["redis"] == seen["api"] == "ConnectionRefusedError"
    assert seen["kill_server"] == "ProcessLookupError"
    assert seen["filled_mb"] <= 64
    assert SECRET not in r.text
    assert processes_of(uid), "its sleep should run until DELETE"
    assert ipc_objects() == ipc_before, "the function's SysV segments are visible on the host"

    # 3. A fork bomb, then deeply nested frames: contained, and answered as function errors.
    bomb = await serve.create("mallory", {"name": "bomb", "runtime": "python", "code": BOMB})
    r = await serve.http.post(bomb["url"], json={})
    assert r.status_code in (500, 504), r.text
    assert r.json()["error"]["code"] in ("function_error", "function_timeout")
    assert await nothing_left(serve.uid(bomb["id"])) == [], "the fork bomb kept running"
    deep = await serve.create("mallory", {"name": "deep", "runtime": "python", "code": DEEP})
    r = await serve.http.post(deep["url"], json={})
    assert r.status_code == 500 and r.json()["error"]["code"] == "function_error", r.text
    nested = "[" * 100_000 + "]" * 100_000
    r = await serve.http.post(
        deep["url"], content=nested, headers={"Content-Type": "application/json"}
    )
    assert r.status_code < 500 or r.json()["error"]["code"] == "function_error", r.text

    # 4. DELETE leaves nothing running, whatever the folder holds.
    deep_dir = serve.functions_dir / attacker["id"] / "deps"
    deep_dir.mkdir()
    fd = os.open(deep_dir, os.O_RDONLY)
    for _ in range(5000):
        os.mkdir("d", dir_fd=fd)
        inner = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = inner
    os.close(fd)
    (deep_dir / "root").symlink_to("/")
    for fn in (attacker, bomb, deep, escape):
        r = await serve.http.delete(f"/v1/functions/{fn['id']}", headers=serve.auth("mallory"))
        assert r.status_code == 204, r.text
    assert await nothing_left(uid) == [], "processes of the attacker left after DELETE (ps)"
    assert not (serve.functions_dir / attacker["id"]).exists()
    assert ipc_objects() == ipc_before, "SysV objects left after DELETE (ipcs)"

    # 5. Everyone else is fine.
    assert serve.proc.poll() is None
    assert (await serve.http.get("/readyz")).json() == {"status": "ok", "redis": "ok"}
    assert redis.Redis(port=redis_server.port).ping()
    r = await serve.http.post(victim["url"], json={"still": "here"})
    assert r.json() == {"victim": {"still": "here"}}


LEAVE_BEHIND = """
import os, subprocess, time
def handler(event, context):
    subprocess.Popen(["sleep", "600"], start_new_session=True)
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            while True:
                time.sleep(0.01)
        os._exit(0)
    return "left"
"""


async def test_a_killed_server_takes_its_functions_processes_with_it(serve: Serve) -> None:
    fn = await serve.create("mallory", {"name": "stay", "runtime": "python", "code": LEAVE_BEHIND})
    uid = serve.uid(fn["id"])
    r = await serve.http.post(fn["url"], json={})
    assert r.json() == "left", r.text
    assert len(processes_of(uid)) >= 3

    serve.proc.kill()  # no shutdown: the processes go because their parent died
    serve.proc.wait()

    assert await nothing_left(uid) == [], "processes outlived the server that started them (ps)"


SLOW = "import time\ndef handler(event, context):\n    time.sleep(0.5)\n    return 'done'\n"


async def test_a_burst_beyond_the_instances_is_refused_with_429(serve: Serve) -> None:
    # 4 instances (the default), 8 calls waiting for them at most: of 40 calls at once, the
    # rest are refused at once with 429 and Retry-After, not queued for 5 s.
    fn = await serve.create("mallory", {"name": "slow", "runtime": "python", "code": SLOW})
    assert (await serve.http.post(fn["url"], json={})).json() == "done"
    started = time.monotonic()

    async def call() -> tuple[httpx.Response, float]:
        r = await serve.http.post(fn["url"], json={})
        return r, time.monotonic() - started

    answers = await asyncio.gather(*(call() for _ in range(40)))

    codes = sorted(r.status_code for r, _ in answers)
    assert set(codes) <= {200, 429}, codes
    busy = [(r, t) for r, t in answers if r.status_code == 429]
    assert busy, "40 calls at once were all queued (no 429)"
    assert codes.count(200) >= 4, codes
    first_s = min(t for _, t in busy)
    assert first_s < 1.5, f"the first 429 came after {first_s:.1f} s"
    for r, _ in busy:
        assert r.headers["Retry-After"] == "1"
        body = r.json()
        assert body["error"]["code"] == "function_busy" and body["error"]["details"] == [], body
        assert "busy" in body["error"]["message"], body
    assert max(t for _, t in answers) < 8.0
