"""The :class:`Worker`: one process's scheduler, made of the concerns in this package."""

from __future__ import annotations

import asyncio

import structlog

from taskorch.worker.calls import Calling
from taskorch.worker.claim import Claiming
from taskorch.worker.housekeeping import Housekeeping
from taskorch.worker.makers import Making
from taskorch.worker.outcomes import Recording
from taskorch.worker.start import Starting

log = structlog.get_logger("taskorch.worker")


class Worker(Claiming, Starting, Calling, Recording, Housekeeping, Making):
    """One worker process's scheduler. Run several (here or on other hosts) to scale out.

    Args:
        store: the Redis store.
        session: the aiohttp session every call goes through.
        lease_s: how long a dead worker's jobs wait before another worker recovers them.
        shutdown_grace_s: on SIGTERM, how long calls in flight may finish before the worker
            exits anyway (their leases then lapse and another worker retries them).
        retention_s: finished tasks and orchestrations are deleted this long after they
            finished (0 keeps them for ever).
        handlers: coroutines for non-task jobs by function name (orchestration events); a
            task's callbacks (``cb``) are handled by the worker itself.
        signer: the owners' signing keys (made from the store's client when not given).
        lease_redis: makes a Redis client of its own for the lease keeper, which then renews
            leases from a thread (see :class:`~taskorch.worker.leases.LeaseKeeper`); without it
            they are renewed on this event loop.
    """

    async def run(self) -> None:
        """Run until :meth:`stop` is called, then hand back what was not started."""
        log.info("worker.started", worker=self.id, lease_s=self.times.lease_s)
        self._background = [
            asyncio.create_task(self._listen(), name="wake-listener"),
            asyncio.create_task(self._reap(), name="reaper"),
        ]
        if self._keeper is None:
            self._background.append(asyncio.create_task(self._keep_leases(), name="leases"))
        else:
            self._keeper.start()
            self._background.append(asyncio.create_task(self._tick(), name="tick"))
        if self.retention_s > 0:
            self._background.append(asyncio.create_task(self._purge(), name="janitor"))
        # One makers' round before the first claim: after every worker was down, the catch-up
        # of each schedule (lua/sched_make.lua) is decided before its overdue occurrences can fire.
        await self._make_round()
        self._background.append(asyncio.create_task(self._make_schedules(), name="maker"))
        try:
            await self._claim_loop()
        finally:
            await self._shutdown()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
