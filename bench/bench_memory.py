"""Memory benchmark: Redis bytes per pending task, and precision with a million of them pending.

    python bench/bench_memory.py                  # 1,000,000 bench tasks + 100,000 with 1 KB
    python bench/bench_memory.py --tasks 100000   # a quicker look

One command, everything real and local: a redis-server started here (noeviction; no persistence
while filling, so that the fill measures Redis and not the disk), the real ``taskorch worker``
process and bench/target.py. In order:

1. ``--tasks`` pending tasks of the benchmark's task (a URL, ``{"n": 123, "kind": "bench"}``,
   every other field left to its default) and, in a Redis of their own, ``--big-tasks`` with a
   1 KB payload (100,000 suffice for a per-task figure), all due in a year, created through the
   store as fast as it takes them. Redis's ``used_memory`` before and after gives bytes per
   pending task, ``DBSIZE`` the keys per task, ``INFO cpu``/``commandstats`` Redis's work per
   create. A sample of keys (``RANDOMKEY`` + ``MEMORY USAGE``) shows which kinds of key the
   bench task's bytes are in.
2. With the bench tasks pending, bench_tasks's scenario (a): 1,000 tasks due over 10 s, one worker,
   lateness at the target (p50/p99/max), then the in-memory floor (bench/floor.py) on the same
   due times in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import multiprocessing
import os
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import floor  # noqa: E402
from bench_tasks import Rig, create, pct, report_calls  # noqa: E402

from taskorch.models import TaskCreate  # noqa: E402
from taskorch.store import Store, connect  # noqa: E402

OWNER = "bench"
PAYLOAD = {"n": 123, "kind": "bench"}
BIG_PAYLOAD = {"n": 123, "kind": "bench", "data": "x" * 990}  # 1,024 bytes as JSON
IN_FLIGHT = 256  # creates in flight at once on the one-task path
BATCH = 1000  # tasks per call on the batch path (Store.create_tasks), where the store has it


def fill_path() -> str:
    """How the fill creates tasks: the store's batch create where it has one."""
    if hasattr(Store, "create_tasks"):
        return f"Store.create_tasks, {BATCH:,} a call"
    return f"Store.create_task, {IN_FLIGHT} in flight"


def layout_name() -> str:
    """Which record layout the checked-out code writes, for the report."""
    try:
        import taskorch.partitions  # noqa: F401
    except ImportError:
        return "single-node layout (one hash per task + job key)"
    return "partitioned layout"


async def _create(redis_url: str, n: int, payload: Any, due: dt.datetime, done: Any) -> None:
    """Create ``n`` pending tasks through the store, counting them in the shared ``done``."""
    # No read timeout: parsing a 1,000-task reply without hiredis takes a loaded process about a
    # second, and the replies of the batches in flight are read one after another.
    redis = connect(redis_url, max_connections=IN_FLIGHT + 8, socket_timeout=None)
    store = Store(redis)
    url = "http://127.0.0.1:9/bench"  # never called: due in a year
    body = TaskCreate(url=url, payload=payload, run_at=due)
    batch = getattr(store, "create_tasks", None)
    if batch is not None:  # the partitioned layout: one script per partition a batch touches
        from taskorch.store import BatchItem  # type: ignore[attr-defined]

        item = BatchItem(body=body)
        for i in range(0, n, BATCH * 2):
            sizes = [min(BATCH, n - j) for j in range(i, min(n, i + BATCH * 2), BATCH)]
            for results in await asyncio.gather(*(batch(OWNER, [item] * k) for k in sizes)):
                errors = [r for r in results if isinstance(r, Exception)]
                if errors:
                    raise errors[0]
            with done.get_lock():
                done.value += sum(sizes)
    else:
        queue = iter(range(n))

        async def lane() -> None:
            for _ in queue:
                await store.create_task(OWNER, body)
                with done.get_lock():
                    done.value += 1

        await asyncio.gather(*(lane() for _ in range(IN_FLIGHT)))
    await redis.aclose()


def _create_part(redis_url: str, n: int, payload: Any, due: dt.datetime, done: Any) -> None:
    asyncio.run(_create(redis_url, n, payload, due, done))


