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
  due time however the poll is tuned. A burst is claimed in slices (``CLAIM_SLICE``), and the
  first worker to see more than a slice wakes the others, so that several workers share it; no
  worker holds more than it can call within ``CLAIM_BACKLOG_S`` at the rate it has shown.
* **Compare-and-set before calling.** When timers fire, one script moves every due task to
  ``running`` only if it still has the job id that was claimed. A cancel or modify removes or
  replaces that id, so an old version can never fire; whichever script runs first wins. A
  crowded millisecond is started earlier (``START_LEAD_PER_TASK_MS``, at most
  ``START_LEAD_MAX_MS``), its round trips all sent at once, so that at its due time only calls
  are left.
* **Calls leave through a queue, in due order** (:meth:`Worker._pump`): at most
  ``WORKER_CALLS`` at once and ``HOST_CALLS`` per host, set up ``LAUNCH_BATCH`` per loop
  iteration. A burst to one host reuses that many keep-alive connections instead of opening one
  per call (10,000 at once before), and its first calls go out before the rest are set up. A
  host that has not answered for ``CALL_STALL_S`` while calls wait loses its room to them, so a
  slow or hung host never holds up another host's calls.
* **Connections open before the due time.** Right after a claim, the worker opens as many
  keep-alive connections to each host as calls are due there in one millisecond (at most
  ``HOST_CALLS``, less what the host has in flight), so that at the due time the calls skip
  the TCP and TLS handshakes (:func:`~taskorch.outbound.warm`): a burst's first call arrived
  35 to 100 ms after its due time on new connections, 10 to 20 ms on warm ones (bench_burst).
* **Leases instead of in-progress keys.** A claim lapses unless the worker renews it. Any
  worker's reaper hands a lapsed job back: unstarted ones to the queue, running ones as a
  "worker lost" attempt and an immediate retry. The sums (:class:`~taskorch.leases.LeaseTimes`) make a dead
  worker's task go out again within ``lease_s``: the claim lapses ``lease_s`` minus one reaper
  round minus some slack after it was last renewed, and reapers look every round. Leases are
  renewed from a thread of their own (:class:`~taskorch.leases.LeaseKeeper`): a worker whose
  event loop runs seconds behind under a burst of calls is busy, not dead, and keeps them. Lease
  times are Redis's clock (``TIME`` in the scripts), so a script that runs late cannot set a
  lease that has already lapsed.
* **Queues decide inside the claim.** A named queue's rate, concurrency cap and pause are held
  by the claim, start and outcome scripts in the queue's partition, so they bind every worker
  together: a task claimed under them is claimed for its dispatch slot and fires then
  (:mod:`taskorch.queues`); its attempt's lateness counts from its own due time.
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
  grace period in which every live worker renews what it holds (see ``lua/reap.lua``): a call that
  completed during the outage is then recorded by its worker, not repeated. Should a reaper
  still take a live worker's attempt for lost (a worker stalled past its lease), the worker's
  outcome wins as long as the retry has not started (``lua/finish.lua``).
* **Whatever is given up is handed back**: claims not started on shutdown or after a crash of
  ours are released to the queue, or, when Redis cannot be reached, simply no longer renewed, so
  their leases lapse and a reaper hands them back.
* **A claim is safe to lose.** A claim whose reply is given up (a frozen Redis runs it when it
  resumes) is named in the next claim, which adopts the jobs it took (``lua/claim.lua``): they
  fire when Redis is back instead of waiting a lease in this worker's leases.
* **A frozen Redis is noticed**: every command has a socket timeout
  (:attr:`~taskorch.leases.LeaseTimes.socket_timeout_s`), so a SIGSTOPped Redis reads as an outage, not a hang.

Recurring schedules need no timer of their own: every worker runs a maker
(:mod:`taskorch.schedules`) that, about once a second, turns the schedules whose next times are
near into ordinary tasks ``SCHEDULE_AHEAD_MS`` ahead, one compare-and-set per schedule, so the
claim-ahead machinery above fires them like any task. Its first round runs before the first
claim: after every worker was down, ``catch_up`` decides about overdue occurrences before they
can fire.

What still repeats (at-least-once): a call whose worker died, or could not reach Redis while
other workers could, for longer than the lease before its outcome was recorded. The repeat is a
new attempt with the same ``Idempotency-Key``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import itertools
import math
import os
import random
import socket
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import redis.exceptions
import structlog

from taskorch import constants as c
from taskorch import outbound
from taskorch.callbacks import Callbacks
from taskorch.leases import LeaseKeeper, LeaseTimes, renew_once
from taskorch.models import fmt_ms, retry_wait_s
from taskorch.schedules import Schedules
from taskorch.settings import Settings
from taskorch.signing import Signer, SigningStore
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


