"""The worker's state: set up once, shared by the modules that make up the
:class:`~taskorch.worker.Worker`.

Each concern of the worker is a mixin of its own module (claim, start, calls, outcomes,
housekeeping, makers) over this one class, which holds every attribute they read and write and
names, for the type checker, the methods one concern calls on another.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aiohttp

from taskorch import constants as c
from taskorch.schedules import Schedules
from taskorch.signing import Signer, SigningStore
from taskorch.store import Claimed, Redis, Store
from taskorch.worker.callbacks import Callbacks
from taskorch.worker.leases import LeaseKeeper, LeaseTimes

JobHandler = Callable[[str], Awaitable[None]]


class WorkerState:
    """What every part of a worker shares, set up by ``Worker(...)`` (its arguments:
    :class:`~taskorch.worker.Worker`)."""

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

    def _spawn(self, coro: Awaitable[None]) -> None:
        t = asyncio.ensure_future(coro)
        self._calls.add(t)
        t.add_done_callback(self._calls.discard)

    def _busy(self) -> bool:
        return bool(self._calls or self._ready or self._waiting)

    if TYPE_CHECKING:  # defined by the mixins (claim, start, calls, outcomes, housekeeping)

        def _claim_room(self) -> int: ...
        def _count_call(self) -> None: ...
        def _gate(self, due_ms: int) -> asyncio.Future[None]: ...
        async def _flush_start(self) -> None: ...
        async def _hand_back(self, claims: list[Claimed], *, reason: str) -> None: ...
        def _pump(self) -> None: ...
        async def _flush_finish(self) -> None: ...
        async def _run_handler(self, cl: Claimed) -> None: ...
        def _held_now(self) -> list[Claimed] | None: ...


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
