"""An owner's attempt lateness by minute over the last hour, for the status page's chart.

The worker's FINISH script counts each attempt in ``lm:<owner>:<minute>`` of the task's
partition (a hash: lateness in ms to 2 significant digits -> attempts; see
``constants.LATENESS_BY_MINUTE``). Reading merges those hashes over every partition and turns
each minute's histogram into a count and p50/p99/max.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from taskorch import constants as c
from taskorch import partitions

MINUTE_MS = 60_000


def summarize(hist: dict[float, int]) -> dict[str, Any]:
    """``{"count", "p50_ms", "p99_ms", "max_ms"}`` of a histogram (nulls when it is empty)."""
    n = sum(hist.values())
    out: dict[str, Any] = {"count": n, "p50_ms": None, "p99_ms": None, "max_ms": None}
    if not n:
        return out
    ordered = sorted(hist.items())
    for key, q in (("p50_ms", 0.5), ("p99_ms", 0.99)):
        rank = min(n - 1, int(q * n))  # as the page's own percentile: the value at floor(q*n)
        seen = 0
        for value, k in ordered:
            seen += k
            if seen > rank:
                out[key] = value
                break
    out["max_ms"] = ordered[-1][0]
    return out


async def by_minute(redis: Any, owner: str, *, minutes: int, now_ms: int) -> dict[str, Any]:
    """The last ``minutes`` whole and current minutes, oldest first, plus their total."""
    layout = await partitions.load(redis)
    last = now_ms // MINUTE_MS
    wanted = list(range(last - minutes + 1, last + 1))
    async with redis.pipeline(transaction=False) as pipe:
        for pre in layout.prefixes:
            for minute in wanted:
                pipe.hgetall(f"{pre}{c.LATENESS_BY_MINUTE}{owner}:{minute}")
        rows = await pipe.execute()
    hists: list[dict[float, int]] = [{} for _ in wanted]
    total: dict[float, int] = {}
    for i, row in enumerate(rows):
        hist = hists[i % len(wanted)]
        for field, count in row.items():
            value = float(field)
            hist[value] = hist.get(value, 0) + int(count)
            total[value] = total.get(value, 0) + int(count)
    items = [
        {"start": _iso(minute * MINUTE_MS), **summarize(hist)}
        for minute, hist in zip(wanted, hists, strict=True)
    ]
    return {"minutes": minutes, "items": items, "total": summarize(total)}


def _iso(ms: int) -> str:
    """RFC 3339 in UTC with milliseconds, as every time the API answers."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"
