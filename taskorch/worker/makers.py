"""The schedule makers' loop: every worker turns due recurring schedules into tasks
(:mod:`taskorch.schedules`).
"""

from __future__ import annotations

import asyncio

import structlog

from taskorch import constants as c
from taskorch.store import REDIS_DOWN
from taskorch.worker.state import WorkerState

log = structlog.get_logger("taskorch.worker")


class Making(WorkerState):
    """Makes recurring schedules' next occurrences."""

    async def _make_schedules(self) -> None:
        """Make recurring schedules' next occurrences (see taskorch/schedules.py), every
        SCHEDULE_MAKE_EVERY_S, as every worker does: any one of them is enough."""
        while True:
            await asyncio.sleep(c.SCHEDULE_MAKE_EVERY_S)
            await self._make_round()

    async def _make_round(self) -> None:
        try:
            await self.schedules.make_due()
        except REDIS_DOWN as exc:
            log.warning("worker.redis_unavailable", error=str(exc), during="make_schedules")
        except Exception:  # one bad record must not stop every schedule's making
            log.exception("worker.make_schedules_failed")
