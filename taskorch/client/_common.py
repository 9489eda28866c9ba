"""What the two clients share, none of it I/O: the options the methods take, the answers beyond
:mod:`taskorch.models`, each route's request described once (``_Calls``), the error an answer
raises, when to send again (``_Retry``) and the settings both read (``_Base``)."""

from __future__ import annotations

import datetime as dt
import os
import re
import urllib.parse
import uuid
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Generic, Literal, TypedDict, TypeVar

import httpx
import msgspec

from taskorch import constants as c
from taskorch import errors
from taskorch.models import (
    Function,
    FunctionPage,
    Method,
    Orchestration,
    OrchestrationPage,
    OrchestrationStatus,
    Queue,
    QueueList,
    Schedule,
    SchedulePage,
    ScheduleStatus,
    SigningKeys,
    Task,
    TaskBatchResult,
    TaskPage,
    TaskStatus,
    TokenResponse,
)
from taskorch.models.times import retry_after_s

__all__ = [
    "API_URL_ENV",
    "PAGE_SIZE",
    "TOKEN_ENV",
    "Event",
    "Health",
    "OrchestrationFields",
    "OrchestrationPatchFields",
    "QueueSettings",
    "ScheduleFields",
    "SchedulePatchFields",
    "Seconds",
    "Stats",
    "TaskFields",
    "TaskPatchFields",
    "Time",
    "bare_token",
    "error_from",
]

T = TypeVar("T")
_PageT = TypeVar("_PageT")
Seconds = float | dt.timedelta
Time = dt.datetime | str

# Where a client reads its defaults (the same variables as the `taskorch` command's verbs).
API_URL_ENV = "TASKORCH_API_URL"
TOKEN_ENV = "TASKORCH_TOKEN"
PAGE_SIZE = c.CLIENT_PAGE_SIZE
_BEARER = re.compile(r"bearer\s+", re.IGNORECASE)


def bare_token(value: str | None) -> str | None:
    """A token as people paste it, made bare: the whitespace around it and a leading ``Bearer ``
    (any case) removed, so ``TASKORCH_TOKEN="Bearer eyJ..."`` works as the bare token does;
    None when nothing is left."""
    if value is None:
        return None
    value = value.strip()
    prefix = _BEARER.match(value)
    return (value[prefix.end() :] if prefix else value) or None


# -- what the methods take ---------------------------------------------------------------------


class TaskFields(TypedDict, total=False):
    """A task's optional fields (CONTRACT.md "Tasks"), given as keyword arguments.

    Durations are seconds (or a ``timedelta``); ``run_at`` a ``datetime`` with its offset or an
    RFC 3339 string. ``callback``/``failure_callback`` are ``{"url": ..., "headers": {...}}``.
    """

    method: Method
    headers: Mapping[str, str]
    payload: Any
    run_at: Time | None
    delay: Seconds | None
    retries: int
    retry_delay: Seconds
    backoff: float
    max_retry_delay: Seconds
    timeout: Seconds
    name: str | None
    queue: str
    callback: Mapping[str, Any] | None
    failure_callback: Mapping[str, Any] | None


class TaskPatchFields(TaskFields, total=False):
    """What ``modify_task`` may change: any creation field; ``None`` clears an optional one."""

    url: str


class OrchestrationFields(TypedDict, total=False):
    """An orchestration's optional fields (CONTRACT.md "Orchestrations", and "as workflows":
    ``input`` is any JSON its steps refer to as ``{{ input }}``)."""

    input: Any
    condition: Mapping[str, Any] | None
    fallback: Mapping[str, Any] | None
    run_at: Time | None
    delay: Seconds | None
    name: str | None


class OrchestrationPatchFields(OrchestrationFields, total=False):
    steps: Sequence[Mapping[str, Any]]


class ScheduleFields(TypedDict, total=False):
    """A schedule's fields besides its task: ``cron`` or ``every`` (exactly one at creation)."""

    cron: str | None
    every: Seconds | None
    timezone: str
    name: str | None
    start_at: Time | None
    end_at: Time | None
    catch_up: Literal["one", "none", "all"]


class SchedulePatchFields(ScheduleFields, total=False):
    task: Mapping[str, Any]


class QueueSettings(TypedDict, total=False):
    """``PUT /v1/queues/{name}``: a setting left out keeps its value; ``None`` lifts a limit."""

    rate: float | None
    max_concurrent: int | None
    paused: bool


# -- what the methods answer beyond taskorch.models --------------------------------------------


class Event(msgspec.Struct, frozen=True):
    """One change of ``GET /v1/events``: ``type`` is task, orchestration or function."""

    type: str
    id: str
    status: str


