"""Every method of both clients, written once (see ``_declare.py``): its signature, its docstring
and the requests it makes, and how a request is tried again (``_tries``). The client files hold
only what differs: sending one request or sleeping (``_do``), running a plan (``_run``), paging on
(``_iterate``), ``events`` and closing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import IO, Any, ClassVar, Generic, Literal, TypeVar, Unpack

import httpx

from taskorch import constants as c
from taskorch.client._common import (
    PAGE_SIZE,
    Health,
    OrchestrationFields,
    OrchestrationPatchFields,
    QueueSettings,
    ScheduleFields,
    SchedulePatchFields,
    Stats,
    T,
    TaskFields,
    TaskPatchFields,
    _Base,
    _Call,
    _params,
    _unreachable,
    error_from,
)
from taskorch.client._declare import _endpoint, _Fetch, _paged, _Plan, _step
from taskorch.models import (
    Function,
    FunctionPage,
    Orchestration,
    OrchestrationPage,
    OrchestrationStatus,
    Queue,
    Schedule,
    SchedulePage,
    ScheduleStatus,
    SigningKeys,
    Task,
    TaskBatchOutcome,
    TaskPage,
    TaskStatus,
    TokenResponse,
)

_Transport = TypeVar("_Transport")  # httpx.BaseTransport (Client), httpx.AsyncBaseTransport


class _Methods(_Base, Generic[_Transport]):
    """The methods of both clients; each client class adds how it sends (``_HTTP``, ``_do``,
    ``_run``, ``_iterate``), ``events`` and how it closes."""

    _HTTP: ClassVar[Callable[..., Any]]  # httpx.Client or httpx.AsyncClient
    _http: Any

    def __init__(
        self,
        base_url: str | None = None,
        *,
        token: str | None = None,
        timeout_s: float = c.CLIENT_TIMEOUT_S,
        retries: int = c.CLIENT_RETRIES,
        max_retry_wait_s: float = c.CLIENT_MAX_RETRY_WAIT_S,
        idempotency_keys: bool = True,
        transport: _Transport | None = None,
    ) -> None:
        """A client of the API at ``base_url``; it connects at its first request.

        Args:
            base_url: the API's address (``http://127.0.0.1:3000``); default ``$TASKORCH_API_URL``.
            token: a JWT (``taskorch token``, :meth:`sign_in`); default ``$TASKORCH_TOKEN``.
            timeout_s: per request. ``rotate_signing_keys`` alone takes about 2 s.
            retries: further sends of a request answered 503/429 (or lost) where that is safe.
            max_retry_wait_s: the longest ``Retry-After`` waited out; a longer one raises at once.
            idempotency_keys: give each create an ``Idempotency-Key`` you did not (stored 24 h),
                so that a create answered 503 ``unknown`` or lost is sent again safely.
            transport: an ``httpx`` transport (``httpx.MockTransport``; ``httpx.WSGITransport`` for
                Client, ``httpx.ASGITransport`` for AsyncClient...).
        """
        super().__init__(
            base_url,
            token=token,
            retries=retries,
            max_retry_wait_s=max_retry_wait_s,
            idempotency_keys=idempotency_keys,
        )
        self._http = self._HTTP(base_url=self.base_url, timeout=timeout_s, transport=transport)

    def _tries(self, plan: _Plan[T]) -> Generator[_Call[Any] | float, Any, T]:
        """``plan`` with each of its requests tried until answered, no I/O: yields a
        :class:`_Call` to send once (and is sent the response, or the ``httpx.TransportError``)
        or the seconds to sleep before the next try; returns what the plan returns."""
        done, call = _step(plan, None)
        while not done:
            attempt = 0
            while True:
                r = yield call
                if isinstance(r, httpx.TransportError):
                    wait = self._retry.after_error(call, attempt, r)
                    if wait is None:
                        raise _unreachable(call, self.base_url, r) from r
                else:
                    if r.is_success or r.status_code in call.answers:
                        break
                    error = error_from(r)
                    wait = self._retry.after_answer(call, attempt, error)
                    if wait is None:
                        raise error
                attempt += 1
                yield wait
            done, call = _step(plan, call.decode(r))
        return call  # type: ignore[no-any-return]

    # -- auth --
    @_endpoint
    def sign_in(self, *, username: str, password: str) -> _Plan[TokenResponse]:
        """``POST /v1/auth/token``: a token for a user; this client uses it from now on."""
        answer = yield from self._calls.sign_in(username, password)
        self.token = answer.access_token
        return answer

    # -- tasks --
    @_endpoint
    def create_task(
        self, *, url: str, idempotency_key: str | None = None, **fields: Unpack[TaskFields]
    ) -> _Plan[Task]:
        """``POST /v1/tasks``: one HTTP call to ``url`` at the time you choose.

        A repeat with the same ``idempotency_key`` (per owner, 24 h) returns the first task.
        """
        return (yield from self._calls.create_task(url, idempotency_key, fields))

    @_endpoint
    def create_tasks(self, tasks: Sequence[Mapping[str, Any]]) -> _Plan[list[TaskBatchOutcome]]:
        """``POST /v1/tasks/batch``: each item is a task body (it may carry ``idempotency_key``);
        each outcome has ``task`` or ``error``, in the same order. More than 1,000 are sent in
        batches of 1,000."""
        out: list[TaskBatchOutcome] = []
        for i in range(0, len(tasks), c.MAX_BATCH_TASKS):
            batch = yield from self._calls.create_tasks(tasks[i : i + c.MAX_BATCH_TASKS])
            out += batch.items
        return out

    @_endpoint
    def get_task(self, task_id: str) -> _Plan[Task]:
        """``GET /v1/tasks/{id}``: the task with its attempts."""
        return (yield from self._calls.tasks.get(task_id))

    @_endpoint
    def list_tasks(
        self,
        *,
        status: TaskStatus | str | None = None,
        queue: str | None = None,
        schedule_id: str | None = None,
        name: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> _Plan[TaskPage]:
        """``GET /v1/tasks``: one page, newest first; ``name`` is a prefix."""
        params = _params(
            status=status,
            queue=queue,
            schedule_id=schedule_id,
            name=name,
            limit=limit,
            cursor=cursor,
        )
        return (yield from self._calls.tasks.list(params))

    @_paged
    def iter_tasks(
        self,
        *,
        status: TaskStatus | str | None = None,
        queue: str | None = None,
        schedule_id: str | None = None,
        name: str | None = None,
        page_size: int = PAGE_SIZE,
    ) -> _Fetch[Task]:
        """Every task :meth:`list_tasks` would list, page after page, newest first."""
        return lambda cursor: self.list_tasks(
            status=status,
            queue=queue,
            schedule_id=schedule_id,
            name=name,
            limit=page_size,
            cursor=cursor,
        )

    @_endpoint
    def modify_task(self, task_id: str, **fields: Unpack[TaskPatchFields]) -> _Plan[Task]:
        """``PATCH /v1/tasks/{id}`` while ``scheduled`` or ``retrying`` (else ``Conflict``)."""
        return (yield from self._calls.tasks.modify(task_id, fields))

    @_endpoint
    def cancel_task(self, task_id: str) -> _Plan[Task]:
        """``POST /v1/tasks/{id}/cancel`` while ``scheduled`` or ``retrying`` (else ``Conflict``)."""
        return (yield from self._calls.tasks.action(task_id, "cancel"))

    @_endpoint
    def retry_task(self, task_id: str) -> _Plan[Task]:
        """``POST /v1/tasks/{id}/retry``: a ``failed`` task again now, with fresh retries."""
        return (yield from self._calls.tasks.action(task_id, "retry"))

    # -- orchestrations --
    @_endpoint
    def create_orchestration(
        self,
        *,
        steps: Sequence[Mapping[str, Any]],
        idempotency_key: str | None = None,
        **fields: Unpack[OrchestrationFields],
    ) -> _Plan[Orchestration]:
        """``POST /v1/orchestrations``: ``steps`` run one after another (task specs)."""
        return (yield from self._calls.create_orchestration(steps, idempotency_key, fields))

    @_endpoint
    def get_orchestration(self, orchestration_id: str) -> _Plan[Orchestration]:
        """``GET /v1/orchestrations/{id}``."""
        return (yield from self._calls.orchestrations.get(orchestration_id))

    @_endpoint
    def list_orchestrations(
        self,
        *,
        status: OrchestrationStatus | str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> _Plan[OrchestrationPage]:
        """``GET /v1/orchestrations``: one page, newest first."""
        params = _params(status=status, limit=limit, cursor=cursor)
        return (yield from self._calls.orchestrations.list(params))

    @_paged
    def iter_orchestrations(
        self, *, status: OrchestrationStatus | str | None = None, page_size: int = PAGE_SIZE
    ) -> _Fetch[Orchestration]:
        """Every orchestration, page after page, newest first."""
        return lambda cursor: self.list_orchestrations(
            status=status, limit=page_size, cursor=cursor
        )

    @_endpoint
    def modify_orchestration(
        self, orchestration_id: str, **fields: Unpack[OrchestrationPatchFields]
    ) -> _Plan[Orchestration]:
        """``PATCH /v1/orchestrations/{id}`` while ``scheduled``."""
        return (yield from self._calls.orchestrations.modify(orchestration_id, fields))

    @_endpoint
    def cancel_orchestration(self, orchestration_id: str) -> _Plan[Orchestration]:
        """``POST /v1/orchestrations/{id}/cancel`` while ``scheduled`` or ``running``."""
        return (yield from self._calls.orchestrations.action(orchestration_id, "cancel"))

    @_endpoint
    def retry_orchestration(self, orchestration_id: str) -> _Plan[Orchestration]:
        """``POST /v1/orchestrations/{id}/retry``: a ``failed`` or ``stopped`` orchestration again
        from the step that ended it, the outputs before it kept (else ``Conflict``)."""
        return (yield from self._calls.orchestrations.action(orchestration_id, "retry"))

    @_endpoint
    def send_event(self, orchestration_id: str, *, name: str, body: Any = None) -> _Plan[None]:
        """``POST /v1/orchestrations/{id}/events/{name}``: ``body`` (any JSON) becomes the output
        of the step waiting for ``name``; one sent before the wait is kept for it (24 h). A second
        event for the same wait raises ``Conflict``; it is never sent twice."""
        yield from self._calls.send_event(orchestration_id, name, body)

    # -- functions --
    @_endpoint
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
    ) -> _Plan[Function]:
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
        return (yield from call)

    @_endpoint
    def get_function(self, function_id: str) -> _Plan[Function]:
        """``GET /v1/functions/{id}``: ``status`` building, ready (with ``url``) or failed."""
        return (yield from self._calls.functions.get(function_id))

    @_endpoint
    def list_functions(
        self, *, limit: int | None = None, cursor: str | None = None
    ) -> _Plan[FunctionPage]:
        """``GET /v1/functions``: one page, newest first."""
        return (yield from self._calls.functions.list(_params(limit=limit, cursor=cursor)))

    @_paged
    def iter_functions(self, *, page_size: int = PAGE_SIZE) -> _Fetch[Function]:
        """Every function, page after page."""
        return lambda cursor: self.list_functions(limit=page_size, cursor=cursor)

    @_endpoint
    def delete_function(self, function_id: str) -> _Plan[None]:
        """``DELETE /v1/functions/{id}``."""
        yield from self._calls.functions.delete(function_id)

    # -- schedules --
    @_endpoint
    def create_schedule(
        self, *, task: Mapping[str, Any], **fields: Unpack[ScheduleFields]
    ) -> _Plan[Schedule]:
        """``POST /v1/schedules``: ``task`` (a task body with ``url``, no time) made at each
        time of ``cron`` or ``every``."""
        return (yield from self._calls.create_schedule(task, fields))

    @_endpoint
    def get_schedule(self, schedule_id: str) -> _Plan[Schedule]:
        """``GET /v1/schedules/{id}``, with its ``next_runs``."""
        return (yield from self._calls.schedules.get(schedule_id))

    @_endpoint
    def list_schedules(
        self,
        *,
        status: ScheduleStatus | str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> _Plan[SchedulePage]:
        """``GET /v1/schedules``: one page, newest first."""
        params = _params(status=status, limit=limit, cursor=cursor)
        return (yield from self._calls.schedules.list(params))

    @_paged
    def iter_schedules(
        self, *, status: ScheduleStatus | str | None = None, page_size: int = PAGE_SIZE
    ) -> _Fetch[Schedule]:
        """Every schedule, page after page."""
        return lambda cursor: self.list_schedules(status=status, limit=page_size, cursor=cursor)

    @_endpoint
    def modify_schedule(
        self,
        schedule_id: str,
        **fields: Unpack[SchedulePatchFields],
    ) -> _Plan[Schedule]:
        """``PATCH /v1/schedules/{id}``: ``cron`` replaces an ``every`` and the other way round."""
        return (yield from self._calls.schedules.modify(schedule_id, fields))

    @_endpoint
    def delete_schedule(self, schedule_id: str) -> _Plan[None]:
        """``DELETE /v1/schedules/{id}``."""
        yield from self._calls.schedules.delete(schedule_id)

    @_endpoint
    def pause_schedule(self, schedule_id: str) -> _Plan[Schedule]:
        """``POST /v1/schedules/{id}/pause``."""
        return (yield from self._calls.schedules.action(schedule_id, "pause"))

    @_endpoint
    def resume_schedule(self, schedule_id: str) -> _Plan[Schedule]:
        """``POST /v1/schedules/{id}/resume``."""
        return (yield from self._calls.schedules.action(schedule_id, "resume"))

    # -- queues --
    @_endpoint
    def put_queue(self, name: str, **settings: Unpack[QueueSettings]) -> _Plan[Queue]:
        """``PUT /v1/queues/{name}``: ``rate`` (calls/s), ``max_concurrent``, ``paused``."""
        return (yield from self._calls.put_queue(name, settings))

    @_endpoint
    def pause_queue(self, name: str) -> _Plan[Queue]:
        """The queue dispatches nothing until resumed (its limits stay)."""
        return (yield from _Methods.put_queue.plan(self, name, paused=True))

    @_endpoint
    def resume_queue(self, name: str) -> _Plan[Queue]:
        """The queue dispatches again, in due order."""
        return (yield from _Methods.put_queue.plan(self, name, paused=False))

    @_endpoint
    def get_queue(self, name: str) -> _Plan[Queue]:
        """``GET /v1/queues/{name}``: settings, task counts by status, tasks waiting their turn."""
        return (yield from self._calls.queues.get(name))

    @_endpoint
    def list_queues(self) -> _Plan[list[Queue]]:
        """``GET /v1/queues``: every queue of the owner, ``default`` first."""
        queues = yield from self._calls.queues.list({})
        return queues.items

    # -- signing keys --
    @_endpoint
    def signing_keys(self) -> _Plan[SigningKeys]:
        """``GET /v1/signing-keys``: the secrets that sign your calls, current first."""
        return (yield from self._calls.signing_keys())

    @_endpoint
    def rotate_signing_keys(self) -> _Plan[SigningKeys]:
        """``POST /v1/signing-keys/rotate``: a new secret; the old one signs too for 24 h."""
        return (yield from self._calls.rotate_signing_keys())

    # -- operations --
    @_endpoint
    def stats(self) -> _Plan[Stats]:
        """``GET /v1/stats``: counts by status, for dashboards."""
        return (yield from self._calls.stats())

    @_endpoint
    def health(self) -> _Plan[Health]:
        """``GET /healthz``: the API process is up."""
        return (yield from self._calls.health("/healthz"))

    @_endpoint
    def ready(self) -> _Plan[Health]:
        """``GET /readyz``: whether the API reaches Redis (``ok`` false, not an error, when not)."""
        return (yield from self._calls.health("/readyz"))

    @_endpoint
    def metrics(self, *, token: str | None = None) -> _Plan[str]:
        """``GET /metrics``: Prometheus text (``token``: TASKORCH_METRICS_TOKEN, if set)."""
        return (yield from self._calls.metrics(token))

    @_endpoint
    def openapi(self) -> _Plan[dict[str, Any]]:
        """``GET /openapi.json``: the OpenAPI document."""
        return (yield from self._calls.openapi())
