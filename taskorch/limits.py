"""Bounds on what one client can hold of the API once its request is in: event streams, list
requests, and the time a request may spend on Redis.

* :class:`StreamSlots` counts an owner's open event streams, :class:`ListSlots` its list and
  search requests in progress.
* :class:`RedisDeadline` bounds the time one request may spend on Redis in total.

The bounds at the door (body caps, read deadlines, head limits, the access log) are
:mod:`taskorch.edge`; its names are importable from here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import Callable, Iterator
from typing import Any

from taskorch import constants as c
from taskorch.edge import Edge, note_request, set_read_timeout
from taskorch.errors import TooManyRequests

# The edge's names that taskorch/api/ imports from here (and DeadlineHTTPProtocol, by __getattr__).
__all__ = [
    "Edge",
    "ListSlots",
    "RedisDeadline",
    "StreamSlots",
    "note_request",
    "off_the_redis_clock",
    "redis_deadline",
    "set_read_timeout",
]


def __getattr__(name: str) -> Any:
    """``DeadlineHTTPProtocol`` lives in :mod:`taskorch.edge`, built there on first use (so that
    importing this module does not import uvicorn)."""
    if name != "DeadlineHTTPProtocol":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from taskorch import edge

    return edge.DeadlineHTTPProtocol


class StreamSlots:
    """Open event streams per owner in this process, at most MAX_EVENT_STREAMS_PER_OWNER each."""

    def __init__(self, limit: int = c.MAX_EVENT_STREAMS_PER_OWNER) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}

    def take(self, owner: str) -> Callable[[], None]:
        """Reserve a slot for ``owner`` or raise 429; returns the function that frees it."""
        n = self._open.get(owner, 0)
        if n >= self.limit:
            raise TooManyRequests(
                f"This account already has {n} live event streams open; close one first.",
                retry_after_s=5,
            )
        self._open[owner] = n + 1
        freed = False

        def free() -> None:
            nonlocal freed
            if not freed:
                freed = True
                left = self._open.get(owner, 1) - 1
                if left > 0:
                    self._open[owner] = left
                else:
                    self._open.pop(owner, None)

        return free


class ListSlots:
    """List and search requests in progress per owner in this process, at most
    MAX_LISTS_PER_OWNER each: one owner looping on many connections holds that much of Redis at
    a time, and the rest answer 429 with Retry-After at once (no Redis work)."""

    def __init__(self, limit: int = c.MAX_LISTS_PER_OWNER) -> None:
        self.limit = limit
        self._busy: dict[str, int] = {}

    @contextlib.contextmanager
    def held(self, owner: str) -> Iterator[None]:
        """Hold one of ``owner``'s slots for the block, or raise 429 when all are taken."""
        n = self._busy.get(owner, 0)
        if n >= self.limit:
            raise TooManyRequests(
                f"This account already has {n} list or search requests in progress in this "
                "server; wait for one to answer before sending another.",
                retry_after_s=c.LIST_RETRY_AFTER_S,
            )
        self._busy[owner] = n + 1
        try:
            yield
        finally:
            left = self._busy.get(owner, 1) - 1
            if left > 0:
                self._busy[owner] = left
            else:
                self._busy.pop(owner, None)


class _LoopLag:
    """How late this event loop's own timers have run lately: a busy loop leaves replies that
    have arrived unread, so a deadline that fires on a lagging loop cannot say "not stored".

    One repeating timer per loop (every LOOP_LAG_TICK_S); ``recent_ms`` is the largest lateness
    seen over the last LOOP_LAG_WINDOW_S, the tick that runs in the same turn as a deadline's
    timer included (it is due earlier, so it runs first and has recorded that turn's lag).
    """

    __slots__ = ("_due", "_loop", "_marks")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._marks: list[tuple[float, float]] = []  # (loop time, lateness s), newest last
        self._due = loop.time() + c.LOOP_LAG_TICK_S
        loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        now = self._loop.time()
        late = now - self._due
        if late > c.LOOP_LAG_TICK_S:
            self._marks.append((now, late))
        horizon = now - c.LOOP_LAG_WINDOW_S
        while self._marks and self._marks[0][0] < horizon:
            self._marks.pop(0)
        self._due = now + c.LOOP_LAG_TICK_S
        self._loop.call_at(self._due, self._tick)

    def recent_ms(self) -> float:
        now = self._loop.time()
        # A tick overdue right now counts too: the loop has not come back to it yet.
        late = max(0.0, now - self._due)
        horizon = now - c.LOOP_LAG_WINDOW_S
        return 1000 * max([late] + [lag for t, lag in self._marks if t >= horizon])


_LAGS: dict[asyncio.AbstractEventLoop, _LoopLag] = {}


def _loop_lag(loop: asyncio.AbstractEventLoop) -> _LoopLag:
    lag = _LAGS.get(loop)
    if lag is None:
        for old in [k for k in _LAGS if k.is_closed()]:
            del _LAGS[old]
        lag = _LAGS[loop] = _LoopLag(loop)
    return lag


