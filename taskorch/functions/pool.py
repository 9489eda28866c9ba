"""Warm instances of local functions: start, reuse, retire, reap the idle.

A warm instance serves one invocation at a time and is frozen between them (`process.py`). A
function keeps up to `SandboxLimits.max_instances` of them; further calls wait for one to be
free (the wait does not count against `timeout_s`), at most `max_waiting` calls per function
and each at most `max_wait_s`: beyond either, the call is refused at once with `FunctionBusy`
(429 with Retry-After at the trigger URL), as AWS Lambda throttles. An instance idle for
`idle_s`, one that timed out or died, and one that has used half its `cpu_s` budget (all its
processes together, as the kernel counts them) are stopped, which kills every process it
started (see `process.py`); the next call starts a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from taskorch.functions.build import Spec, relative
from taskorch.functions.errors import FunctionBusy, FunctionError, FunctionTimeout
from taskorch.functions.process import Gone, Instance, Sandboxed

log = structlog.get_logger("taskorch.functions")

# Lambda gives a function 10 s to initialise, separately from the invocation timeout.
_INIT_TIMEOUT_S = 10.0
# What a refused call is told to wait before it tries again.
_BUSY_RETRY_AFTER_S = 1


@dataclass
class Pool:
    """The warm instances of one function."""

    function_id: str
    spec: Spec
    slots: asyncio.Semaphore
    idle: list[Instance] = field(default_factory=list)
    instances: set[Instance] = field(default_factory=set)
    closed: bool = False  # the function was rebuilt, removed or the runtime closed
    waiting: int = 0  # calls waiting for a free instance


class Pools:
    """Every function's warm instances, with the idle reaper.

    Args:
        start: starts a sandboxed bootstrap in "serve" mode for a function.
        timeout_s, cpu_s, idle_s, max_instances, max_waiting, max_wait_s: see `SandboxLimits`.
    """

    def __init__(
        self,
        start: Callable[[str, Spec], Awaitable[Sandboxed]],
        *,
        timeout_s: float,
        cpu_s: int,
        idle_s: float,
        max_instances: int,
        max_waiting: int = 8,
        max_wait_s: float = 5.0,
    ) -> None:
        self._start_process = start
        self.timeout_s = timeout_s
        self.cpu_s = cpu_s
        self.idle_s = idle_s
        self.max_instances = max_instances
        self.max_waiting = max_waiting
        self.max_wait_s = max_wait_s
        self._pools: dict[str, Pool] = {}
        self._reaper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def get(self, function_id: str, spec: Spec) -> Pool:
        pool = self._pools.get(function_id)
        if pool is None:
            pool = Pool(function_id, spec, asyncio.Semaphore(self.max_instances))
            self._pools[function_id] = pool
        return pool

    def known(self, function_id: str) -> Pool | None:
        return self._pools.get(function_id)

    async def invoke(self, pool: Pool, payload: bytes) -> dict[str, Any] | None:
        """One call on a warm (or new) instance; None when the pool closed while waiting.

        Raises:
            FunctionBusy: every instance is busy and `max_waiting` calls wait already, or none
                came free within `max_wait_s`.
        """
        self._start_reaper()
        if pool.slots.locked() and pool.waiting >= self.max_waiting:
            raise self._busy(pool)
        pool.waiting += 1
        try:
            async with asyncio.timeout(self.max_wait_s):
                await pool.slots.acquire()
        except TimeoutError:
            raise self._busy(pool) from None
        finally:
            pool.waiting -= 1
        try:
            if pool.closed:
                return None
            inst = self._take_idle(pool) or await self._start(pool)
            return await self._call(pool, inst, payload)
        finally:
            pool.slots.release()

    def _busy(self, pool: Pool) -> FunctionBusy:
        log.info("function.invoke.busy", function_id=pool.function_id, waiting=pool.waiting)
        return FunctionBusy(
            pool.function_id,
            instances=self.max_instances,
            waiting=pool.waiting,
            retry_after_s=_BUSY_RETRY_AFTER_S,
        )

    async def stop(self, function_id: str) -> None:
        """Stops every instance of a function."""
        pool = self._pools.pop(function_id, None)
        if pool is not None:
            pool.closed = True
            await asyncio.gather(
                *(self._retire(pool, inst, "stopped") for inst in list(pool.instances))
            )

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        for function_id in list(self._pools):
            await self.stop(function_id)
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _take_idle(self, pool: Pool) -> Instance | None:
        while pool.idle:
            inst = pool.idle.pop()  # most recent first, so the others age out when load drops
            if inst.alive:
                return inst
            self._background(self._retire(pool, inst, "died"))
        return None

    async def _call(self, pool: Pool, inst: Instance, payload: bytes) -> dict[str, Any]:
        """One request/answer on a warm instance; an instance that fails it is retired."""
        function_id = pool.function_id
        request_id = str(uuid.uuid4())
        deadline_ms = int((time.time() + self.timeout_s) * 1000)
        try:
            async with asyncio.timeout(self.timeout_s):
                reply = await inst.call(payload, request_id, deadline_ms)
        except TimeoutError:
            await self._retire(pool, inst, "timeout")
            log.warning(
                "function.invoke.timeout", function_id=function_id, timeout_s=self.timeout_s
            )
            raise FunctionTimeout(function_id, self.timeout_s) from None
        except Gone as exc:
            await self._retire(pool, inst, "died")
            log.warning("function.invoke.died", function_id=function_id, error=exc.message)
            raise FunctionError(exc.message, function_id=function_id) from None
        except BaseException:
            # Cancelled mid-call: a late answer would put the stream out of step.
            self._background(self._retire(pool, inst, "cancelled"))
            raise
        inst.last_used = time.monotonic()
        if pool.closed:
            self._background(self._retire(pool, inst, "stopped"))
        elif inst.cpu_s >= self.cpu_s / 2:
            # RLIMIT_CPU counts over the life of a process: retire it well before the kernel
            # kills it in the middle of a call.
            self._background(self._retire(pool, inst, "cpu_budget"))
        else:
            pool.idle.append(inst)
        return reply

    async def _start(self, pool: Pool) -> Instance:
        started = time.monotonic()
        function_id = pool.function_id
        box = await self._start_process(function_id, pool.spec)
        inst = Instance(function_id, box)
        pool.instances.add(inst)
        init_timeout_s = max(_INIT_TIMEOUT_S, self.timeout_s)
        try:
            async with asyncio.timeout(init_timeout_s):
                frame = await inst.read_frame()
        except TimeoutError:
            await self._retire(pool, inst, "init_timeout")
            raise FunctionTimeout(function_id, init_timeout_s, starting=True) from None
        except Gone as exc:
            await self._retire(pool, inst, "init_failed")
            message = f"function failed to start: {exc.message}"
            raise FunctionError(message, function_id=function_id) from None
        except BaseException:
            self._background(self._retire(pool, inst, "cancelled"))
            raise
        if frame.get("ready") is not True:
            await self._retire(pool, inst, "init_failed")
            error = relative(str(frame.get("error") or "no reason given"))
            raise FunctionError(f"function failed to start: {error}", function_id=function_id)
        log.info(
            "function.instance.started",
            function_id=function_id,
            pid=box.proc.pid,
            cold_start_ms=round((time.monotonic() - started) * 1000, 1),
        )
        return inst

    async def _retire(self, pool: Pool, inst: Instance, reason: str) -> None:
        pool.instances.discard(inst)
        if inst in pool.idle:
            pool.idle.remove(inst)
        await inst.stop()
        log.info("function.instance.stopped", function_id=inst.function_id, reason=reason)

    def _start_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.create_task(self._reap_idle())

    async def _reap_idle(self) -> None:
        interval_s = min(max(self.idle_s / 4, 0.05), 5.0)
        while True:
            await asyncio.sleep(interval_s)
            now = time.monotonic()
            for pool in list(self._pools.values()):
                for inst in list(pool.idle):
                    if now - inst.last_used >= self.idle_s or not inst.alive:
                        pool.idle.remove(inst)
                        # Not awaited here: `close()` cancels the reaper, and a stop cut short
                        # would leave the instance running; `close()` waits for these.
                        self._background(self._retire(pool, inst, "idle" if inst.alive else "died"))

    def _background(self, coro: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await coro
            except Exception:
                log.exception("function.instance.stop_failed")

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
