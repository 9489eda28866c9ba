"""Shared fixtures: a real redis-server for the run, the API in process, a real local target
server, and the real worker as a child process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from aiohttp import web
from aiohttp.test_utils import TestServer

from taskorch.api import create_app
from taskorch.auth import mint_token
from taskorch.settings import Settings
from taskorch.store import connect

# The shared helpers, still importable from here (tests that say `from tests.conftest import`).
from tests.helpers import free_port as free_port
from tests.helpers import live_api
from tests.helpers import until as until

SECRET = "test-secret-0123456789abcdef0123456789abcdef"
ROOT = Path(__file__).resolve().parent.parent


# scripts/test runs the suite in 2 processes (pytest-xdist, ``-n 2 --dist loadgroup``), then
# the tests marked ``serial`` on their own: these measure milliseconds or a stop's seconds,
# which a second process busy beside them would blur.
SERIAL = {
    "tests/test_api_outages.py::test_taskorch_serve_answers_503_while_redis_is_frozen",
    "tests/test_dev.py::test_dev_stops_within_2_s_while_a_status_page_listens",
    "tests/test_limits.py::test_a_header_flood_is_refused_at_the_limit_and_not_held",
    "tests/test_outbound.py::test_hung_and_slow_hosts_never_hold_up_a_fast_hosts_calls",
    "tests/test_queues.py::test_a_rate_holds_across_two_workers",
    "tests/test_queues.py::test_max_concurrent_holds_across_two_workers",
    "tests/test_sandbox.py::test_parallel_calls_get_their_own_processes",
    "tests/test_schedules.py::test_every_second_fires_on_the_grid_to_the_millisecond",
    # A burst of 40 or 100 requests in one loop, each within the API's 1 s Redis deadline.
    "tests/test_security.py::test_repeated_failed_sign_ins_answer_429_without_slowing_others",
    "tests/test_worker.py::test_100_cancels_racing_the_due_time_never_both",
    "tests/test_worker.py::test_fires_on_time_with_lateness_and_contract_headers",
    "tests/test_worker.py::test_a_slow_target_never_delays_other_due_tasks",
}
# Tests that share one thing run in one process, one after another: the wheel and venv built
# once (``installed``: two in-tree builds of the checkout would collide), the Redis Cluster of
# test_cluster.py (6 redis-servers), the fault tests (each runs many workers and a Redis).
GROUPS = {"installed": "installed", "tests/test_cluster.py": "cluster", "tests/faults/": "faults"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "serial: runs on its own, after the rest (scripts/test)")
    # pytest-xdist's own, named here too for a run without it.
    config.addinivalue_line("markers", "xdist_group(name): runs in the process of its group")


# tryfirst: pytest-xdist's own hook turns the xdist_group marks into the groups it schedules by,
# so the marks must be on before it runs (else two processes build the wheel in the checkout at
# once and collide).
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    modules = {m.nodeid: m.obj for m in (i.getparent(pytest.Module) for i in items) if m}
    pairs = [name.split("::") for name in sorted(SERIAL)]
    gone = [f"{f}::{t}" for f, t in pairs if f in modules and not hasattr(modules[f], t)]
    if gone:  # a renamed test would silently leave the serial pass
        raise pytest.UsageError(f"tests/conftest.py's SERIAL names no test: {gone}")
    for item in items:
        if item.nodeid.split("[")[0] in SERIAL:
            item.add_marker(pytest.mark.serial)
        for key, group in GROUPS.items():
            if key in getattr(item, "fixturenames", ()) or item.nodeid.startswith(key):
                item.add_marker(pytest.mark.xdist_group(group))
                break


@dataclass
class RedisServer:
    """A redis-server child process for the whole run; restartable on the same port and data."""

    port: int
    folder: Path
    proc: subprocess.Popen[bytes] | None = None
    fsync: str = "no"  # appendfsync: the fault tests kill -9 it with "always"
    args: list[str] = field(default_factory=list)  # more redis-server options (a cluster node's)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.exit("redis-server is not installed: run scripts/test, which installs it", 3)
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.folder),
                "--appendonly",
                "yes",
                "--appendfsync",
                self.fsync,
                "--save",
                "",
                "--maxmemory-policy",
                "noeviction",
                "--daemonize",
                "no",
                "--logfile",
                str(self.folder / "redis.log"),
                *self.args,
            ],
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                # LOADING answers an error until the append-only file is read back; the pid
                # tells this server from another one on the port (a second test process's).
                r = redis.Redis(port=self.port, socket_timeout=1)
                if r.ping() and r.info("server")["process_id"] == self.proc.pid:
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        log = (self.folder / "redis.log").read_text(errors="replace")[-500:]
        raise RuntimeError(f"redis-server on {self.port} did not start: {log}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)


# TASKORCH_TEST_REDIS=cluster runs every test that takes `redis_url` (the API, the worker
# processes) on a Redis Cluster of 3 masters with a replica each (tests/cluster.py); tests of a
# single redis-server's own outages (they take `redis_server`) are skipped then.
ON_CLUSTER = os.environ.get("TASKORCH_TEST_REDIS", "") == "cluster"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if ON_CLUSTER:
        pytest.skip("stops or freezes one redis-server; TASKORCH_TEST_REDIS=cluster runs a cluster")
    folder = tmp_path_factory.mktemp("redis")
    for attempt in range(3):  # a free port can be taken before redis-server binds it
        server = RedisServer(port=free_port(), folder=folder)
        try:
            server.start()
            break
        except RuntimeError:
            server.stop()
            if attempt == 2:
                raise
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A Redis Cluster (3 masters, 1 replica each) for the run: tests/cluster.py."""
    from tests.cluster import RedisClusterServers  # it imports this module

    servers = RedisClusterServers(folder=tmp_path_factory.mktemp("cluster"))
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


