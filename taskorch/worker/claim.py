"""Claiming: the claim loop (claim ahead, in slices, within the worker's rate), the wake listener,
connections opened ahead of a claim's calls, and the timers that wait for each due millisecond.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter

import structlog

from taskorch import constants as c
from taskorch.store import REDIS_DOWN, Claimed, now_ms
from taskorch.worker import outbound
from taskorch.worker.calls import _host
from taskorch.worker.state import WorkerState

log = structlog.get_logger("taskorch.worker")


class Claiming(WorkerState):
    """Claims due jobs and arms a timer per due millisecond."""

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
