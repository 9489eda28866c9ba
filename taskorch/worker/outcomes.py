"""Outcomes: attempts recorded a batch per round trip (lua/finish.lua), non-task jobs run by their
handlers, and the lateness fields an outcome carries for /metrics.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from taskorch import constants as c
from taskorch.store import REDIS_DOWN, Claimed, until_reachable
from taskorch.worker.state import WorkerState

log = structlog.get_logger("taskorch.worker")


LATENESS_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 500, 1000, 5000)


def lateness_field(lateness_ms: float) -> str:
    """FINISH's "~<ms>" row field: the lateness to 2 significant digits, the field of the owner's
    by-minute hash (constants.LATENESS_BY_MINUTE) that counts it."""
    return f"~{lateness_ms:.2g}"


def lateness_bucket(lateness_ms: float) -> str:
    for b in LATENESS_BUCKETS_MS:
        if lateness_ms <= b:
            return f"lateness_le:{b}"
    return "lateness_le:+Inf"


class Recording(WorkerState):
    """Records outcomes and runs non-task jobs."""

    async def _flush_finish(self) -> None:
        """Record queued outcomes, a batch per round trip. Only one runs at a time (the flag),
        so taking batches off the front of the queue can never skip an outcome."""
        try:
            while self._outcomes:
                batch = self._outcomes[: c.FINISH_BATCH]
                try:
                    results = await self.store.finish(row for _, row in batch)
                except REDIS_DOWN as exc:
                    # Keep the outcomes: we still hold the leases and retry until Redis is back.
                    log.warning(
                        "worker.redis_unavailable", error=str(exc), pending=len(self._outcomes)
                    )
                    await asyncio.sleep(0.5)
                    continue
                del self._outcomes[: len(batch)]
                for (cl, _), ok in zip(batch, results, strict=True):
                    self._held.pop(cl.job, None)
                    if not ok:
                        log.warning("task.outcome_stale", task_id=cl.arg, job=cl.job)
                if self._over_budget and self._claim_room() > 0:
                    self._wake.set()  # room again: claim at once, not at the next poll
        finally:
            self._flushing = False

    async def _run_handler(self, cl: Claimed) -> None:
        handler = self.handlers.get(cl.function)
        if time.time() * 1000 < cl.due_ms:
            await self._gate(cl.due_ms)
        try:
            if handler is None:
                log.error("job.unknown_function", job=cl.job, function=cl.function)
            else:
                await handler(cl.arg)
            await until_reachable(lambda: self.store.done(cl.job, self.id), what="done")
        except Exception:
            # Handed back: no longer held, so no longer renewed; the lease lapses and a reaper
            # hands the job to a worker again (a lapse, not a release: a failing handler should
            # not be retried in a tight loop).
            log.exception("job.failed", job=cl.job, function=cl.function)
        finally:
            self._held.pop(cl.job, None)