def fill(
    redis_url: str, n: int, payload: Any, *, due: dt.datetime, label: str, procs: int
) -> float:
    """Create ``n`` pending tasks from ``procs`` processes at once; returns creates per second.

    One Python process parses Redis's replies slower than Redis runs the scripts, so the fill
    uses several, each with its own connections.
    """
    done = multiprocessing.Value("q", 0)
    parts = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
    workers = [
        multiprocessing.Process(target=_create_part, args=(redis_url, k, payload, due, done))
        for k in parts
        if k
    ]
    tty = sys.stdout.isatty()
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    while True:
        alive = any(w.is_alive() for w in workers)
        elapsed = time.perf_counter() - t0
        line = f"  {label}: {done.value:,} / {n:,} created ({done.value / elapsed:,.0f}/s)"
        print(f"\r{line}   " if tty else line, end="" if tty and alive else "\n", flush=True)
        if not alive:
            break
        deadline = time.perf_counter() + (1.0 if tty else 10.0)  # one line per 10 s into a log
        while time.perf_counter() < deadline and any(w.is_alive() for w in workers):
            time.sleep(0.1)
    for w in workers:
        w.join()
    if any(w.exitcode for w in workers) or done.value != n:
        sys.exit(f"creating the tasks failed: {done.value:,} of {n:,} created")
    return n / (time.perf_counter() - t0)


def memory(redis: Any) -> tuple[int, int]:
    return int(redis.info("memory")["used_memory"]), int(redis.dbsize())


def redis_work(redis: Any) -> tuple[float, int, int]:
    """Redis's CPU seconds, scripts run and commands run (those inside scripts too) so far."""
    cpu = redis.info("cpu")
    stats = redis.info("commandstats")
    scripts = sum(
        int(v["calls"]) for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval")
    )
    commands = sum(int(v["calls"]) for v in stats.values()) - scripts
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]), scripts, commands


_ID = re.compile(r"(tsk|orc)_[0-9a-f]{24}")
_TAG = re.compile(r"\{[^}]*\}")  # a partition's hash tag


def sample_keys(redis: Any, n: int = 400) -> dict[str, tuple[int, float]]:
    """Key kinds (ids and hash tags replaced) among ``n`` random keys: count, mean MEMORY USAGE."""
    sizes: dict[str, list[int]] = defaultdict(list)
    for _ in range(n):
        key = redis.randomkey()
        if key is None:
            break
        usage = redis.memory_usage(key, samples=0)
        sizes[_TAG.sub("{p}", _ID.sub("<id>", key))].append(int(usage or 0))
    return {k: (len(v), sum(v) / len(v)) for k, v in sizes.items()}


# label, tasks, bytes, keys, creates/s, Redis CPU us, scripts and commands per task
Row = tuple[str, int, int, int, float, float, float, float]


def measure_fill(
    rig: Rig, label: str, n: int, payload: Any, procs: int
) -> tuple[Row, dict[str, tuple[int, float]], str]:
    """Fill the rig's Redis with ``n`` pending tasks: the memory row, a key sample, the version."""
    import redis as redis_py

    redis = redis_py.Redis(port=rig.redis_port, decode_responses=True)
    version = str(redis.info("server")["redis_version"])
    # Nothing is written to disk while filling: the figure is Redis's memory, not the disk's pace.
    redis.config_set("appendonly", "no")
    redis.config_set("save", "")
    redis.config_set("maxmemory-policy", "noeviction")
    due = dt.datetime.now(dt.UTC) + dt.timedelta(days=365)
    # The scripts cached, the partitions recorded, the indexes made: not counted per task.
    fill(rig.redis_url, 1, PAYLOAD, due=due, label="warm-up", procs=1)
    mem0, keys0 = memory(redis)
    cpu0, scripts0, commands0 = redis_work(redis)
    rate = fill(rig.redis_url, n, payload, due=due, label=label, procs=procs)
    cpu1, scripts1, commands1 = redis_work(redis)
    mem1, keys1 = memory(redis)
    row = (
        label,
        n,
        mem1 - mem0,
        keys1 - keys0,
        rate,
        (cpu1 - cpu0) / n * 1e6,
        (scripts1 - scripts0) / n,
        (commands1 - commands0) / n,
    )
    samples = sample_keys(redis)
    redis.close()
    return row, samples, version


