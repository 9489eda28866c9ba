"""In-place upgrade from the single-node layout (before issue #10) to the partitioned one.

The old layout kept every task in a hash ``taskorch:task:<id>``, one global queue, leases, stats,
finished index and per-owner indexes. ``taskorch migrate`` rewrites it into partitions where it
stands: records keep their ids (an id names its partition: see :mod:`taskorch.partitions`), each
task and orchestration moves in one script (so a crash mid-way leaves every record either old or
new, and running the command again finishes the job), jobs keep their due times and leases.

Two things cannot keep their place:

* An unfinished orchestration's live step (or fallback) task must live in the orchestration's
  partition, which its old random id does not name: it is moved there under a new id minted at
  the same millisecond (its ``task_id`` in the orchestration changes; finished steps keep theirs).
* An Idempotency-Key lives in the partition its (owner, key) names, its record where its id says:
  a repeat of a migrated key reads the record where it is (see ``Store.create_tasks``).

Workers and API processes refuse to start while the old layout is present
(:func:`refuse_old_layout`): stop the old processes, run ``taskorch migrate``, start the new ones.
The migration holds a lock so two of them never run at once.
"""

from __future__ import annotations

import json
import re
from typing import Any

import structlog

from taskorch import constants as c
from taskorch import lua, partitions
from taskorch.errors import ConfigError
from taskorch.oldlayout import (
    OLD_IDEM,
    OLD_JOB,
    OLD_LEASE_OWNER,
    OLD_LEASES,
    OLD_MARKERS,
    OLD_METRICS,
    OLD_ORCH,
    OLD_QUEUE,
    OLD_REAPER,
    OLD_TASK,
    old_layout_present,
)
from taskorch.store import connect

log = structlog.get_logger("taskorch.migrate")

LOCK_TTL_MS = 10 * 60 * 1000
_LIVE = ("scheduled", "retrying", "running")


_IDEM = re.compile(r"^(.*?):(tsk|orc):(.*)$", re.S)


async def migrate(redis: Any) -> dict[str, int]:
    """Rewrite the old layout into partitions, under a lock. Returns what was moved."""
    import secrets

    token = secrets.token_hex(8)
    if not await redis.set(c.MIGRATE_LOCK_KEY, token, nx=True, px=LOCK_TTL_MS):
        raise ConfigError("another `taskorch migrate` is running (its lock is held)")
    try:
        return await _migrate(redis)
    finally:
        if await redis.get(c.MIGRATE_LOCK_KEY) == token:
            await redis.delete(c.MIGRATE_LOCK_KEY)


async def _migrate(redis: Any) -> dict[str, int]:
    layout = await partitions.load(redis)
    n = layout.n
    move_task = lua.register(redis, "migrate_task")
    move_orc = lua.register(redis, "migrate_orc")
    counts = {"tasks": 0, "orchestrations": 0, "idempotency_keys": 0, "renamed_steps": 0}
    old_jobs = set(await redis.zrange(OLD_QUEUE, 0, -1)) | set(
        await redis.zrange(OLD_LEASES, 0, -1)
    )

    # Orchestrations first, each with its live step tasks (which must join its partition).
    orcs = [k[len(OLD_ORCH) :] async for k in redis.scan_iter(match=OLD_ORCH + "*", count=1000)]
    for oid in sorted(o for o in orcs if ":" not in o):
        h = await redis.hgetall(OLD_ORCH + oid)
        state = await redis.hgetall(OLD_ORCH + oid + ":state")
        p = layout.partition_of(oid)
        candidates = [v for k, v in state.items() if k.startswith("t")]
        if h.get("fallback_task"):
            candidates.append(h["fallback_task"])
        mapping: dict[str, str] = {}
        for tid in candidates:
            status = await redis.hget(OLD_TASK + tid, "status")
            if status in _LIVE and layout.partition_of(tid) != p:
                mapping[tid] = partitions.id_at("tsk", p, n, int(tid[4:16], 16))
        jobs: list[str] = []
        for job in sorted(j for j in old_jobs if j.startswith(oid + ".")):
            data = await redis.get(OLD_JOB + job)
            if data is None:
                continue
            d = json.loads(data)
            arg = "|".join(mapping.get(part, part) for part in d["a"][0].split("|"))
            newjob = ".".join(mapping.get(part, part) for part in job.split("."))
            jobs += [job, newjob, json.dumps({"f": d["f"], "a": [arg]})]
        pairs = [x for kv in mapping.items() for x in kv]
        done = await move_orc(keys=[layout.queue(p)], args=[oid, len(mapping), *pairs, *jobs])
        counts["orchestrations"] += int(done)
        counts["renamed_steps"] += len(mapping)
        counts["tasks"] += len(mapping)

    tasks = [k[len(OLD_TASK) :] async for k in redis.scan_iter(match=OLD_TASK + "*", count=1000)]
    todo = sorted(t for t in tasks if ":" not in t)
    for i, tid in enumerate(todo, 1):
        q = layout.queue(layout.partition_of(tid))
        counts["tasks"] += int(await move_task(keys=[q], args=[tid, tid]))
        if i % c.MIGRATE_PROGRESS_EVERY == 0 or i == len(todo):
            log.info("migrate.progress", tasks_done=i, tasks_total=len(todo))

    async for key in redis.scan_iter(match=OLD_IDEM + "*", count=1000):
        m = _IDEM.match(key[len(OLD_IDEM) :])
        value, ttl = await redis.get(key), await redis.pttl(key)
        if m and value is not None and ttl != -2:
            owner, kind, ikey = m.groups()
            pre = layout.prefixes[partitions.partition_for_key(owner, ikey, n)]
            new = f"{pre}{c.IDEMPOTENCY}{owner}:{kind}:{ikey}"
            await redis.set(new, value, px=ttl if ttl > 0 else None)
            counts["idempotency_keys"] += 1
        await redis.delete(key)

    # What is left is index and bookkeeping: counters carry over, the rest was rebuilt per record.
    metrics = await redis.hgetall(OLD_METRICS)
    for field, value in metrics.items():
        await redis.hincrbyfloat(layout.prefixes[0] + c.METRICS, field, float(value))
    leftovers = [k async for k in redis.scan_iter(match=OLD_JOB + "*", count=1000)]
    async for k in redis.scan_iter(match=c.OWNER_KEY_PREFIX + "*", count=1000):
        if not k.endswith(":functions"):
            leftovers.append(k)
    for key in [*leftovers, OLD_LEASE_OWNER, OLD_REAPER, OLD_METRICS, *OLD_MARKERS]:
        await redis.delete(key)
    log.info("migrate.done", partitions=n, **counts)
    return counts


def run_migrate(settings: Any) -> None:
    """Entry point of ``taskorch migrate``."""
    import asyncio

    from taskorch.logs import configure

    configure(fmt=settings.log_format, level=settings.log_level)

    async def main() -> None:
        redis = connect(settings.redis_url, socket_timeout=30, socket_connect_timeout=10)
        try:
            if not await old_layout_present(redis):
                layout = await partitions.load(redis)
                print(f"taskorch: nothing to migrate ({layout.n} partitions)")
                return
            counts = await migrate(redis)
            moved = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items())
            print(f"taskorch: migrated to the partitioned layout: {moved}")
        finally:
            await redis.aclose()

    asyncio.run(main())
