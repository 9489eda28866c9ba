"""The worker: claims due jobs a little early, fires each from a precise timer, records outcomes.

Why not arq's ``Worker``: it polls every 0.5 s (far from millisecond firing), it keeps a crashed
worker's job behind an "in-progress" key for ``job_timeout + 10`` s (15 minutes for a 900 s
target), its abort is a best-effort poll, a finished job's id cannot be enqueued again while its
result is kept, and it stops when Redis restarts. We keep the shape of arq's queue (a sorted set of job
ids scored by due ms, a definition per job; ours are JSON under our prefix, so arq's tools do not
read them) and replace the consumer:

* **Claim ahead.** Every ``poll_s`` (or at once, when a publisher says something is due soon) a
  worker moves the jobs due within ``claim_ahead_ms`` from the queue to a leases set it owns, in
  one script. Each job then waits on an in-process timer, so it fires within a millisecond of its
  due time however the poll is tuned.
* **Compare-and-set before calling.** When timers fire, one script moves every due task to
  ``running`` only if it still has the job id that was claimed. A cancel or modify removes or
  replaces that id, so an old version can never fire; whichever script runs first wins.
* **Leases instead of in-progress keys.** A claim lapses unless the worker renews it. Any
  worker's reaper hands a lapsed job back: unstarted ones to the queue, running ones as a
  "worker lost" attempt and an immediate retry. The sums (:class:`~taskorch.leases.LeaseTimes`) make a dead
  worker's task go out again within ``lease_s``: the claim lapses ``lease_s`` minus one reaper
  round minus some slack after it was last renewed, and reapers look every round. Leases are
  renewed from a thread of their own (:class:`~taskorch.leases.LeaseKeeper`): a worker whose
  event loop runs seconds behind under a burst of calls is busy, not dead, and keeps them. Lease
  times are Redis's clock (``TIME`` in the scripts), so a script that runs late cannot set a
  lease that has already lapsed.
* **Unique job ids.** A job id is ``<task id>.<generation>``; every reschedule takes a new
  generation, so no id is ever reused.

Redis outages (killed, restarting, frozen) are waited out, and work done meanwhile is kept:

* **Nothing is given up while the worker lives.** A start and an outcome are retried until Redis
  answers, however long it is away; the claims stay held (and renewed once Redis is back). Each
  retried step is a script that is safe to repeat: ``START`` answers the same attempt number to
  the same worker for the same job (its first reply may have been lost with the connection:
  the task is then already ``running``, and without that the worker would skip it and a reaper
  would later invent a "worker lost" attempt for a call that was never made), and ``FINISH``
  records an outcome once. The worker that starts a job takes its lease, wherever a reaper put
  it meanwhile, so exactly one worker calls it.
* **An outage is not a death.** While Redis is away nobody can renew, so every lease may have
  lapsed when it is back. Reapers notice that nobody reaped for a while and hold back for a
  grace period in which every live worker renews what it holds (see ``lua.REAP``): a call that
  completed during the outage is then recorded by its worker, not repeated. Should a reaper
  still take a live worker's attempt for lost (a worker stalled past its lease), the worker's
  outcome wins as long as the retry has not started (``lua.FINISH``).
* **Whatever is given up is handed back**: claims not started on shutdown or after a crash of
  ours are released to the queue, or, when Redis cannot be reached, simply no longer renewed, so
  their leases lapse and a reaper hands them back.
* **A frozen Redis is noticed**: every command has a socket timeout
  (:attr:`~taskorch.leases.LeaseTimes.socket_timeout_s`), so a SIGSTOPped Redis reads as an outage, not a hang.

What still repeats (at-least-once): a call whose worker died, or could not reach Redis while
other workers could, for longer than the lease before its outcome was recorded. The repeat is a
new attempt with the same ``Idempotency-Key``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import redis.exceptions
import structlog

from taskorch import constants as c
from taskorch import outbound
from taskorch.leases import LeaseKeeper, LeaseTimes, renew_once
from taskorch.models import fmt_ms, retry_wait_s
from taskorch.settings import Settings
from taskorch.store import (
    REDIS_DOWN,
    Claimed,
    Redis,
    Store,
    encode_attempt,
    now_ms,
    until_reachable,
)

log = structlog.get_logger("taskorch.worker")

LATENESS_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 500, 1000, 5000)

JobHandler = Callable[[str], Awaitable[None]]


def lateness_bucket(lateness_ms: float) -> str:
    for b in LATENESS_BUCKETS_MS:
        if lateness_ms <= b:
            return f"lateness_le:{b}"
    return "lateness_le:+Inf"


class Worker:
    """One worker process's scheduler. Run several (here or on other hosts) to scale out.

    Args:
        store: the Redis store.
        session: the aiohttp session every call goes through.
        lease_s: how long a dead worker's jobs wait before another worker recovers them.
        shutdown_grace_s: on SIGTERM, how long calls in flight may finish before the worker
            exits anyway (their leases then lapse and another worker retries them).
        retention_s: finished tasks and orchestrations are deleted this long after they
            finished (0 keeps them for ever).
        handlers: coroutines for non-task jobs by function name (orchestration events).
        lease_redis: makes a Redis client of its own for the lease keeper, which then renews
            leases from a thread (see :class:`~taskorch.leases.LeaseKeeper`); without it they are renewed on
            this event loop.
    """

    def __init__(
        self,
        store: Store,
        session: aiohttp.ClientSession,
        *,
        lease_s: float = c.DEFAULT_LEASE_S,
        max_in_flight: int = c.DEFAULT_MAX_IN_FLIGHT,
        claim_ahead_ms: int = c.CLAIM_AHEAD_MS,
        poll_s: float = c.POLL_INTERVAL_S,
        handlers: dict[str, JobHandler] | None = None,
        worker_id: str | None = None,
        shutdown_grace_s: float = 30.0,
        retention_s: float = c.DEFAULT_RETENTION_S,
        lease_redis: Callable[[], Redis] | None = None,
    ) -> None:
        self.store = store
        self.session = session
        self.times = LeaseTimes(lease_s)
        self.expiry_ms = int(self.times.expiry_s * 1000)
        self.max_in_flight = max_in_flight
        self.claim_ahead_ms = claim_ahead_ms
        self.poll_s = poll_s
        self.handlers = handlers or {}
        self.shutdown_grace_s = shutdown_grace_s
        self.retention_s = retention_s
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{random.randrange(16**6):06x}"
        self._held: dict[str, Claimed] = {}  # job -> claim, from claim until outcome recorded
        self._slots: dict[int, list[Claimed]] = {}  # due ms -> claims waiting for it
        self._timers: dict[int, asyncio.TimerHandle] = {}  # due ms -> its timer
        self._gates: dict[int, asyncio.Future[None]] = {}  # due ms -> opens at that time
        self._due: list[Claimed] = []
        self._outcomes: list[tuple[Claimed, list[Any]]] = []
        self._calls: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._background: list[asyncio.Task[None]] = []
        self._start_scheduled = False
        self._flushing = False  # one _flush_finish at a time
        self._keeper = (
            LeaseKeeper(
                worker=self.id, times=self.times, held=self._held_now, make_redis=lease_redis
            )
            if lease_redis
            else None
        )

    # -- lifecycle ---------------------------------------------------------------------------

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
        try:
            await self._claim_loop()
        finally:
            await self._shutdown()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def _shutdown(self) -> None:
        unstarted = [cl for slot in self._slots.values() for cl in slot]
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        self._slots.clear()
        if unstarted:
            await self._hand_back(unstarted, reason="shutdown")
        if self._calls:
            log.info("worker.draining", worker=self.id, in_flight=len(self._calls))
            _, pending = await asyncio.wait(self._calls, timeout=self.shutdown_grace_s)
            if pending:
                # Their leases lapse and any other worker retries them within lease_s.
                log.warning("worker.abandoned_calls", worker=self.id, calls=len(pending))
                for t in pending:
                    t.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        while self._outcomes or self._flushing:
            if self._flushing:
                await asyncio.sleep(0.05)
            else:
                self._flushing = True
                await self._flush_finish()
        for t in self._background:
            t.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._keeper is not None:
            await asyncio.to_thread(self._keeper.stop)
        log.info("worker.stopped", worker=self.id)

    # -- claiming ----------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                room = self.max_in_flight - len(self._held)
                claimed: list[Claimed] = []
                if room > 0:
                    claimed = await self.store.claim(
                        worker=self.id,
                        horizon_ms=now_ms() + self.claim_ahead_ms,
                        lease_ms=self.expiry_ms,
                        limit=min(c.CLAIM_BATCH, room),
                    )
                    for cl in claimed:
                        self._arm(cl)
                backoff = 0.1
                if claimed and self.store.more_due:
                    continue  # more may be waiting
            except REDIS_DOWN as exc:
                log.warning("worker.redis_unavailable", error=str(exc), retry_in_s=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)

    def _arm(self, cl: Claimed) -> None:
        """Wait for ``cl`` on the timer of its due millisecond (one timer per distinct ms)."""
        self._held[cl.job] = cl
        slot = self._slots.get(cl.due_ms)
        if slot is not None:
            slot.append(cl)
            return
        self._slots[cl.due_ms] = [cl]
        self._set_timer(cl.due_ms)

    def _set_timer(self, due_ms: int) -> None:
        # Slots wake START_LEAD_MS early: the compare-and-set round trip happens before the due
        # time, so that at the due time only the call itself is left to do.
        loop = asyncio.get_running_loop()
        delay = max(0.0, (due_ms - c.START_LEAD_MS) / 1000 - time.time())
        self._timers[due_ms] = loop.call_at(loop.time() + delay, self._on_due, due_ms)

    def _on_due(self, due_ms: int) -> None:
        self._timers.pop(due_ms, None)
        for cl in self._slots.pop(due_ms, []):
            if cl.function != "fire_task":
                self._spawn(self._run_handler(cl))
            else:
                self._due.append(cl)
        if self._due and not self._start_scheduled:
            self._start_scheduled = True
            self._spawn(self._flush_start())

    def _gate(self, due_ms: int) -> asyncio.Future[None]:
        """A future that completes at ``due_ms``, shared by every call due in that millisecond."""
        gate = self._gates.get(due_ms)
        if gate is None:
            gate = self._gates[due_ms] = asyncio.get_running_loop().create_future()
            self._open_gate(due_ms)
        return gate

    def _open_gate(self, due_ms: int) -> None:
        # Event-loop timers can fire up to a millisecond early (uvloop counts whole ms from the
        # start of its iteration); a call must never start before its time, so check the clock.
        remaining = due_ms / 1000 - time.time()
        if remaining > 0:
            loop = asyncio.get_running_loop()
            loop.call_at(loop.time() + remaining, self._open_gate, due_ms)
            return
        gate = self._gates.pop(due_ms, None)
        if gate is not None and not gate.done():
            gate.set_result(None)

    def _spawn(self, coro: Awaitable[None]) -> None:
        t = asyncio.ensure_future(coro)
        self._calls.add(t)
        t.add_done_callback(self._calls.discard)

    async def _flush_start(self) -> None:
        """Compare-and-set every task due now to running, in one round trip, then call them."""
        await asyncio.sleep(0)  # let timers due in this same loop iteration join the batch
        batch, self._due = self._due, []
        self._start_scheduled = False
        for i in range(0, len(batch), 500):
            chunk = batch[i : i + 500]
            start = functools.partial(
                self.store.start,
                [(cl.arg, cl.job) for cl in chunk],
                worker=self.id,
                lease_ms=self.expiry_ms,
            )
            try:
                # However long Redis is away: START is safe to repeat, and the claims stay ours.
                numbers = await until_reachable(start, what="start")
            except asyncio.CancelledError:
                await self._hand_back(batch[i:], reason="cancelled")
                raise
            except Exception:
                log.exception("worker.start_crashed", jobs=len(batch) - i)
                await self._hand_back(batch[i:], reason="start_crashed")
                return
            for cl, n in zip(chunk, numbers, strict=True):
                if n:
                    self._spawn(self._fire(cl, n))
                else:
                    self._held.pop(cl.job, None)
                    log.info("task.skipped", task_id=cl.arg, job=cl.job, reason="changed")

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

    # -- firing ------------------------------------------------------------------------------

    async def _fire(self, cl: Claimed, attempt: int) -> None:
        spec = cl.spec
        assert spec is not None
        if time.time() * 1000 < cl.due_ms:
            await self._gate(cl.due_ms)
        try:
            result = await outbound.call(
                self.session,
                url=spec.url,
                method=spec.method,
                headers=spec.headers,
                payload=spec.payload,
                timeout_s=spec.timeout,
                extra_headers={
                    "Idempotency-Key": cl.arg,
                    "X-Taskorch-Task-Id": cl.arg,
                    "X-Taskorch-Attempt": str(attempt),
                    "X-Taskorch-Scheduled-For": fmt_ms(cl.due_ms) or "",
                },
            )
        except Exception as exc:
            # A bug of ours must still end in an outcome, or the task would stay running while
            # this worker keeps renewing its lease.
            log.exception("task.call_crashed", task_id=cl.arg, attempt=attempt)
            t = time.time() * 1000
            result = outbound.CallResult(t, t, error=f"internal error: {type(exc).__name__}: {exc}")
        lateness = result.started_ms - cl.due_ms
        next_due = 0
        if result.ok:
            outcome = "succeeded"
        elif attempt <= spec.retries:
            outcome = "retry"
            wait = retry_wait_s(spec, attempt, random.random(), result.retry_after_s)
            next_due = math.ceil(result.finished_ms + wait * 1000)  # never shortened
        else:
            outcome = "failed"
        log.info(
            "task.attempt",
            task_id=cl.arg,
            attempt=attempt,
            lateness_ms=round(lateness, 3),
            status_code=result.status_code,
            error=result.error,
            outcome=outcome,
        )
        row = [
            cl.arg,
            cl.job,
            outcome,
            encode_attempt(
                number=attempt,
                scheduled_for_ms=cl.due_ms,
                started_ms=result.started_ms,
                finished_ms=result.finished_ms,
                status_code=result.status_code,
                error=result.error,
                body=result.excerpt(),
            ),
            next_due,
            int(result.finished_ms),
            self.claim_ahead_ms,
            f"attempts_total:{outcome}",
            lateness_bucket(lateness),
            f"lateness_sum_ms={max(lateness, 0.0):.3f}",  # the histogram's _sum for /metrics
        ]
        self._outcomes.append((cl, row))
        if not self._flushing:
            self._flushing = True
            self._spawn(self._flush_finish())

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

    # -- background loops --------------------------------------------------------------------

    async def _listen(self) -> None:
        """Wake the claim loop when new work is due before the next poll."""
        while not self._stopping.is_set():
            try:
                pubsub = self.store.redis.pubsub(ignore_subscribe_messages=True)
                async with pubsub:
                    await pubsub.subscribe(c.WAKE_CHANNEL)
                    # A timeout of our own (get_message returns None when it passes), so that
                    # the client's socket timeout does not end a quiet subscription. redis-py's
                    # timed read can swallow a task's cancellation, so the loop also ends on
                    # the stop flag.
                    while not self._stopping.is_set():
                        if await pubsub.get_message(timeout=1.0) is not None:
                            self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("worker.wake_listener_lost", error=str(exc))
                await asyncio.sleep(1.0)

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


def run_worker(settings: Settings) -> None:
    """Entry point of ``taskorch worker``: runs until SIGTERM/SIGINT, then drains."""
    import signal

    from taskorch.logs import configure
    from taskorch.store import connect

    configure(fmt=settings.log_format, level=settings.log_level)
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()

    async def main() -> None:
        timeout_s = LeaseTimes(settings.lease_s).socket_timeout_s

        def make_redis() -> Redis:
            return connect(
                settings.redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
            )

        redis = make_redis()
        # The old single-node layout's tasks would never fire here: stop, naming the way out.
        from taskorch.migrate import refuse_old_layout

        # (on a client of its own: one used before the worker's own start kept the worker from
        # exiting on SIGTERM, tests/test_misc.py::test_worker_needs_no_token_settings)
        async def check_layout() -> None:
            probe = make_redis()
            try:
                await refuse_old_layout(probe)
            finally:
                await probe.aclose()

        try:
            await until_reachable(check_layout, what="layout_check")
        except BaseException:
            await redis.aclose()
            raise
        store = Store(redis)
        async with outbound.make_session(
            allow_private=settings.allow_private_targets, trusted_url=settings.public_url
        ) as session:
            from taskorch.steps import handlers

            worker = Worker(
                store,
                session,
                lease_s=settings.lease_s,
                max_in_flight=settings.max_in_flight,
                handlers=handlers(store, session),
                shutdown_grace_s=settings.shutdown_grace_s,
                retention_s=settings.retention_s,
                lease_redis=make_redis,
            )
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, worker.stop)
            await worker.run()
        await redis.aclose()

    asyncio.run(main())
