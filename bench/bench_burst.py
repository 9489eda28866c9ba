"""Burst benchmark: 10,000 tasks due at one instant, one and two workers, beside the floor.

    python bench/bench_burst.py                  # floor, 1 worker, 2 workers; 10,000 tasks
    python bench/bench_burst.py --n 2000 --workers 1

Everything is real and local, each its own process: a redis-server started here (append-only, as
in production), real ``taskorch worker`` processes, and a minimal HTTP target (raw asyncio
protocol, so that the target is never what is measured) that records when each call arrived.
The tasks are created straight through the store before the instant, far enough ahead that
creating them is over before any worker claims them (a worker claims 1 s ahead).

The floor is what an in-memory scheduler in one process does with the same burst: one asyncio
timer per task at the instant, aiohttp with 100 keep-alive connections to the same target.

Lateness is arrival at the target minus the due time: what a user sees. calls/s is the number of
calls over the time from the instant to the last arrival. The share is how many calls each
worker made (from its ``task.attempt`` log lines).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SECRET = "bench-secret-0123456789abcdef0123456789abcdef"
COUNT_PATH = b"/__count"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the target (its own process) -------------------------------------------------------------

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class _Http(asyncio.Protocol):
    """Answers 200 ``{}`` to every request and records (task id, arrival); GET /__count answers
    how many calls were recorded so far."""

    def __init__(self, records: list[tuple[bytes, float]]) -> None:
        self.records = records
        self.buf = b""

    connections = 0  # that carried calls (the bench's own polls are not counted)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.counted = False

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end]
            length = 0
            task = b""
            lines = head.split(b"\r\n")
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"x-taskorch-task-id":
                    task = value.strip()
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length :]
            if COUNT_PATH in lines[0]:
                body = str(len(self.records)).encode()
                self.transport.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
                )
                continue
            self.records.append((task, now))
            self.transport.write(RESPONSE)
            if not self.counted:
                self.counted = True
                _Http.connections += 1


async def _target_main(port: int, out: str) -> None:
    records: list[tuple[bytes, float]] = []
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Http(records), "127.0.0.1", port, backlog=4096)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    server.close()
    lines = "".join(f"{t.decode()} {at:.6f}\n" for t, at in records)
    Path(out).write_text(f"connections {_Http.connections}\n{lines}")


# -- the floor (its own process) --------------------------------------------------------------


async def _floor_main(port: int, n: int, instant_ms: int) -> None:
    import aiohttp

    cpu0 = time.process_time()
    url = f"http://127.0.0.1:{port}/hit"
    done = asyncio.Event()
    left = n
    connector = aiohttp.TCPConnector(limit=100)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> None:
            nonlocal left
            async with session.post(
                url, json={"n": i}, headers={"X-Taskorch-Task-Id": str(i)}
            ) as r:
                await r.read()
            left -= 1
            if not left:
                done.set()

        running: set[asyncio.Future[None]] = set()

        def fire(i: int) -> None:
            t = asyncio.ensure_future(one(i))
            running.add(t)
            t.add_done_callback(running.discard)

        loop = asyncio.get_running_loop()
        at = loop.time() + (instant_ms / 1000 - time.time())
        for i in range(n):
            loop.call_at(at, fire, i)
        await done.wait()
    print(f"cpu {time.process_time() - cpu0:.3f}", flush=True)


# -- the run ----------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    n: int
    arrivals: list[float]  # seconds after the instant, one per first call of a task
    duplicates: int
    misses: int
    connections: int = 0
    cpu_s: float = 0.0  # CPU time of the process(es) that made the calls, start to end
    shares: list[int] = field(default_factory=list)

    def pct(self, p: float) -> float:
        s = sorted(self.arrivals)
        return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))] * 1000

    @property
    def calls_per_s(self) -> float:
        return len(self.arrivals) / max(self.arrivals) if self.arrivals else 0.0

    @property
    def early(self) -> int:
        return sum(1 for a in self.arrivals if a < 0)


class Rig:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: list[subprocess.Popen[str]] = []
        self.redis_port = free_port()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"

    def __enter__(self) -> Rig:
        exe = shutil.which("redis-server")
        if not exe:
            sys.exit("redis-server is not installed (apt-get install redis-server)")
        args = ["--port", str(self.redis_port), "--bind", "127.0.0.1", "--dir", str(self.folder)]
        args += ["--appendonly", "yes", "--appendfsync", "everysec", "--save", ""]
        self.redis = subprocess.Popen([exe, *args, "--logfile", "redis.log"], text=True)
        time.sleep(0.3)
        return self

    def __exit__(self, *exc: object) -> None:
        self.redis.send_signal(signal.SIGTERM)
        self.redis.wait(30)

    def start_target(self, name: str) -> tuple[subprocess.Popen[str], int, Path]:
        port = free_port()
        out = self.folder / f"calls-{name}.txt"
        cmd = [sys.executable, __file__, "--target-child", str(port), str(out)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        if "ready" not in proc.stdout.readline():
            raise RuntimeError("the target did not start")
        return proc, port, out

    def start_workers(self, k: int) -> list[tuple[subprocess.Popen[str], Path]]:
        env = {
            **{key: v for key, v in os.environ.items() if not key.startswith("TASKORCH_")},
            "TASKORCH_REDIS_URL": self.redis_url,
            "TASKORCH_JWT_SECRET": SECRET,
            "TASKORCH_ALLOW_PRIVATE_TARGETS": "1",
        }
        out = []
        for i in range(k):
            log_path = self.folder / f"worker-{k}-{i}.log"
            with open(log_path, "w") as log:
                p = subprocess.Popen(
                    [sys.executable, "-m", "taskorch", "worker"],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    text=True,
                    cwd=ROOT,
                )
            out.append((p, log_path))
        deadline = time.time() + 30
        for _, log_path in out:
            while "worker.started" not in log_path.read_text():
                if time.time() > deadline:
                    raise RuntimeError(f"worker did not start: {log_path.read_text()[-2000:]}")
                time.sleep(0.1)
        return out


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _count(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/__count", timeout=5) as r:
        return int(r.read())


def _wait_calls(port: int, n: int, instant: float) -> None:
    """Until every call arrived, or none came for 10 s after the instant."""
    time.sleep(max(0.0, instant - time.time()))
    last, still_since = -1, time.time()
    while time.time() < instant + 120:
        time.sleep(0.25)
        got = _count(port)
        if got >= n:
            time.sleep(0.5)  # any duplicate would show up now
            return
        if got != last:
            last, still_since = got, time.time()
        elif time.time() - still_since > 10:
            return


def _collect(
    name: str, target: subprocess.Popen[str], out: Path, tasks: dict[str, float]
) -> Result:
    target.send_signal(signal.SIGTERM)
    target.wait(30)
    first: dict[str, float] = {}
    counts: Counter[str] = Counter()
    lines = out.read_text().splitlines()
    connections = int(lines[0].split()[1])
    for line in lines[1:]:
        task, at = line.split()
        counts[task] += 1
        first[task] = min(float(at), first.get(task, float(at)))
    arrivals = [first[t] - due for t, due in tasks.items() if t in first]
    dups = sum(v - 1 for v in counts.values() if v > 1)
    misses = sum(1 for t in tasks if t not in first)
    return Result(name, len(tasks), arrivals, dups, misses, connections)


def run_floor(rig: Rig, n: int) -> Result:
    target, port, out = rig.start_target("floor")
    instant_ms = int((time.time() + 2.0) * 1000)
    cmd = [sys.executable, __file__, "--floor-child", str(port), str(n), str(instant_ms)]
    done = subprocess.run(cmd, check=True, timeout=120, capture_output=True, text=True)
    tasks = {str(i): instant_ms / 1000 for i in range(n)}
    res = _collect("in-memory floor", target, out, tasks)
    res.cpu_s = float(done.stdout.split()[-1])
    return res


async def _create(redis_url: str, url: str, n: int, instant_ms: int) -> dict[str, float]:
    """n tasks due at the instant, straight through the store, 1,000 per batch."""
    from taskorch.models import TaskCreate
    from taskorch.store import BatchItem, Store, connect

    redis = connect(redis_url)
    store = Store(redis)
    run_at = dt.datetime.fromtimestamp(instant_ms / 1000, dt.UTC)
    item = BatchItem(TaskCreate(url=url, retries=0, payload={"n": 1}, run_at=run_at))
    out: dict[str, float] = {}
    for i in range(0, n, 1000):
        for res in await store.create_tasks("bench", [item] * min(1000, n - i)):
            assert isinstance(res, tuple), res
            task = res[0]
            assert task.run_at is not None
            out[task.id] = dt.datetime.fromisoformat(task.run_at).timestamp()
    await redis.aclose()
    return out


def run_workers(rig: Rig, n: int, k: int, create_rate: float, profile: bool = False) -> Result:
    import redis as redis_sync

    r = redis_sync.Redis(port=rig.redis_port)
    r.flushall()
    r.close()
    workers = rig.start_workers(k)
    target, port, out = rig.start_target(f"workers-{k}")
    try:
        # Due once creating is over (at a pessimistic rate) and every worker claimed nothing yet.
        instant_ms = int((time.time() + 3.0 + n / create_rate) * 1000)
        t0 = time.time()
        tasks = asyncio.run(_create(rig.redis_url, f"http://127.0.0.1:{port}/hit", n, instant_ms))
        created = time.time()
        if created > instant_ms / 1000 - 1.5:
            sys.exit(
                f"creating took {created - t0:.1f} s, past the instant; rerun with a lower --create-rate"
            )
        cpu0 = sum(_cpu_s(p.pid) for p, _ in workers)
        spies = []
        if profile:  # py-spy (pip install py-spy) on each worker from 1.5 s before the instant
            time.sleep(max(0.0, instant_ms / 1000 - 1.5 - time.time()))
            for i, (p, _) in enumerate(workers):
                out_file = rig.folder / f"profile-{k}-{i}.txt"
                spy_cmd = [
                    "py-spy",
                    "record",
                    "-p",
                    str(p.pid),
                    "-d",
                    "8",
                    "-r",
                    "200",
                    "-f",
                    "raw",
                ]
                spies.append(subprocess.Popen([*spy_cmd, "-o", str(out_file), "--nonblocking"]))
        _wait_calls(port, n, instant_ms / 1000)
        for spy in spies:
            spy.wait(30)
        cpu_s = sum(_cpu_s(p.pid) for p, _ in workers) - cpu0
    except BaseException:
        target.kill()
        target.wait()
        raise
    finally:
        for p, _ in workers:
            p.send_signal(signal.SIGTERM)
        for p, _ in workers:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
    res = _collect(f"taskorch, {k} worker{'s' if k > 1 else ''}", target, out, tasks)
    res.cpu_s = cpu_s
    for _, log_path in workers:
        fired = 0
        for line in log_path.read_text().splitlines():
            if '"task.attempt"' in line:
                with contextlib.suppress(ValueError):
                    if json.loads(line).get("task_id") in tasks:
                        fired += 1
        res.shares.append(fired)
    return res


def table(results: list[Result], cmd: str) -> str:
    floor = results[0]
    one = next((r for r in results if r.name.endswith("1 worker")), None)
    head = (
        f"{'':22} {'calls/s':>8} {'first ms':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
        f"{'early':>5} {'miss':>4} {'dup':>4} {'conns':>6} {'cpu us/call':>11} {'vs floor':>8} {'vs 1':>5}  share"
    )
    lines = [f"$ {cmd}", head]
    for r in results:
        if not r.arrivals:
            lines.append(f"{r.name:22} no calls arrived ({r.misses} missed)")
            continue
        vs_one = (
            f"{r.calls_per_s / one.calls_per_s:.2f}x" if one and r.shares and one.arrivals else ""
        )
        share = "/".join(f"{100 * s / max(1, r.n):.0f}%" for s in r.shares)
        lines.append(
            f"{r.name:22} {r.calls_per_s:8,.0f} {min(r.arrivals) * 1000:9.1f} {r.pct(50):8.1f} "
            f"{r.pct(99):8.1f} {r.pct(100):8.1f} {r.early:5} {r.misses:4} {r.duplicates:4} "
            f"{r.connections:6} {1e6 * r.cpu_s / max(1, len(r.arrivals)):11.0f} "
            f"{100 * r.calls_per_s / floor.calls_per_s:7.0f}% {vs_one:>5}  {share}"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=10_000, help="tasks due at the instant")
    ap.add_argument("--workers", default="1,2", help="worker counts to run, comma-separated")
    ap.add_argument(
        "--create-rate", type=float, default=2000.0, help="creates/s assumed (pessimistic)"
    )
    ap.add_argument("--keep", action="store_true", help="keep the folder with logs and calls")
    ap.add_argument("--profile", action="store_true", help="py-spy each worker (with --keep)")
    ap.add_argument("--no-floor", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--target-child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--floor-child", nargs=3, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    if args.target_child:
        asyncio.run(_target_main(int(args.target_child[0]), args.target_child[1]))
        return
    if args.floor_child:
        asyncio.run(_floor_main(*args.floor_child))
        return
    cmd = "python bench/bench_burst.py " + " ".join(sys.argv[1:])
    print(f"taskorch burst benchmark, {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    folder = Path(tempfile.mkdtemp(prefix="bench-burst-"))
    try:
        with Rig(folder) as rig:
            results = [run_floor(rig, args.n)]
            for k in (int(x) for x in args.workers.split(",")):
                results.append(run_workers(rig, args.n, k, args.create_rate, args.profile))
        print(table(results, cmd.strip()))
    finally:
        if args.keep:
            print(f"logs and calls kept in {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
