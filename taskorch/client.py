"""A typed Python client for the taskorch API: :class:`Client` blocks, :class:`AsyncClient`
awaits; both cover every route of the contract with the same methods.

Answers are the models the API itself answers with (:mod:`taskorch.models`); an error answer
is raised as the class of :mod:`taskorch.errors` the API raised (``NotFound``, ``Conflict``,
``ValidationFailed`` with its ``details`` ...), carrying its ``code``, ``message``, ``details``
and ``status_code``. Lists page on through ``iter_*``; a 503 or 429 is waited out as its
``Retry-After`` says, a bounded number of times, and only where sending again is safe: a create
is sent with an ``Idempotency-Key`` (one is made unless you give yours), so a repeat after a 503
``unknown`` stores it at most once (docs/reliability.md). docs/client.md shows it at work.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import os
import re
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Generic, Literal, TypedDict, TypeVar, Unpack

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
    TaskBatchOutcome,
    TaskBatchResult,
    TaskPage,
    TaskStatus,
    TokenResponse,
)

__all__ = [
    "AsyncClient",
    "Client",
    "Event",
    "Health",
    "OrchestrationFields",
    "QueueSettings",
    "ScheduleFields",
    "Stats",
    "TaskFields",
    "bare_token",
]

T = TypeVar("T")
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
    """An orchestration's optional fields (CONTRACT.md "Orchestrations")."""

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


class _Calls:
    """Every route as a :class:`_Call`: what both clients send, and how each answer decodes."""

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

    def get_task(self, task_id: str) -> _Call[Task]:
        return _Call("GET", f"/v1/tasks/{_check_id(task_id, 'task_id')}", _json(Task))

    def list_tasks(self, params: dict[str, str]) -> _Call[TaskPage]:
        return _Call("GET", "/v1/tasks", _json(TaskPage), params=params)

    def modify_task(self, task_id: str, fields: Mapping[str, Any]) -> _Call[Task]:
        path = f"/v1/tasks/{_check_id(task_id, 'task_id')}"
        return _Call("PATCH", path, _json(Task), body=_body(fields))

    def task_action(self, task_id: str, action: str) -> _Call[Task]:
        path = f"/v1/tasks/{_check_id(task_id, 'task_id')}/{action}"
        return _Call("POST", path, _json(Task), repeatable=False)

    # orchestrations
    def create_orchestration(
        self, steps: Sequence[Mapping[str, Any]], key: str | None, fields: Mapping[str, Any]
    ) -> _Call[Orchestration]:
        body = {"steps": _value(list(steps)), **_body(fields)}
        return self._create("/v1/orchestrations", body, key, Orchestration)

    def get_orchestration(self, orc_id: str) -> _Call[Orchestration]:
        path = f"/v1/orchestrations/{_check_id(orc_id, 'orchestration_id')}"
        return _Call("GET", path, _json(Orchestration))

    def list_orchestrations(self, params: dict[str, str]) -> _Call[OrchestrationPage]:
        return _Call("GET", "/v1/orchestrations", _json(OrchestrationPage), params=params)

    def modify_orchestration(self, orc_id: str, fields: Mapping[str, Any]) -> _Call[Orchestration]:
        path = f"/v1/orchestrations/{_check_id(orc_id, 'orchestration_id')}"
        return _Call("PATCH", path, _json(Orchestration), body=_body(fields))

    def cancel_orchestration(self, orc_id: str) -> _Call[Orchestration]:
        path = f"/v1/orchestrations/{_check_id(orc_id, 'orchestration_id')}/cancel"
        return _Call("POST", path, _json(Orchestration), repeatable=False)

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

    def get_function(self, fn_id: str) -> _Call[Function]:
        return _Call("GET", f"/v1/functions/{_check_id(fn_id, 'function_id')}", _json(Function))

    def list_functions(self, params: dict[str, str]) -> _Call[FunctionPage]:
        return _Call("GET", "/v1/functions", _json(FunctionPage), params=params)

    def delete_function(self, fn_id: str) -> _Call[None]:
        return _Call("DELETE", f"/v1/functions/{_check_id(fn_id, 'function_id')}", _nothing)

    # schedules
    def create_schedule(
        self, task: Mapping[str, Any], fields: Mapping[str, Any]
    ) -> _Call[Schedule]:
        body = {"task": _body(task), **_body(fields)}
        # No Idempotency-Key on schedules: a repeat after a lost answer could make a second one.
        return _Call("POST", "/v1/schedules", _json(Schedule), body=body, repeatable=False)

    def get_schedule(self, sch_id: str) -> _Call[Schedule]:
        return _Call("GET", f"/v1/schedules/{_check_id(sch_id, 'schedule_id')}", _json(Schedule))

    def list_schedules(self, params: dict[str, str]) -> _Call[SchedulePage]:
        return _Call("GET", "/v1/schedules", _json(SchedulePage), params=params)

    def modify_schedule(self, sch_id: str, fields: Mapping[str, Any]) -> _Call[Schedule]:
        path = f"/v1/schedules/{_check_id(sch_id, 'schedule_id')}"
        return _Call("PATCH", path, _json(Schedule), body=_body(fields))

    def delete_schedule(self, sch_id: str) -> _Call[None]:
        return _Call("DELETE", f"/v1/schedules/{_check_id(sch_id, 'schedule_id')}", _nothing)

    def schedule_action(self, sch_id: str, action: str) -> _Call[Schedule]:
        path = f"/v1/schedules/{_check_id(sch_id, 'schedule_id')}/{action}"
        return _Call("POST", path, _json(Schedule), repeatable=False)

    # queues
    def put_queue(self, name: str, settings: Mapping[str, Any]) -> _Call[Queue]:
        path = f"/v1/queues/{_check_id(name, 'queue name')}"
        return _Call("PUT", path, _json(Queue), body=dict(settings))

    def get_queue(self, name: str) -> _Call[Queue]:
        return _Call("GET", f"/v1/queues/{_check_id(name, 'queue name')}", _json(Queue))

    def list_queues(self) -> _Call[QueueList]:
        return _Call("GET", "/v1/queues", _json(QueueList))

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


