""":class:`AsyncClient`, the API awaited. This file is the source of both clients:
``_sync.py`` (:class:`Client`, blocking) is made from it by ``python taskorch/client/_unasync.py``,
which turns ``async def`` into ``def``, drops ``await`` and names the sync counterparts
(``AsyncIterator`` -> ``Iterator``, ``aclose`` -> ``close``...). Edit this file, then run that.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import IO, Any, Literal, Unpack

import httpx

from taskorch import constants as c
from taskorch.client._common import (
    PAGE_SIZE,
    Event,
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
    _event,
    _nothing,
    _params,
    _unreachable,
    error_from,
)
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

__all__ = ["AsyncClient"]


class AsyncClient(_Base):
    """The API, awaited: ``iter_*`` and ``events`` are async iterators.

    Use it as an async context manager, or close it with :meth:`aclose`.

    Args:
        base_url: the API's address (``http://127.0.0.1:3000``); default ``$TASKORCH_API_URL``.
        token: a JWT (``taskorch token``, :meth:`sign_in`); default ``$TASKORCH_TOKEN``.
        timeout_s: per request. ``rotate_signing_keys`` alone takes about 2 s.
        retries: further sends of a request answered 503/429 (or lost) where that is safe.
        max_retry_wait_s: the longest ``Retry-After`` waited out; a longer one raises at once.
        idempotency_keys: give each create an ``Idempotency-Key`` you did not (stored 24 h),
            so that a create answered 503 ``unknown`` or lost is sent again safely.
        transport: an ``httpx`` transport (``httpx.MockTransport``, ``httpx.ASGITransport``...).
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
            base_url=self.base_url,
            timeout=timeout_s,
            transport=transport,
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

    # -- auth --
    async def sign_in(self, *, username: str, password: str) -> TokenResponse:
        """``POST /v1/auth/token``: a token for a user; this client uses it from now on."""
        answer = await self._send(self._calls.sign_in(username, password))
        self.token = answer.access_token
        return answer

    # -- tasks --
    async def create_task(
        self, *, url: str, idempotency_key: str | None = None, **fields: Unpack[TaskFields]
    ) -> Task:
        """``POST /v1/tasks``: one HTTP call to ``url`` at the time you choose.

        A repeat with the same ``idempotency_key`` (per owner, 24 h) returns the first task.
        """
        return await self._send(self._calls.create_task(url, idempotency_key, fields))

    async def create_tasks(self, tasks: Sequence[Mapping[str, Any]]) -> list[TaskBatchOutcome]:
        """``POST /v1/tasks/batch``: each item is a task body (it may carry ``idempotency_key``);
        each outcome has ``task`` or ``error``, in the same order. More than 1,000 are sent in
        batches of 1,000."""
        out: list[TaskBatchOutcome] = []
        for i in range(0, len(tasks), c.MAX_BATCH_TASKS):
            batch = await self._send(self._calls.create_tasks(tasks[i : i + c.MAX_BATCH_TASKS]))
            out += batch.items
        return out

    async def get_task(self, task_id: str) -> Task:
        """``GET /v1/tasks/{id}``: the task with its attempts."""
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
        """``GET /v1/tasks``: one page, newest first; ``name`` is a prefix."""
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

    async def modify_task(self, task_id: str, **fields: Unpack[TaskPatchFields]) -> Task:
        """``PATCH /v1/tasks/{id}`` while ``scheduled`` or ``retrying`` (else ``Conflict``)."""
        return await self._send(self._calls.modify_task(task_id, fields))

    async def cancel_task(self, task_id: str) -> Task:
        """``POST /v1/tasks/{id}/cancel`` while ``scheduled`` or ``retrying`` (else ``Conflict``)."""
        return await self._send(self._calls.task_action(task_id, "cancel"))

    async def retry_task(self, task_id: str) -> Task:
        """``POST /v1/tasks/{id}/retry``: a ``failed`` task again now, with fresh retries."""
        return await self._send(self._calls.task_action(task_id, "retry"))

    # -- orchestrations --
    async def create_orchestration(
        self,
        *,
        steps: Sequence[Mapping[str, Any]],
        idempotency_key: str | None = None,
        **fields: Unpack[OrchestrationFields],
    ) -> Orchestration:
        """``POST /v1/orchestrations``: ``steps`` run one after another (task specs)."""
        return await self._send(self._calls.create_orchestration(steps, idempotency_key, fields))

    async def get_orchestration(self, orchestration_id: str) -> Orchestration:
        """``GET /v1/orchestrations/{id}``."""
        return await self._send(self._calls.get_orchestration(orchestration_id))

    async def list_orchestrations(
        self,
        *,
        status: OrchestrationStatus | str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> OrchestrationPage:
        """``GET /v1/orchestrations``: one page, newest first."""
        params = _params(status=status, limit=limit, cursor=cursor)
        return await self._send(self._calls.list_orchestrations(params))

    def iter_orchestrations(
        self, *, status: OrchestrationStatus | str | None = None, page_size: int = PAGE_SIZE
    ) -> AsyncIterator[Orchestration]:
        """Every orchestration, page after page, newest first."""
        return self._pages(
            lambda cursor: self.list_orchestrations(status=status, limit=page_size, cursor=cursor)
        )

    async def modify_orchestration(
        self, orchestration_id: str, **fields: Unpack[OrchestrationPatchFields]
    ) -> Orchestration:
        """``PATCH /v1/orchestrations/{id}`` while ``scheduled``."""
        return await self._send(self._calls.modify_orchestration(orchestration_id, fields))

    async def cancel_orchestration(self, orchestration_id: str) -> Orchestration:
        """``POST /v1/orchestrations/{id}/cancel`` while ``scheduled`` or ``running``."""
        return await self._send(self._calls.cancel_orchestration(orchestration_id))

    # -- functions --
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
        return await self._send(call)

    async def get_function(self, function_id: str) -> Function:
        """``GET /v1/functions/{id}``: ``status`` building, ready (with ``url``) or failed."""
        return await self._send(self._calls.get_function(function_id))

    async def list_functions(
        self, *, limit: int | None = None, cursor: str | None = None
    ) -> FunctionPage:
        """``GET /v1/functions``: one page, newest first."""
        return await self._send(self._calls.list_functions(_params(limit=limit, cursor=cursor)))

    def iter_functions(self, *, page_size: int = PAGE_SIZE) -> AsyncIterator[Function]:
        """Every function, page after page."""
        return self._pages(lambda cursor: self.list_functions(limit=page_size, cursor=cursor))

    async def delete_function(self, function_id: str) -> None:
        """``DELETE /v1/functions/{id}``."""
        await self._send(self._calls.delete_function(function_id))

    # -- schedules --
    async def create_schedule(
        self, *, task: Mapping[str, Any], **fields: Unpack[ScheduleFields]
    ) -> Schedule:
        """``POST /v1/schedules``: ``task`` (a task body with ``url``, no time) made at each
        time of ``cron`` or ``every``."""
        return await self._send(self._calls.create_schedule(task, fields))

    async def get_schedule(self, schedule_id: str) -> Schedule:
        """``GET /v1/schedules/{id}``, with its ``next_runs``."""
        return await self._send(self._calls.get_schedule(schedule_id))

    async def list_schedules(
        self,
        *,
        status: ScheduleStatus | str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> SchedulePage:
        """``GET /v1/schedules``: one page, newest first."""
        params = _params(status=status, limit=limit, cursor=cursor)
        return await self._send(self._calls.list_schedules(params))

    def iter_schedules(
        self, *, status: ScheduleStatus | str | None = None, page_size: int = PAGE_SIZE
    ) -> AsyncIterator[Schedule]:
        """Every schedule, page after page."""
        return self._pages(
            lambda cursor: self.list_schedules(status=status, limit=page_size, cursor=cursor)
        )

    async def modify_schedule(
        self,
        schedule_id: str,
        **fields: Unpack[SchedulePatchFields],
    ) -> Schedule:
        """``PATCH /v1/schedules/{id}``: ``cron`` replaces an ``every`` and the other way round."""
        return await self._send(self._calls.modify_schedule(schedule_id, fields))

    async def delete_schedule(self, schedule_id: str) -> None:
        """``DELETE /v1/schedules/{id}``."""
        await self._send(self._calls.delete_schedule(schedule_id))

    async def pause_schedule(self, schedule_id: str) -> Schedule:
        """``POST /v1/schedules/{id}/pause``."""
        return await self._send(self._calls.schedule_action(schedule_id, "pause"))

    async def resume_schedule(self, schedule_id: str) -> Schedule:
        """``POST /v1/schedules/{id}/resume``."""
        return await self._send(self._calls.schedule_action(schedule_id, "resume"))

    # -- queues --
    async def put_queue(self, name: str, **settings: Unpack[QueueSettings]) -> Queue:
        """``PUT /v1/queues/{name}``: ``rate`` (calls/s), ``max_concurrent``, ``paused``."""
        return await self._send(self._calls.put_queue(name, settings))

    async def pause_queue(self, name: str) -> Queue:
        """The queue dispatches nothing until resumed (its limits stay)."""
        return await self.put_queue(name, paused=True)

    async def resume_queue(self, name: str) -> Queue:
        """The queue dispatches again, in due order."""
        return await self.put_queue(name, paused=False)

    async def get_queue(self, name: str) -> Queue:
        """``GET /v1/queues/{name}``: settings, task counts by status, tasks waiting their turn."""
        return await self._send(self._calls.get_queue(name))

    async def list_queues(self) -> list[Queue]:
        """``GET /v1/queues``: every queue of the owner, ``default`` first."""
        queues = await self._send(self._calls.list_queues())
        return queues.items

    # -- signing keys --
    async def signing_keys(self) -> SigningKeys:
        """``GET /v1/signing-keys``: the secrets that sign your calls, current first."""
        return await self._send(self._calls.signing_keys())

    async def rotate_signing_keys(self) -> SigningKeys:
        """``POST /v1/signing-keys/rotate``: a new secret; the old one signs too for 24 h."""
        return await self._send(self._calls.rotate_signing_keys())

    # -- live view and operations --
    async def events(self) -> AsyncIterator[Event]:
        """``GET /v1/events``: your changes as they happen, until you stop iterating (close the
        iterator, or leave ``async with contextlib.aclosing(...)``)."""
        kw = self._request(_Call("GET", "/v1/events", _nothing))
        timeout = httpx.Timeout(self._http.timeout.connect, read=None)
        async with self._http.stream("GET", "/v1/events", timeout=timeout, **kw) as r:
            if not r.is_success:
                await r.aread()
                raise error_from(r)
            async for line in r.aiter_lines():
                event = _event(line)
                if event is not None:
                    yield event

    async def stats(self) -> Stats:
        """``GET /v1/stats``: counts by status, for dashboards."""
        return await self._send(self._calls.stats())

    async def health(self) -> Health:
        """``GET /healthz``: the API process is up."""
        return await self._send(self._calls.health("/healthz"))

    async def ready(self) -> Health:
        """``GET /readyz``: whether the API reaches Redis (``ok`` false, not an error, when not)."""
        return await self._send(self._calls.health("/readyz"))

    async def metrics(self, *, token: str | None = None) -> str:
        """``GET /metrics``: Prometheus text (``token``: TASKORCH_METRICS_TOKEN, if set)."""
        return await self._send(self._calls.metrics(token))

    async def openapi(self) -> dict[str, Any]:
        """``GET /openapi.json``: the OpenAPI document."""
        return await self._send(self._calls.openapi())
