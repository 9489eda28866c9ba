"""The shapes of everything the API accepts and answers, as msgspec structs.

Input is validated field by field so that a client learns every problem at once, each with its
path (``steps[3].url``); the OpenAPI document is generated from these same structs.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import re
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from taskorch import constants as c
from taskorch.errors import ApiError, BadRequest, PayloadTooLarge, ValidationFailed

# QUEUE_NAME_MESSAGE and queue_name_ok are re-exported: the API and the queues use them.
from taskorch.rules import QUEUE_NAME_MESSAGE as QUEUE_NAME_MESSAGE
from taskorch.rules import URL_MAX_LENGTH, header_problems, url_problem
from taskorch.rules import queue_name_ok as queue_name_ok

Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
# Capped so that no duration overflows a timestamp (about 300 years; JSON's 1e400 is infinity).
Seconds = Annotated[float, Meta(ge=0, le=1e10, description="seconds, fractions allowed")]
Timestamp = Annotated[str, Meta(extra_json_schema={"format": "date-time"})]
# A queue's name: checked by _queue_rule (a message a person can act on), documented in the
# OpenAPI document with the pattern (openapi._tighten).
QueueName = Annotated[str, Meta(min_length=1, max_length=64)]
# A target URL: checked by _url_rule (rules.url_problem), published as rules.URL_SCHEMA.
Url = Annotated[str, Meta(min_length=1, max_length=URL_MAX_LENGTH)]


class TaskStatus(enum.StrEnum):
    """Where a task is in its life. Only ``scheduled`` and ``retrying`` can still change."""

    scheduled = "scheduled"
    running = "running"
    retrying = "retrying"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class _Input(Struct, forbid_unknown_fields=True):
    """Base of request bodies: unknown fields are rejected, as the contract says."""

    def check(self) -> list[tuple[str, str]]:
        """Cross-field rules msgspec cannot express: (field, message) pairs."""
        return []


class CallPolicy(_Input, kw_only=True):
    """How one HTTP call is made and retried: shared by tasks, steps and function schedules."""

    method: Method = "POST"
    headers: dict[str, str] = {}
    payload: Any = None
    retries: Annotated[int, Meta(ge=0, le=c.MAX_RETRIES)] = c.DEFAULT_RETRIES
    retry_delay: Seconds = c.DEFAULT_RETRY_DELAY_S
    backoff: Annotated[float, Meta(ge=1, le=c.MAX_BACKOFF)] = c.DEFAULT_BACKOFF
    max_retry_delay: Seconds = c.DEFAULT_MAX_RETRY_DELAY_S
    timeout: Annotated[float, Meta(ge=1, le=c.MAX_TIMEOUT_S)] = c.DEFAULT_TIMEOUT_S


class TaskSpec(CallPolicy, kw_only=True):
    """What one HTTP call is and how it is retried: the part shared by tasks and steps."""

    url: Url


class Callback(_Input):
    """Where a task's final Task is POSTed (issue #12): a url and headers, as a task's."""

    url: Url
    headers: dict[str, str] = {}


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


class QueueUpdate(_Input):
    """Body of ``PUT /v1/queues/{name}``: a field left out keeps its value (a new queue's:
    unlimited, not paused); null lifts a limit."""

    rate: Annotated[float, Meta(ge=c.MIN_QUEUE_RATE, le=c.MAX_QUEUE_RATE)] | UnsetType | None = (
        UNSET
    )
    max_concurrent: Annotated[int, Meta(ge=1, le=c.MAX_QUEUE_CONCURRENCY)] | UnsetType | None = (
        UNSET
    )
    paused: bool | UnsetType = UNSET


class Queue(Struct):
    """A queue as the API answers it: its settings, its tasks counted by status, and how many
    due tasks wait for their turn (``waiting``: over its rate or concurrency, or paused)."""

    name: str
    rate: float | None
    max_concurrent: int | None
    paused: bool
    waiting: int
    counts: dict[str, int]


class QueueList(Struct):
    """Answer of ``GET /v1/queues``: every queue of the owner, ``default`` first."""

    items: list[Queue]


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


class FunctionSchedule(CallPolicy, kw_only=True):
    """Task fields for the task that calls a function once it is ready (its url is the trigger)."""

    run_at: dt.datetime | None = None
    delay: Seconds | None = None
    name: Annotated[str, Meta(max_length=200)] | None = None


class FunctionCreate(_Input):
    """Body of ``POST /v1/functions``."""

    name: Annotated[str, Meta(min_length=1, max_length=200)]
    runtime: Literal["python", "java", "node"]
    code: Annotated[str, Meta(min_length=1, max_length=c.MAX_FUNCTION_CODE_BYTES)]
    handler: Annotated[str, Meta(min_length=1, max_length=200)] | None = None
    requirements: Annotated[str, Meta(max_length=64 * 1024)] | None = None
    provider: Literal["local", "aws"] | None = None
    schedule: FunctionSchedule | None = None

    def check(self) -> list[tuple[str, str]]:
        problems = []
        handler = self.handler or ("" if self.runtime == "java" else "handler")
        if self.runtime == "java":
            if not re.fullmatch(r"[A-Za-z_$][\w$.]*::[A-Za-z_$][\w$]*", handler):
                problems.append(("handler", "java needs Class::method, such as Hello::handle"))
        elif not re.fullmatch(r"[A-Za-z_$][\w$]*", handler):
            problems.append(("handler", "must be a function name, such as handler"))
        if self.requirements and self.runtime != "python":
            problems.append(("requirements", "only python functions take requirements"))
        return problems


class FunctionStatus(enum.StrEnum):
    building = "building"
    ready = "ready"
    failed = "failed"


class Function(Struct):
    """A function as the API answers it. ``url`` is a credential: whoever has it can call it."""

    id: str
    name: str
    runtime: str
    handler: str
    provider: str
    status: FunctionStatus
    url: str | None
    error: str | None
    task_id: str | None
    created_at: Timestamp


class FunctionPage(Struct):
    items: list[Function]
    next_cursor: str | None


class FunctionCode(Struct):
    """A function's source as it was uploaded, apart from the Function itself so that lists and
    every refetch of one stay small (the code may be 512 KiB)."""

    id: str
    runtime: str
    handler: str
    code: str
    requirements: str | None


class ScheduleStatus(enum.StrEnum):
    """Whether a schedule makes occurrences: ``active``; ``paused`` until resumed; ``ended``
    once its ``end_at`` has come."""

    active = "active"
    paused = "paused"
    ended = "ended"


CatchUp = Literal["one", "none", "all"]
Every = Annotated[float, Meta(ge=c.MIN_EVERY_S, le=c.MAX_EVERY_S, description="seconds")]
Cron = Annotated[str, Meta(max_length=200, description="5 fields, as crontab")]
ZoneName = Annotated[str, Meta(min_length=1, max_length=64, description="IANA time zone name")]


class ScheduleTask(TaskSpec):
    """The task a schedule makes at each of its times: a task body without ``run_at``/``delay``."""

    name: Annotated[str, Meta(max_length=200)] | None = None
    # The queue its tasks are dispatched through: the schedule lives in that queue's partition,
    # so it cannot be changed by PATCH (409), as a task cannot move between queues.
    queue: QueueName = c.DEFAULT_QUEUE
    # Named in the 422 instead of "is not a known field" (see _problems).
    _field_hints: ClassVar[dict[str, str]] = {
        "run_at": "cannot be given: the schedule sets each task's time",
        "delay": "cannot be given: the schedule sets each task's time",
    }


def schedule_problems(cron: str | None, every: float | None) -> list[tuple[str, str]]:
    """The rules that span a schedule's fields (each field's own are in _FIELD_RULES). An
    ``end_at`` before ``start_at`` or now is not one: the schedule is ``ended`` at once."""
    problems = []
    if (cron is None) == (every is None):
        problems.append(("cron", "give cron or every, exactly one of the two"))
    return problems


class ScheduleCreate(_Input):
    """Body of ``POST /v1/schedules``."""

    task: ScheduleTask
    cron: Cron | None = None
    every: Every | None = None
    timezone: ZoneName = "UTC"
    name: Annotated[str, Meta(max_length=200)] | None = None
    start_at: dt.datetime | None = None
    end_at: dt.datetime | None = None
    catch_up: CatchUp = "one"

    def check(self) -> list[tuple[str, str]]:
        return schedule_problems(self.cron, self.every)


class SchedulePatch(_Input):
    """Body of ``PATCH /v1/schedules/{id}``: absent fields stay. Giving ``cron`` replaces an
    ``every`` and the other way round; ``end_at: null`` removes the end."""

    task: ScheduleTask | UnsetType = UNSET
    cron: Cron | UnsetType = UNSET
    every: Every | UnsetType = UNSET
    timezone: ZoneName | UnsetType = UNSET
    name: Annotated[str, Meta(max_length=200)] | UnsetType | None = UNSET
    start_at: dt.datetime | UnsetType = UNSET
    end_at: dt.datetime | UnsetType | None = UNSET
    catch_up: CatchUp | UnsetType = UNSET

    def check(self) -> list[tuple[str, str]]:
        if self.cron is not UNSET and self.every is not UNSET:
            return [("cron", "give cron or every, not both")]
        return []


class Schedule(Struct):
    """A recurring schedule as the API answers it."""

    id: str
    name: str | None
    status: ScheduleStatus
    cron: str | None
    every: float | None
    timezone: str
    task: ScheduleTask
    start_at: Timestamp
    end_at: Timestamp | None
    catch_up: CatchUp
    next_runs: list[Timestamp]
    last_task_id: str | None
    created_at: Timestamp
    updated_at: Timestamp


class SchedulePage(Struct):
    items: list[Schedule]
    next_cursor: str | None


class SigningKey(Struct):
    """One secret that signs an owner's calls (Standard Webhooks ``whsec_...``).

    ``secret`` and ``used_until`` are shown only to a token that may write (or has no scope); a
    read-only token sees ``id`` and ``created_at`` alone, since the secret lets one forge calls.
    """

    id: str  # key_ and 16 hex digits of the secret's SHA-256: names a key without revealing it
    created_at: Timestamp
    secret: str | UnsetType = UNSET
    # null for the current secret; for the previous one, when it stops signing (24 h after
    # the rotation that replaced it)
    used_until: Timestamp | UnsetType | None = UNSET


class SigningKeys(Struct):
    """Answer of ``GET /v1/signing-keys`` and ``POST /v1/signing-keys/rotate``: current first."""

    keys: list[SigningKey]


class TokenRequest(_Input):
    username: Annotated[str, Meta(min_length=1, max_length=200)]
    password: Annotated[str, Meta(min_length=1, max_length=1024)]


class TokenResponse(Struct):
    access_token: str
    token_type: str
    expires_in: int


class ErrorDetail(Struct, omit_defaults=True):
    """One detail of an error: a validation problem names its ``field``; the 503 of a create
    says in ``outcome`` whether it was stored (``not_stored``, ``unknown``)."""

    message: str
    field: str | None = None
    outcome: Literal["not_stored", "unknown"] | None = None


class ErrorBody(Struct):
    code: str
    message: str
    details: list[ErrorDetail]


class Error(Struct):
    error: ErrorBody


class TaskBatchOutcome(Struct, omit_defaults=True):
    """One task of a batch: ``task`` when stored (or the first task of a repeated
    ``idempotency_key``), else ``error`` as a single create of it would have answered."""

    task: Task | None = None
    error: ErrorBody | None = None


class TaskBatchResult(Struct):
    """Answer of ``POST /v1/tasks/batch``: one item per task sent, in the same order."""

    items: list[TaskBatchOutcome]


# -- helpers -----------------------------------------------------------------------------------


def _url_rule(value: Any) -> list[tuple[str, str]]:
    msg = url_problem(value) if isinstance(value, str) else None
    return [("", msg)] if msg else []


def _headers_rule(value: Any) -> list[tuple[str, str]]:
    return header_problems(value or {})


# Rules for one field, by name, in every request struct. They run as soon as that field is well
# formed, so a bad url is reported beside a bad retries instead of after it is fixed.
def _run_at_rule(value: Any) -> list[tuple[str, str]]:
    return _run_at_problems(msgspec.convert(value, dt.datetime | None, strict=False))


def _run_at_problems(when: dt.datetime | None) -> list[tuple[str, str]]:
    if when is None:
        return []
    if when.tzinfo is None:
        return [("", "must carry a UTC offset, such as 2026-11-26T18:31:06Z")]
    try:
        too_late = when.astimezone(dt.UTC).year >= 9999
    except OverflowError:
        too_late = True
    if too_late:  # answers are in UTC, and year 10000 cannot be written
        return [("", "must be before 9999-01-01T00:00:00Z")]
    return []


def _cron_rule(value: Any) -> list[tuple[str, str]]:
    from taskorch.cron import cron_problem

    msg = cron_problem(value) if isinstance(value, str) else None
    return [("", msg)] if msg else []


def _zone_rule(value: Any) -> list[tuple[str, str]]:
    from taskorch.cron import zone

    if isinstance(value, str) and zone(value) is None:
        return [("", "is not an IANA time zone name, such as Europe/Berlin")]
    return []


def _queue_rule(value: Any) -> list[tuple[str, str]]:
    return [] if isinstance(value, str) and queue_name_ok(value) else [("", QUEUE_NAME_MESSAGE)]


def _bool_rule(value: Any) -> list[tuple[str, str]]:
    # JSON true or false only: the lenient conversion would take 0 and "no" for a pause.
    return [] if isinstance(value, bool) else [("", "must be true or false")]


_FIELD_RULES = {
    "cron": _cron_rule,
    "timezone": _zone_rule,
    "url": _url_rule,
    "headers": _headers_rule,
    "run_at": _run_at_rule,
    "start_at": _run_at_rule,
    "end_at": _run_at_rule,
    "queue": _queue_rule,
    "paused": _bool_rule,
}


def due_ms(run_at: dt.datetime | None, delay: float | None, now_ms: int) -> int:
    """The due time in epoch ms: ``run_at``, else now + ``delay``; never before now."""
    if run_at is not None:
        return max(now_ms, round(run_at.timestamp() * 1000))
    return now_ms + round((delay or 0) * 1000)


def fmt_ms(ms: int | float | None) -> str | None:
    """RFC 3339 in UTC with millisecond precision, as the API answers every time."""
    if ms is None:
        return None
    second, milli = divmod(int(ms), 1000)
    return f"{_fmt_second(second)}.{milli:03d}Z"


@functools.lru_cache(maxsize=4096)
def _fmt_second(second: int) -> str:
    # A task's created, updated and due times mostly fall in seconds just formatted.
    t = dt.datetime.fromtimestamp(second, tz=dt.UTC)
    # isoformat, not strftime: %Y writes the year 1 as "1", not RFC 3339's "0001" (a schedule
    # keeps the start_at or end_at it was given, however far back).
    return t.replace(tzinfo=None).isoformat(timespec="seconds")


def retry_wait_s(
    spec: TaskSpec, retry_number: int, jitter: float, retry_after_s: float | None
) -> float:
    """The wait before retry ``retry_number`` (1-based), as the contract defines it.

    ``jitter`` is a draw in [0, 1): the wait is lengthened by up to RETRY_JITTER of itself.
    A ``Retry-After`` replaces the computed wait, still capped by ``max_retry_delay``. No wait is
    shorter than MIN_RETRY_DELAY_S, and a ``retry_delay`` below it counts as it.
    """
    floor = c.MIN_RETRY_DELAY_S
    if retry_after_s is not None:
        return max(floor, min(retry_after_s, spec.max_retry_delay))
    try:
        base = max(spec.retry_delay, floor) * spec.backoff ** (retry_number - 1)
        base = min(base, spec.max_retry_delay)
    except OverflowError:  # a large backoff to a high power: the cap applies
        base = spec.max_retry_delay
    return max(floor, min(base * (1 + c.RETRY_JITTER * jitter), max(spec.max_retry_delay, base)))


# -- decoding with every problem reported -------------------------------------------------------

T = TypeVar("T", bound=_Input)


def parse_json(raw: bytes | str, what: str = "The body") -> Any:
    """Parse JSON from a client; anything unparseable is a 400 ``invalid_json``, never a 500.

    msgspec raises more than DecodeError on hostile input: RecursionError for deep nesting and
    UnicodeDecodeError for invalid UTF-8 inside a string.
    """
    if not raw.strip():
        return None
    try:
        return msgspec.json.decode(raw)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError, ValueError) as exc:
        reason = "it is nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise BadRequest(f"{what} is not valid JSON: {reason}.", code="invalid_json") from None


def decode_body(raw: bytes, kind: type[T]) -> T:
    """Parse a request body into ``kind`` or raise 400/422 listing every problem found."""
    if kind in _FLAT:
        value = _decode_valid(raw, kind)
        if value is not None:
            return value
    return convert(parse_json(raw), kind)


# Bodies that decode in one typed pass when valid (their only nested struct, a callback, is
# checked by _TYPED_RULES).
_FLAT: frozenset[type[_Input]] = frozenset({TaskCreate, TaskBatchItem, TaskPatch, TokenRequest})


class _BatchEnvelope(Struct, forbid_unknown_fields=True):
    tasks: list[msgspec.Raw]


_envelope = msgspec.json.Decoder(_BatchEnvelope)


def decode_batch(raw: bytes) -> list[TaskBatchItem | ApiError]:
    """A batch body: each task as :func:`decode_body` would give it, or the error it would raise.

    The envelope (``{"tasks": [...]}`` with 1..MAX_BATCH_TASKS entries) must be right, or the
    whole request fails (400/422) as any body would; a bad task fails alone, in its place, with
    the field paths a single create of it would name, and a task larger than a single create may
    be (MAX_BODY_BYTES) is refused as 413 would refuse it.
    """
    try:
        tasks = _envelope.decode(raw).tasks
    except Exception:  # malformed, or not the envelope: say why as for any body
        tasks = _envelope_problems(parse_json(raw))
    n = len(tasks)
    if not 1 <= n <= c.MAX_BATCH_TASKS:
        message = f"must hold 1 to {c.MAX_BATCH_TASKS} tasks, not {n}"
        raise ValidationFailed(
            f"The request has 1 invalid field: tasks {message}.",
            details=[{"field": "tasks", "message": message}],
        )
    out: list[TaskBatchItem | ApiError] = []
    for item in tasks:
        body = bytes(item)
        if len(body) > c.MAX_BODY_BYTES:
            out.append(PayloadTooLarge(f"The task is larger than {c.MAX_BODY_BYTES} bytes."))
            continue
        try:
            out.append(decode_body(body, TaskBatchItem))
        except ApiError as exc:
            out.append(exc)
    return out


def _envelope_problems(data: Any) -> list[msgspec.Raw]:
    """Raise the 422 for a batch body that parsed but is not ``{"tasks": [...]}``."""
    problems: list[tuple[str, str]] = []
    if not isinstance(data, dict):
        problems.append(("", "must be a JSON object"))
    else:
        problems += [(k, "is not a known field") for k in data if k != "tasks"]
        if "tasks" not in data:
            problems.append(("tasks", "is required"))
        elif not isinstance(data["tasks"], list):
            problems.append(("tasks", "must be an array of tasks"))
    raise _failed(problems or [("", "is invalid")])


@functools.cache
def _decoder(kind: type[T]) -> msgspec.json.Decoder[T]:
    return msgspec.json.Decoder(kind, strict=False)


def _decode_valid(raw: bytes | str, kind: type[T]) -> T | None:
    """``raw`` as ``kind`` when it is valid as it stands, else None.

    The common case takes one typed msgspec pass plus the field rules (a create spent more on
    the field-by-field walk than on its Redis script). Any problem at all returns None, so that
    :func:`convert` walks the body and names every problem: this path never decides an error,
    and on success gives the value the walk would (tests/test_models.py compares the two).
    """
    try:
        value = _decoder(kind).decode(raw)
    except Exception:  # malformed, invalid, too deep: the walk below reports it
        return None
    for name, rule in _typed_rules(kind):
        if rule(getattr(value, name)):
            return None
    if _given(getattr(value, "run_at", None)) and _given(getattr(value, "delay", None)):
        return None
    return None if value.check() else value


@functools.cache
def _typed_rules(kind: type[_Input]) -> list[tuple[str, Callable[[Any], list[tuple[str, str]]]]]:
    return [(name, rule) for name, rule in _TYPED_RULES.items() if name in kind.__struct_fields__]


def _given(value: Any) -> bool:
    return value is not None and value is not UNSET


def _callback_rule(value: Any) -> list[tuple[str, str]]:
    if not isinstance(value, Callback):
        return []
    return _url_rule(value.url) + (_headers_rule(value.headers) if value.headers else [])


_TYPED_RULES: dict[str, Callable[[Any], list[tuple[str, str]]]] = {
    "url": lambda v: _url_rule(v) if isinstance(v, str) else [],
    "headers": lambda v: _headers_rule(v) if v and isinstance(v, dict) else [],
    "run_at": lambda v: _run_at_problems(v) if isinstance(v, dt.datetime) else [],
    "queue": lambda v: _queue_rule(v) if isinstance(v, str) else [],
    "callback": _callback_rule,
    "failure_callback": _callback_rule,
}


def convert(data: Any, kind: type[T]) -> T:
    """Validate already parsed JSON ``data`` as ``kind``; raise ValidationFailed with paths."""
    problems = _problems(data, kind, "")
    if not problems:
        try:
            return msgspec.convert(data, kind, strict=False)
        except msgspec.ValidationError as exc:  # a rule the walk above did not foresee
            problems = [_from_msgspec(exc, "")]
    raise _failed(problems)


def _failed(problems: list[tuple[str, str]]) -> ValidationFailed:
    n = len(problems)
    return ValidationFailed(
        f"The request has {n} invalid field{'s' if n > 1 else ''}: "
        + "; ".join(f"{f or 'body'} {m}" for f, m in problems[:5])
        + ".",
        details=[{"field": f, "message": m} for f, m in problems],
    )


def _join(prefix: str, name: str | int) -> str:
    if isinstance(name, int):
        return f"{prefix}[{name}]"
    return f"{prefix}.{name}" if prefix else name


def _problems(data: Any, kind: Any, path: str) -> list[tuple[str, str]]:
    """Walk ``data`` against struct ``kind``, collecting one problem per bad field."""
    if not isinstance(data, dict):
        return [(path, "must be a JSON object")]
    problems: list[tuple[str, str]] = []
    fields = _fields(kind)
    hints: dict[str, str] = getattr(kind, "_field_hints", {})
    for key in data:
        if key not in fields:
            problems.append((_join(path, key), hints.get(key, "is not a known field")))
    for name, field in fields.items():
        sub = _join(path, name)
        if name not in data:
            if field.required:
                problems.append((sub, "is required"))
            continue
        found = _field_problems(data[name], field.type, sub)
        if not found and name in _FIELD_RULES:
            found = [(_join(sub, f) if f else sub, m) for f, m in _FIELD_RULES[name](data[name])]
        problems += found
    if "run_at" in fields and data.get("run_at") is not None and data.get("delay") is not None:
        problems.append((_join(path, "delay"), "give run_at or delay, not both"))
    if not problems:
        # The fields are each well formed: now the rules that span fields (``check``).
        try:
            value = msgspec.convert(data, kind, strict=False)
        except msgspec.ValidationError as exc:
            return [_from_msgspec(exc, path)]
        problems += [(_join(path, f), m) for f, m in value.check()]
    return problems


@functools.cache
def _fields(kind: type[Any]) -> dict[str, msgspec.structs.FieldInfo]:
    # msgspec.structs.fields evaluates the annotations on every call: once per struct is enough
    # (for a 10,000-step orchestration it was 9 s of a 10 s request).
    return {f.encode_name: f for f in msgspec.structs.fields(kind)}


def _field_problems(value: Any, typ: Any, path: str) -> list[tuple[str, str]]:
    struct = _struct_in(typ)
    if struct is not None and isinstance(value, dict):
        return _problems(value, struct, path)
    items = _struct_list_in(typ)
    if items is not None and isinstance(value, list):
        out: list[tuple[str, str]] = []
        for i, item in enumerate(value):
            out += _field_problems(item, items, _join(path, i))
        if not out:
            try:
                msgspec.convert(value, typ, strict=False)
            except msgspec.ValidationError as exc:
                out.append(_from_msgspec(exc, path))
        return out
    try:
        msgspec.convert(value, typ, strict=False)
    except msgspec.ValidationError as exc:
        return [_from_msgspec(exc, path)]
    return []


def _members(typ: Any) -> tuple[Any, ...]:
    if get_origin(typ) is Annotated:
        return _members(get_args(typ)[0])
    if get_origin(typ) in (Union, getattr(__import__("types"), "UnionType", Union)):
        return tuple(m for a in get_args(typ) for m in _members(a))
    return (typ,)


def _struct_in(typ: Any) -> type[Struct] | None:
    for m in _members(typ):
        if isinstance(m, type) and issubclass(m, _Input):
            return m
    return None


def _struct_list_in(typ: Any) -> Any | None:
    for m in _members(typ):
        if get_origin(m) is list and _struct_in(get_args(m)[0]) is not None:
            return get_args(m)[0]
    return None


_AT = re.compile(r" - at `\$(.*)`$")


def _from_msgspec(exc: msgspec.ValidationError, path: str) -> tuple[str, str]:
    """Turn msgspec's "Expected `int`, got `str` - at `$.a[0]`" into (path, message)."""
    text = str(exc)
    where = ""
    if m := _AT.search(text):
        where = m.group(1)
        text = text[: m.start()]
    where = where.lstrip(".")
    full = path + ("." + where if where and not where.startswith("[") and path else where)
    message = text[0].lower() + text[1:] if text else "is invalid"
    message = message.replace("expected", "must be", 1).replace("`", "")
    return full, message
