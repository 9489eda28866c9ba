"""Scheduling benchmark: how precisely and how fast one worker fires tasks.

    python bench/bench_tasks.py            # both scenarios
    python bench/bench_tasks.py --only a   # 1,000 tasks over 10 s: lateness p50/p99/max
    python bench/bench_tasks.py --only b   # 10,000 tasks due at once: time to the last call

Everything is real and local: a redis-server started here (append-only, as in production), the
real ``taskorch worker`` process, and a minimal HTTP target (bench/target.py) that records when
each call arrived. Lateness is arrival at the target minus the due time: what a user sees.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from taskorch.models import TaskCreate  # noqa: E402
from taskorch.store import Store, connect  # noqa: E402

SECRET = "bench-secret-0123456789abcdef0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_line(proc: subprocess.Popen[str], text: str) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        if text in line:
            return
    raise RuntimeError(f"process exited before printing {text!r}")


class Rig:
    """Redis, one worker and the target, each its own process."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.redis_port = free_port()
        self.target_port = free_port()
        self.procs: list[subprocess.Popen[str]] = []

    def __enter__(self) -> Rig:
        exe = shutil.which("redis-server")
        if not exe:
            sys.exit("redis-server is not installed (apt-get install redis-server)")
        self.procs.append(
            subprocess.Popen(
                [
                    exe,
                    "--port",
                    str(self.redis_port),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(self.folder),
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "everysec",
                    "--save",
                    "",
                    "--logfile",
                    "redis.log",
                ],
                text=True,
            )
        )
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.target_out = self.folder / "calls.txt"
        target = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "bench" / "target.py"),
                str(self.target_port),
                str(self.target_out),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.procs.append(target)
        wait_line(target, "ready")
        time.sleep(0.3)
        env = {
            **os.environ,
            "TASKORCH_REDIS_URL": self.redis_url,
            "TASKORCH_JWT_SECRET": SECRET,
            "TASKORCH_ALLOW_PRIVATE_TARGETS": "1",
        }
        self.worker_log = open(self.folder / "worker.log", "w")
        self.procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "taskorch", "worker"],
                env=env,
                stdout=self.worker_log,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
        time.sleep(1.0)
        return self

    def calls(self) -> list[tuple[str, int, float]]:
        """Stop the target and read what it recorded."""
        target = self.procs[1]
        target.send_signal(signal.SIGTERM)
        target.wait(30)
        out = []
        for line in self.target_out.read_text().splitlines():
            task, attempt, at = line.split()
            out.append((task, int(attempt), float(at)))
        return out

    def __exit__(self, *exc: object) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        self.worker_log.close()


async def create(rig: Rig, dues: list[float]) -> dict[str, float]:
    """Create one task per due time (epoch seconds) straight through the store, 64 at a time."""
    redis = connect(rig.redis_url)
    store = Store(redis)
    url = f"http://127.0.0.1:{rig.target_port}/hit"
    out: dict[str, float] = {}

    async def one(due: float) -> None:
        task, _ = await store.create_task(
            "bench", TaskCreate(url=url, retries=0, run_at=dt.datetime.fromtimestamp(due, dt.UTC))
        )
        # The reference is the due time the store kept (whole ms), not the float asked for.
        assert task.run_at is not None
        out[task.id] = dt.datetime.fromisoformat(task.run_at).timestamp()

    for i in range(0, len(dues), 64):
        await asyncio.gather(*(one(d) for d in dues[i : i + 64]))
    await redis.aclose()
    return out


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def report_calls(
    tasks: dict[str, float], calls: list[tuple[str, int, float]]
) -> tuple[list[float], int, int]:
    per_task = Counter(t for t, _, _ in calls)
    duplicates = sum(n - 1 for n in per_task.values() if n > 1)
    misses = sum(1 for t in tasks if per_task[t] == 0)
    first: dict[str, float] = {}
    for t, _, at in calls:
        first[t] = min(at, first.get(t, at))
    lateness = [(first[t] - due) * 1000 for t, due in tasks.items() if t in first]
    return lateness, misses, duplicates


def scenario_a(n: int = 1000, spread_s: float = 10.0) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as d, Rig(Path(d)) as rig:
        start = time.time() + 3.0
        tasks = asyncio.run(create(rig, [start + spread_s * i / n for i in range(n)]))
        time.sleep(max(0.0, start + spread_s + 2.0 - time.time()))
        lateness, misses, dups = report_calls(tasks, rig.calls())
    res = {
        "n": n,
        "p50_ms": pct(lateness, 50),
        "p99_ms": pct(lateness, 99),
        "max_ms": max(lateness),
        "min_ms": min(lateness),
        "misses": misses,
        "duplicates": dups,
    }
    print(
        f"(a) {n} tasks over {spread_s:g} s: lateness p50 {res['p50_ms']:.2f} ms, p99 {res['p99_ms']:.2f} ms, "
        f"max {res['max_ms']:.2f} ms (min {res['min_ms']:.2f} ms); misses {misses}, duplicates {dups}"
    )
    return res


def scenario_b(n: int = 10_000) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as d, Rig(Path(d)) as rig:
        instant = time.time() + 4.0 + n / 1500  # creating the tasks takes a few seconds
        t0 = time.time()
        tasks = asyncio.run(create(rig, [instant] * n))
        created_s = time.time() - t0
        assert time.time() < instant - 1.0, "creating the tasks took past the instant"
        time.sleep(max(0.0, instant - time.time()))
        deadline = instant + 60
        while time.time() < deadline:
            time.sleep(0.5)
            if _done(rig, n):
                break
        calls = rig.calls()
        lateness, misses, dups = report_calls(tasks, calls)
    last = max(at for _, _, at in calls) - instant
    rate = len(lateness) / last
    res = {
        "n": n,
        "to_last_s": last,
        "calls_per_s": rate,
        "misses": misses,
        "duplicates": dups,
        "created_per_s": n / created_s,
    }
    print(
        f"(b) {n} tasks due at one instant: last call {last * 1000:.0f} ms after it, "
        f"{rate:,.0f} calls/s; misses {misses}, duplicates {dups} (created at {n / created_s:,.0f}/s)"
    )
    return res


def _done(rig: Rig, n: int) -> bool:
    import redis

    from taskorch import constants as c
    from taskorch.partitions import Layout

    r = redis.Redis(port=rig.redis_port, decode_responses=True)
    layout = Layout(int(r.get(c.PARTITIONS_KEY) or 0) or 1)
    done = 0
    for pre in layout.prefixes:  # the counts are kept per partition
        stats = r.hmget(pre + c.STATS, "tasks:succeeded", "tasks:failed")
        done += sum(int(v or 0) for v in stats)
    r.close()
    return done >= n


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--only", choices=["a", "b"])
    args = ap.parse_args()
    print(f"taskorch scheduling benchmark, {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    if args.only in (None, "a"):
        scenario_a()
    if args.only in (None, "b"):
        scenario_b()


if __name__ == "__main__":
    main()
