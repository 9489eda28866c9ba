"""Orchestrations: steps, the condition checked after each, the fallback, and an orchestration's
state as the API answers it."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Annotated, Any, Literal

from msgspec import UNSET, Meta, Struct, UnsetType

from taskorch import constants as c
from taskorch.models.shared import Method, Seconds, TaskSpec, Timestamp, Url, _Input

__all__ = [
    "CheckAttempt",
    "ConditionSpec",
    "ConditionState",
    "FallbackState",
    "Orchestration",
    "OrchestrationCreate",
    "OrchestrationPage",
    "OrchestrationPatch",
    "OrchestrationStatus",
    "StepError",
    "StepSpec",
    "StepState",
]


class OrchestrationStatus(enum.StrEnum):
    """Where an orchestration is. Only ``scheduled`` can be modified; ``running`` and ``waiting``
    can be cancelled."""

    scheduled = "scheduled"
    running = "running"
    waiting = "waiting"  # a sleep step is in progress
    succeeded = "succeeded"
    failed = "failed"
    stopped = "stopped"
    cancelled = "cancelled"


class ConditionSpec(_Input):
    """The check run after a step: passes on a 2xx unless the body says ``false``."""

    url: Url
    method: Method = "POST"
    headers: dict[str, str] = {}
    timeout: Annotated[float, Meta(ge=1, le=c.MAX_TIMEOUT_S)] = c.DEFAULT_TIMEOUT_S
    delay: Seconds = 0.0
    retries: Annotated[int, Meta(ge=0, le=c.MAX_RETRIES)] = 0
    retry_delay: Seconds = c.DEFAULT_RETRY_DELAY_S


# A step's name (the contract's "Orchestrations as workflows"): what references and a check's
# goto name it by; not only digits, which steps.<n> reads as an index (taskorch.workflows.kinds
# checks both at create).
StepName = Annotated[
    str, Meta(min_length=1, max_length=64, pattern="^[a-z0-9_-]*[a-z_-][a-z0-9_-]*$")
]


class StepSpec(TaskSpec):
    """One step: a task spec, optionally with its own condition overriding the shared one, and a
    name (unique in the orchestration). Its url, header values and payload may hold ``{{ ... }}``
    references (taskorch.workflows.refs), replaced when the step starts."""

    condition: ConditionSpec | None = None
    name: StepName | None = None


class OrchestrationCreate(_Input):
    """Body of ``POST /v1/orchestrations``."""

    steps: Annotated[list[StepSpec], Meta(min_length=1, max_length=c.MAX_STEPS)]
    condition: ConditionSpec | None = None
    fallback: TaskSpec | None = None
    run_at: dt.datetime | None = None
    delay: Seconds | None = None
    name: Annotated[str, Meta(max_length=200)] | None = None
    # What references read as {{ input }} (any JSON), and how many steps may run in all (a
    # check's goto can loop): past it the orchestration fails with error step_limit.
    input: Any = None
    max_steps_run: Annotated[int, Meta(ge=1, le=1_000_000)] = 10_000


class OrchestrationPatch(_Input):
    """Body of ``PATCH /v1/orchestrations/{id}``: allowed while the orchestration is scheduled."""

    steps: Annotated[list[StepSpec], Meta(min_length=1, max_length=c.MAX_STEPS)] | UnsetType = UNSET
    condition: ConditionSpec | UnsetType | None = UNSET
    fallback: TaskSpec | UnsetType | None = UNSET
    run_at: dt.datetime | UnsetType | None = UNSET
    delay: Seconds | UnsetType | None = UNSET
    name: Annotated[str, Meta(max_length=200)] | UnsetType | None = UNSET


class CheckAttempt(Struct):
    """One call of a condition check."""

    number: int
    started_at: Timestamp
    finished_at: Timestamp
    status_code: int | None
    passed: bool
    error: str | None
    response_body: str | None


class ConditionState(Struct):
    status: Literal["pending", "waiting", "passed", "failed"]
    attempts: list[CheckAttempt]


class StepError(Struct):
    """Why a step or an orchestration ended without a call's answer to blame: ``code`` is
    ``reference_missing`` (and the other reference errors), ``step_limit``..., ``field`` and
    ``path`` where a reference is to blame."""

    code: str
    message: str
    field: str | None = None
    path: str | None = None


class StepState(Struct):
    """One step. ``output`` is its answer's body (JSON when it is JSON, else text), kept once it
    succeeded, at most 64 KiB (else its start, and ``output_truncated``); ``started_at`` and
    ``finished_at`` are of its latest run."""

    index: int
    task_id: str | None
    status: str
    condition: ConditionState | None
    name: str | None = None
    kind: Literal["task", "parallel", "map", "sleep", "wait"] = "task"
    output: Any = None
    output_truncated: bool = False
    started_at: Timestamp | None = None
    finished_at: Timestamp | None = None
    error: StepError | None = None


class FallbackState(Struct):
    task_id: str | None
    status: str


class Orchestration(Struct):
    """An orchestration as the API answers it."""

    id: str
    name: str | None
    status: OrchestrationStatus
    run_at: Timestamp | None
    created_at: Timestamp
    updated_at: Timestamp
    finished_at: Timestamp | None
    current_step: int
    steps: list[StepState]
    fallback: FallbackState | None
    input: Any = None
    error: StepError | None = None


class OrchestrationPage(Struct):
    items: list[Orchestration]
    next_cursor: str | None
