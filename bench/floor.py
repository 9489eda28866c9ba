"""The in-memory floor: the best a scheduler can do on this machine, to print beside taskorch.

A process that holds every call in memory (no Redis, no claims, no records) and fires each with
an event-loop timer through one aiohttp session of 100 keep-alive connections, never before its
due time. It calls the same kind of target the benchmarks give the worker (bench/target.py), with
the same headers, so both are measured the same way: arrival at the target minus the due time.

Run: ``python bench/floor.py URL SCHEDULE`` where SCHEDULE has ``task_id due_epoch_s`` lines.
It prints ``ready`` once every timer is set and exits when the last call has been answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp

BENCH = Path(__file__).resolve().parent

KEEP_ALIVE_CONNECTIONS = 100
PAYLOAD = b'{"n": 123, "kind": "bench"}'


async def main(url: str, schedule: str) -> None:
    items = [line.split() for line in Path(schedule).read_text().splitlines() if line]
    loop = asyncio.get_running_loop()
    calls: set[asyncio.Task[None]] = set()
    left = len(items)
    finished = asyncio.Event()
    connector = aiohttp.TCPConnector(limit=KEEP_ALIVE_CONNECTIONS)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def call(task_id: str) -> None:
            nonlocal left
            headers = {
                "Content-Type": "application/json",
                "X-Taskorch-Task-Id": task_id,
                "X-Taskorch-Attempt": "1",
            }
            try:
                async with session.post(url, data=PAYLOAD, headers=headers) as resp:
                    await resp.read()
            finally:
                left -= 1
                if left == 0:
                    finished.set()

        def fire(task_id: str, due: float) -> None:
            remaining = due - time.time()
            if remaining > 0:  # timers may fire up to a millisecond early: never call early
                loop.call_at(loop.time() + remaining, fire, task_id, due)
                return
            t = asyncio.ensure_future(call(task_id))
            calls.add(t)
            t.add_done_callback(calls.discard)

        for task_id, due in items:
            d = float(due)
            loop.call_at(loop.time() + (d - time.time()), fire, task_id, d)
        print("ready", flush=True)
        if items:
            await finished.wait()


def measure(offsets_s: Sequence[float], *, lead_s: float = 2.0) -> tuple[list[float], int, int]:
    """Fire one call per offset (seconds from now + ``lead_s``) from the floor at a fresh target.

    Returns what bench_tasks.report_calls returns: lateness in ms, misses, duplicates.
    """
    from bench_tasks import free_port, report_calls, wait_line

    with tempfile.TemporaryDirectory() as d:
        port = free_port()
        out = Path(d) / "calls.txt"
        target = subprocess.Popen(
            [sys.executable, str(BENCH / "target.py"), str(port), str(out)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            wait_line(target, "ready")
            start = time.time() + lead_s
            dues = {f"floor{i}": start + off for i, off in enumerate(offsets_s)}
            schedule = Path(d) / "schedule.txt"
            schedule.write_text("".join(f"{t} {due:.6f}\n" for t, due in dues.items()))
            subprocess.run(
                [
                    sys.executable,
                    str(BENCH / "floor.py"),
                    f"http://127.0.0.1:{port}/hit",
                    str(schedule),
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        finally:
            target.send_signal(signal.SIGTERM)
            target.wait(30)
        calls = []
        for line in out.read_text().splitlines():
            task, attempt, at = line.split()
            calls.append((task, int(attempt), float(at)))
    return report_calls(dues, calls)


if __name__ == "__main__":
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(main(sys.argv[1], sys.argv[2]))
