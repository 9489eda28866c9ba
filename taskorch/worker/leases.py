"""Leases: the sums that bound redelivery, and the thread that keeps a worker's claims alive.

A worker holds each claimed job under a lease (a score in ``LEASES_KEY``: when the claim lapses
unless renewed). :class:`LeaseTimes` derives every interval from ``TASKORCH_LEASE_S``;
:class:`LeaseKeeper` renews from a thread of its own, so that a worker whose event loop runs
behind is not taken for dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from taskorch import constants as c
from taskorch.store import REDIS_DOWN, Claimed, Redis, Store

log = structlog.get_logger("taskorch.worker")


@dataclass(frozen=True, slots=True)
class LeaseTimes:
    """The sums behind "a dead worker's task goes out again within ``lease_s``".

    A worker that dies right after renewing leaves claims that lapse ``expiry_s`` later; a reaper
    sees them at most ``reap_s`` after that and enqueues them due now, announced at once, so the
    retry starts within ``expiry_s + reap_s`` plus a claim and a start, which ``slack_s`` covers.
    """

    lease_s: float

    @property
    def reap_s(self) -> float:
        return min(c.REAP_INTERVAL_S, self.lease_s / 10)

    @property
    def slack_s(self) -> float:
        return min(c.LEASE_SLACK_S, self.lease_s / 10)

    @property
    def expiry_s(self) -> float:
        """How long a claim outlives its last renewal (or its due time)."""
        return self.lease_s - self.reap_s - self.slack_s

    @property
    def expiry_ms(self) -> int:
        return int(self.expiry_s * 1000)

    @property
    def renew_s(self) -> float:
        """Renewal round: four chances to renew before a claim lapses."""
        return self.expiry_s / 4

    @property
    def gap_s(self) -> float:
        """No reap for this long means an outage: shorter than any outage that lapses a claim
        (``expiry_s - renew_s``), longer than a reaper's round on a busy loop."""
        return self.expiry_s / 2

    @property
    def grace_s(self) -> float:
        """After an outage, reapers wait this long: two renewal rounds for live workers."""
        return self.expiry_s / 2

    @property
    def socket_timeout_s(self) -> float:
        # Not below 2 s: a busy worker reads a large reply late, and a CLAIM whose reply is
        # given up leaves its jobs waiting for a reaper.
        return min(c.REDIS_SOCKET_TIMEOUT_S, max(2.0, self.lease_s / 4))


async def renew_once(
    store: Store, *, worker: str, held: list[Claimed] | None, times: LeaseTimes
) -> float:
    """Push every held claim's lease forward and beat the heart; returns when to renew next."""
    if held is None:
        return 0.05
    try:
        await store.renew([(cl.job, cl.due_ms) for cl in held], expiry_ms=times.expiry_ms)
        await store.heartbeat(worker)
    except REDIS_DOWN as exc:
        # Try again soon: after an outage, reapers wait only a little for live workers.
        log.warning("worker.redis_unavailable", error=str(exc), during="renew")
        return min(times.renew_s, 0.2)
    return times.renew_s


class LeaseKeeper:
    """Renews a worker's leases from a thread with its own event loop and Redis client.

    A worker firing thousands of calls at once can run seconds behind on its own loop (more on a
    crowded machine); its leases must not lapse for that, or a reaper would take calls still in
    hand for lost and make them again. A loop that stops turning for ``LOOP_STALL_S`` is another
    matter: the keeper stops renewing, and the leases lapse as if the worker had died.

    Args:
        worker: the worker's id (its heartbeat).
        times: the lease's intervals.
        held: returns the claims to renew (called from the keeper's thread).
        make_redis: makes the keeper's own Redis client (clients are bound to one loop).
    """

    def __init__(
        self,
        *,
        worker: str,
        times: LeaseTimes,
        held: Callable[[], list[Claimed] | None],
        make_redis: Callable[[], Redis],
    ) -> None:
        self.worker = worker
        self.times = times
        self.held = held
        self.make_redis = make_redis
        self.tick = time.monotonic()  # the worker's loop sets this while it turns
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._woken = asyncio.Event()  # set (from the worker's thread) to stop at once
        self._thread = threading.Thread(target=self._run, name="taskorch-leases", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # its loop has closed already
                self._loop.call_soon_threadsafe(self._woken.set)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        redis = self.make_redis()
        store = Store(redis)
        stalled = False
        try:
            while not self._stop.is_set():
                wait = self.times.renew_s
                if time.monotonic() - self.tick < c.LOOP_STALL_S:
                    stalled = False
                    wait = await renew_once(
                        store, worker=self.worker, held=self.held(), times=self.times
                    )
                elif not stalled:
                    stalled = True
                    log.error("worker.loop_stalled", worker=self.worker, leases="lapsing")
                # Asleep between rounds (no wake-ups to contend for the GIL with the worker's
                # timers), until the next round or stop().
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._woken.wait(), wait)
        finally:
            await redis.aclose()
