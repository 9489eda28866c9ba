"""Redis ``kill -9`` again and again while clients create ~200 tasks a second through
``taskorch serve``: with ``appendfsync always`` no acknowledged create is ever lost, and a
client that retries with its Idempotency-Key never makes a second task."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass, field

import aiohttp
import pytest
from faultkit import (
    FULL,
    FaultRedis,
    Procs,
    Recorder,
    count,
    report,
    task_statuses,
    token,
    wait_until,
)

RATE = 200  # new creates per second
MAX_PENDING = 100  # creates under way at once (each retrying until acknowledged), at most
UP_S = 1.5  # Redis runs this long between kills
DOWN_S = 0.3  # and stays dead this long before it is restarted on the same files
LEASE_S = 3.0


@dataclass
class Create:
    """One logical create: its tries until the API acknowledged it (201, or 200 for a repeat)."""

    seq: int
    answers: list[str] = field(default_factory=list)  # "201", "503", "timeout", ...
    task_id: str | None = None
    latencies_503: list[float] = field(default_factory=list)

    @property
    def stored_despite_503(self) -> bool:
        """A retry found the task already stored: an earlier try had answered 503."""
        return bool(self.answers) and self.answers[-1] == "200" and "503" in self.answers

    @property
    def stored_without_answer(self) -> bool:
        return (
            bool(self.answers)
            and self.answers[-1] == "200"
            and "503" not in self.answers
            and any(a not in ("200", "201") for a in self.answers)
        )


# A process crash (kill -9) leaves what Redis already handed to the kernel, and Redis writes its
# append-only buffer before it sends the replies of each event-loop round: so even with
# everysec or no, a kill -9 of the process alone should lose no acknowledged write (everysec
# may postpone that write by up to 2 s while a slow background fsync runs). An OS crash or power
# cut is what tells the settings apart (always: nothing; everysec: ~1 s; no: up to the kernel's
# flush, ~30 s on Linux); no test here can make one. The default run checks the recommended
# setting, the full run all three.
@pytest.mark.parametrize("fsync", ["always", *(["everysec", "no"] if FULL else [])])
async def test_redis_kill9_rounds_lose_no_acknowledged_create(
    fsync: str, fault_redis: FaultRedis, recorder: Recorder, procs: Procs
) -> None:
    rounds = count(4, 20)
    if fault_redis.fsync != fsync:
        fault_redis.stop()
        fault_redis.fsync = fsync
        fault_redis.start()
    procs.lease_s = LEASE_S
    base = procs.start_api()
    r = fault_redis.client()
    for p in (procs.start_worker(), procs.start_worker()):
        procs.ready(p, r)
    creates: list[Create] = []
    stop = asyncio.Event()
    give_up_at = [float("inf")]
    peak = [0]  # most creates under way at once

    async def create(http: aiohttp.ClientSession, c: Create) -> None:
        """Create one task, retrying with the same Idempotency-Key until it is acknowledged."""
        body = {
            "url": recorder.url(f"/b?seq={c.seq}"),
            "delay": 0.5,
            "retries": 5,
            "retry_delay": 0.2,
            "payload": {"seq": c.seq},
        }
        headers = {"Idempotency-Key": f"create-{c.seq}"}
        while time.monotonic() < give_up_at[0]:
            t0 = time.monotonic()
            try:
                async with http.post("/v1/tasks", json=body, headers=headers) as resp:
                    status = resp.status
                    answer = await resp.json() if status in (200, 201) else None
            except TimeoutError:
                c.answers.append("timeout")
                continue
            except aiohttp.ClientError as exc:
                c.answers.append(type(exc).__name__)
                await asyncio.sleep(0.05)
                continue
            c.answers.append(str(status))
            if answer is not None:
                c.task_id = answer["id"]
                return
            if status == 503:
                c.latencies_503.append(time.monotonic() - t0)
            await asyncio.sleep(0.05)

    async def load() -> None:
        """Open loop: a new create every 1/RATE s whatever the earlier ones are doing (each
        retries on its own), as independent clients would; at most MAX_PENDING at once."""
        async with aiohttp.ClientSession(
            base,
            headers={"Authorization": f"Bearer {token()}"},
            timeout=aiohttp.ClientTimeout(total=10),
            connector=aiohttp.TCPConnector(limit=MAX_PENDING),
        ) as http:
            pending: set[asyncio.Task[None]] = set()
            t0 = time.monotonic()
            while not stop.is_set():
                if len(pending) < MAX_PENDING:
                    c = Create(seq=len(creates))
                    creates.append(c)
                    task = asyncio.create_task(create(http, c))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                    peak[0] = max(peak[0], len(pending))
                await asyncio.sleep(max(0.0, t0 + len(creates) / RATE - time.monotonic()))
            give_up_at[0] = time.monotonic() + 30
            await asyncio.gather(*pending)

    loading = asyncio.create_task(load())
    started = time.monotonic()
    kills = 0
    restarts: list[float] = []  # seconds from restart to the first PONG (append-only file read)
    for _ in range(rounds):
        await asyncio.sleep(UP_S)
        await asyncio.to_thread(fault_redis.kill)
        kills += 1
        await asyncio.sleep(DOWN_S)
        t0 = time.monotonic()
        await asyncio.to_thread(fault_redis.start)
        restarts.append(time.monotonic() - t0)
    await asyncio.sleep(UP_S)
    stop.set()
    load_s = time.monotonic() - started
    await loading

    acked = {c.seq: c.task_id for c in creates if c.task_id}
    ids = list(acked.values())

    def all_done() -> bool:
        return all(s == "succeeded" for s in task_statuses(r, ids).values())

    try:
        await wait_until(all_done, timeout_s=3 * LEASE_S + 30, what="every acknowledged task ran")
    except AssertionError:
        pass  # counted below, with the figures
    statuses = task_statuses(r, ids)
    called = recorder.by_task("/b")
    lost = [t for t in ids if not called.get(t) or statuses[t] != "succeeded"]
    tasks_per_seq: dict[int, set[str]] = defaultdict(set)
    for task_id, hits in called.items():
        for h in hits:
            tasks_per_seq[h.body["seq"]].add(task_id)
    second_tasks = {s: t for s, t in tasks_per_seq.items() if len(t) > 1}
    unacked = [c for c in creates if not c.task_id]
    n503 = sum(c.answers.count("503") for c in creates)
    slow_503 = [x for c in creates for x in c.latencies_503 if x > 2.0]
    figures = {
        "redis_kills": kills,
        "appendfsync": fault_redis.fsync,
        "creates": len(creates),
        "creates_per_s": round(len(creates) / load_s, 1),
        "creates_under_way_peak": peak[0],
        "redis_restart_max_s": round(max(restarts), 3),
        "acknowledged": len(acked),
        "acknowledged_lost": len(lost),
        "answers_503": n503,
        "answers_503_max_s": round(
            max((x for c in creates for x in c.latencies_503), default=0), 3
        ),
        "answers_503_over_2s": len(slow_503),
        "no_answer": sum(
            1 for c in creates for a in c.answers if a not in ("200", "201", "503") and a
        ),
        "stored_despite_503": sum(c.stored_despite_503 for c in creates),
        "stored_without_answer": sum(c.stored_without_answer for c in creates),
        "second_task_for_one_key": len(second_tasks),
        "never_acknowledged": len(unacked),
    }
    report(f"redis_kill9_rounds_{fsync}", **figures)
    assert not lost, f"acknowledged but never run: {lost[:10]} ({figures})"
    assert not second_tasks, f"one Idempotency-Key, several tasks: {list(second_tasks.items())[:5]}"
    assert not unacked, f"{len(unacked)} creates never acknowledged, e.g. {unacked[0].answers}"
    assert n503 > 0, "no create met a dead Redis: the test proved nothing"
