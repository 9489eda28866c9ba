"""Prometheus text for ``GET /metrics``, read from the counters every worker keeps in Redis.

Workers count in Redis (in the same script that records an attempt), so the figures cover the
whole fleet however many API and worker processes there are. ``prometheus_client`` renders them,
so names, units (seconds) and histograms (``_bucket``, ``_sum``, ``_count``) follow Prometheus's
conventions. Nothing here names or counts by owner: the page may be scraped by anyone who can
reach it (``TASKORCH_METRICS_TOKEN`` closes it), and owners are the users' business.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from taskorch import constants as c
from taskorch import partitions
from taskorch.store import now_ms

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _Snapshot:
    """One read of Redis, offered to prometheus_client as a collector."""

    def __init__(
        self, stats: dict[str, float], counters: dict[str, float], gauges: list[int]
    ) -> None:
        self.stats, self.counters, self.gauges = stats, counters, gauges

    def collect(self) -> Iterator[Metric]:
        for kind in ("tasks", "orchestrations"):
            fam = GaugeMetricFamily(
                f"taskorch_{kind}", f"{kind.capitalize()} by status.", labels=["status"]
            )
            for field, value in sorted(self.stats.items()):
                k, _, status = field.partition(":")
                if k == kind:
                    fam.add_metric([status], int(value))
            yield fam
        attempts = CounterMetricFamily(
            "taskorch_attempts", "Attempts finished, by outcome.", labels=["outcome"]
        )
        for field, value in sorted(self.counters.items()):
            if field.startswith("attempts_total:"):
                attempts.add_metric([field.split(":", 1)[1]], int(value))
        yield attempts
        yield self._lateness()
        queued, leased, workers = self.gauges
        yield GaugeMetricFamily(
            "taskorch_queue_jobs", "Jobs waiting in the deferred queue.", value=queued
        )
        yield GaugeMetricFamily(
            "taskorch_leased_jobs",
            "Jobs claimed by workers (waiting on a timer or in flight).",
            value=leased,
        )
        yield GaugeMetricFamily(
            "taskorch_workers", "Workers that sent a heartbeat in the last minute.", value=workers
        )

    def _lateness(self) -> Metric:
        from taskorch.worker import LATENESS_BUCKETS_MS

        buckets: list[tuple[str, float]] = []
        total = 0
        for b in [*(str(ms) for ms in LATENESS_BUCKETS_MS), "+Inf"]:
            total += int(self.counters.get(f"lateness_le:{b}", 0))
            buckets.append((b if b == "+Inf" else str(int(b) / 1000), total))
        return HistogramMetricFamily(
            "taskorch_lateness_seconds",
            "How late attempts started after their due time.",
            buckets=buckets,
            sum_value=float(self.counters.get("lateness_sum_ms", 0)) / 1000,
        )


async def render(redis: Any) -> bytes:
    """The page: every partition's counters summed (a non-transactional pipeline, which a
    cluster client splits by node)."""
    layout = await partitions.load(redis)
    async with redis.pipeline(transaction=False) as pipe:
        for pre in layout.prefixes:
            pipe.hgetall(pre + c.STATS)
            pipe.hgetall(pre + c.METRICS)
            pipe.zcard(pre + c.QUEUE)
            pipe.zcard(pre + c.LEASES)
        pipe.zcount(c.WORKERS_KEY, now_ms() - 60_000, "+inf")
        rows = await pipe.execute()
    stats: dict[str, float] = {}
    counters: dict[str, float] = {}
    queued = leased = 0
    for i in range(layout.n):
        s, m, q, held = rows[4 * i : 4 * i + 4]
        for k, v in s.items():
            stats[k] = stats.get(k, 0) + int(v)
        for k, v in m.items():
            counters[k] = counters.get(k, 0) + float(v)
        queued += q
        leased += held
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(stats, counters, [queued, leased, rows[-1]]))
    return generate_latest(registry)
