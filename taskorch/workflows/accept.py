"""What ``POST /v1/orchestrations`` accepts of the workflow fields today (issue #21).

The body is decoded and checked as :mod:`taskorch.workflows.kinds` says (each step's kind and
shape, unique names, every reference's syntax, with the field path of each problem); a step of a
kind the step machine does not run yet (parallel, map, sleep, sleep_until, wait_for_event) is
refused by name, so that no body is accepted that cannot be run.
"""

from __future__ import annotations

from typing import Any

from taskorch import constants as c
from taskorch.errors import ValidationFailed
from taskorch.models import OrchestrationCreate, StepSpec
from taskorch.workflows.kinds import (
    KIND_KEYS,
    TaskStep,
    WorkflowCreate,
    check_workflow,
    decode_workflow,
)

# The step kinds the step machine runs: task steps only, for now.
NOT_YET = KIND_KEYS


def accept(data: Any) -> OrchestrationCreate:
    """Parsed JSON as the orchestration to store, or ValidationFailed (422) naming each problem:
    its field path (``steps[2].payload.customer``) and what is wrong there."""
    try:
        wf = decode_workflow(data)
    except ValidationFailed as exc:
        raise _with_steps(exc, data) from None
    problems = []
    for i, (raw, step) in enumerate(zip(wf.body.steps, wf.steps, strict=True)):
        if not isinstance(step, TaskStep):
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
    steps: list[StepSpec] = [s for s in wf.steps if isinstance(s, TaskStep)]
    same = {f: getattr(wf.body, f) for f in _SAME}
    return OrchestrationCreate(steps=steps, fallback=wf.fallback, **same)


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
