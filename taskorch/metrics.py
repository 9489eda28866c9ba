"""Prometheus text for ``GET /metrics``, read from the counters every worker keeps in Redis.

Workers count in Redis (in the same script that records an attempt), so the figures cover the
whole fleet however many API and worker processes there are.
"""

from __future__ import annotations

from typing import Any

from taskorch import constants as c
from taskorch.store import now_ms


async def render(redis: Any) -> str:
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(c.KEY_PREFIX + "stats")
        pipe.hgetall(c.METRICS_KEY)
        pipe.zcard(c.QUEUE_KEY)
        pipe.zcard(c.LEASES_KEY)
        pipe.zcount(c.WORKERS_KEY, now_ms() - 60_000, "+inf")
        stats, counters, queued, leased, workers = await pipe.execute()
    lines = [
        "# HELP taskorch_tasks Tasks by status (all owners).",
        "# TYPE taskorch_tasks gauge",
    ]
    for field, value in sorted(stats.items()):
        kind, _, status = field.partition(":")
        if kind == "tasks":
            lines.append(f'taskorch_tasks{{status="{status}"}} {int(value)}')
    lines += [
        "# HELP taskorch_orchestrations Orchestrations by status (all owners).",
        "# TYPE taskorch_orchestrations gauge",
    ]
    for field, value in sorted(stats.items()):
        kind, _, status = field.partition(":")
        if kind == "orchestrations":
            lines.append(f'taskorch_orchestrations{{status="{status}"}} {int(value)}')
    lines += [
        "# HELP taskorch_attempts_total Attempts finished, by outcome.",
        "# TYPE taskorch_attempts_total counter",
    ]
    for field, value in sorted(counters.items()):
        if field.startswith("attempts_total:"):
            outcome = field.split(":", 1)[1]
            lines.append(f'taskorch_attempts_total{{outcome="{outcome}"}} {int(value)}')
    lines += [
        "# HELP taskorch_lateness_ms How late attempts started after their due time.",
        "# TYPE taskorch_lateness_ms histogram",
    ]
    from taskorch.worker import LATENESS_BUCKETS_MS

    total = 0
    for b in [*LATENESS_BUCKETS_MS, "+Inf"]:
        total += int(counters.get(f"lateness_le:{b}", 0))
        lines.append(f'taskorch_lateness_ms_bucket{{le="{b}"}} {total}')
    lines.append(f"taskorch_lateness_ms_count {total}")
    lines += [
        "# HELP taskorch_queue_jobs Jobs waiting in the deferred queue.",
        "# TYPE taskorch_queue_jobs gauge",
        f"taskorch_queue_jobs {queued}",
        "# HELP taskorch_leased_jobs Jobs claimed by workers (waiting on a timer or in flight).",
        "# TYPE taskorch_leased_jobs gauge",
        f"taskorch_leased_jobs {leased}",
        "# HELP taskorch_workers Workers that sent a heartbeat in the last minute.",
        "# TYPE taskorch_workers gauge",
        f"taskorch_workers {workers}",
    ]
    return "\n".join(lines) + "\n"
