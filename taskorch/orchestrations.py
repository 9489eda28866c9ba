"""Orchestration records in Redis, for the API: create, read, list, modify, cancel, retry.

The worker's side (what happens when a step or a check ends) is :mod:`taskorch.worker.steps`; both
change an orchestration only through the scripts in :mod:`taskorch.lua`.
"""

from __future__ import annotations

from typing import Any

import msgspec

from taskorch import constants as c
from taskorch import lua, partitions
from taskorch.cluster import run_script
from taskorch.errors import Conflict, NotFound
from taskorch.models import (
    CheckAttempt,
    ConditionState,
    FallbackState,
    Orchestration,
    OrchestrationCreate,
    OrchestrationPage,
    OrchestrationPatch,
    OrchestrationStatus,
    StepError,
    StepSpec,
    StepState,
    TaskSpec,
    due_ms,
    fmt_ms,
)
from taskorch.store import (
    Redis,
    _spec_json,
    from_flat,
    idempotency_redis_key,
    list_ids,
    now_ms,
    run_create,
)
from taskorch.store.records import call_view_fields

_enc = msgspec.json.Encoder()


class StoredCheck(msgspec.Struct, omit_defaults=True):
    """A condition check attempt as kept in Redis (times in epoch ms)."""

    n: int
    st: int
    ft: int
    ok: bool
    code: int | None = None
    err: str | None = None
    body: str | None = None


_check_dec = msgspec.json.Decoder(StoredCheck)


class StoredOutput(msgspec.Struct, omit_defaults=True):
    """A step's kept output as in ``o:<id>:out`` (the worker encodes it with the step task's final
    outcome, lua/finish.lua): the output, the answer's status code, whether it was cut."""

    o: Any = None
    c: int | None = None
    t: bool = False


output_dec = msgspec.json.Decoder(StoredOutput)
_error_dec = msgspec.json.Decoder(StepError)


def _step_args(steps: list[StepSpec], kinds: dict[int, str] | None = None) -> list[str]:
    """Each step's stored spec (``kinds``: those of steps of another kind than task, by index,
    taskorch.workflows.accept), then each one's own condition ('' where none)."""
    specs = [
        (kinds or {}).get(i)
        or _spec_json(TaskSpec(**{f: getattr(s, f) for f in TaskSpec.__struct_fields__}))
        for i, s in enumerate(steps)
    ]
    conds = [_enc.encode(s.condition).decode() if s.condition else "" for s in steps]
    return specs + conds


def _names(steps: list[StepSpec]) -> list[str]:
    return [s.name or "" for s in steps]


def _kind(stored: str) -> str:
    """A step's kind as the API shows it, from its stored spec ('{"k":"sleep",...}')."""
    return str(msgspec.json.decode(stored)["k"])


def _opt_json(value: Any) -> str:
    return _enc.encode(value).decode() if value is not None else ""


