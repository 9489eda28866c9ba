"""What ``POST /v1/orchestrations`` accepts of the workflow fields today (issue #21).

The body is decoded and checked as :mod:`taskorch.workflows.kinds` says (each step's kind and
shape, unique names, every reference's syntax, with the field path of each problem); a step of a
kind the step machine does not run yet (parallel, map, wait_for_event) is refused by name, so
that no body is accepted that cannot be run. Task and sleep steps run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from taskorch import constants as c
from taskorch.errors import ValidationFailed
from taskorch.models import OrchestrationCreate, StepSpec
from taskorch.workflows.kinds import (
    SleepStep,
    SleepUntilStep,
    TaskStep,
    WorkflowCreate,
    check_workflow,
    decode_workflow,
)

# The step kinds the step machine does not run yet.
NOT_YET = ("parallel", "map", "wait_for_event")


@dataclass(frozen=True, slots=True)
class Accepted:
    """An orchestration to store: ``body`` with a stand-in task step (its name and condition)
    where a step is of another kind, and that step's stored spec by index in ``kinds``
    (``{"k": "sleep", "ms": n}`` or ``{"k": "sleep", "at": epoch ms}``, lua/lib/orchestration.lua)."""

    body: OrchestrationCreate
    kinds: dict[int, str]


def _sleep_spec(step: SleepStep | SleepUntilStep) -> str:
    if isinstance(step, SleepStep):
        return f'{{"k":"sleep","ms":{round(step.sleep * 1000)}}}'
    return f'{{"k":"sleep","at":{round(step.sleep_until.timestamp() * 1000)}}}'


def accept(data: Any) -> Accepted:
    """Parsed JSON as the orchestration to store, or ValidationFailed (422) naming each problem:
    its field path (``steps[2].payload.customer``) and what is wrong there."""
    try:
        wf = decode_workflow(data)
    except ValidationFailed as exc:
        raise _with_steps(exc, data) from None
    problems = []
    steps: list[StepSpec] = []
    kinds: dict[int, str] = {}
    for i, (raw, step) in enumerate(zip(wf.body.steps, wf.steps, strict=True)):
        if isinstance(step, TaskStep):
            steps.append(step)
        elif isinstance(step, (SleepStep, SleepUntilStep)):
            kinds[i] = _sleep_spec(step)
            steps.append(StepSpec(url=_STAND_IN, name=step.name, condition=step.condition))
        else:
            key = next(k for k in NOT_YET if k in raw)
            problems.append(
                {
                    "field": f"steps[{i}]",
                    "message": f"is a {key} step: that kind is not available yet on this "
                    "server (only task steps run for now)",
                }
            )
    if problems:
        first = problems[0]
        raise ValidationFailed(
            f"The request has {len(problems)} step{'s' if len(problems) > 1 else ''} of a kind "
            f"not available yet: {first['field']} {first['message']}.",
            details=problems,
        )
    same = {f: getattr(wf.body, f) for f in _SAME}
    return Accepted(OrchestrationCreate(steps=steps, fallback=wf.fallback, **same), kinds)


_STAND_IN = "https://step.invalid/"  # never called: the step's stored spec is its kind's

# The fields WorkflowCreate and OrchestrationCreate share as they are.
_SAME = ("condition", "run_at", "delay", "name", "input", "max_steps_run")


def _with_steps(exc: ValidationFailed, data: Any) -> ValidationFailed:
    """``exc`` (the body's own fields were wrong, so the steps were not looked at) with the
    problems of the steps and the fallback too: a 422 names every problem at once."""
    steps = data.get("steps") if isinstance(data, dict) else None
    if not isinstance(steps, list) or not 0 < len(steps) <= c.MAX_STEPS:
        return exc
    body = WorkflowCreate(steps=steps, fallback=data.get("fallback"))
    seen = {d["field"] for d in exc.details}
    more = [{"field": f, "message": m} for f, m in check_workflow(body) if f not in seen]
    if not more:
        return exc
    return ValidationFailed(exc.message, details=[*exc.details, *more])
