"""The shapes of everything the API accepts and answers, as msgspec structs.

Input is validated field by field so that a client learns every problem at once, each with its
path (``steps[3].url``); the OpenAPI document is generated from these same structs.

One module per domain (``tasks``, ``orchestrations``, ``schedules``, ``queues``, ``functions``,
``auth``), what they share (``shared``: field types, call policy, callback, the error answer),
times and durations (``times``), decoding with every problem reported (``decode``), and each rule
stated once with its JSON Schema (``rules``). Every name is re-exported here:
``from taskorch.models import X`` is the way in.
"""

from __future__ import annotations

from taskorch.models.auth import SigningKey, SigningKeys, TokenRequest, TokenResponse
from taskorch.models.decode import (
    _decode_valid,  # tests/test_models.py compares it with the field-by-field walk
    convert,
    decode_batch,
    decode_body,
    parse_json,
)
from taskorch.models.functions import (
    Function,
    FunctionCode,
    FunctionCreate,
    FunctionPage,
    FunctionSchedule,
    FunctionStatus,
)
from taskorch.models.orchestrations import (
    CheckAttempt,
    ConditionSpec,
    ConditionState,
    FallbackState,
    Orchestration,
    OrchestrationCreate,
    OrchestrationPage,
    OrchestrationPatch,
    OrchestrationStatus,
    StepSpec,
    StepState,
)
from taskorch.models.queues import Queue, QueueList, QueueUpdate

# QUEUE_NAME_MESSAGE and queue_name_ok are re-exported: the API and the queues use them.
from taskorch.models.rules import QUEUE_NAME_MESSAGE, queue_name_ok
from taskorch.models.schedules import (
    CatchUp,
    Cron,
    Every,
    Schedule,
    ScheduleCreate,
    SchedulePage,
    SchedulePatch,
    ScheduleStatus,
    ScheduleTask,
    ZoneName,
    schedule_problems,
)
from taskorch.models.shared import (
    Callback,
    CallPolicy,
    Error,
    ErrorBody,
    ErrorDetail,
    Method,
    QueueName,
    Seconds,
    TaskSpec,
    Timestamp,
    Url,
)
from taskorch.models.tasks import (
    Attempt,
    CallbackAttempt,
    Task,
    TaskBatch,
    TaskBatchItem,
    TaskBatchOutcome,
    TaskBatchResult,
    TaskCreate,
    TaskPage,
    TaskPatch,
    TaskStatus,
)
from taskorch.models.times import due_ms, fmt_ms, retry_wait_s

__all__ = [
    "QUEUE_NAME_MESSAGE",
    "Attempt",
    "CallPolicy",
    "Callback",
    "CallbackAttempt",
    "CatchUp",
    "CheckAttempt",
    "ConditionSpec",
    "ConditionState",
    "Cron",
    "Error",
    "ErrorBody",
    "ErrorDetail",
    "Every",
    "FallbackState",
    "Function",
    "FunctionCode",
    "FunctionCreate",
    "FunctionPage",
    "FunctionSchedule",
    "FunctionStatus",
    "Method",
    "Orchestration",
    "OrchestrationCreate",
    "OrchestrationPage",
    "OrchestrationPatch",
    "OrchestrationStatus",
    "Queue",
    "QueueList",
    "QueueName",
    "QueueUpdate",
    "Schedule",
    "ScheduleCreate",
    "SchedulePage",
    "SchedulePatch",
    "ScheduleStatus",
    "ScheduleTask",
    "Seconds",
    "SigningKey",
    "SigningKeys",
    "StepSpec",
    "StepState",
    "Task",
    "TaskBatch",
    "TaskBatchItem",
    "TaskBatchOutcome",
    "TaskBatchResult",
    "TaskCreate",
    "TaskPage",
    "TaskPatch",
    "TaskSpec",
    "TaskStatus",
    "Timestamp",
    "TokenRequest",
    "TokenResponse",
    "Url",
    "ZoneName",
    "_decode_valid",
    "convert",
    "decode_batch",
    "decode_body",
    "due_ms",
    "fmt_ms",
    "parse_json",
    "queue_name_ok",
    "retry_wait_s",
    "schedule_problems",
]
