"""Tasks: the bodies that create and modify one (alone or in a batch), and a task with its
attempts as the API answers it."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Annotated, Any, Literal

from msgspec import UNSET, Meta, Struct, UnsetType

from taskorch import constants as c
from taskorch.models.shared import (
    Callback,
    ErrorBody,
    Method,
    QueueName,
    Seconds,
    TaskSpec,
    Timestamp,
    Url,
    _Input,
)

__all__ = [
    "Attempt",
    "CallbackAttempt",
    "Task",
    "TaskBatch",
    "TaskBatchItem",
    "TaskBatchOutcome",
    "TaskBatchResult",
    "TaskCreate",
    "TaskPage",
    "TaskPatch",
    "TaskStatus",
]


class TaskStatus(enum.StrEnum):
    """Where a task is in its life. Only ``scheduled`` and ``retrying`` can still change."""

    scheduled = "scheduled"
    running = "running"
    retrying = "retrying"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class TaskCreate(TaskSpec):
    """Body of ``POST /v1/tasks``."""

    run_at: dt.datetime | None = None
    delay: Seconds | None = None
    name: Annotated[str, Meta(max_length=200)] | None = None
    queue: QueueName = c.DEFAULT_QUEUE
    callback: Callback | None = None  # the final Task when it succeeded
    failure_callback: Callback | None = None  # the final Task when it failed


class TaskBatchItem(TaskCreate):
    """One task of ``POST /v1/tasks/batch``: a task body, with its Idempotency-Key if any."""

    idempotency_key: Annotated[str, Meta(min_length=1, max_length=255)] | None = None


class TaskBatch(_Input):
    """Body of ``POST /v1/tasks/batch``. Each task is validated on its own (see decode_batch)."""

    tasks: Annotated[list[TaskBatchItem], Meta(min_length=1, max_length=c.MAX_BATCH_TASKS)]


class TaskPatch(_Input):
    """Body of ``PATCH /v1/tasks/{id}``: any creation field; absent ones stay as they are."""

    url: Url | UnsetType = UNSET
    method: Method | UnsetType = UNSET
    headers: dict[str, str] | UnsetType = UNSET
    payload: Any | UnsetType = UNSET
    retries: Annotated[int, Meta(ge=0, le=c.MAX_RETRIES)] | UnsetType = UNSET
    retry_delay: Seconds | UnsetType = UNSET
    backoff: Annotated[float, Meta(ge=1, le=c.MAX_BACKOFF)] | UnsetType = UNSET
    max_retry_delay: Seconds | UnsetType = UNSET
    timeout: Annotated[float, Meta(ge=1, le=c.MAX_TIMEOUT_S)] | UnsetType = UNSET
    run_at: dt.datetime | UnsetType | None = UNSET
    delay: Seconds | UnsetType | None = UNSET
    name: Annotated[str, Meta(max_length=200)] | UnsetType | None = UNSET
    # Accepted when it names the task's own queue: a task cannot move between queues.
    queue: QueueName | UnsetType = UNSET
    callback: Callback | UnsetType | None = UNSET
    failure_callback: Callback | UnsetType | None = UNSET


class Attempt(Struct, omit_defaults=False):
    """One call of a task's target, successful or not."""

    number: int
    scheduled_for: Timestamp
    started_at: Timestamp
    finished_at: Timestamp | None
    lateness_ms: float
    duration_ms: float | None
    status_code: int | None
    error: str | None
    response_body: str | None


class CallbackAttempt(Struct, omit_defaults=False):
    """One delivery of a final Task to its ``callback`` or ``failure_callback``."""

    callback: Literal["callback", "failure_callback"]
    number: int  # 1-based within the delivery of one outcome
    started_at: Timestamp
    finished_at: Timestamp
    duration_ms: float
    status_code: int | None
    error: str | None
    response_body: str | None


class Task(Struct):
    """A task as the API answers it."""

    id: str
    name: str | None
    status: TaskStatus
    url: str
    method: Method
    headers: dict[str, str]
    payload: Any
    retries: int
    retry_delay: float
    backoff: float
    max_retry_delay: float
    timeout: float
    run_at: Timestamp | None
    created_at: Timestamp
    updated_at: Timestamp
    finished_at: Timestamp | None
    orchestration_id: str | None
    attempts: list[Attempt]
    schedule_id: str | None = None
    queue: str = c.DEFAULT_QUEUE
    # issue #12: where the final Task goes, and each delivery of it so far
    callback: Callback | None = None
    failure_callback: Callback | None = None
    callback_attempts: list[CallbackAttempt] = []


class TaskPage(Struct):
    items: list[Task]
    next_cursor: str | None


class TaskBatchOutcome(Struct, omit_defaults=True):
    """One task of a batch: ``task`` when stored (or the first task of a repeated
    ``idempotency_key``), else ``error`` as a single create of it would have answered."""

    task: Task | None = None
    error: ErrorBody | None = None


class TaskBatchResult(Struct):
    """Answer of ``POST /v1/tasks/batch``: one item per task sent, in the same order."""

    items: list[TaskBatchOutcome]
