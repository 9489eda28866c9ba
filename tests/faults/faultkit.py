"""Real processes to break, and a target that remembers every call: the fault tests' toolkit.

Everything here starts a real process (``redis-server``, ``taskorch serve``, ``taskorch worker``)
or a real HTTP server, and every stop or kill goes to the exact pid that was started here.
Counts are small by default (CI) and full with ``TASKORCH_FAULTS=full`` (``scripts/faults``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
from aiohttp import web

from taskorch import constants as c
from taskorch import lua, partitions
from tests.conftest import RedisServer
from tests.helpers import free_port as free_port
from tests.helpers import until

SECRET = "faults-secret-0123456789abcdef0123456789abcdef"
ROOT = Path(__file__).resolve().parents[2]
FULL = os.environ.get("TASKORCH_FAULTS", "").strip().lower() == "full"


def count(small: int, full: int) -> int:
    """The small count in the default run, the full one under ``TASKORCH_FAULTS=full``."""
    return full if FULL else small


def report(name: str, **figures: Any) -> None:
    """Print the figures a run measured (``-s`` shows them; scripts/faults collects them)."""
    line = json.dumps({"test": name, "full": FULL, **figures}, sort_keys=False, default=str)
    print(f"FAULTS {line}")
    out = os.environ.get("TASKORCH_FAULTS_REPORT")
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")


def _taskorch_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("taskorch")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "taskorch"]


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TASKORCH_")}


# -- redis-server --------------------------------------------------------------------------------


@dataclass
class FaultRedis(RedisServer):
    """One redis-server of a test's own (its own port and folder), to kill, freeze and restart.

    ``fsync`` is the ``appendfsync`` setting: ``always`` unless a test says otherwise.
    """

    fsync: str = "always"
    frozen: bool = False

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=5)

    def start(self) -> None:
        super().start()
        self.frozen = False

    def kill(self) -> None:
        """``kill -9`` the server: no shutdown, only what reached the append-only file stays."""
        assert self.proc is not None
        if self.frozen:
            self.thaw()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def freeze(self) -> None:
        """SIGSTOP: connections stay open and nothing answers, as with a hung host."""
        assert self.proc is not None and self.proc.poll() is None
        self.proc.send_signal(signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
        self.frozen = False

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        if self.frozen:
            self.thaw()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


# -- the target ----------------------------------------------------------------------------------


@dataclass
class Hit:
    """One call that reached the target."""

    path: str
    task_id: str
    attempt: int
    key: str  # Idempotency-Key
    headers: dict[str, str]
    body: Any
    arrived: float  # time.time()
    finished: float | None = None  # when the answer was handed to the server, if it was


@dataclass
class Recorder:
    """A real aiohttp server on 127.0.0.1, in a thread of its own (so a busy test loop never
    delays an answer), that records every call. ``?sleep=<s>`` makes it answer after s seconds;
    every answer is 200 ``{"ok": true}``, or the JSON ``?answer=<json>`` gives."""

    hits: list[Hit] = field(default_factory=list)
    port: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        h = request.headers
        hit = Hit(
            path=request.path,
            task_id=h.get("X-Taskorch-Task-Id", ""),
            attempt=int(h.get("X-Taskorch-Attempt", "0") or 0),
            key=h.get("Idempotency-Key", ""),
            headers=dict(h),
            body=body,
            arrived=time.time(),
        )
        self.hits.append(hit)  # list.append is atomic: the test thread reads copies
        sleep_s = float(request.query.get("sleep", "0") or 0)
        if sleep_s:
            await asyncio.sleep(sleep_s)
        hit.finished = time.time()
        answer = request.query.get("answer")
        return web.json_response(json.loads(answer) if answer else {"ok": True})

    def start(self) -> None:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def setup() -> None:
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._handle)
            # Cancel a handler whose caller hung up (a killed worker): its call never finished.
            self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", 0).start()
            self.port = self._runner.addresses[0][1]

        def run() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(setup())
            ready.set()
            self._loop.run_forever()
            self._loop.close()

        self._thread = threading.Thread(target=run, name="fault-target", daemon=True)
        self._thread.start()
        assert ready.wait(10), "the target did not start"

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(15)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(15)

    # -- what the calls show --------------------------------------------------------------

    def snapshot(self) -> list[Hit]:
        return list(self.hits)

    def by_task(self, path: str | None = None) -> dict[str, list[Hit]]:
        out: dict[str, list[Hit]] = defaultdict(list)
        for hit in self.snapshot():
            if path is None or hit.path == path:
                out[hit.task_id].append(hit)
        return out

    def same_attempt_duplicates(self, path: str | None = None) -> list[tuple[str, int, int]]:
        """(task id, attempt, times) for every attempt number that reached the target twice."""
        seen: dict[tuple[str, int], int] = defaultdict(int)
        for hit in self.snapshot():
            if path is None or hit.path == path:
                seen[(hit.task_id, hit.attempt)] += 1
        return [(t, a, n) for (t, a), n in seen.items() if n > 1]


# -- taskorch processes --------------------------------------------------------------------------


@dataclass
class Procs:
    """``taskorch serve`` and ``taskorch worker`` processes of one test, by exact pid."""

    redis_url: str
    log_dir: Path
    lease_s: float = 3.0
    extra_env: dict[str, str] = field(default_factory=dict)
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    api: subprocess.Popen[bytes] | None = None
    api_port: int = 0
    _n: int = 0

    def env(self) -> dict[str, str]:
        return {
            **_base_env(),
            "TASKORCH_REDIS_URL": self.redis_url,
            "TASKORCH_JWT_SECRET": SECRET,
            "TASKORCH_ALLOW_PRIVATE_TARGETS": "1",
            "TASKORCH_LEASE_S": f"{self.lease_s:g}",
            "TASKORCH_SHUTDOWN_GRACE_S": "1",
            "TASKORCH_LOG_LEVEL": "info",
            "TASKORCH_FUNCTIONS_DIR": str(self.log_dir / "functions"),
            **self.extra_env,
        }

    def _spawn(self, verb: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        self._n += 1
        with open(self.log_dir / f"{verb}-{self._n}.log", "wb") as log:
            return subprocess.Popen(
                [*_taskorch_cmd(), verb], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
            )

    def start_worker(self) -> subprocess.Popen[bytes]:
        p = self._spawn("worker", self.env())
        self.workers.append(p)
        return p

    def kill_worker(self, p: subprocess.Popen[bytes]) -> float:
        """SIGKILL one worker this test started; returns the time of the kill."""
        assert p in self.workers and p.poll() is None
        at = time.time()
        p.send_signal(signal.SIGKILL)
        p.wait(10)
        return at

    def ready(self, p: subprocess.Popen[bytes], r: redis.Redis, timeout_s: float = 30) -> None:
        """Wait for a worker's first heartbeat (its id in the workers set names its pid)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert p.poll() is None, f"worker {p.pid} exited: {self.logs('worker')[-2000:]}"
            with contextlib.suppress(redis.RedisError):
                if any(f":{p.pid}:" in w for w in r.zrange("taskorch:workers", 0, -1)):
                    return
            time.sleep(0.05)
        raise AssertionError(f"worker {p.pid} sent no heartbeat within {timeout_s} s")

    def live_workers(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.workers if p.poll() is None]

    def start_api(self) -> str:
        self.api_port = free_port()
        env = {**self.env(), "TASKORCH_HOST": "127.0.0.1", "TASKORCH_PORT": str(self.api_port)}
        self.api = self._spawn("serve", env)
        base = f"http://127.0.0.1:{self.api_port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.api.poll() is None, f"taskorch serve exited: {self.logs('serve')}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    return base
            time.sleep(0.05)
        raise RuntimeError("taskorch serve did not start")

    def logs(self, verb: str = "") -> str:
        return "\n".join(
            p.read_text(errors="replace") for p in sorted(self.log_dir.glob(f"{verb}*.log"))
        )

    def stop_all(self) -> None:
        procs = [*self.workers, *([self.api] if self.api else [])]
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGKILL)
                p.wait(10)


