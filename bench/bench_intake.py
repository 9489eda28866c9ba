"""Intake benchmark: creates per second through the real API, beside the in-memory floor.

    .venv/bin/python bench/bench_intake.py                    # everything, ~4 minutes
    .venv/bin/python bench/bench_intake.py --duration 10      # shorter runs
    .venv/bin/python bench/bench_intake.py --only single      # or: batch

Everything is real and local: a redis-server started here (append-only, as in production), the
real ``taskorch serve`` (uvloop) with 1 and 2 API processes (TASKORCH_WEB_CONCURRENCY), and wrk
(1 thread, 100 connections) POSTing a task with a Bearer token. Batches are POSTed by a small
aiohttp client, 1,000 tasks a request, 4 requests in flight.

The floor, measured in the same run against the same Redis: a minimal Starlette endpoint that
verifies the HS256 token, decodes the task with msgspec and runs one Lua script that stores it
and queues it (for a batch: decodes 1,000 and stores them with one script), under uvicorn with
uvloop on h11 and on httptools. No access log, no validation beyond the types, no deadlines.

Every process shares the machine's cores unless ``--pin`` is given (API and Redis on all cores
but the last, wrk and the batch client on the last); the output says which.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-secret-0123456789abcdef0123456789abcdef"
BODY = '{"url":"http://127.0.0.1:9/hook","payload":{"n":1,"kind":"bench"},"delay":3600}'
BATCH = 1000
CONNECTIONS = 100


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(port: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} after {timeout_s} s")


def cpu_s(pid: int) -> float:
    """CPU seconds used by ``pid`` and its children (the API processes), from /proc."""
    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    pids, seen = [pid], set()
    while pids:
        p = pids.pop()
        seen.add(p)
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        pids += [int(k) for k in kids if int(k) not in seen]
    return total


def _cpus() -> tuple[list[int], list[int]] | None:
    cores = sorted(os.sched_getaffinity(0))
    return (cores[:-1], cores[-1:]) if len(cores) >= 2 else None


def _pinned(cmd: list[str], cores: list[int] | None) -> list[str]:
    return ["taskset", "-c", ",".join(map(str, cores)), *cmd] if cores else cmd


class Rig:
    """redis-server, and one API (taskorch or the floor) at a time."""

    def __init__(self, folder: Path, *, pin: bool) -> None:
        self.folder = folder
        self.split = _cpus() if pin and shutil.which("taskset") else None
        self.redis_port = free_port()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.redis: subprocess.Popen[bytes] | None = None

    @property
    def server_cores(self) -> list[int] | None:
        return self.split[0] if self.split else None

    @property
    def client_cores(self) -> list[int] | None:
        return self.split[1] if self.split else None

    def cores_note(self) -> str:
        n = len(os.sched_getaffinity(0))
        if self.split:
            return (
                f"API and Redis pinned to cores {self.split[0]}, wrk and the batch client "
                f"to core {self.split[1]} ({n} cores)"
            )
        return f"no pinning: API, Redis and wrk (1 thread) share all {n} cores"

    def __enter__(self) -> Rig:
        exe = shutil.which("redis-server")
        if not exe:
            sys.exit("redis-server is not installed (apt-get install redis-server)")
        cmd = [
            exe,
            *("--port", str(self.redis_port), "--bind", "127.0.0.1", "--dir", str(self.folder)),
            *("--appendonly", "yes", "--appendfsync", "everysec", "--save", ""),
            *("--logfile", "redis.log"),
        ]
        self.redis = subprocess.Popen(_pinned(cmd, self.server_cores))
        wait_http(self.redis_port)
        return self

    def flush(self) -> None:
        subprocess.run(
            ["redis-cli", "-p", str(self.redis_port), "flushall"], check=True, capture_output=True
        )

    @contextmanager
    def taskorch(self, processes: int) -> Iterator[int]:
        port = free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("TASKORCH_")},
            "TASKORCH_REDIS_URL": self.redis_url,
            "TASKORCH_JWT_SECRET": SECRET,
            "TASKORCH_PORT": str(port),
            "TASKORCH_WEB_CONCURRENCY": str(processes),
            "TASKORCH_LOCAL_FUNCTIONS": "0",
            "TASKORCH_ALLOW_PRIVATE_TARGETS": "1",
        }
        cmd = [sys.executable, "-m", "taskorch", "serve"]
        with self._serving(cmd, env, port, "serve.log") as pid:
            yield pid

    @contextmanager
    def floor(self, http: str) -> Iterator[int]:
        port = free_port()
        env = {**os.environ, "FLOOR_REDIS_URL": self.redis_url}
        cmd = [sys.executable, str(Path(__file__)), "--floor-serve", str(port), http]
        with self._serving(cmd, env, port, f"floor-{http}.log") as pid:
            yield pid

    @contextmanager
    def _serving(self, cmd: list[str], env: dict[str, str], port: int, log: str) -> Iterator[int]:
        self.flush()
        with open(self.folder / log, "wb") as out:
            proc = subprocess.Popen(
                _pinned(cmd, self.server_cores), env=env, stdout=out, stderr=subprocess.STDOUT
            )
        try:
            wait_http(port)
            time.sleep(0.5)  # every API process up (several share the port)
            self.port = port
            yield proc.pid
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __exit__(self, *exc: object) -> None:
        if self.redis is not None and self.redis.poll() is None:
            self.redis.send_signal(signal.SIGTERM)
            self.redis.wait(30)


# -- measuring --------------------------------------------------------------------------------

WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer %s"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '%s'
"""


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    assert m, text
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[m.group(2)]
    return float(m.group(1)) * scale