def accuracy(rig: Rig, n: int = 1000, spread_s: float = 10.0) -> tuple[list[float], int, int]:
    """bench_tasks scenario (a) on this rig: ``n`` tasks due over ``spread_s``, one worker."""
    start = time.time() + 3.0
    tasks = asyncio.run(create(rig, [start + spread_s * i / n for i in range(n)]))
    time.sleep(max(0.0, start + spread_s + 2.0 - time.time()))
    return report_calls(tasks, rig.calls())


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tasks", type=int, default=1_000_000, help="pending bench tasks")
    ap.add_argument("--big-tasks", type=int, default=100_000, help="pending tasks with 1 KB")
    ap.add_argument("--procs", type=int, default=2, help="processes creating the tasks")
    args = ap.parse_args()
    if args.tasks < 1 or args.big_tasks < 0 or args.procs < 1:
        ap.error("--tasks and --procs must be at least 1, --big-tasks at least 0")
    command = " ".join(["python bench/bench_memory.py", *sys.argv[1:]])
    print(f"taskorch memory benchmark, {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    layout = layout_name()
    print(f"code: {layout}")
    rows = []
    if args.big_tasks:  # in a Redis of their own, so that each figure is of one kind of task
        with tempfile.TemporaryDirectory() as d, Rig(Path(d)) as rig:
            row, _, _ = measure_fill(rig, "1 KB payload", args.big_tasks, BIG_PAYLOAD, args.procs)
            rows.append(row)
    with tempfile.TemporaryDirectory() as d, Rig(Path(d)) as rig:
        row, samples, version = measure_fill(rig, "bench task", args.tasks, PAYLOAD, args.procs)
        rows.insert(0, row)
        pending = args.tasks
        print(f"accuracy: 1,000 tasks over 10 s with {pending:,} pending, one worker ...")
        lateness, misses, dups = accuracy(rig)
    print("accuracy: the in-memory floor on the same due times ...")
    floor_lat, floor_misses, floor_dups = floor.measure([10.0 * i / 1000 for i in range(1000)])

    print()
    print(f"$ {command}")
    print(f"code: {layout}; redis-server {version}")
    print()
    print(
        "| pending tasks | Redis per task | keys per task | created/s "
        "| Redis CPU per create | scripts per create | commands per create |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, n, mem, keys, rate, cpu_us, scripts, commands in rows:
        print(
            f"| {n:,} x {label} | {mem / n:,.0f} B | {keys / n:.2f} | {rate:,.0f} "
            f"| {cpu_us:.1f} us | {scripts:.3f} | {commands:.2f} |"
        )
    print(
        f"(created through {fill_path()}, from {args.procs} processes; the 1 KB tasks in a Redis "
        "of their own; 100,000 suffice: past some 10,000 the figure per task hardly moves)"
    )
    if samples:
        print()
        print(
            f"where a bench task's bytes are ({sum(k for k, _ in samples.values())} random keys):"
        )
        print("| key | share of keys | mean MEMORY USAGE |")
        print("|---|---:|---:|")
        total = sum(k for k, _ in samples.values())
        for key, (k, mean) in sorted(samples.items(), key=lambda kv: -kv[1][0])[:8]:
            print(f"| `{key}` | {100 * k / total:.0f} % | {mean:,.0f} B |")
    print()
    print(f"| 1,000 over 10 s, {pending:,} pending | p50 | p99 | max | misses | duplicates |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, lat, m, dd in (
        ("taskorch, one worker", lateness, misses, dups),
        ("in-memory floor", floor_lat, floor_misses, floor_dups),
    ):
        print(
            f"| {name} | {pct(lat, 50):.2f} ms | {pct(lat, 99):.2f} ms | {max(lat):.2f} ms "
            f"| {m} | {dd} |"
        )


if __name__ == "__main__":
    main()
