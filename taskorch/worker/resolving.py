"""References resolved before a step starts (issue #21): the step machine's reads for them.

Before the script that starts step ``j`` (or may run the fallback), the step machine reads the
orchestration's ``input``, the spec, and only the names and kept outputs the spec's references
need (:meth:`Plan.steps_needed`: step 9,999 of a long orchestration costs what step 1 does), and
resolves it here. The script gets the result as strings: the resolved spec ('' when the stored
one has no references) and an error ('' or the JSON of :meth:`ResolveError.detail`, which fails
the step with no call); for the fallback the resolved spec, '' or ``-`` (it cannot be resolved,
so it is not called). Reads only: every change stays in the script.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, overload

import msgspec

from taskorch import constants as c
from taskorch.models import TaskSpec
from taskorch.orchestrations import output_dec
from taskorch.store import Redis, _spec_json, decode_spec, until_reachable
from taskorch.workflows.refs import Context, Plan, ResolveError, StepResult

_enc = msgspec.json.Encoder()


class _Kept(Sequence[StepResult | None]):
    """The outputs a call's references need, by step index (None: none kept)."""

    def __init__(self, results: dict[int, StepResult]) -> None:
        self._results = results

    @overload
    def __getitem__(self, i: int) -> StepResult | None: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[StepResult | None]: ...
    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            raise TypeError("steps are read one by one")
        return self._results.get(i)

    def __len__(self) -> int:
        return c.MAX_STEPS


def _plan(spec: TaskSpec) -> Plan | None:
    plan = Plan(spec.url, spec.headers, spec.payload)
    return plan if plan.has_refs else None


class Resolver:
    """Resolves one orchestration's step and fallback specs; ``key`` is its ``o:<id>`` hash."""

    def __init__(self, redis: Redis, key: str, oid: str, raw_input: str | None) -> None:
        self.redis, self.key, self.oid, self.raw_input = redis, key, oid, raw_input

    async def _read(self, op: Any) -> Any:
        return await until_reachable(op, what="orc_resolve_read")

    async def _context(self, plan: Plan) -> Context:
        needed = plan.steps_needed()
        named = sorted(x for x in needed if isinstance(x, str))
        names: dict[str, int] = {}
        if named:
            got = await self._read(lambda: self.redis.hmget(self.key + ":names", named))
            names = {n: int(i) for n, i in zip(named, got, strict=True) if i is not None}
        idx = sorted({x for x in needed if isinstance(x, int)} | set(names.values()))
        results: dict[int, StepResult] = {}
        if idx:
            got = await self._read(
                lambda: self.redis.hmget(self.key + ":out", [str(i) for i in idx])
            )
            for i, raw in zip(idx, got, strict=True):
                if raw:
                    kept = output_dec.decode(raw)
                    results[i] = StepResult(kept.o, kept.c, kept.t)
        value = msgspec.json.decode(self.raw_input) if self.raw_input else None
        return Context(self.oid, value, _Kept(results), names)

    async def _resolve(self, spec: TaskSpec, plan: Plan) -> TaskSpec:
        call = plan.resolve(await self._context(plan))
        return msgspec.structs.replace(
            spec, url=call.url, headers=call.headers, payload=call.payload
        )

    async def step(self, j: int) -> tuple[str, str]:
        """Step ``j``'s (spec, error) for the script that starts it."""
        raw = await self._read(lambda: self.redis.hget(self.key + ":specs", str(j)))
        if raw is None or raw.startswith('{"k":'):  # past the last step, or a sleep: no call
            return "", ""
        spec = decode_spec(raw)
        try:
            plan = _plan(spec)
            if plan is None:
                return "", ""
            return _spec_json(await self._resolve(spec, plan)), ""
        except ResolveError as exc:
            return "", _enc.encode(exc.detail()).decode()
        except ValueError as exc:  # a stored reference ill formed: only a record from elsewhere
            detail = {"code": "reference_error", "message": str(exc), "field": None, "path": None}
            return "", _enc.encode(detail).decode()

    async def fallback(self, raw: str | None) -> str:
        """The fallback for a script that may run it: '' (as stored), its resolved spec, or ``-``."""
        if not raw:
            return ""
        spec = decode_spec(raw)
        try:
            plan = _plan(spec)
            return "" if plan is None else _enc.encode(await self._resolve(spec, plan)).decode()
        except (ResolveError, ValueError):
            return "-"