def wrk(rig: Rig, pid: int, duration_s: int, token: str) -> dict[str, float]:
    """wrk against rig.port: creates/s, p50/p99 in ms, errors, API CPU per create."""
    script = rig.folder / "post.lua"
    script.write_text(WRK_SCRIPT % (token, BODY))
    url = f"http://127.0.0.1:{rig.port}/v1/tasks"
    base = ["wrk", "-t1", f"-c{CONNECTIONS}", "--latency", "-s", str(script), url]
    subprocess.run(
        _pinned([*base[:4], "-d3s", *base[4:]], rig.client_cores), capture_output=True, check=True
    )  # warm-up: connections, caches, the JIT-less interpreter's first paths
    before = cpu_s(pid)
    out = subprocess.run(
        _pinned([*base[:4], f"-d{duration_s}s", *base[4:]], rig.client_cores),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    used = cpu_s(pid) - before
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rate": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        # The latency distribution's own lines: "  50%   61.8ms" (not a stdev column's "81.50%").
        "p50": _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)),  # type: ignore[union-attr]
        "p99": _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)),  # type: ignore[union-attr]
        "non2xx": float(bad.group(1)) if bad else 0.0,
        "socket_errors": 1.0 if errors else 0.0,
        "cpu_us": used / max(total, 1) * 1e6,
    }


async def _batches(port: int, duration_s: float, token: str, path: str) -> tuple[int, int]:
    import aiohttp

    tasks = ",".join([BODY] * BATCH)
    body = ('{"tasks":[' + tasks + "]}").encode()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    stored = refused = 0
    stop = time.monotonic() + duration_s

    async def sender(http: aiohttp.ClientSession) -> None:
        nonlocal stored, refused
        while time.monotonic() < stop:
            async with http.post(f"http://127.0.0.1:{port}{path}", data=body) as r:
                if r.status != 200:
                    refused += BATCH
                    await r.read()
                    continue
                items = (await r.json())["items"]
                ok = sum(1 for item in items if "task" in item)
                stored, refused = stored + ok, refused + len(items) - ok

    async with aiohttp.ClientSession(headers=headers) as http:
        await asyncio.gather(*(sender(http) for _ in range(4)))
    return stored, refused


def batch(rig: Rig, pid: int, duration_s: int, token: str, path: str) -> dict[str, float]:
    asyncio.run(_batches(rig.port, 2, token, path))  # warm-up
    before, started = cpu_s(pid), time.monotonic()
    stored, refused = asyncio.run(_batches(rig.port, duration_s, token, path))
    took = time.monotonic() - started
    return {
        "rate": stored / took,
        "refused": float(refused),
        "cpu_us": (cpu_s(pid) - before) / max(stored, 1) * 1e6,
    }


# -- the floor --------------------------------------------------------------------------------

FLOOR_LUA = """
local n = (#ARGV - 1) / 3
for i = 0, n - 1 do
  local id, spec, due = ARGV[2 + 3 * i], ARGV[3 + 3 * i], ARGV[4 + 3 * i]
  redis.call('HSET', 'floor:t:' .. id, 'owner', ARGV[1], 'spec', spec, 'due', due)
  redis.call('ZADD', 'floor:q', due, id)
end
return n
"""


class FloorTask(msgspec.Struct):
    url: str
    payload: Any = None
    delay: float = 0.0


class FloorBatch(msgspec.Struct):
    tasks: list[FloorTask]