def token(sub: str = "alice") -> str:
    from taskorch.auth import mint_token
    from taskorch.settings import Settings

    settings = Settings.from_env({"TASKORCH_JWT_SECRET": SECRET, "TASKORCH_TOKEN_TTL_S": "7200"})
    return mint_token(settings, sub)


def api_client(base: str, *, timeout_s: float = 10.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base,
        headers={"Authorization": f"Bearer {token()}"},
        timeout=timeout_s,
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
    )


async def post_until_stored(
    http: httpx.AsyncClient, path: str, body: Any, *, key: str, tries: int = 10
) -> httpx.Response:
    """POST a create as a careful client does: with an Idempotency-Key, repeated after a 503
    (a loaded Redis may miss the API's deadline) or a dropped connection (a keep-alive
    connection the server closed as it was reused) until it is acknowledged."""
    for _ in range(tries - 1):
        try:
            resp = await http.post(path, json=body, headers={"Idempotency-Key": key})
        except httpx.TransportError:
            await asyncio.sleep(0.2)
            continue
        if resp.status_code != 503:
            return resp
        await asyncio.sleep(0.2)
    return await http.post(path, json=body, headers={"Idempotency-Key": key})


def _layout(r: redis.Redis) -> partitions.Layout:
    return partitions.Layout(int(r.get(c.PARTITIONS_KEY) or c.DEFAULT_PARTITIONS))


def task_statuses(r: redis.Redis, ids: list[str]) -> dict[str, str | None]:
    """Each task's status straight from Redis (cheap enough to poll thousands of tasks): the
    records are msgpack, read through the store's own view script, per partition."""
    layout = _layout(r)
    view = lua.register(r, "view_tasks")
    groups: dict[int, list[str]] = defaultdict(list)
    for tid in ids:
        groups[layout.partition_of(tid)].append(tid)
    out: dict[str, str | None] = {}
    for p, tids in groups.items():
        for i in range(0, len(tids), 1000):
            chunk = tids[i : i + 1000]
            rows = view(keys=[layout.queue(p)], args=chunk)
            for tid, (h, _) in zip(chunk, rows, strict=True):
                out[tid] = dict(zip(h[::2], h[1::2], strict=True)).get("status")
    return out


def lease_owners(r: redis.Redis) -> dict[str, str]:
    """Job -> worker id over every partition."""
    out: dict[str, str] = {}
    for pre in _layout(r).prefixes:
        out.update(r.hgetall(pre + c.LEASE_OWNER))
    return out


def attempts(r: redis.Redis, task_id: str) -> list[str]:
    """A task's recorded attempts (JSON strings)."""
    return list(r.lrange(_layout(r).prefix_of(task_id) + c.TASK + task_id + ":a", 0, -1))


async def wait_until(
    check: Callable[[], Any], *, timeout_s: float, every_s: float = 0.2, what: str = ""
) -> Any:
    """``until`` with the fault tests' slower poll and a timeout always stated."""
    return await until(check, timeout_s, every_s, what=what)


@contextlib.contextmanager
def timed() -> Iterator[Callable[[], float]]:
    t0 = time.monotonic()
    yield lambda: time.monotonic() - t0