@pytest.fixture
def redis_url(request: pytest.FixtureRequest) -> str:
    if ON_CLUSTER:
        cluster = request.getfixturevalue("redis_cluster")
        cluster.heal()
        cluster.flush()
        return str(cluster.url)
    redis_server: RedisServer = request.getfixturevalue("redis_server")
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    redis.Redis(port=redis_server.port).flushall()
    return redis_server.url


def make_settings(redis_url: str, **overrides: Any) -> Settings:
    env = {
        "TASKORCH_REDIS_URL": redis_url,
        "TASKORCH_JWT_SECRET": SECRET,
        "TASKORCH_ALLOW_PRIVATE_TARGETS": "1",
        "TASKORCH_LEASE_S": "3",
    }
    return Settings.from_env(env, **overrides)


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return make_settings(redis_url)


class _WithState:
    """ASGI wrapper that runs the lifespan once and hands its state to every request, as uvicorn
    does, so httpx's ASGITransport can drive the real app in process."""

    def __init__(self, app: Any, state: dict[str, Any]) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        scope = dict(scope, state=dict(self.state))
        await self.app(scope, receive, send)


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[Api]:
    client = connect(settings.redis_url)
    app = create_app(settings, redis_client=client)
    async with app.router.lifespan_context(app) as state:
        transport = httpx.ASGITransport(app=_WithState(app, state))  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://taskorch") as http:
            yield Api(http, settings)
    await client.aclose()


@dataclass
class Api:
    """The API in process, with a token per owner."""

    http: httpx.AsyncClient
    settings: Settings

    def token(self, sub: str = "alice", **kw: Any) -> str:
        return mint_token(self.settings, sub, **kw)

    def auth(self, sub: str = "alice", **kw: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(sub, **kw)}"}

    async def create(self, body: dict[str, Any], sub: str = "alice", **kw: Any) -> dict[str, Any]:
        r = await self.http.post("/v1/tasks", json=body, headers=self.auth(sub), **kw)
        assert r.status_code == 201, r.text
        return r.json()  # type: ignore[no-any-return]

    async def get(self, task_id: str, sub: str = "alice") -> dict[str, Any]:
        r = await self.http.get(f"/v1/tasks/{task_id}", headers=self.auth(sub))
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    async def wait_status(
        self,
        task_id: str,
        statuses: set[str] | str,
        timeout_s: float = 15,
        sub: str = "alice",
        kind: str = "tasks",
    ) -> dict[str, Any]:
        want = {statuses} if isinstance(statuses, str) else statuses
        deadline = time.monotonic() + timeout_s
        while True:
            r = await self.http.get(f"/v1/{kind}/{task_id}", headers=self.auth(sub))
            assert r.status_code == 200, r.text
            task = r.json()
            if task["status"] in want:
                return task
            if time.monotonic() > deadline:
                raise AssertionError(f"task stayed {task['status']}, wanted {want}: {task}")
            await asyncio.sleep(0.05)


@dataclass
class Call:
    path: str
    method: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.time() when the request arrived
    query: dict[str, str] = field(default_factory=dict)


