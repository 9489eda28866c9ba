"""Writes tests/data/old_layout.json: a Redis holding the single-node layout of taskorch before
issue #10 (commit dbce519), made by that code, for tests/test_migrate.py.

Run with the old code first on the path and a scratch redis-server on ``PORT``:

    git worktree add --detach /tmp/layout-old dbce519
    redis-server --port 6390 --save '' --appendonly no &
    PYTHONPATH=/tmp/layout-old python tests/data/make_old_layout.py 6390 tests/data/old_layout.json

Times in it are around ``t0`` (recorded in the file); URLs point at TARGET. The test shifts both.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import aiohttp

from taskorch.models import OrchestrationCreate, StepSpec, TaskCreate
from taskorch.orchestrations import Orchestrations
from taskorch.store import Store, connect, encode_attempt, now_ms
from taskorch.worker.steps import StepMachine

TARGET = "http://127.0.0.1:1"


async def main(port: int, out: str) -> None:
    redis = connect(f"redis://127.0.0.1:{port}/0")
    await redis.flushall()
    store, orcs = Store(redis), Orchestrations(redis)
    t0 = now_ms()
    # Two tasks due now, taken through a worker's scripts: one succeeds, one fails.
    done, _ = await store.create_task("alice", TaskCreate(url=f"{TARGET}/done", retries=0))
    bad, _ = await store.create_task("alice", TaskCreate(url=f"{TARGET}/bad", retries=0))
    claimed = await store.claim(worker="old", horizon_ms=now_ms() + 50, lease_ms=60_000, limit=10)
    assert {c.arg for c in claimed} == {done.id, bad.id}, claimed
    jobs = {c.arg: c.job for c in claimed}
    assert await store.start(
        [(done.id, jobs[done.id]), (bad.id, jobs[bad.id])], worker="old", lease_ms=60_000
    ) == [1, 1]
    rows = []
    for task, outcome, code in ((done, "succeeded", 200), (bad, "failed", 500)):
        t = now_ms()
        attempt = encode_attempt(
            number=1,
            scheduled_for_ms=t - 5,
            started_ms=t - 5,
            finished_ms=t,
            status_code=code,
            error=None,
            body="old answer",
        )
        rows.append(
            [
                task.id,
                jobs[task.id],
                outcome,
                attempt,
                0,
                t,
                1000,
                f"attempts_total:{outcome}",
                "lateness_le:5",
                "lateness_sum_ms=5",
            ]
        )
    assert await store.finish(rows) == [1, 1]
    # An orchestration of two steps, started by the old step machine: step 0 is due now.
    orc, _ = await orcs.create(
        "alice",
        OrchestrationCreate(steps=[StepSpec(url=f"{TARGET}/s0"), StepSpec(url=f"{TARGET}/s1")]),
    )
    [start] = await store.claim(worker="old", horizon_ms=now_ms() + 50, lease_ms=60_000, limit=10)
    async with aiohttp.ClientSession() as session:
        await StepMachine(redis, session).handle(start.arg)
    await store.done(start.job, "old")
    # Scheduled work: one due 4 s after t0, others far off under Idempotency-Keys, one cancelled.
    soon, _ = await store.create_task(
        "alice", TaskCreate(url=f"{TARGET}/soon", payload={"n": 1.0000000000000002}, delay=4)
    )
    keyed, _ = await store.create_task(
        "alice", TaskCreate(url=f"{TARGET}/keyed", delay=3600), idempotency_key="idem-task"
    )
    keyed_orc, _ = await orcs.create(
        "alice",
        OrchestrationCreate(steps=[StepSpec(url=f"{TARGET}/o")], delay=3600),
        idempotency_key="idem-orc",
    )
    gone, _ = await store.create_task("alice", TaskCreate(url=f"{TARGET}/gone", delay=3600))
    await store.cancel_task("alice", gone.id)
    other, _ = await store.create_task("bob", TaskCreate(url=f"{TARGET}/bob", delay=3600))
    await redis.zadd("taskorch:owner:alice:functions", {"fn_000000000000000000000000": 0})

    dump: dict[str, Any] = {}
    async for key in redis.scan_iter("*"):
        kind = await redis.type(key)
        ttl = await redis.pttl(key)
        if kind == "string":
            value: Any = await redis.get(key)
        elif kind == "hash":
            value = await redis.hgetall(key)
        elif kind == "list":
            value = await redis.lrange(key, 0, -1)
        elif kind == "zset":
            value = await redis.zrange(key, 0, -1, withscores=True)
        else:
            raise AssertionError((key, kind))
        dump[key] = {"type": kind, "value": value, "pttl": ttl}
    ids = {
        "done": done.id,
        "bad": bad.id,
        "orc": orc.id,
        "soon": soon.id,
        "keyed": keyed.id,
        "keyed_orc": keyed_orc.id,
        "gone": gone.id,
        "bob": other.id,
    }
    with open(out, "w") as f:
        json.dump(
            {"t0": t0, "target": TARGET, "ids": ids, "keys": dump}, f, indent=1, sort_keys=True
        )
    await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