def floor_serve(port: int, http: str) -> None:
    """The floor: token, msgspec decode, one Lua script; nothing else."""
    import secrets

    import jwt
    import redis.asyncio as aioredis
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    client = aioredis.from_url(os.environ["FLOOR_REDIS_URL"])
    script = client.register_script(FLOOR_LUA)
    enc = msgspec.json.Encoder()

    def owner(request: Request) -> str | None:
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        try:
            claims = jwt.decode(token, SECRET, algorithms=["HS256"])
        except jwt.PyJWTError:
            return None
        return str(claims["sub"])

    def args(task: FloorTask, now: int) -> list[Any]:
        return [f"tsk_{secrets.token_hex(12)}", enc.encode(task), now + int(task.delay * 1000)]

    async def create(request: Request) -> Response:
        sub = owner(request)
        if sub is None:
            return Response(status_code=401)
        task = msgspec.json.decode(await request.body(), type=FloorTask)
        a = args(task, int(time.time() * 1000))
        await script(args=[sub, *a])
        return Response(
            enc.encode({"id": a[0], "url": task.url}), 201, media_type="application/json"
        )

    async def create_many(request: Request) -> Response:
        sub = owner(request)
        if sub is None:
            return Response(status_code=401)
        tasks = msgspec.json.decode(await request.body(), type=FloorBatch).tasks
        now = int(time.time() * 1000)
        flat = [a for t in tasks for a in args(t, now)]
        await script(args=[sub, *flat])
        items = [{"task": {"id": flat[3 * i], "url": t.url}} for i, t in enumerate(tasks)]
        return Response(enc.encode({"items": items}), media_type="application/json")

    app = Starlette(
        routes=[
            Route("/v1/tasks", create, methods=["POST"]),
            Route("/v1/tasks/batch", create_many, methods=["POST"]),
        ]
    )
    uvicorn.run(
        app, host="127.0.0.1", port=port, loop="uvloop", http=http, log_level="warning",
        access_log=False,
    )  # fmt: skip


# -- the run ----------------------------------------------------------------------------------


def _token(redis_url: str) -> str:
    sys.path.insert(0, str(ROOT))
    from taskorch.auth import mint_token
    from taskorch.settings import Settings

    settings = Settings.from_env({"TASKORCH_REDIS_URL": redis_url, "TASKORCH_JWT_SECRET": SECRET})
    return mint_token(settings, "bench")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--duration", type=int, default=20, help="seconds per wrk run (default 20)")
    ap.add_argument("--batch-duration", type=int, default=10, help="seconds per batch run")
    ap.add_argument("--only", choices=("single", "batch"), default=None)
    ap.add_argument("--pin", action="store_true", help="pin servers and clients to own cores")
    ap.add_argument("--floor-serve", nargs=2, metavar=("PORT", "HTTP"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.floor_serve:
        floor_serve(int(args.floor_serve[0]), args.floor_serve[1])
        return
    if not shutil.which("wrk") and args.only != "batch":
        sys.exit("wrk is not installed (apt-get install wrk)")
    command = " ".join([".venv/bin/python", "bench/bench_intake.py", *sys.argv[1:]])
    rows: list[tuple[str, str, str, str, str, str]] = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as d, Rig(Path(d), pin=args.pin) as rig:
        token = _token(rig.redis_url)
        if args.only in (None, "single"):
            runs: list[tuple[str, Any]] = [
                ("floor, h11, 1 process", lambda: rig.floor("h11")),
                ("floor, httptools, 1 process", lambda: rig.floor("httptools")),
                ("taskorch serve, 1 process", lambda: rig.taskorch(1)),
                ("taskorch serve, 2 processes", lambda: rig.taskorch(2)),
            ]
            for name, server in runs:
                with server() as pid:
                    r = wrk(rig, pid, args.duration, token)
                bad = f", {r['non2xx']:.0f} non-2xx" if r["non2xx"] else ""
                rows.append(
                    (
                        "single creates",
                        name,
                        f"{r['rate']:,.0f} creates/s{bad}",
                        f"{r['p50']:.1f}",
                        f"{r['p99']:.1f}",
                        f"{r['cpu_us']:,.0f}",
                    )
                )
                print(f"  {name}: {rows[-1][2]}, p50 {r['p50']:.1f} ms, p99 {r['p99']:.1f} ms")
        if args.only in (None, "batch"):
            runs = [
                ("floor, httptools, 1 process", lambda: rig.floor("httptools")),
                ("taskorch serve, 1 process", lambda: rig.taskorch(1)),
                ("taskorch serve, 2 processes", lambda: rig.taskorch(2)),
            ]
            for name, server in runs:
                with server() as pid:
                    r = batch(rig, pid, args.batch_duration, token, "/v1/tasks/batch")
                bad = f", {r['refused']:.0f} refused" if r["refused"] else ""
                rows.append(
                    (
                        f"batches of {BATCH}",
                        name,
                        f"{r['rate']:,.0f} tasks/s{bad}",
                        "",
                        "",
                        f"{r['cpu_us']:,.0f}",
                    )
                )
                print(f"  batches, {name}: {rows[-1][2]}")
        note = rig.cores_note()
    heads = ("what", "server", "rate", "p50 ms", "p99 ms", "API CPU us/task")
    widths = [max(len(str(x)) for x in col) for col in zip(heads, *rows, strict=True)]
    print()
    print("| " + " | ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    print()
    print(
        f"single: wrk -t1 -c{CONNECTIONS} -d{args.duration}s, one task per request; batches: "
        f"4 aiohttp requests in flight, {BATCH} tasks each, {args.batch_duration} s"
    )
    print(f"cores: {note}; load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    print(f"command: {command}")


if __name__ == "__main__":
    main()