def _retry_after_s(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())


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
        wait = _retry_after_s(exc.headers.get("Retry-After"))
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


def _events(lines: Iterator[str]) -> Iterator[Event]:
    """Server-sent events in ``lines``: one Event per ``data:`` line the API sends."""
    for line in lines:
        if line.startswith("data:"):
            yield msgspec.json.decode(line[5:].strip(), type=Event)


# -- the clients ------------------------------------------------------------------------------


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


class Client(_Base):
    """The API, blocking. Use it as a context manager, or call :meth:`close`.

    Args:
        base_url: the API's address (``http://127.0.0.1:3000``); default ``$TASKORCH_API_URL``.
        token: a JWT (``taskorch token``, :meth:`sign_in`); default ``$TASKORCH_TOKEN``.
        timeout_s: per request. ``rotate_signing_keys`` alone takes about 2 s.
        retries: further sends of a request answered 503/429 (or lost) where that is safe.
        max_retry_wait_s: the longest ``Retry-After`` waited out; a longer one raises at once.
        idempotency_keys: give each create an ``Idempotency-Key`` you did not (stored 24 h),
            so that a create answered 503 ``unknown`` or lost is sent again safely.
        transport: an ``httpx`` transport (``httpx.MockTransport``, ``ASGITransport``...).
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        token: str | None = None,
        timeout_s: float = c.CLIENT_TIMEOUT_S,
        retries: int = c.CLIENT_RETRIES,
        max_retry_wait_s: float = c.CLIENT_MAX_RETRY_WAIT_S,
        idempotency_keys: bool = True,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url,
            token=token,
            retries=retries,
            max_retry_wait_s=max_retry_wait_s,
            idempotency_keys=idempotency_keys,
        )
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout_s, transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the client's connections."""
        self._http.close()

    def _send(self, call: _Call[T]) -> T:
        attempt = 0
        while True:
            try:
                r = self._http.request(call.method, call.path, **self._request(call))
            except httpx.TransportError as exc:
                wait = self._retry.after_error(call, attempt, exc)
                if wait is None:
                    raise _unreachable(call, self.base_url, exc) from exc
            else:
                if r.is_success or r.status_code in call.answers:
                    return call.decode(r)
                error = error_from(r)
                wait = self._retry.after_answer(call, attempt, error)
                if wait is None:
                    raise error
            attempt += 1
            time.sleep(wait)

    def _pages(self, fetch: Callable[[str | None], Any]) -> Iterator[Any]:
        cursor: str | None = None
        while True:
            page = fetch(cursor)
            yield from page.items
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    # -- auth --
    def sign_in(self, *, username: str, password: str) -> TokenResponse:
        """``POST /v1/auth/token``: a token for a user; this client uses it from now on."""
        answer = self._send(self._calls.sign_in(username, password))
        self.token = answer.access_token
        return answer

    # -- tasks --
    def create_task(
        self, *, url: str, idempotency_key: str | None = None, **fields: Unpack[TaskFields]
    ) -> Task:
        """``POST /v1/tasks``: one HTTP call to ``url`` at the time you choose.

        A repeat with the same ``idempotency_key`` (per owner, 24 h) returns the first task.
        """
        return self._send(self._calls.create_task(url, idempotency_key, fields))

    def create_tasks(self, tasks: Sequence[Mapping[str, Any]]) -> list[TaskBatchOutcome]:
        """``POST /v1/tasks/batch``: each item is a task body (it may carry ``idempotency_key``);
        each outcome has ``task`` or ``error``, in the same order. More than 1,000 are sent in
        batches of 1,000."""
        out: list[TaskBatchOutcome] = []
        for i in range(0, len(tasks), c.MAX_BATCH_TASKS):
            out += self._send(self._calls.create_tasks(tasks[i : i + c.MAX_BATCH_TASKS])).items
        return out

    def get_task(self, task_id: str) -> Task:
        """``GET /v1/tasks/{id}``: the task with its attempts."""
        return self._send(self._calls.get_task(task_id))

    def list_tasks(
        self,
        *,
        status: TaskStatus | str | None = None,
        queue: str | None = None,
        schedule_id: str | None = None,
        name: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> TaskPage:
        """``GET /v1/tasks``: one page, newest first; ``name`` is a prefix."""
        params = _params(
            status=status,
            queue=queue,
            schedule_id=schedule_id,
            name=name,
            limit=limit,
            cursor=cursor,
        )
        return self._send(self._calls.list_tasks(params))

    def iter_tasks(
        self,
        *,
        status: TaskStatus | str | None = None,
        queue: str | None = None,
        schedule_id: str | None = None,
        name: str | None = None,
        page_size: int = PAGE_SIZE,
    ) -> Iterator[Task]:
        """Every task :meth:`list_tasks` would list, page after page, newest first."""
        return self._pages(
            lambda cursor: self.list_tasks(
                status=status,
                queue=queue,
                schedule_id=schedule_id,
                name=name,
                limit=page_size,
                cursor=cursor,
            )
        )

    def modify_task(self, task_id: str, **fields: Unpack[TaskPatchFields]) -> Task:
        """``PATCH /v1/tasks/{id}`` while ``scheduled`` or ``retrying`` (else ``Conflict``)."""
        return self._send(self._calls.modify_task(task_id, fields))

    def cancel_task(self, task_id: str) -> Task:
        """``POST /v1/tasks/{id}/cancel`` while ``scheduled`` or ``retrying`` (else ``Conflict``)."""
        return self._send(self._calls.task_action(task_id, "cancel"))

    def retry_task(self, task_id: str) -> Task:
        """``POST /v1/tasks/{id}/retry``: a ``failed`` task again now, with fresh retries."""
        return self._send(self._calls.task_action(task_id, "retry"))

    # -- orchestrations --
    def create_orchestration(
        self,
        *,
        steps: Sequence[Mapping[str, Any]],
        idempotency_key: str | None = None,
        **fields: Unpack[OrchestrationFields],
    ) -> Orchestration:
        """``POST /v1/orchestrations``: ``steps`` run one after another (task specs)."""
        return self._send(self._calls.create_orchestration(steps, idempotency_key, fields))

    def get_orchestration(self, orchestration_id: str) -> Orchestration:
        """``GET /v1/orchestrations/{id}``."""
        return self._send(self._calls.get_orchestration(orchestration_id))

    def list_orchestrations(
        self,
        *,
        status: OrchestrationStatus | str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> OrchestrationPage:
        """``GET /v1/orchestrations``: one page, newest first."""
        params = _params(status=status, limit=limit, cursor=cursor)
        return self._send(self._calls.list_orchestrations(params))

    def iter_orchestrations(
        self, *, status: OrchestrationStatus | str | None = None, page_size: int = PAGE_SIZE
    ) -> Iterator[Orchestration]:
        """Every orchestration, page after page, newest first."""
        return self._pages(
            lambda cursor: self.list_orchestrations(status=status, limit=page_size, cursor=cursor)
        )

    def modify_orchestration(
        self, orchestration_id: str, **fields: Unpack[OrchestrationPatchFields]
    ) -> Orchestration:
        """``PATCH /v1/orchestrations/{id}`` while ``scheduled``."""
        return self._send(self._calls.modify_orchestration(orchestration_id, fields))

    def cancel_orchestration(self, orchestration_id: str) -> Orchestration:
        """``POST /v1/orchestrations/{id}/cancel`` while ``scheduled`` or ``running``."""
        return self._send(self._calls.cancel_orchestration(orchestration_id))

    # -- functions --
    def create_function(
        self,
        *,
        name: str,
        runtime: Literal["python", "java", "node"],
        code: str | None = None,
        code_file: str | os.PathLike[str] | IO[bytes] | None = None,
        handler: str | None = None,
        requirements: str | None = None,
        provider: Literal["local", "aws"] | None = None,
        schedule: Mapping[str, Any] | None = None,
    ) -> Function:
        """``POST /v1/functions``: ``code`` as JSON, or ``code_file`` uploaded as multipart."""
        fields = {
            "handler": handler,
            "requirements": requirements,
            "provider": provider,
            "schedule": schedule,
        }
        call = self._calls.create_function(
            name=name, runtime=runtime, code=code, code_file=code_file, fields=fields
        )
        return self._send(call)

    def get_function(self, function_id: str) -> Function:
        """``GET /v1/functions/{id}``: ``status`` building, ready (with ``url``) or failed."""
        return self._send(self._calls.get_function(function_id))

    def list_functions(
        self, *, limit: int | None = None, cursor: str | None = None
    ) -> FunctionPage:
        """``GET /v1/functions``: one page, newest first."""
        return self._send(self._calls.list_functions(_params(limit=limit, cursor=cursor)))

    def iter_functions(self, *, page_size: int = PAGE_SIZE) -> Iterator[Function]:
        """Every function, page after page."""
        return self._pages(lambda cursor: self.list_functions(limit=page_size, cursor=cursor))

    def delete_function(self, function_id: str) -> None:
        """``DELETE /v1/functions/{id}``."""
        self._send(self._calls.delete_function(function_id))

    # -- schedules --
    def create_schedule(
        self, *, task: Mapping[str, Any], **fields: Unpack[ScheduleFields]
    ) -> Schedule:
        """``POST /v1/schedules``: ``task`` (a task body with ``url``, no time) made at each
        time of ``cron`` or ``every``."""
        return self._send(self._calls.create_schedule(task, fields))

    def get_schedule(self, schedule_id: str) -> Schedule:
        """``GET /v1/schedules/{id}``, with its ``next_runs``."""
        return self._send(self._calls.get_schedule(schedule_id))

    def list_schedules(
        self,
        *,
        status: ScheduleStatus | str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> SchedulePage:
        """``GET /v1/schedules``: one page, newest first."""
        params = _params(status=status, limit=limit, cursor=cursor)
        return self._send(self._calls.list_schedules(params))

    def iter_schedules(
        self, *, status: ScheduleStatus | str | None = None, page_size: int = PAGE_SIZE
    ) -> Iterator[Schedule]:
        """Every schedule, page after page."""
        return self._pages(
            lambda cursor: self.list_schedules(status=status, limit=page_size, cursor=cursor)
        )

    def modify_schedule(self, schedule_id: str, **fields: Unpack[SchedulePatchFields]) -> Schedule:
        """``PATCH /v1/schedules/{id}``: ``cron`` replaces an ``every`` and the other way round."""
        return self._send(self._calls.modify_schedule(schedule_id, fields))

    def delete_schedule(self, schedule_id: str) -> None:
        """``DELETE /v1/schedules/{id}``."""
        self._send(self._calls.delete_schedule(schedule_id))

    def pause_schedule(self, schedule_id: str) -> Schedule:
        """``POST /v1/schedules/{id}/pause``."""
        return self._send(self._calls.schedule_action(schedule_id, "pause"))

    def resume_schedule(self, schedule_id: str) -> Schedule:
        """``POST /v1/schedules/{id}/resume``."""
        return self._send(self._calls.schedule_action(schedule_id, "resume"))

    # -- queues --
    def put_queue(self, name: str, **settings: Unpack[QueueSettings]) -> Queue:
        """``PUT /v1/queues/{name}``: ``rate`` (calls/s), ``max_concurrent``, ``paused``."""
        return self._send(self._calls.put_queue(name, settings))

    def pause_queue(self, name: str) -> Queue:
        """The queue dispatches nothing until resumed (its limits stay)."""
        return self.put_queue(name, paused=True)

    def resume_queue(self, name: str) -> Queue:
        """The queue dispatches again, in due order."""
        return self.put_queue(name, paused=False)

    def get_queue(self, name: str) -> Queue:
        """``GET /v1/queues/{name}``: settings, task counts by status, tasks waiting their turn."""
        return self._send(self._calls.get_queue(name))

    def list_queues(self) -> list[Queue]:
        """``GET /v1/queues``: every queue of the owner, ``default`` first."""
        return self._send(self._calls.list_queues()).items

    # -- signing keys --
    def signing_keys(self) -> SigningKeys:
        """``GET /v1/signing-keys``: the secrets that sign your calls, current first."""
        return self._send(self._calls.signing_keys())

    def rotate_signing_keys(self) -> SigningKeys:
        """``POST /v1/signing-keys/rotate``: a new secret; the old one signs too for 24 h."""
        return self._send(self._calls.rotate_signing_keys())

    # -- live view and operations --
    def events(self) -> Iterator[Event]:
        """``GET /v1/events``: your changes as they happen, until you stop iterating (close the
        iterator, or leave a ``with contextlib.closing(...)``)."""
        kw = self._request(_Call("GET", "/v1/events", _nothing))
        timeout = httpx.Timeout(self._http.timeout.connect, read=None)
        with self._http.stream("GET", "/v1/events", timeout=timeout, **kw) as r:
            if not r.is_success:
                r.read()
                raise error_from(r)
            yield from _events(r.iter_lines())

    def stats(self) -> Stats:
        """``GET /v1/stats``: counts by status, for dashboards."""
        return self._send(self._calls.stats())

    def health(self) -> Health:
        """``GET /healthz``: the API process is up."""
        return self._send(self._calls.health("/healthz"))

    def ready(self) -> Health:
        """``GET /readyz``: whether the API reaches Redis (``ok`` false, not an error, when not)."""
        return self._send(self._calls.health("/readyz"))

    def metrics(self, *, token: str | None = None) -> str:
        """``GET /metrics``: Prometheus text (``token``: TASKORCH_METRICS_TOKEN, if set)."""
        return self._send(self._calls.metrics(token))

    def openapi(self) -> dict[str, Any]:
        """``GET /openapi.json``: the OpenAPI document."""
        return self._send(self._calls.openapi())


class AsyncClient(_Base):
    """The API, awaited: the same methods as :class:`Client` (``iter_*`` and ``events`` are
    async iterators). Use it as an async context manager, or await :meth:`aclose`."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        token: str | None = None,
        timeout_s: float = c.CLIENT_TIMEOUT_S,
        retries: int = c.CLIENT_RETRIES,
        max_retry_wait_s: float = c.CLIENT_MAX_RETRY_WAIT_S,
        idempotency_keys: bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url,
            token=token,
            retries=retries,
            max_retry_wait_s=max_retry_wait_s,
            idempotency_keys=idempotency_keys,
        )
        self._http = httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout_s, transport=transport
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the client's connections."""
        await self._http.aclose()

    async def _send(self, call: _Call[T]) -> T:
        attempt = 0
        while True:
            try:
                r = await self._http.request(call.method, call.path, **self._request(call))
            except httpx.TransportError as exc:
                wait = self._retry.after_error(call, attempt, exc)
                if wait is None:
                    raise _unreachable(call, self.base_url, exc) from exc
            else:
                if r.is_success or r.status_code in call.answers:
                    return call.decode(r)
                error = error_from(r)
                wait = self._retry.after_answer(call, attempt, error)
                if wait is None:
                    raise error
            attempt += 1
            await asyncio.sleep(wait)

    async def _pages(self, fetch: Callable[[str | None], Any]) -> AsyncIterator[Any]:
        cursor: str | None = None
        while True:
            page = await fetch(cursor)
            for item in page.items:
                yield item
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    async def sign_in(self, *, username: str, password: str) -> TokenResponse:
        """See :meth:`Client.sign_in`."""
        answer = await self._send(self._calls.sign_in(username, password))
        self.token = answer.access_token
        return answer

    async def create_task(
        self, *, url: str, idempotency_key: str | None = None, **fields: Unpack[TaskFields]
    ) -> Task:
        """See :meth:`Client.create_task`."""
        return await self._send(self._calls.create_task(url, idempotency_key, fields))

    async def create_tasks(self, tasks: Sequence[Mapping[str, Any]]) -> list[TaskBatchOutcome]:
        """See :meth:`Client.create_tasks`."""
        out: list[TaskBatchOutcome] = []
        for i in range(0, len(tasks), c.MAX_BATCH_TASKS):
            batch = self._calls.create_tasks(tasks[i : i + c.MAX_BATCH_TASKS])
            out += (await self._send(batch)).items
        return out

    async def get_task(self, task_id: str) -> Task:
        """See :meth:`Client.get_task`."""
        return await self._send(self._calls.get_task(task_id))

    async def list_tasks(
        self,
        *,
        status: TaskStatus | str | None = None,
        queue: str | None = None,
        schedule_id: str | None = None,
        name: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> TaskPage:
        """See :meth:`Client.list_tasks`."""
        params = _params(
            status=status,
            queue=queue,
            schedule_id=schedule_id,
            name=name,
            limit=limit,
            cursor=cursor,
        )
        return await self._send(self._calls.list_tasks(params))

    def iter_tasks(
        self,
        *,
        status: TaskStatus | str | None = None,
        queue: str | None = None,
        schedule_id: str | None = None,
        name: str | None = None,
        page_size: int = PAGE_SIZE,
    ) -> AsyncIterator[Task]:
        """``async for task in client.iter_tasks(...)``: see :meth:`Client.iter_tasks`."""
        return self._pages(
            lambda cursor: self.list_tasks(
                status=status,
                queue=queue,
                schedule_id=schedule_id,
                name=name,
                limit=page_size,
                cursor=cursor,
            )
        )

    async def modify_task(self, task_id: str, **fields: Unpack[TaskPatchFields]) -> Task:
        """See :meth:`Client.modify_task`."""
        return await self._send(self._calls.modify_task(task_id, fields))

    async def cancel_task(self, task_id: str) -> Task:
        """See :meth:`Client.cancel_task`."""
        return await self._send(self._calls.task_action(task_id, "cancel"))

    async def retry_task(self, task_id: str) -> Task:
        """See :meth:`Client.retry_task`."""
        return await self._send(self._calls.task_action(task_id, "retry"))

    async def create_orchestration(
        self,
        *,
        steps: Sequence[Mapping[str, Any]],
        idempotency_key: str | None = None,
        **fields: Unpack[OrchestrationFields],
    ) -> Orchestration:
        """See :meth:`Client.create_orchestration`."""
        return await self._send(self._calls.create_orchestration(steps, idempotency_key, fields))

    async def get_orchestration(self, orchestration_id: str) -> Orchestration:
        """See :meth:`Client.get_orchestration`."""
        return await self._send(self._calls.get_orchestration(orchestration_id))

    async def list_orchestrations(
        self,
        *,
        status: OrchestrationStatus | str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> OrchestrationPage:
        """See :meth:`Client.list_orchestrations`."""
        params = _params(status=status, limit=limit, cursor=cursor)
        return await self._send(self._calls.list_orchestrations(params))

    def iter_orchestrations(
        self, *, status: OrchestrationStatus | str | None = None, page_size: int = PAGE_SIZE
    ) -> AsyncIterator[Orchestration]:
        """See :meth:`Client.iter_orchestrations`."""
        return self._pages(
            lambda cursor: self.list_orchestrations(status=status, limit=page_size, cursor=cursor)
        )

    async def modify_orchestration(
        self, orchestration_id: str, **fields: Unpack[OrchestrationPatchFields]
    ) -> Orchestration:
        """See :meth:`Client.modify_orchestration`."""
        return await self._send(self._calls.modify_orchestration(orchestration_id, fields))

    async def cancel_orchestration(self, orchestration_id: str) -> Orchestration:
        """See :meth:`Client.cancel_orchestration`."""
        return await self._send(self._calls.cancel_orchestration(orchestration_id))

    async def create_function(
        self,
        *,
        name: str,
        runtime: Literal["python", "java", "node"],
        code: str | None = None,
        code_file: str | os.PathLike[str] | IO[bytes] | None = None,
        handler: str | None = None,
        requirements: str | None = None,
        provider: Literal["local", "aws"] | None = None,
        schedule: Mapping[str, Any] | None = None,
    ) -> Function:
        """See :meth:`Client.create_function`."""
        fields = {
            "handler": handler,
            "requirements": requirements,
            "provider": provider,
            "schedule": schedule,
        }
        call = self._calls.create_function(
            name=name, runtime=runtime, code=code, code_file=code_file, fields=fields
        )
        return await self._send(call)

    async def get_function(self, function_id: str) -> Function:
        """See :meth:`Client.get_function`."""
        return await self._send(self._calls.get_function(function_id))

    async def list_functions(
        self, *, limit: int | None = None, cursor: str | None = None
    ) -> FunctionPage:
        """See :meth:`Client.list_functions`."""
        return await self._send(self._calls.list_functions(_params(limit=limit, cursor=cursor)))

    def iter_functions(self, *, page_size: int = PAGE_SIZE) -> AsyncIterator[Function]:
        """See :meth:`Client.iter_functions`."""
        return self._pages(lambda cursor: self.list_functions(limit=page_size, cursor=cursor))

    async def delete_function(self, function_id: str) -> None:
        """See :meth:`Client.delete_function`."""
        await self._send(self._calls.delete_function(function_id))

    async def create_schedule(
        self, *, task: Mapping[str, Any], **fields: Unpack[ScheduleFields]
    ) -> Schedule:
        """See :meth:`Client.create_schedule`."""
        return await self._send(self._calls.create_schedule(task, fields))

    async def get_schedule(self, schedule_id: str) -> Schedule:
        """See :meth:`Client.get_schedule`."""
        return await self._send(self._calls.get_schedule(schedule_id))

    async def list_schedules(
        self,
        *,
        status: ScheduleStatus | str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> SchedulePage:
        """See :meth:`Client.list_schedules`."""
        params = _params(status=status, limit=limit, cursor=cursor)
        return await self._send(self._calls.list_schedules(params))

    def iter_schedules(
        self, *, status: ScheduleStatus | str | None = None, page_size: int = PAGE_SIZE
    ) -> AsyncIterator[Schedule]:
        """See :meth:`Client.iter_schedules`."""
        return self._pages(
            lambda cursor: self.list_schedules(status=status, limit=page_size, cursor=cursor)
        )

    async def modify_schedule(
        self, schedule_id: str, **fields: Unpack[SchedulePatchFields]
    ) -> Schedule:
        """See :meth:`Client.modify_schedule`."""
        return await self._send(self._calls.modify_schedule(schedule_id, fields))

    async def delete_schedule(self, schedule_id: str) -> None:
        """See :meth:`Client.delete_schedule`."""
        await self._send(self._calls.delete_schedule(schedule_id))

    async def pause_schedule(self, schedule_id: str) -> Schedule:
        """See :meth:`Client.pause_schedule`."""
        return await self._send(self._calls.schedule_action(schedule_id, "pause"))

    async def resume_schedule(self, schedule_id: str) -> Schedule:
        """See :meth:`Client.resume_schedule`."""
        return await self._send(self._calls.schedule_action(schedule_id, "resume"))

    async def put_queue(self, name: str, **settings: Unpack[QueueSettings]) -> Queue:
        """See :meth:`Client.put_queue`."""
        return await self._send(self._calls.put_queue(name, settings))

    async def pause_queue(self, name: str) -> Queue:
        """See :meth:`Client.pause_queue`."""
        return await self.put_queue(name, paused=True)

    async def resume_queue(self, name: str) -> Queue:
        """See :meth:`Client.resume_queue`."""
        return await self.put_queue(name, paused=False)

    async def get_queue(self, name: str) -> Queue:
        """See :meth:`Client.get_queue`."""
        return await self._send(self._calls.get_queue(name))

    async def list_queues(self) -> list[Queue]:
        """See :meth:`Client.list_queues`."""
        return (await self._send(self._calls.list_queues())).items

    async def signing_keys(self) -> SigningKeys:
        """See :meth:`Client.signing_keys`."""
        return await self._send(self._calls.signing_keys())

    async def rotate_signing_keys(self) -> SigningKeys:
        """See :meth:`Client.rotate_signing_keys`."""
        return await self._send(self._calls.rotate_signing_keys())

    async def events(self) -> AsyncIterator[Event]:
        """``async for event in client.events()``: see :meth:`Client.events`."""
        kw = self._request(_Call("GET", "/v1/events", _nothing))
        timeout = httpx.Timeout(self._http.timeout.connect, read=None)
        async with self._http.stream("GET", "/v1/events", timeout=timeout, **kw) as r:
            if not r.is_success:
                await r.aread()
                raise error_from(r)
            async for line in r.aiter_lines():
                for event in _events(iter([line])):
                    yield event

    async def stats(self) -> Stats:
        """See :meth:`Client.stats`."""
        return await self._send(self._calls.stats())

    async def health(self) -> Health:
        """See :meth:`Client.health`."""
        return await self._send(self._calls.health("/healthz"))

    async def ready(self) -> Health:
        """See :meth:`Client.ready`."""
        return await self._send(self._calls.health("/readyz"))

    async def metrics(self, *, token: str | None = None) -> str:
        """See :meth:`Client.metrics`."""
        return await self._send(self._calls.metrics(token))

    async def openapi(self) -> dict[str, Any]:
        """See :meth:`Client.openapi`."""
        return await self._send(self._calls.openapi())
