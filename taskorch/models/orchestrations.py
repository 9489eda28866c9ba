"""Orchestrations: steps, the condition checked after each, the fallback, and an orchestration's
state as the API answers it."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Annotated, Literal

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
    "StepSpec",
    "StepState",
]


class OrchestrationStatus(enum.StrEnum):
    """Where an orchestration is. Only ``scheduled`` can be modified; ``running`` can be cancelled."""

    scheduled = "scheduled"
    running = "running"
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


class StepSpec(TaskSpec):
    """One step: a task spec, optionally with its own condition overriding the shared one."""

    condition: ConditionSpec | None = None


class OrchestrationCreate(_Input):
    """Body of ``POST /v1/orchestrations``."""

    steps: Annotated[list[StepSpec], Meta(min_length=1, max_length=c.MAX_STEPS)]
    condition: ConditionSpec | None = None
    fallback: TaskSpec | None = None
    run_at: dt.datetime | None = None
    delay: Seconds | None = None
    name: Annotated[str, Meta(max_length=200)] | None = None


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


class StepState(Struct):
    index: int
    task_id: str | None
    status: str
    condition: ConditionState | None


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


class OrchestrationPage(Struct):
    items: list[Orchestration]
    next_cursor: str | None