class Health(msgspec.Struct):
    """``/healthz`` and ``/readyz``: ``status`` is ``ok`` or ``unavailable`` (``redis`` says why)."""

    status: str
    redis: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class Stats(msgspec.Struct):
    """``GET /v1/stats``: the owner's tasks and orchestrations counted by status."""

    tasks: dict[str, int]
    orchestrations: dict[str, int]
    functions: int


# -- one request, described once for both clients ----------------------------------------------


@dataclass(frozen=True)
class _Call(Generic[T]):
    method: str
    path: str
    decode: Callable[[httpx.Response], T]
    body: Any = msgspec.UNSET  # JSON-encoded when given
    params: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    form: tuple[dict[str, str], dict[str, tuple[str, bytes]]] | None = None  # multipart
    # Safe to send again when its answer is lost or is a 503: reads, PUT/PATCH/DELETE and
    # creates carrying an Idempotency-Key; not actions such as cancel or rotate.
    repeatable: bool = True
    auth: bool = True
    answers: frozenset[int] = frozenset()  # statuses beyond 2xx that are answers, not errors

    def __iter__(self) -> Generator[_Call[Any], Any, T]:
        """A plan's step (``_declare.py``): ``answer = yield from call`` sends it, typed."""
        answer: T = yield self
        return answer


def _json(kind: type[T]) -> Callable[[httpx.Response], T]:
    decoder = msgspec.json.Decoder(kind)
    return lambda r: decoder.decode(r.content)


def _nothing(r: httpx.Response) -> None:
    return None


def _text(r: httpx.Response) -> str:
    return r.text


def _any_json(r: httpx.Response) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.json.decode(r.content)
    return out