@dataclass
class Target:
    """A real HTTP server on 127.0.0.1 whose behaviour each test scripts by path."""

    server: TestServer
    calls: list[Call] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    def calls_to(self, path: str) -> list[Call]:
        return [c for c in self.calls if c.path == path]

    def by_task(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for c in self.calls:
            out[c.headers.get("X-Taskorch-Task-Id", "")] += 1
        return out


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    t: Target

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        t.calls.append(
            Call(
                request.path,
                request.method,
                dict(request.headers),
                body,
                time.time(),
                dict(request.query),
            )
        )
        key = request.path + "|" + request.headers.get("X-Taskorch-Task-Id", "")
        t.counts[key] += 1
        n = t.counts[key]
        parts = request.path.strip("/").split("/")
        kind = parts[0]
        if kind == "status":
            return web.Response(status=int(parts[1]), text=f"status {parts[1]}")
        if kind == "fail-then-ok":  # /fail-then-ok/<failures>
            if n <= int(parts[1]):
                return web.Response(status=500, text="not yet")
            return web.json_response({"ok": True, "call": n})
        if kind == "throttle":  # /throttle/<retry-after seconds>: 429 once, then 200
            if n == 1:
                return web.Response(status=429, headers={"Retry-After": parts[1]})
            return web.json_response({"ok": True})
        if kind == "slow":  # /slow/<seconds>
            await asyncio.sleep(float(parts[1]))
            return web.json_response({"slept": float(parts[1])})
        if kind == "slow-once":  # /slow-once/<seconds>: slow on the first call only
            if n == 1:
                await asyncio.sleep(float(parts[1]))
            return web.json_response({"call": n})
        if kind == "json-false":  # a condition check that says stop
            return web.json_response(False)
        if kind == "redirect":
            raise web.HTTPFound("/ok")
        return web.json_response({"ok": True, "path": request.path})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    t = Target(server)
    yield t
    await server.close()


@dataclass
class WorkerProcs:
    """Real ``taskorch worker`` processes, started and killed by tests."""

    env: dict[str, str]
    log_dir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, **env: str) -> subprocess.Popen[bytes]:
        with open(self.log_dir / f"worker-{len(self.procs)}.log", "wb") as log:
            p = subprocess.Popen(
                [sys.executable, "-m", "taskorch", "worker"],
                env={**self.env, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        self.procs.append(p)
        return p

    def logs(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.log_dir.glob("worker-*.log")))

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture
def workers(redis_url: str, tmp_path: Path) -> Iterator[WorkerProcs]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TASKORCH_")},
        "TASKORCH_REDIS_URL": redis_url,
        "TASKORCH_JWT_SECRET": SECRET,
        "TASKORCH_ALLOW_PRIVATE_TARGETS": "1",
        "TASKORCH_LEASE_S": "3",
        "TASKORCH_LOG_LEVEL": "info",
        "TASKORCH_SHUTDOWN_GRACE_S": "2",
    }
    w = WorkerProcs(env, tmp_path)
    yield w
    w.stop_all()


@dataclass
class LiveServer:
    url: str
    settings: Settings


@pytest.fixture
async def live_server(settings: Settings) -> AsyncIterator[LiveServer]:
    """The API on a real socket (uvicorn in this loop), for streams and browser tests."""
    async with live_api(settings, free_port()) as url:
        yield LiveServer(url, settings)


# -- AWS, mocked by moto (shared by the provider's tests and the API's) --------------------------

AWS_REGION = "us-east-1"


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Fake credentials, so that nothing here can reach a real account.
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SECURITY_TOKEN": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": AWS_REGION,
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def aws(aws_env: None) -> Iterator[None]:
    from moto import mock_aws

    with mock_aws():
        yield


@pytest.fixture
def role_arn(aws: None) -> str:
    import boto3

    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "lambda.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    role = boto3.client("iam").create_role(
        RoleName="taskorch-lambda", AssumeRolePolicyDocument=json.dumps(trust)
    )
    return str(role["Role"]["Arn"])


# -- the package as installed ---------------------------------------------------------------


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv, outside the checkout, with only the built wheel installed in it, no extras:
    the package as users get it (tests/test_deploy.py, the command line in tests/test_cli.py)."""
    where = tmp_path_factory.mktemp("installed")
    dist = where / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = dist.glob("taskorch-*.whl")
    venv = where / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True, timeout=120)
    # The versions requirements.txt (the lock Heroku installs from) pins, taskorch from the wheel
    # (without its aws extra: the lock's pins of boto3 only constrain, they install nothing).
    pins = where / "constraints.txt"
    lock = (ROOT / "requirements.txt").read_text().splitlines()
    pins.write_text("\n".join(line for line in lock if not line.startswith(".")) + "\n")
    pip = [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "-c", str(pins), str(wheel)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return venv
