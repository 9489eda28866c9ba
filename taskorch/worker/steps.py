"""The step machine: what a worker does when an orchestration's start, step end or check is due.

Each event is an arq-format job (function ``orc``) whose argument names it:
``start|<orc>|<gen>[|<step>]`` (a step: a retry's, lua/orc_retry.lua), ``done|<orc>|<task>|<status>``
(enqueued by the script that records a step task's final outcome) and
``check|<orc>|<step>|<attempt>`` and ``wake|<orc>|<step>|<run>`` (a sleep step's time is up: a
job in the same queue, so a restart neither loses nor shortens it). Before a script that may start a step or the fallback, the
handler resolves their references (:mod:`taskorch.worker.resolving`: reads only). A handler never waits in memory
between events: it makes at most one HTTP call (a condition check) and then runs one script that
checks the orchestration is still where the event expects and moves it on, creating the next
step's task or job in the same script. A worker that dies mid-event leaves the job to be replayed
by another worker; the replay either finds the move already made (a no-op) or makes it.
Because every script is safe to replay, each is retried until Redis answers: a check's answer
obtained while Redis was away is recorded when it is back, not thrown away and asked again.

A check call carries ``Idempotency-Key: <orchestration id>.check.<step>.<attempt>`` (its
``webhook-id`` too: it is signed as every call is, :mod:`taskorch.signing`),
``X-Taskorch-Orchestration-Id``, ``X-Taskorch-Step`` and ``X-Taskorch-Attempt``: a check sent
again after a worker was lost mid-check carries the same key, so a target can recognise it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import msgspec
import structlog
from redis.commands.core import AsyncScript

from taskorch import constants as c
from taskorch import lua, partitions
from taskorch.cluster import run_script
from taskorch.models import ConditionSpec
from taskorch.orchestrations import StoredCheck
from taskorch.signing import Signer
from taskorch.store import Redis, Store, now_ms, until_reachable
from taskorch.worker.resolving import Resolver
from taskorch.worker.sender import Sender
from taskorch.workflows.kinds import GotoInvalid, goto_target

log = structlog.get_logger("taskorch.steps")
_enc = msgspec.json.Encoder()
_cond_dec = msgspec.json.Decoder(ConditionSpec)


def check_passes(status_code: int | None, body: bytes) -> bool:
    """A 2xx passes unless the body is JSON ``false``, ``{"continue": false}`` or ``{"result": false}``."""
    if status_code is None or not 200 <= status_code < 300:
        return False
    try:
        data = msgspec.json.decode(body) if body.strip() else None
    except msgspec.DecodeError:
        return True
    if data is False:
        return False
    return not (
        isinstance(data, dict) and (data.get("continue") is False or data.get("result") is False)
    )


def _parsed(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:
        return text


class StepMachine(Sender):
    """Moves orchestrations on; one per worker process."""

    def __init__(
        self, redis: Redis, session: aiohttp.ClientSession, signer: Signer | None = None
    ) -> None:
        super().__init__(redis, session, signer)
        self.redis = redis
        self._start = lua.register(redis, "orc_start")
        self._step_done = lua.register(redis, "orc_step_done")
        self._check_done = lua.register(redis, "orc_check_done")
        self._wake = lua.register(redis, "orc_wake")

    async def _run(
        self, script: AsyncScript, keys: list[str], args: list[Any], *, what: str
    ) -> Any:
        """Run one of the orchestration scripts, however long Redis is away (each is safe to
        repeat)."""
        return await until_reachable(lambda: run_script(self.redis, script, keys, args), what=what)

    async def _move(
        self, script: AsyncScript, keys: list[str], args: list[Any], **log_as: Any
    ) -> None:
        """Run a script that moves the orchestration on (:meth:`_run`) and log its outcome:
        ``log_as`` is the event (``event=``), the script's name (``what=``) and the fields."""
        event, what = log_as.pop("event"), log_as.pop("what")
        outcome = await self._run(script, keys, args, what=what)
        log.info(event, **log_as, outcome=outcome)

    async def handle(self, arg: str) -> None:
        kind, oid, *rest = arg.split("|")
        layout = await until_reachable(lambda: partitions.load(self.redis), what="layout")
        p = layout.partition_of(oid)
        keys = [layout.queue(p)]

        def new_id(kind: str) -> str:  # step tasks live in their orchestration's partition
            return layout.new_id(kind, p)

        key = layout.prefixes[p] + c.ORCH + oid
        if kind == "start":
            step = int(rest[1]) if len(rest) > 1 else 0
            raw_input, fb = await self._read(key, "input", "fallback")
            res = Resolver(self.redis, key, oid, raw_input)
            spec, err = await res.step(step)
            args = [oid, rest[0], now_ms(), new_id("tsk"), c.CLAIM_AHEAD_MS, step, spec, err]
            args += [await res.fallback(fb), new_id("tsk")]
            moved = await self._run(self._start, keys, args, what="orc_start")
            log.info(
                "orchestration.started" if moved else "orchestration.start_skipped",
                orchestration_id=oid,
                step=step,
            )
        elif kind == "done":
            task_id, status = rest
            phase, current, raw_input, fb = await self._read(
                key, "phase", "current_step", "input", "fallback"
            )
            res = Resolver(self.redis, key, oid, raw_input)
            spec, err, at = "", "", ""
            if phase == "step" and current is not None:
                at = current
                if status == "succeeded":
                    spec, err = await res.step(int(current) + 1)
            args = [oid, task_id, status, now_ms(), new_id("tsk"), new_id("tsk"), c.CLAIM_AHEAD_MS]
            args += [at, spec, err, await res.fallback(fb)]
            await self._move(
                self._step_done,
                keys,
                args,
                event="orchestration.step_done",
                what="orc_step_done",
                orchestration_id=oid,
                task_id=task_id,
                task_status=status,
            )
        elif kind == "wake":
            at, run = rest
            raw_input, fb = await self._read(key, "input", "fallback")
            res = Resolver(self.redis, key, oid, raw_input)
            spec, err = await res.step(int(at) + 1)
            args = [oid, at, run, now_ms(), new_id("tsk"), new_id("tsk"), c.CLAIM_AHEAD_MS]
            args += [spec, err, await res.fallback(fb)]
            await self._move(
                self._wake,
                keys,
                args,
                event="orchestration.woke",
                what="orc_wake",
                orchestration_id=oid,
                step=at,
            )
        elif kind == "check":
            await self._check(oid, int(rest[0]), int(rest[1]), key, new_id, keys)
        else:
            log.error("orchestration.unknown_event", event=arg)

    async def _check(
        self,
        oid: str,
        step: int,
        attempt: int,
        key: str,
        new_id: Callable[[str], str],
        keys: list[str],
    ) -> None:
        prefix = key[: -len(c.ORCH + oid)]

        async def read() -> list[Any]:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hmget(key, "status", "phase", "current_step", "check_n", "condition", "owner")
                pipe.hmget(key, "input", "fallback")
                pipe.hget(key + ":conds", str(step))
                pipe.hget(key + ":state", f"t{step}")
                return list(await pipe.execute())

        got = await until_reachable(read, what="orc_check_read")
        (status, phase, current, check_n, shared, owner), (raw_input, fb), own, task_id = got
        if (status, phase, current, check_n) != ("running", "check", str(step), str(attempt - 1)):
            log.info(
                "orchestration.check_skipped", orchestration_id=oid, step=step, attempt=attempt
            )
            return
        cond = _cond_dec.decode(own or shared)
        last = None
        if task_id is not None:  # a sleep step has no task: its answer is null
            last = await until_reachable(
                lambda: self.redis.lindex(prefix + c.TASK + task_id + ":a", -1),
                what="orc_check_read",
            )
        answer = msgspec.json.decode(last) if last else {}
        envelope = {
            "orchestration_id": oid,
            "step": step,
            "task_id": task_id,
            "response": {"status_code": answer.get("code"), "body": _parsed(answer.get("body"))},
        }
        check_id = f"{oid}.check.{step}.{attempt}"
        result = await self.send(
            cond,
            envelope,
            cond.timeout,
            method=cond.method,
            msg_id=check_id,
            owner=owner,
            extra_headers={
                "X-Taskorch-Orchestration-Id": oid,
                "X-Taskorch-Step": str(step),
                "X-Taskorch-Attempt": str(attempt),
            },
        )
        passed = result.error is None and check_passes(result.status_code, result.body)
        error, target = result.error, None
        if passed and b"goto" in result.body:
            try:
                target = goto_target(result.body, await self._names(key))
            except GotoInvalid as exc:
                passed, error = False, exc.message  # as a failed check: retries apply
        res = Resolver(self.redis, key, oid, raw_input)
        spec, err = await res.step(step + 1 if target is None else target) if passed else ("", "")
        record = StoredCheck(
            n=attempt,
            st=int(result.started_ms),
            ft=int(result.finished_ms),
            ok=passed,
            code=result.status_code,
            err=error,
            body=result.excerpt(),
        )
        args = [
            oid,
            step,
            attempt,
            "1" if passed else "0",
            _enc.encode(record).decode(),
            now_ms(),
            new_id("tsk"),
            new_id("tsk"),
            c.CLAIM_AHEAD_MS,
            "" if target is None else target,
            spec,
            err,
            await res.fallback(fb),
        ]
        await self._move(
            self._check_done,
            keys,
            args,
            event="orchestration.checked",
            what="orc_check_done",
            orchestration_id=oid,
            step=step,
            attempt=attempt,
            passed=passed,
            goto=target,
            status_code=result.status_code,
            error=error,
        )

    async def _read(self, key: str, *fields: str) -> list[str | None]:
        return list(await until_reachable(lambda: self.redis.hmget(key, fields), what="orc_read"))

    async def _names(self, key: str) -> dict[str, int]:
        """The orchestration's step names (for a check's goto)."""
        got = await until_reachable(lambda: self.redis.hgetall(key + ":names"), what="orc_read")
        return {name: int(i) for name, i in got.items()}


def handlers(
    store: Store, session: aiohttp.ClientSession, signer: Signer | None = None
) -> dict[str, Any]:
    """The worker's handlers for non-task jobs, by arq function name."""
    return {"orc": StepMachine(store.redis, session, signer).handle}