def lateness_field(lateness_ms: float) -> str:
    """FINISH's "~<ms>" row field: the lateness to 2 significant digits, the field of the owner's
    by-minute hash (constants.LATENESS_BY_MINUTE) that counts it."""
    return f"~{lateness_ms:.2g}"


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
        handlers: coroutines for non-task jobs by function name (orchestration events); a
            task's callbacks (``cb``) are handled by the worker itself.
        signer: the owners' signing keys (made from the store's client when not given).
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
        signer: Signer | None = None,
    ) -> None:
        self.store = store
        self.schedules = Schedules(store.redis)
        self.session = session
        self.signer = signer or Signer(SigningStore(store.redis))
        self.times = LeaseTimes(lease_s)
        self.expiry_ms = int(self.times.expiry_s * 1000)
        self.max_in_flight = max_in_flight
        self.claim_ahead_ms = claim_ahead_ms
        self.poll_s = poll_s
        # A task's callbacks are this worker's own business (taskorch/callbacks.py).
        self.handlers = {"cb": Callbacks(store, session, self.signer).handle, **(handlers or {})}
        self.shutdown_grace_s = shutdown_grace_s
        self.retention_s = retention_s
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{random.randrange(16**6):06x}"
        self._held: dict[str, Claimed] = {}  # job -> claim, from claim until outcome recorded
        self._claim_ids = itertools.count(1)
        self._lost_claims: list[str] = []  # ids of claims whose replies never came (lua/claim.lua)
        self._answered_claim = ""  # the last claim whose reply came: its record can go
        self._slots: dict[int, list[Claimed]] = {}  # due ms -> claims waiting for it
        self._timers: dict[int, tuple[float, asyncio.TimerHandle]] = {}  # due ms -> (at, timer)
        self._gates: dict[int, asyncio.Future[None]] = {}  # due ms -> opens at that time
        self._due: list[Claimed] = []
        self._outcomes: list[tuple[Claimed, list[Any]]] = []
        self._calls: set[asyncio.Task[None]] = set()
        # Started calls waiting for their due time or for room: (due ms, seq, host, claim, n).
        self._ready: list[tuple[int, int, str, Claimed, int]] = []
        self._seq = itertools.count()
        self._waiting: dict[str, deque[tuple[Claimed, int]]] = {}  # host -> calls due, host full
        self._warming: dict[str, int] = {}  # host -> connections being opened ahead of calls
        self._warm_tasks: set[asyncio.Task[None]] = set()
        # Calls in flight that count against WORKER_CALLS (all hosts) and HOST_CALLS (per host).
        self._all = _Room("")
        self._hosts: dict[str, _Room] = {}
        self._watchdog: asyncio.TimerHandle | None = None
        self._watchdog_at = 0.0
        self._pump_timer: tuple[int, asyncio.TimerHandle] | None = None
        self._pump_soon = False
        self._rate = float(c.WORKER_RATE_FLOOR)  # calls/s this worker has shown it can make
        self._window_t0 = time.monotonic()
        self._window_calls = 0
        self._window_waiting = False
        self._over_budget = False
        self._shared_at = 0.0
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

    # -- claiming ----------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                room = self._claim_room()
                more = False
                if room > 0 or self._lost_claims:
                    # The store shares the slice over the partitions; more_due says whether a
                    # partition gave its whole share, so that more may be waiting now.
                    claim_id = f"{self.id}:{next(self._claim_ids)}"
                    try:
                        claimed = await self.store.claim(
                            worker=self.id,
                            horizon_ms=now_ms() + self.claim_ahead_ms,
                            lease_ms=self.expiry_ms,
                            limit=min(c.CLAIM_SLICE, room),
                            claim_id=claim_id,
                            lost=self._lost_claims,
                            answered=self._answered_claim,
                        )
                    except REDIS_DOWN:
                        # Its reply is lost, not necessarily the claim: a frozen Redis runs it
                        # when it resumes. The next claim adopts what it took (lua/claim.lua).
                        self._lost_claims.append(claim_id)
                        del self._lost_claims[: -c.LOST_CLAIMS_MAX]
                        raise
                    if self._lost_claims:
                        log.info(
                            "worker.claims_recovered",
                            lost_replies=len(self._lost_claims),
                            jobs=len(claimed),
                        )
                        self._lost_claims.clear()
                    self._answered_claim = claim_id
                    claimed = [cl for cl in claimed if cl.job not in self._held]
                    for cl in claimed:
                        self._arm(cl)
                    self.signer.warm({cl.owner for cl in claimed if cl.owner})
                    self._warm_hosts(claimed)
                    more = bool(claimed) and self.store.more_due
                backoff = 0.1
                if more:
                    await self._share()
                    continue  # more may be waiting
            except REDIS_DOWN as exc:
                log.warning("worker.redis_unavailable", error=str(exc), retry_in_s=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)

    def _claim_room(self) -> int:
        """How many more jobs this worker claims: no more than it can call within
        CLAIM_BACKLOG_S at the rate it has shown, so that in a burst the jobs it could not
        start on time stay in the queue for workers with room."""
        budget = int(self._rate * c.CLAIM_BACKLOG_S)
        room = min(self.max_in_flight, budget) - len(self._held)
        self._over_budget = room <= 0
        return room

    def _count_call(self) -> None:
        """Measure the calls per second this worker makes while calls wait for room."""
        self._window_calls += 1
        now = time.monotonic()
        elapsed = now - self._window_t0
        if elapsed < 0.5:
            return
        waiting = bool(self._waiting) or len(self._all.counted) >= c.WORKER_CALLS
        if waiting and self._window_waiting:  # busy all along: this is what it can do
            rate = self._window_calls / elapsed
            self._rate = max(c.WORKER_RATE_FLOOR, 0.5 * self._rate + 0.5 * rate)
        self._window_t0, self._window_calls, self._window_waiting = now, 0, waiting

    def _warm_hosts(self, claimed: list[Claimed]) -> None:
        """Open connections now (claims are about a second ahead) to the hosts of the calls
        just claimed, as many as are due there in one millisecond (at most HOST_CALLS), less
        what the host already has in flight or opening: at their due time the calls find them
        open (outbound.warm). Calls spread in time need one, which the session mostly keeps."""
        crowds: Counter[tuple[str, int]] = Counter()
        sample: dict[str, str] = {}
        # Calls due sooner than connections open would open their own besides: twice as many.
        soon = now_ms() + c.WARM_AHEAD_MIN_MS
        for cl in claimed:
            if cl.function == "fire_task" and cl.spec is not None and cl.due_ms >= soon:
                host = _host(cl.spec.url)
                crowds[host, cl.due_ms] += 1
                sample.setdefault(host, cl.spec.url)
        want: dict[str, int] = {}
        for (host, _), n in crowds.items():
            want[host] = max(want.get(host, 0), n)
        for host, n in want.items():
            room = self._hosts.get(host)
            have = self._warming.get(host, 0) + (len(room.counted) if room else 0)
            count = min(c.HOST_CALLS, n) - have
            if count > 0 and sum(self._warming.values()) + count <= c.WORKER_CALLS:
                self._warming[host] = self._warming.get(host, 0) + count
                t = asyncio.ensure_future(self._warm(host, sample[host], count))
                self._warm_tasks.add(t)
                t.add_done_callback(self._warm_tasks.discard)

    async def _warm(self, host: str, url: str, count: int) -> None:
        try:
            opened = await outbound.warm(
                self.session, url=url, count=count, timeout_s=c.WARM_TIMEOUT_S
            )
            log.debug("worker.warmed", host=host, connections=opened)
        except Exception as exc:  # the calls will say what is wrong with the host
            log.debug("worker.warm_failed", host=host, error=str(exc))
        finally:
            left = self._warming.get(host, 0) - count
            if left > 0:
                self._warming[host] = left
            else:
                self._warming.pop(host, None)

    def _busy(self) -> bool:
        return bool(self._calls or self._ready or self._waiting)

    async def _share(self) -> None:
        """More is due than one slice: wake every worker, so that they all claim slices of it
        (and none takes a whole burst while the others wait for their next poll)."""
        now = time.monotonic()
        if now - self._shared_at > c.POLL_INTERVAL_S / 2:
            self._shared_at = now
            await self.store.redis.publish(c.WAKE_CHANNEL, now_ms())
        await asyncio.sleep(0)  # the calls and starts under way go on between slices

    def _arm(self, cl: Claimed) -> None:
        """Wait for ``cl`` on the timer of its due millisecond (one timer per distinct ms)."""
        self._held[cl.job] = cl
        slot = self._slots.get(cl.due_ms)
        if slot is None:
            slot = self._slots[cl.due_ms] = []
        slot.append(cl)
        self._set_timer(cl.due_ms, len(slot))

    def _set_timer(self, due_ms: int, tasks: int) -> None:
        # Slots wake early, START_LEAD_MS and more for a crowded one (START_LEAD_PER_TASK_MS):
        # the compare-and-set round trips happen before the due time, so that at the due time
        # only the calls are left to make. A slot that grows moves its timer earlier.
        lead_ms = min(c.START_LEAD_MAX_MS, c.START_LEAD_MS + tasks * c.START_LEAD_PER_TASK_MS)
        at = (due_ms - lead_ms) / 1000
        timer = self._timers.get(due_ms)
        if timer is not None:
            if timer[0] <= at + 0.001:
                return
            timer[1].cancel()
        loop = asyncio.get_running_loop()
        delay = max(0.0, at - time.time())
        self._timers[due_ms] = (at, loop.call_at(loop.time() + delay, self._on_due, due_ms))

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
        """Compare-and-set every task due now to running, START_BATCH per round trip, all sent
        at once (Redis runs them one after the other; each reply lets its calls go)."""
        await asyncio.sleep(0)  # let timers due in this same loop iteration join the batch
        batch, self._due = self._due, []
        self._start_scheduled = False
        for i in range(0, len(batch), c.START_BATCH):
            self._spawn(self._start_chunk(batch[i : i + c.START_BATCH]))

    async def _start_chunk(self, chunk: list[Claimed]) -> None:
        # Signing keys read while START runs, so that the calls rarely wait for them (a copy
        # warmed at the claim, a second before, may just have grown too old).
        self.signer.warm({cl.owner for cl in chunk if cl.owner})
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
            await self._hand_back(chunk, reason="cancelled")
            raise
        except Exception:
            log.exception("worker.start_crashed", jobs=len(chunk))
            await self._hand_back(chunk, reason="start_crashed")
            return
        for cl, n in zip(chunk, numbers, strict=True):
            if n:
                assert cl.spec is not None
                entry = (cl.due_ms, next(self._seq), _host(cl.spec.url), cl, n)
                heapq.heappush(self._ready, entry)
            else:
                self._held.pop(cl.job, None)
                log.info("task.skipped", task_id=cl.arg, job=cl.job, reason="changed")
        self._pump()

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

    def _pump(self) -> None:
        """Send started calls that are due, oldest due first, while there is room: at most
        WORKER_CALLS young calls in all and HOST_CALLS per host. A call whose host is full waits
        in that host's line, so the calls behind it for other hosts go on."""
        if self._waiting:
            for host in list(self._waiting):
                line = self._waiting[host]
                while line and self._room(host):
                    cl, n = line.popleft()
                    self._launch(cl, n, host)
                if not line:
                    del self._waiting[host]
        ready = self._ready
        if not ready:
            return
        now = time.time() * 1000
        launched = 0
        while ready and len(self._all.counted) < c.WORKER_CALLS:
            if launched == c.LAUNCH_BATCH:
                # Let the calls just launched connect and send before setting up more: the
                # first calls of a burst go out at once, not after thousands are set up.
                if not self._pump_soon:
                    self._pump_soon = True
                    asyncio.get_running_loop().call_soon(self._on_pump_soon)
                return
            due = ready[0][0]
            if due > now:
                # Never early: timers may fire up to a millisecond early, so the clock decides.
                self._pump_at(due)
                return
            _, _, host, cl, n = heapq.heappop(ready)
            if self._room(host):
                self._launch(cl, n, host)
                launched += 1
            else:
                self._waiting.setdefault(host, deque()).append((cl, n))
                self._watch()
        if ready and ready[0][0] <= now:
            self._watch()  # due calls wait for room

    def _pump_at(self, due_ms: int) -> None:
        if self._pump_timer is not None:
            if self._pump_timer[0] <= due_ms:
                return
            self._pump_timer[1].cancel()
        loop = asyncio.get_running_loop()
        delay = max(0.0, due_ms / 1000 - time.time())
        self._pump_timer = (due_ms, loop.call_at(loop.time() + delay, self._on_pump))

    def _on_pump(self) -> None:
        self._pump_timer = None
        self._pump()

    def _on_pump_soon(self) -> None:
        self._pump_soon = False
        self._pump()

    def _room(self, host: str) -> bool:
        room = self._hosts.get(host)
        return len(self._all.counted) < c.WORKER_CALLS and (
            room is None or len(room.counted) < c.HOST_CALLS
        )

    def _launch(self, cl: Claimed, attempt: int, host: str) -> None:
        room = self._hosts.get(host)
        now = time.monotonic()
        if room is None:
            room = self._hosts[host] = _Room(host)
        call = _Call(room)
        for r in (room, self._all):
            if not r.counted:
                r.progress = now  # nothing in flight: the clock for "no answer since" starts
            r.counted.add(call)
        self._spawn(self._fire(cl, attempt, call))

    def _ended(self, call: _Call) -> None:
        """A call ended: its host answers, and its room goes to the next call."""
        now = time.monotonic()
        room = call.room
        room.progress = self._all.progress = now
        self._count_call()
        if call in room.counted:
            room.counted.discard(call)
            self._all.counted.discard(call)
        if not room.counted and room.host not in self._waiting:
            self._hosts.pop(room.host, None)
        self._pump()

    def _watch(self) -> None:
        if self._watchdog is None:
            loop = asyncio.get_running_loop()
            self._watchdog_at = time.monotonic() + c.CALL_STALL_S
            self._watchdog = loop.call_later(c.CALL_STALL_S, self._on_watchdog)

    def _on_watchdog(self) -> None:
        """Calls wait for room: where the calls holding it have had no answer for
        CALL_STALL_S at two looks in a row (a slow or hung host, not a pause of this process),
        they stop counting and the next ones go."""
        self._watchdog = None
        now = time.monotonic()
        if now - self._watchdog_at > c.CALL_STALL_S / 4:
            # This process did not run for a while (a busy machine): answers may be waiting
            # unread, so "no answer" means nothing yet. Look again once they are read.
            self._watch()
            return
        stalled = now - c.CALL_STALL_S
        looked = [self._all] if len(self._all.counted) >= c.WORKER_CALLS else []
        looked += [r for h in self._waiting if (r := self._hosts.get(h))]
        rooms = []
        for room in looked:
            if room.progress > stalled:
                room.suspect = False
            elif room.suspect:
                room.suspect = False
                rooms.append(room)
            else:
                room.suspect = True
        if self._all in rooms:
            rooms = [self._all, *self._hosts.values()]
        for room in rooms:
            for call in room.counted:
                if room is not self._all:
                    self._all.counted.discard(call)
                elif call.room is not room:
                    call.room.counted.discard(call)
            room.counted.clear()
        self._pump()
        if self._waiting or (self._ready and self._ready[0][0] <= time.time() * 1000):
            self._watch()

    async def _fire(self, cl: Claimed, attempt: int, call: _Call | None = None) -> None:
        spec = cl.spec
        assert spec is not None
        try:
            # The owner's signing keys (mostly a copy warmed when the task was claimed).
            keys = await self.signer.keys(cl.owner) if cl.owner else []
            if time.time() * 1000 < cl.due_ms:
                await self._gate(cl.due_ms)
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
                    "X-Taskorch-Scheduled-For": _scheduled_for(cl.scheduled_ms or cl.due_ms),
                },
                webhook_id=cl.arg,
                keys=keys,
            )
        except Exception as exc:
            # A bug of ours must still end in an outcome, or the task would stay running while
            # this worker keeps renewing its lease.
            log.exception("task.call_crashed", task_id=cl.arg, attempt=attempt)
            t = time.time() * 1000
            result = outbound.CallResult(t, t, error=f"internal error: {type(exc).__name__}: {exc}")
        finally:
            if call is not None:
                self._ended(call)
        # A task its queue held back (rate, concurrency, pause) is late by all of its wait.
        scheduled_ms = cl.scheduled_ms or cl.due_ms
        lateness = result.started_ms - scheduled_ms
        next_due = 0
        if result.ok:
            outcome = "succeeded"
        elif attempt - cl.base <= spec.retries:  # a redrive's budget starts after its base
            outcome = "retry"
            wait = retry_wait_s(spec, attempt - cl.base, random.random(), result.retry_after_s)
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
                scheduled_for_ms=scheduled_ms,
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
            lateness_field(lateness),
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


class _Room:
    """The calls in flight that count against one host's room (or, host "", the worker's),
    and when that host last answered."""

    __slots__ = ("counted", "host", "progress", "suspect")

    def __init__(self, host: str) -> None:
        self.host = host
        self.counted: set[_Call] = set()
        self.progress = time.monotonic()
        self.suspect = False  # no answer for CALL_STALL_S at the last look


class _Call:
    __slots__ = ("room",)

    def __init__(self, room: _Room) -> None:
        self.room = room


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


@functools.lru_cache(maxsize=1024)
def _scheduled_for(due_ms: int) -> str:
    return fmt_ms(due_ms) or ""  # the same for every call of a burst: formatted once


@functools.lru_cache(maxsize=4096)
def _host(url: str) -> str:
    """What shares a connection pool: scheme, host and port."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2].lower()}"


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
        from taskorch.oldlayout import refuse_old_layout

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

            signer = Signer(SigningStore(redis))
            worker = Worker(
                store,
                session,
                signer=signer,
                lease_s=settings.lease_s,
                max_in_flight=settings.max_in_flight,
                handlers=handlers(store, session, signer),
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