class Orchestrations:
    """Orchestrations for the API, around the shared Redis client."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._lua = lua.Scripts(
            redis, "orc_create", "orc_modify", "orc_cancel", "orc_retry", "list_ids", "view_tasks"
        )

    async def _where(self, oid: str) -> tuple[str, str]:
        """An orchestration's partition prefix and the key its scripts are routed by."""
        layout = await partitions.load(self.redis)
        p = layout.partition_of(oid)
        return layout.prefixes[p], layout.queue(p)

    async def create(
        self,
        owner: str,
        body: OrchestrationCreate,
        *,
        idempotency_key: str | None = None,
        deadline_ms: int | None = None,
        kinds: dict[int, str] | None = None,
    ) -> tuple[Orchestration, bool]:
        """Store a new orchestration; ``deadline_ms`` as for :meth:`Store.create_task`, ``kinds``
        the stored specs of its steps that are not task steps (taskorch.workflows.accept)."""
        now = now_ms()
        layout = await partitions.load(self.redis)
        p = layout.pick(owner, idempotency_key)
        oid = partitions.id_at("orc", p, layout.n, now)
        idem = idempotency_redis_key(layout.prefixes[p], owner, "orc", idempotency_key)
        reply = await run_create(
            self.redis,
            self._lua.orc_create,
            [layout.queue(p)],
            [
                oid,
                owner,
                body.name or "",
                due_ms(body.run_at, body.delay, now),
                now,
                _opt_json(body.condition),
                _opt_json(body.fallback),
                idem,
                c.IDEMPOTENCY_TTL_S,
                c.CLAIM_AHEAD_MS,
                len(body.steps),
                *_step_args(body.steps, kinds),
                "" if deadline_ms is None else deadline_ms,
                layout.n,
                p,
                _enc.encode(body.input).decode(),
                body.max_steps_run,
                *_names(body.steps),
                *[x for i, spec in sorted((kinds or {}).items()) for x in (i, _kind(spec))],
            ],
        )
        if reply[0] == 2:
            # A key carried over by taskorch migrate names an orchestration in another partition.
            try:
                return await self.get(owner, reply[1]), False
            except NotFound:  # deleted by retention: the key is free again
                await self.redis.delete(idem)
                return await self.create(
                    owner,
                    body,
                    idempotency_key=idempotency_key,
                    deadline_ms=deadline_ms,
                    kinds=kinds,
                )
        # Answered from what the script read back: a stored orchestration is never a 503.
        return await self._view_of(reply[1:]), bool(reply[0])

    async def get(self, owner: str, oid: str) -> Orchestration:
        prefix, _ = await self._where(oid)
        key = prefix + c.ORCH + oid
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(key)
            pipe.hgetall(key + ":state")
            pipe.hkeys(key + ":conds")
            pipe.hgetall(key + ":names")
            pipe.hgetall(key + ":out")
            pipe.hgetall(key + ":kinds")
            h, state, own_conds, names, out, kinds = await pipe.execute()
        if not h or h.get("owner") != owner:
            raise NotFound(f"No orchestration {oid!r} exists for this account.")
        return await self._view(h, state, set(own_conds), names, out, kinds)

    async def _view_of(self, parts: list[Any]) -> Orchestration:
        """The answer from orc_view's parts (lua/lib/orchestration.lua) as a script returned them."""
        h, state, own, names, out, kinds = parts
        return await self._view(
            from_flat(h),
            from_flat(state),
            set(own),
            from_flat(names),
            from_flat(out),
            from_flat(kinds),
        )

    async def _view(
        self,
        h: dict[str, str],
        state: dict[str, str],
        own: set[str],
        names: dict[str, str],
        out: dict[str, str],
        kinds: dict[str, str],
    ) -> Orchestration:
        oid, n, current = h["id"], int(h["n"]), int(h["current_step"])
        shared = bool(h.get("condition"))
        checked = [i for i in range(n - 1) if f"c{i}" in state]
        live = [i for i in range(n) if f"t{i}" in state and f"s{i}" not in state]
        fallback_task = h.get("fallback_task") or None
        prefix, q = await self._where(oid)
        checks: dict[int, list[str]] = {}
        if checked:
            async with self.redis.pipeline(transaction=False) as pipe:
                for i in checked:
                    pipe.lrange(f"{prefix}{c.ORCH}{oid}:check:{i}", 0, -1)
                checks = dict(zip(checked, await pipe.execute(), strict=True))
        # Its tasks are in its partition: their statuses in one script.
        tids = [state[f"t{i}"] for i in live] + ([fallback_task] if fallback_task else [])
        statuses = (
            [
                from_flat(h).get("status")
                for h, _ in await run_script(self.redis, self._lua.view_tasks, [q], tids)
            ]
            if tids
            else []
        )
        live_status = dict(zip(live, statuses[: len(live)], strict=True))
        steps = []
        name_of = {int(i): name for name, i in names.items()}
        for i in range(n):
            status = state.get(f"s{i}") or live_status.get(i) or "pending"
            condition = None
            if i < n - 1 and (shared or str(i) in own):
                attempts = [_check_view(_check_dec.decode(a)) for a in checks.get(i, [])]
                condition = ConditionState(status=state.get(f"c{i}", "pending"), attempts=attempts)  # type: ignore[arg-type]
            kept = (
                output_dec.decode(out[str(i)]) if status == "succeeded" and str(i) in out else None
            )
            steps.append(
                StepState(
                    index=i,
                    task_id=state.get(f"t{i}"),
                    status=status,
                    condition=condition,
                    name=name_of.get(i),
                    kind=kinds.get(str(i), "task"),  # type: ignore[arg-type]
                    output=kept.o if kept else None,
                    output_truncated=kept.t if kept else False,
                    started_at=_ms(state.get(f"st{i}")),
                    finished_at=_ms(state.get(f"ft{i}")),
                    error=_error_dec.decode(state[f"e{i}"]) if state.get(f"e{i}") else None,
                )
            )
        fallback = None
        if h.get("fallback"):
            fb_status = statuses[-1] if fallback_task else None
            fallback = FallbackState(
                task_id=fallback_task, status=fb_status or h.get("fallback_status") or "pending"
            )
        finished = h.get("finished_at")
        return Orchestration(
            id=oid,
            name=h.get("name") or None,
            status=OrchestrationStatus(h["status"]),
            run_at=fmt_ms(int(h["run_at"])),
            created_at=fmt_ms(int(h["created_at"])) or "",
            updated_at=fmt_ms(int(h["updated_at"])) or "",
            finished_at=fmt_ms(int(finished)) if finished else None,
            current_step=current,
            steps=steps,
            fallback=fallback,
            input=msgspec.json.decode(h["input"]) if h.get("input") else None,
            error=_error_dec.decode(h["error"]) if h.get("error") else None,
        )

    async def list(
        self, owner: str, *, status: OrchestrationStatus | None, limit: int, cursor: str | None
    ) -> OrchestrationPage:
        layout = await partitions.load(self.redis)
        statuses = [status.value] if status else [s.value for s in OrchestrationStatus]
        ids, next_cursor = await list_ids(
            self.redis,
            layout,
            self._lua.list_ids,
            f"{c.ORCH_INDEX}{owner}:",
            statuses,
            limit=limit,
            cursor=cursor,
        )
        items = [await self.get(owner, oid) for oid in ids]
        return OrchestrationPage(items=items, next_cursor=next_cursor)

    async def cancel(self, owner: str, oid: str) -> Orchestration:
        _, q = await self._where(oid)
        res = await run_script(self.redis, self._lua.orc_cancel, [q], [oid, owner, now_ms()])
        _raise_for(res, oid, "cancelled", "scheduled, running or waiting")
        return await self._view_of(res[1:])

    async def retry(self, owner: str, oid: str) -> Orchestration:
        """Run a failed or stopped orchestration again from the step that ended it (lua/orc_retry.lua)."""
        _, q = await self._where(oid)
        args = [oid, owner, now_ms(), c.CLAIM_AHEAD_MS]
        res = await run_script(self.redis, self._lua.orc_retry, [q], args)
        _raise_for(res, oid, "retried", "failed or stopped")
        return await self._view_of(res[1:])

    async def modify(self, owner: str, oid: str, patch: OrchestrationPatch) -> Orchestration:
        prefix, q = await self._where(oid)
        for _ in range(10):
            h = await self.redis.hgetall(prefix + c.ORCH + oid)
            if not h or h.get("owner") != owner:
                raise NotFound(f"No orchestration {oid!r} exists for this account.")
            if h["status"] != "scheduled":
                raise Conflict(
                    f"The orchestration is {h['status']}: only a scheduled one can be modified."
                )
            now = now_ms()
            unset = msgspec.UNSET
            due = int(h["run_at"])
            run_at = None if patch.run_at is unset else patch.run_at
            delay = None if patch.delay is unset else patch.delay
            if run_at is not None or delay is not None:
                due = due_ms(run_at, delay, now)
            name = h.get("name", "") if patch.name is unset else (patch.name or "")
            cond = (
                h.get("condition", "") if patch.condition is unset else _opt_json(patch.condition)
            )
            fb = h.get("fallback", "") if patch.fallback is unset else _opt_json(patch.fallback)
            steps: list[str] = []
            n = -1
            if patch.steps is not unset:
                n = len(patch.steps)
                steps = _step_args(patch.steps) + _names(patch.steps)
            res = await run_script(
                self.redis,
                self._lua.orc_modify,
                [q],
                [oid, owner, now, h["gen"], name, due, cond, fb, n, c.CLAIM_AHEAD_MS, *steps],
            )
            if res[0] != "stale":
                _raise_for(res, oid, "modified", "scheduled")
                return await self._view_of(res[1:])
        raise Conflict("The orchestration is being changed by another request; try again.")


def _raise_for(res: list[str], oid: str, verb: str, allowed: str) -> None:
    if res[0] == "not_found":
        raise NotFound(f"No orchestration {oid!r} exists for this account.")
    if res[0] == "conflict":
        raise Conflict(f"The orchestration is {res[1]}: only a {allowed} one can be {verb}.")


def _ms(value: str | None) -> str | None:
    return fmt_ms(int(value)) if value else None


def _check_view(a: StoredCheck) -> CheckAttempt:
    return CheckAttempt(number=a.n, passed=a.ok, **call_view_fields(a))