class RedisDeadline:
    """The bound on one request's Redis work in total (TASKORCH_REDIS_TIMEOUT_S).

    redis-py's pool connects and health-checks under one pool-wide lock, so with Redis frozen N
    concurrent requests would wait N times the per-call timeout; a bound per request holds
    whatever the pool does. Use as ``async with RedisDeadline(s):``; past the deadline the block
    raises ``TimeoutError``. The clock runs while the route runs, and stops while the route waits
    for its client (:meth:`paused`: a slow upload is the read deadlines' business) or for a
    password check. :meth:`wall_ms` is the same deadline on the wall clock, for a create's script
    to refuse to write once the API has given up on it.

    Unlike ``asyncio.timeout`` it cancels again every DEADLINE_RECANCEL_S until the block ends:
    redis-py sends each command under ``asyncio.wait_for``, which on Python 3.11 swallows a
    cancellation that arrives as the send completes, and the request would then wait out the
    next call's socket timeout. Cancelling a Redis call is safe: redis-py disconnects a
    connection whose send or read was interrupted, so no reply is left pending in the pool.
    """

    def __init__(self, budget_s: float) -> None:
        self.budget_s = budget_s
        self._task: asyncio.Task[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._when = 0.0  # loop time of the deadline, moved on by the time spent paused
        self._handle: asyncio.Handle | None = None
        self._paused_at: float | None = None  # loop time, while paused
        self._cancels = 0
        self._expired = False
        self._token: contextvars.Token[RedisDeadline | None] | None = None
        self._lag_ms = 0.0  # the loop's recent lag when the deadline first fired
        self._inside = False

    def running(self) -> RedisDeadline:
        return self

    async def __aenter__(self) -> RedisDeadline:
        loop = self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._when = loop.time() + self.budget_s
        self._handle = loop.call_at(self._when, self._fire)
        self._token = _CURRENT.set(self)
        self._inside = True
        _loop_lag(loop)
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._inside = False
        if self._token is not None:
            _CURRENT.reset(self._token)
            self._token = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if not self._cancels:
            return
        assert self._task is not None
        for _ in range(self._cancels):
            self._task.uncancel()
        self._cancels = 0
        if exc_type is asyncio.CancelledError and self._task.cancelling() == 0:
            raise TimeoutError("the request's Redis deadline passed") from exc

    def _fire(self) -> None:
        # A pause does not move the timer (that cost a create two timer handles per pause): the
        # timer checks on firing whether the deadline has really passed, and waits on if not.
        assert self._task is not None and self._loop is not None
        now = self._loop.time()
        if self._paused_at is not None and not self._expired:
            self._handle = self._loop.call_at(now + self._when - self._paused_at, self._fire)
            return
        if now < self._when and not self._expired:
            self._handle = self._loop.call_at(self._when, self._fire)
            return
        if not self._expired:
            self._expired = True
            self._lag_ms = _loop_lag(self._loop).recent_ms()
            # A reply read in this turn of the loop has only scheduled the request's wake-up:
            # cancel after it, so that an answer which is here is taken, not thrown away.
            self._handle = self._loop.call_soon(self._cancel)
            return
        self._cancel()

    def _cancel(self) -> None:
        assert self._task is not None and self._loop is not None
        if not self._inside:
            return  # the block ended in the meantime: nothing to cancel
        self._cancels += 1
        self._task.cancel()
        self._handle = self._loop.call_later(c.DEADLINE_RECANCEL_S, self._fire)

    def expired(self) -> bool:
        return self._expired

    def prompt(self) -> bool:
        """Whether the loop ran on time when the deadline passed. Only then does "a create's
        script writes nothing past wall_ms" mean "not stored": on a loop late by the reply
        margin, a reply may have arrived and sat unread (the create then answers "unknown")."""
        return self._lag_ms < c.CREATE_REPLY_MARGIN_MS / 2

    def left_s(self) -> float:
        if self._loop is None:
            return self.budget_s
        now = self._paused_at if self._paused_at is not None else self._loop.time()
        return max(0.0, self._when - now)

    def wall_ms(self) -> int:
        """The deadline as Unix ms, made early by CREATE_REPLY_MARGIN_MS (at most a quarter of
        what is left) so that a reply can still come back before the API gives up."""
        left_ms = self.left_s() * 1000
        return int(time.time() * 1000 + left_ms - min(c.CREATE_REPLY_MARGIN_MS, left_ms / 4))

    def paused(self) -> contextlib.AbstractContextManager[None]:
        """The clock stopped for the block (no-op outside the deadline's block, or nested)."""
        return _Paused(self)


class _Paused:
    """:meth:`RedisDeadline.paused` as a plain class: a create pauses twice, and generator-based
    context managers cost it more than the pausing itself."""

    __slots__ = ("_active", "_deadline")

    def __init__(self, deadline: RedisDeadline) -> None:
        self._deadline = deadline
        self._active = False

    def __enter__(self) -> None:
        d = self._deadline
        if d._handle is None or d._expired or d._paused_at is not None:
            return
        assert d._loop is not None
        d._paused_at = d._loop.time()
        self._active = True

    def __exit__(self, *exc: object) -> None:
        d = self._deadline
        if self._active and d._loop is not None and d._paused_at is not None:
            d._when += d._loop.time() - d._paused_at
            d._paused_at = None


_CURRENT: contextvars.ContextVar[RedisDeadline | None] = contextvars.ContextVar(
    "redis_deadline", default=None
)


def redis_deadline() -> RedisDeadline | None:
    """The running request's deadline, if it has one."""
    return _CURRENT.get()


def off_the_redis_clock() -> contextlib.AbstractContextManager[None]:
    """Stop the running request's Redis clock meanwhile (no-op outside a request)."""
    d = _CURRENT.get()
    return _NO_DEADLINE if d is None else _Paused(d)


_NO_DEADLINE = contextlib.nullcontext()
