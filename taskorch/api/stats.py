"""An owner's figures for dashboards: counts by status, and lateness by minute (issue #13)."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response

from taskorch import constants as c
from taskorch import lateness, partitions
from taskorch.api import spec
from taskorch.api.common import JSON, invalid_param, principal
from taskorch.models import OrchestrationStatus, TaskStatus


async def lateness_stats(request: Request) -> Response:
    """The caller's attempts by minute over the last hour: counts and p50/p99/max lateness."""
    p = await principal(request, "read")
    raw = request.query_params.get("minutes", str(c.LATENESS_WINDOW_MIN))
    top = c.LATENESS_WINDOW_MIN
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 3 and 1 <= int(raw) <= top):
        raise invalid_param("minutes", f"must be a whole number from 1 to {top}")
    answer = await lateness.by_minute(
        request.state.redis, p.sub, minutes=int(raw), now_ms=int(time.time() * 1000)
    )
    return JSON(answer)


async def stats(request: Request) -> Response:
    """Counts by status of the caller's tasks and orchestrations, for dashboards."""
    p = await principal(request, "read")
    redis = request.state.redis
    task_statuses = [s.value for s in TaskStatus]
    orc_statuses = [s.value for s in OrchestrationStatus]
    layout = await partitions.load(redis)
    # Summed over every partition's per-owner status indexes (one pipeline, split by node on a
    # cluster); functions are not partitioned.
    async with redis.pipeline(transaction=False) as pipe:
        for pre in layout.prefixes:
            for status in task_statuses:
                pipe.zcard(f"{pre}{c.TASK_INDEX}{p.sub}:{status}")
            for status in orc_statuses:
                pipe.zcard(f"{pre}{c.ORCH_INDEX}{p.sub}:{status}")
        pipe.zcard(f"{c.OWNER_KEY_PREFIX}{p.sub}:functions")
        rows = await pipe.execute()
    width = len(task_statuses) + len(orc_statuses)
    counts = [sum(rows[i:-1:width]) for i in range(width)] + [rows[-1]]
    n = len(task_statuses)
    return JSON(
        {
            "tasks": dict(zip(task_statuses, counts[:n], strict=True)),
            "orchestrations": dict(zip(orc_statuses, counts[n:-1], strict=True)),
            "functions": counts[-1],
        }
    )


_COUNTS = {
    "description": "{tasks: {status: n}, orchestrations: {status: n}, functions: n}",
    "content": {"application/json": {"schema": {"type": "object"}}},
}
_LATENESS = {
    "description": "{minutes, items: [{start, count, p50_ms, p99_ms, max_ms}], total: {count, "
    "p50_ms, p99_ms, max_ms}}",
    "content": {"application/json": {"schema": spec.ref("LatenessStats")}},
}
_MINUTES = {
    "name": "minutes",
    "in": "query",
    "description": "how many minutes back, the current one included",
    "schema": {"type": "integer", "minimum": 1, "maximum": 60},
}

_STATS = spec.op(
    "Counts by status of the caller's tasks and orchestrations", {"200": _COUNTS}, op_id="stats"
)
_BY_MINUTE = (
    "The caller's attempts by minute over the last hour: count and p50/p99/max lateness (ms, to "
    "2 significant digits), oldest minute first"
)
_LATENESS_OP = spec.op(
    _BY_MINUTE, {"200": _LATENESS}, op_id="latenessStats", codes=("422",), params=[_MINUTES]
)

ROUTES = [
    spec.Endpoint("/v1/stats", stats, "GET", _STATS),
    spec.Endpoint("/v1/stats/lateness", lateness_stats, "GET", _LATENESS_OP),
]
