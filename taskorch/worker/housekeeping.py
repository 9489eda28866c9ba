"""Housekeeping: the reaper, the purger, lease keeping on the event loop (when no keeper thread
does it), and handing claims back on shutdown.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

import redis.exceptions
import structlog

from taskorch import constants as c
from taskorch.store import REDIS_DOWN, Claimed, Store, now_ms
from taskorch.worker.leases import renew_once
from taskorch.worker.state import WorkerState

log = structlog.get_logger("taskorch.worker")


class Housekeeping(WorkerState):
    """The background loops that keep leases, reap and purge, and the way out."""

    async def _shutdown(self) -> None:
        unstarted = [cl for slot in self._slots.values() for cl in slot]
        for _, handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        self._slots.clear()
        if unstarted:
            await self._hand_back(unstarted, reason="shutdown")
        if self._busy():
            # Started calls still go out at their due time; calls in flight may finish.
            log.info("worker.draining", worker=self.id, in_flight=len(self._calls))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.shutdown_grace_s
            while self._busy() and (left := deadline - loop.time()) > 0:
                if self._calls:
                    await asyncio.wait(
                        set(self._calls),
                        timeout=min(left, 0.1),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                else:
                    await asyncio.sleep(min(left, 0.01))
            pending = set(self._calls)
            unsent = len(self._ready) + sum(len(w) for w in self._waiting.values())
            self._ready.clear()
            self._waiting.clear()
            if pending or unsent:
                # Their leases lapse and any other worker retries them within lease_s.
                log.warning(
                    "worker.abandoned_calls", worker=self.id, calls=len(pending), unsent=unsent
                )
                for t in pending:
                    t.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        await cancel_all(self._warm_tasks)
        while self._outcomes or self._flushing:
            if self._flushing:
                await asyncio.sleep(0.05)
            else:
                self._flushing = True
                await self._flush_finish()
        await cancel_all(self._background)
        if self._keeper is not None:
            await asyncio.to_thread(self._keeper.stop)
        log.info("worker.stopped", worker=self.id)

    async def _hand_back(self, claims: list[Claimed], *, reason: str) -> None:
        """Give claims up: stop renewing them and release them to the queue. When Redis cannot
        be reached their leases lapse instead, and a reaper hands them back."""
        for cl in claims:
            self._held.pop(cl.job, None)
        try:
            async with asyncio.timeout(self.times.socket_timeout_s * 2):
                n = await self.store.release(self.id, [(cl.job, cl.due_ms) for cl in claims])
            log.info("worker.released", worker=self.id, jobs=n, reason=reason)
        except (*REDIS_DOWN, redis.exceptions.RedisError) as exc:
            log.warning(
                "worker.release_failed",
                jobs=len(claims),
                reason=reason,
                error=str(exc) or "timeout",
            )

    async def _keep_leases(self) -> None:
        while True:
            wait = await self._renew_once(self.store)
            await asyncio.sleep(wait)

    async def _tick(self) -> None:
        """Tell the lease keeper this loop still turns."""
        assert self._keeper is not None
        while True:
            self._keeper.tick = time.monotonic()
            await asyncio.sleep(0.5)

    async def _renew_once(self, store: Store) -> float:
        return await renew_once(store, worker=self.id, held=self._held_now(), times=self.times)

    def _held_now(self) -> list[Claimed] | None:
        """A copy of the held claims, taken from another thread too (None when it kept
        changing under the copy)."""
        for _ in range(10):
            try:
                return list(self._held.values())
            except RuntimeError:  # changed during the copy
                continue
        return None

    async def _purge(self) -> None:
        """Delete what finished longer than ``retention_s`` ago, so Redis (run with noeviction)
        never fills up with history and starts refusing new work."""
        every_s = min(60.0, max(0.5, self.retention_s / 4))
        while True:
            try:
                cutoff = now_ms() - int(self.retention_s * 1000)
                total = 0
                while (n := await self.store.purge(older_than_ms=cutoff)) > 0:
                    total += n
                if total:
                    log.info("worker.purged", records=total, retention_s=self.retention_s)
            except REDIS_DOWN as exc:
                log.warning("worker.redis_unavailable", error=str(exc), during="purge")
            await asyncio.sleep(every_s)

    async def _reap(self) -> None:
        holding_back = False
        while True:
            await asyncio.sleep(self.times.reap_s)
            try:
                n = await self.store.reap(
                    gap_ms=int(self.times.gap_s * 1000), grace_ms=int(self.times.grace_s * 1000)
                )
            except REDIS_DOWN as exc:
                log.warning("worker.redis_unavailable", error=str(exc), during="reap")
                continue
            if n < 0 and not holding_back:
                log.info("worker.reap_held_back", reason="outage", grace_s=self.times.grace_s)
            elif n > 0:
                log.warning("worker.recovered_jobs", jobs=n)
            holding_back = n < 0


async def cancel_all(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until every one has ended, cancelling again every
    DEADLINE_RECANCEL_S: a cancellation can be swallowed (Python 3.11's ``asyncio.wait_for``
    returns the result of an inner call that completed as it was cancelled, and redis-py
    connects through it), and a background loop that swallowed it goes back to sleep for a
    minute. One cancel and a gather kept a worker stopped by SIGTERM just after it started
    from ever exiting (about 1 start in 15)."""
    tasks = list(tasks)
    pending = set(tasks)
    while pending:
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=c.DEADLINE_RECANCEL_S)
    await asyncio.gather(*tasks, return_exceptions=True)  # all ended: reads their outcomes
