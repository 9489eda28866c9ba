"""Calls: the pump that sends started calls in due order within the worker's and each host's
room, the watchdog that frees the room of a host that stopped answering, and firing a call.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import math
import random
import time
from collections import deque
from urllib.parse import urlsplit

import msgspec
import structlog

from taskorch import constants as c
from taskorch.models import fmt_ms, retry_wait_s
from taskorch.orchestrations import StoredOutput
from taskorch.store import Claimed, encode_attempt
from taskorch.worker import outbound
from taskorch.worker.outcomes import lateness_bucket, lateness_field
from taskorch.worker.state import WorkerState, _Call, _Room
from taskorch.workflows.kinds import OUTPUT_MAX_BYTES, keep_output

_enc = msgspec.json.Encoder()

log = structlog.get_logger("taskorch.worker")


class Calling(WorkerState):
    """Sends started calls (at most WORKER_CALLS, HOST_CALLS per host) and fires each."""

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
            # An orchestration's step keeps its output: one byte past the limit tells a longer
            # answer from one of exactly the limit, and its content type says whether it is JSON.
            keep = OUTPUT_MAX_BYTES + 1 if cl.orc else c.RESPONSE_KEEP_BYTES
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
                keep_body=keep,
                keep_type=keep > c.RESPONSE_KEEP_BYTES,
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
        if cl.orc and outcome != "retry":
            row.append(step_output(result))
        self._outcomes.append((cl, row))
        if not self._flushing:
            self._flushing = True
            self._spawn(self._flush_finish())


def step_output(result: outbound.CallResult) -> str:
    """FINISH's "!<json>" row field: a step's output as ``o:<orc>:out`` keeps it."""
    output, cut = keep_output(result.body, result.content_type)
    return "!" + _enc.encode(StoredOutput(output, result.status_code, cut)).decode()


@functools.lru_cache(maxsize=1024)
def _scheduled_for(due_ms: int) -> str:
    return fmt_ms(due_ms) or ""  # the same for every call of a burst: formatted once


@functools.lru_cache(maxsize=4096)
def _host(url: str) -> str:
    """What shares a connection pool: scheme, host and port."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2].lower()}"