def _value(v: Any) -> Any:
    """A keyword argument as JSON takes it: durations in seconds, datetimes in RFC 3339."""
    if isinstance(v, dt.timedelta):
        return v.total_seconds()
    if isinstance(v, dt.datetime):
        return v.isoformat()
    if isinstance(v, Mapping):
        return {k: _value(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_value(x) for x in v]
    return v


def _body(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _value(v) for k, v in fields.items()}


def _params(**given: Any) -> dict[str, str]:
    out = {}
    for k, v in given.items():
        if v is not None:
            out[k] = (
                v.value
                if isinstance(v, TaskStatus | OrchestrationStatus | ScheduleStatus)
                else str(v)
            )
    return out


def _new_key() -> str:
    return f"client-{uuid.uuid4().hex}"


def _check_id(value: str, what: str) -> str:
    """``value`` as one path segment: an id or a queue name, never a way to another route."""
    if not value:
        raise ValueError(f"{what} must not be empty")
    return urllib.parse.quote(value, safe="")


@dataclass(frozen=True)
class _Items(Generic[T, _PageT]):
    """The routes of one kind of item, ``/v1/tasks`` and ``/v1/tasks/{id}``, as :class:`_Call`."""

    path: str
    id_name: str  # in the error of an empty id
    item: type[T]
    page: type[_PageT]

    def at(self, item_id: str, *rest: str) -> str:
        return "/".join([self.path, _check_id(item_id, self.id_name), *rest])

    def get(self, item_id: str) -> _Call[T]:
        return _Call("GET", self.at(item_id), _json(self.item))

    def list(self, params: Mapping[str, str]) -> _Call[_PageT]:
        return _Call("GET", self.path, _json(self.page), params=params)

    def modify(self, item_id: str, fields: Mapping[str, Any]) -> _Call[T]:
        return _Call("PATCH", self.at(item_id), _json(self.item), body=_body(fields))

    def action(self, item_id: str, action: str) -> _Call[T]:
        return _Call("POST", self.at(item_id, action), _json(self.item), repeatable=False)

    def delete(self, item_id: str) -> _Call[None]:
        return _Call("DELETE", self.at(item_id), _nothing)


class _Calls:
    """Every route as a :class:`_Call`: what both clients send, and how each answer decodes."""

    tasks = _Items("/v1/tasks", "task_id", Task, TaskPage)
    orchestrations = _Items(
        "/v1/orchestrations", "orchestration_id", Orchestration, OrchestrationPage
    )
    functions = _Items("/v1/functions", "function_id", Function, FunctionPage)
    schedules = _Items("/v1/schedules", "schedule_id", Schedule, SchedulePage)
    queues = _Items("/v1/queues", "queue name", Queue, QueueList)

    def __init__(self, *, idempotency_keys: bool) -> None:
        self.keys = idempotency_keys

    def _create(self, path: str, body: dict[str, Any], key: str | None, kind: type[T]) -> _Call[T]:
        key = key if key is not None else (_new_key() if self.keys else None)
        return _Call(
            "POST",
            path,
            _json(kind),
            body=body,
            headers={"Idempotency-Key": key} if key else {},
            repeatable=key is not None,
        )

    def sign_in(self, username: str, password: str) -> _Call[TokenResponse]:
        body = {"username": username, "password": password}
        return _Call("POST", "/v1/auth/token", _json(TokenResponse), body=body, auth=False)

    # tasks
    def create_task(self, url: str, key: str | None, fields: Mapping[str, Any]) -> _Call[Task]:
        return self._create("/v1/tasks", {"url": url, **_body(fields)}, key, Task)

    def create_tasks(self, tasks: Sequence[Mapping[str, Any]]) -> _Call[TaskBatchResult]:
        items = [_body(t) for t in tasks]
        if self.keys:
            items = [
                t if t.get("idempotency_key") else {**t, "idempotency_key": _new_key()}
                for t in items
            ]
        every_key = all(t.get("idempotency_key") for t in items)
        return _Call(
            "POST",
            "/v1/tasks/batch",
            _json(TaskBatchResult),
            body={"tasks": items},
            repeatable=every_key,
        )

    # orchestrations
    def create_orchestration(
        self, steps: Sequence[Mapping[str, Any]], key: str | None, fields: Mapping[str, Any]
    ) -> _Call[Orchestration]:
        body = {"steps": _value(list(steps)), **_body(fields)}
        return self._create("/v1/orchestrations", body, key, Orchestration)

    def send_event(self, orchestration_id: str, name: str, body: Any) -> _Call[None]:
        path = self.orchestrations.at(orchestration_id, "events", _check_id(name, "event name"))
        # Not sent again: a repeat of a delivered event is answered 409, not the first answer.
        return _Call("POST", path, _nothing, body=_value(body), repeatable=False)

    # functions
    def create_function(
        self,
        *,
        name: str,
        runtime: str,
        code: str | None,
        code_file: str | os.PathLike[str] | IO[bytes] | None,
        fields: Mapping[str, Any],
    ) -> _Call[Function]:
        given = {k: v for k, v in fields.items() if v is not None}
        if (code is None) == (code_file is None):
            raise ValueError("give code (the source text) or code_file, exactly one")
        if code is not None:
            body = {"name": name, "runtime": runtime, "code": code, **_body(given)}
            # A function has no Idempotency-Key: a repeat would make a second one.
            return _Call("POST", "/v1/functions", _json(Function), body=body, repeatable=False)
        if isinstance(code_file, str | os.PathLike):
            path = Path(code_file)
            filename, content = path.name, path.read_bytes()
        else:
            assert code_file is not None
            filename, content = Path(getattr(code_file, "name", "code")).name, code_file.read()
        data = {"name": name, "runtime": runtime}
        for k, v in given.items():
            data[k] = msgspec.json.encode(_value(v)).decode() if k == "schedule" else str(v)
        form = (data, {"code": (filename, content)})
        return _Call("POST", "/v1/functions", _json(Function), form=form, repeatable=False)

    # schedules
    def create_schedule(
        self, task: Mapping[str, Any], fields: Mapping[str, Any]
    ) -> _Call[Schedule]:
        body = {"task": _body(task), **_body(fields)}
        # No Idempotency-Key on schedules: a repeat after a lost answer could make a second one.
        return _Call("POST", "/v1/schedules", _json(Schedule), body=body, repeatable=False)

    # queues
    def put_queue(self, name: str, settings: Mapping[str, Any]) -> _Call[Queue]:
        return _Call("PUT", self.queues.at(name), _json(Queue), body=dict(settings))

    # signing keys, operations
    def signing_keys(self) -> _Call[SigningKeys]:
        return _Call("GET", "/v1/signing-keys", _json(SigningKeys))

    def rotate_signing_keys(self) -> _Call[SigningKeys]:
        return _Call("POST", "/v1/signing-keys/rotate", _json(SigningKeys), repeatable=False)

    def stats(self) -> _Call[Stats]:
        return _Call("GET", "/v1/stats", _json(Stats))

    def health(self, path: str) -> _Call[Health]:
        # /readyz answers 503 with its reason when Redis is out of reach: an answer, not retried.
        return _Call("GET", path, _json(Health), auth=False, answers=frozenset({503}))

    def metrics(self, token: str | None) -> _Call[str]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return _Call("GET", "/metrics", _text, headers=headers, auth=False)

    def openapi(self) -> _Call[dict[str, Any]]:
        return _Call("GET", "/openapi.json", _any_json, auth=False)


# -- answers into errors, and when to send again -----------------------------------------------

_BY_STATUS: dict[int, type[errors.ApiError]] = {
    400: errors.BadRequest,
    401: errors.Unauthorized,
    403: errors.Forbidden,
    404: errors.NotFound,
    409: errors.Conflict,
    413: errors.PayloadTooLarge,
    422: errors.ValidationFailed,
    429: errors.TooManyRequests,
    503: errors.Unavailable,
}
_KEPT_HEADERS = ("Retry-After", "WWW-Authenticate", "Allow")


def error_from(r: httpx.Response) -> errors.ApiError:
    """The :mod:`taskorch.errors` class the API raised for this answer, with its body."""
    code, message, details = f"http_{r.status_code}", "", []
    try:
        body = msgspec.json.decode(r.content)
        err = body["error"]
        code, message = str(err["code"]), str(err["message"])
        details = [d for d in err.get("details") or [] if isinstance(d, dict)]
    except Exception:  # not our error body: a proxy's page, a 502
        text = r.text.strip()[:200]
        message = f"HTTP {r.status_code} {r.reason_phrase}" + (f": {text}" if text else "")
    cls = _BY_STATUS.get(r.status_code, errors.ApiError)
    if cls is errors.Unavailable and any(d.get("outcome") == "unknown" for d in details):
        cls = errors.CreateOutcomeUnknown
    exc = cls.__new__(cls)
    headers = {h: r.headers[h] for h in _KEPT_HEADERS if h in r.headers}
    errors.ApiError.__init__(exc, message, code=code, details=details, headers=headers)
    exc.status_code = r.status_code
    return exc


@dataclass(frozen=True)
class _Retry:
    """When to send a request again (see the module docstring); None: raise now."""

    retries: int
    max_wait_s: float

    def _backoff(self, attempt: int) -> float:
        return min(c.CLIENT_FIRST_BACKOFF_S * 2.0**attempt, self.max_wait_s)

    def after_error(
        self, call: _Call[Any], attempt: int, exc: httpx.TransportError
    ) -> float | None:
        if attempt >= self.retries:
            return None
        # A connection never made sent nothing; anything later may have reached the API.
        sent = not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
        if sent and not call.repeatable:
            return None
        return self._backoff(attempt)

    def after_answer(self, call: _Call[Any], attempt: int, exc: errors.ApiError) -> float | None:
        if attempt >= self.retries or exc.status_code not in (429, 503):
            return None
        stored_nothing = any(d.get("outcome") == "not_stored" for d in exc.details)
        if exc.status_code == 503 and not (call.repeatable or stored_nothing):
            return None
        wait = retry_after_s(exc.headers.get("Retry-After"))
        if wait is None:
            return self._backoff(attempt)
        # Asked to wait longer than we would (a sign-in throttled for minutes): say so now.
        return wait if wait <= self.max_wait_s else None


def _unreachable(
    call: _Call[Any], base_url: str, exc: httpx.TransportError
) -> errors.ApiUnreachable:
    return errors.ApiUnreachable(
        f"{call.method} {base_url}{call.path} failed: {type(exc).__name__}: {exc or 'no answer'}."
        " Is TASKORCH_API_URL right and the API running?"
    )


def _event(line: str) -> Event | None:
    """The Event of one line of server-sent events: the API sends one per ``data:`` line."""
    if not line.startswith("data:"):
        return None
    return msgspec.json.decode(line[5:].strip(), type=Event)


# -- what both clients hold ------------------------------------------------------------------


class _Base:
    def __init__(
        self,
        base_url: str | None,
        *,
        token: str | None,
        retries: int,
        max_retry_wait_s: float,
        idempotency_keys: bool,
    ) -> None:
        url = base_url or os.environ.get(API_URL_ENV)
        if not url:
            raise errors.ConfigError(f"No API address: pass base_url or set {API_URL_ENV}.")
        self.base_url = url.rstrip("/")
        self.token = bare_token(token if token is not None else os.environ.get(TOKEN_ENV))
        self._calls = _Calls(idempotency_keys=idempotency_keys)
        self._retry = _Retry(retries=retries, max_wait_s=max_retry_wait_s)

    def _request(self, call: _Call[Any]) -> dict[str, Any]:
        headers = dict(call.headers)
        if call.auth:
            if not self.token:
                raise errors.ConfigError(f"No token: pass token= or set {TOKEN_ENV}.")
            headers["Authorization"] = f"Bearer {self.token}"
        kw: dict[str, Any] = {"params": call.params, "headers": headers}
        if call.form is not None:
            kw["data"], kw["files"] = call.form
        elif call.body is not msgspec.UNSET:
            kw["content"] = msgspec.json.encode(call.body)
            headers["Content-Type"] = "application/json"
        return kw
