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
* **Leases instead of in-progress keys.** A claim lapses ``lease_s`` after its due time unless the
  worker renews it. Any worker's reaper hands a lapsed job back: unstarted ones to the queue,
  running ones as a "worker lost" attempt and an immediate retry.
* **Unique job ids.** A job id is ``<task id>.<generation>``; every reschedule takes a new
  generation, so no id is ever reused.
* **Redis restarts** are waited out: every loop retries with backoff instead of exiting.
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
from taskorch.models import fmt_ms, retry_wait_s
from taskorch.settings import Settings
from taskorch.store import Claimed, Store, encode_attempt, now_ms

log = structlog.get_logger("taskorch.worker")

LATENESS_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 500, 1000, 5000)
_REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)

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
    ) -> None:
        self.store = store
        self.session = session
        self.lease_ms = int(lease_s * 1000)
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

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until :meth:`stop` is called, then hand back what was not started."""
        log.info("worker.started", worker=self.id, lease_s=self.lease_ms / 1000)
        self._background = [
            asyncio.create_task(self._listen(), name="wake-listener"),
            asyncio.create_task(self._keep_leases(), name="leases"),
            asyncio.create_task(self._reap(), name="reaper"),
        ]
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
            with contextlib.suppress(*_REDIS_DOWN):
                n = await self.store.release(self.id, [(cl.job, cl.due_ms) for cl in unstarted])
                log.info("worker.released", worker=self.id, jobs=n)
            for cl in unstarted:
                self._held.pop(cl.job, None)
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
                        lease_ms=self.lease_ms,
                        limit=min(c.CLAIM_BATCH, room),
                    )
                    for cl in claimed:
                        self._arm(cl)
                backoff = 0.1
                if len(claimed) == min(c.CLAIM_BATCH, room) and room > 0:
                    continue  # more may be waiting
            except _REDIS_DOWN as exc:
                log.warning("worker.redis_unavailable", error=str(exc), retry_in_s=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
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
            pairs = [(cl.arg, cl.job) for cl in chunk]
            numbers = await self._retrying(functools.partial(self.store.start, pairs))
            if numbers is None:
                continue  # Redis stayed down past the lease: another worker will take these
            for cl, n in zip(chunk, numbers, strict=True):
                if n:
                    self._spawn(self._fire(cl, n))
                else:
                    self._held.pop(cl.job, None)
                    log.info("task.skipped", task_id=cl.arg, job=cl.job, reason="changed")

    async def _retrying(self, op: Callable[[], Awaitable[Any]]) -> Any:
        deadline = time.monotonic() + self.lease_ms / 1000
        delay = 0.05
        while True:
            try:
                return await op()
            except _REDIS_DOWN as exc:
                if time.monotonic() > deadline:
                    log.error("worker.redis_unavailable", error=str(exc), gave_up=True)
                    return None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

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
                except _REDIS_DOWN as exc:
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
            await self._retrying(lambda: self.store.done(cl.job, self.id))
        except Exception:
            # The lease lapses and the reaper hands the job to a worker again.
            log.exception("job.failed", job=cl.job, function=cl.function)
        finally:
            self._held.pop(cl.job, None)

    # -- background loops --------------------------------------------------------------------

    async def _listen(self) -> None:
        """Wake the claim loop when new work is due before the next poll."""
        while True:
            try:
                pubsub = self.store.redis.pubsub(ignore_subscribe_messages=True)
                async with pubsub:
                    await pubsub.subscribe(c.WAKE_CHANNEL)
                    async for _ in pubsub.listen():
                        self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("worker.wake_listener_lost", error=str(exc))
                await asyncio.sleep(1.0)

    async def _keep_leases(self) -> None:
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            now = now_ms()
            leases = {j: max(cl.due_ms, now) + self.lease_ms for j, cl in self._held.items()}
            try:
                await self.store.renew(leases)
                await self.store.heartbeat(self.id)
            except _REDIS_DOWN as exc:
                log.warning("worker.redis_unavailable", error=str(exc), during="renew")

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
            except _REDIS_DOWN as exc:
                log.warning("worker.redis_unavailable", error=str(exc), during="purge")
            await asyncio.sleep(every_s)

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(c.REAP_INTERVAL_S)
            try:
                n = await self.store.reap()
                if n:
                    log.warning("worker.recovered_jobs", jobs=n)
            except _REDIS_DOWN as exc:
                log.warning("worker.redis_unavailable", error=str(exc), during="reap")


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
        redis = connect(settings.redis_url)
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
            )
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, worker.stop)
            await worker.run()
        await redis.aclose()

    asyncio.run(main())
