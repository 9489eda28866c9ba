"""Each method of both clients is declared once (taskorch/client/_declare.py, _methods.py) and made
a method of each client by one descriptor: the public API stays what it was when the sync client
was generated from the async one, and the two clients agree with each other."""

from __future__ import annotations

import inspect
import pydoc
from typing import Any

import httpx
import msgspec
import pytest

from taskorch.client import AsyncClient, Client
from taskorch.client._common import _Call, _json
from taskorch.client._declare import _endpoint, _Plan
from taskorch.client._methods import _Methods

# inspect.signature of every public method of Client (and __init__) as main had them written out
# in _async.py/_sync.py; AsyncClient's are the same but for the names in ASYNC_NAMES.
SIGNATURES = {
    "__init__": "(self, base_url: 'str | None' = None, *, token: 'str | None' = None, timeout_s: 'float' = 30.0, retries: 'int' = 3, max_retry_wait_s: 'float' = 30.0, idempotency_keys: 'bool' = True, transport: 'httpx.BaseTransport | None' = None) -> 'None'",
    "cancel_orchestration": "(self, orchestration_id: 'str') -> 'Orchestration'",
    "cancel_task": "(self, task_id: 'str') -> 'Task'",
    "close": "(self) -> 'None'",
    "create_function": "(self, *, name: 'str', runtime: \"Literal['python', 'java', 'node']\", code: 'str | None' = None, code_file: 'str | os.PathLike[str] | IO[bytes] | None' = None, handler: 'str | None' = None, requirements: 'str | None' = None, provider: \"Literal['local', 'aws'] | None\" = None, schedule: 'Mapping[str, Any] | None' = None) -> 'Function'",
    "create_orchestration": "(self, *, steps: 'Sequence[Mapping[str, Any]]', idempotency_key: 'str | None' = None, **fields: 'Unpack[OrchestrationFields]') -> 'Orchestration'",
    "create_schedule": "(self, *, task: 'Mapping[str, Any]', **fields: 'Unpack[ScheduleFields]') -> 'Schedule'",
    "create_task": "(self, *, url: 'str', idempotency_key: 'str | None' = None, **fields: 'Unpack[TaskFields]') -> 'Task'",
    "create_tasks": "(self, tasks: 'Sequence[Mapping[str, Any]]') -> 'list[TaskBatchOutcome]'",
    "delete_function": "(self, function_id: 'str') -> 'None'",
    "delete_schedule": "(self, schedule_id: 'str') -> 'None'",
    "events": "(self) -> 'Iterator[Event]'",
    "get_function": "(self, function_id: 'str') -> 'Function'",
    "get_orchestration": "(self, orchestration_id: 'str') -> 'Orchestration'",
    "get_queue": "(self, name: 'str') -> 'Queue'",
    "get_schedule": "(self, schedule_id: 'str') -> 'Schedule'",
    "get_task": "(self, task_id: 'str') -> 'Task'",
    "health": "(self) -> 'Health'",
    "iter_functions": "(self, *, page_size: 'int' = 500) -> 'Iterator[Function]'",
    "iter_orchestrations": "(self, *, status: 'OrchestrationStatus | str | None' = None, page_size: 'int' = 500) -> 'Iterator[Orchestration]'",
    "iter_schedules": "(self, *, status: 'ScheduleStatus | str | None' = None, page_size: 'int' = 500) -> 'Iterator[Schedule]'",
    "iter_tasks": "(self, *, status: 'TaskStatus | str | None' = None, queue: 'str | None' = None, schedule_id: 'str | None' = None, name: 'str | None' = None, page_size: 'int' = 500) -> 'Iterator[Task]'",
    "list_functions": "(self, *, limit: 'int | None' = None, cursor: 'str | None' = None) -> 'FunctionPage'",
    "list_orchestrations": "(self, *, status: 'OrchestrationStatus | str | None' = None, limit: 'int | None' = None, cursor: 'str | None' = None) -> 'OrchestrationPage'",
    "list_queues": "(self) -> 'list[Queue]'",
    "list_schedules": "(self, *, status: 'ScheduleStatus | str | None' = None, limit: 'int | None' = None, cursor: 'str | None' = None) -> 'SchedulePage'",
    "list_tasks": "(self, *, status: 'TaskStatus | str | None' = None, queue: 'str | None' = None, schedule_id: 'str | None' = None, name: 'str | None' = None, limit: 'int | None' = None, cursor: 'str | None' = None) -> 'TaskPage'",
    "metrics": "(self, *, token: 'str | None' = None) -> 'str'",
    "modify_orchestration": "(self, orchestration_id: 'str', **fields: 'Unpack[OrchestrationPatchFields]') -> 'Orchestration'",
    "modify_schedule": "(self, schedule_id: 'str', **fields: 'Unpack[SchedulePatchFields]') -> 'Schedule'",
    "modify_task": "(self, task_id: 'str', **fields: 'Unpack[TaskPatchFields]') -> 'Task'",
    "openapi": "(self) -> 'dict[str, Any]'",
    "pause_queue": "(self, name: 'str') -> 'Queue'",
    "pause_schedule": "(self, schedule_id: 'str') -> 'Schedule'",
    "put_queue": "(self, name: 'str', **settings: 'Unpack[QueueSettings]') -> 'Queue'",
    "ready": "(self) -> 'Health'",
    "resume_queue": "(self, name: 'str') -> 'Queue'",
    "resume_schedule": "(self, schedule_id: 'str') -> 'Schedule'",
    "retry_orchestration": "(self, orchestration_id: 'str') -> 'Orchestration'",
    "retry_task": "(self, task_id: 'str') -> 'Task'",
    "rotate_signing_keys": "(self) -> 'SigningKeys'",
    "send_event": "(self, orchestration_id: 'str', *, name: 'str', body: 'Any' = None) -> 'None'",
    "sign_in": "(self, *, username: 'str', password: 'str') -> 'TokenResponse'",
    "signing_keys": "(self) -> 'SigningKeys'",
    "stats": "(self) -> 'Stats'",
}
ASYNC_NAMES = {
    "close": "aclose",
    "Iterator[": "AsyncIterator[",
    "BaseTransport": "AsyncBaseTransport",
}
NOT_AWAITED = {"iter_functions", "iter_orchestrations", "iter_schedules", "iter_tasks", "__init__"}


def _signatures(cls: type) -> dict[str, str]:
    return {
        n: str(inspect.signature(f))
        for n, f in inspect.getmembers(cls, inspect.isfunction)
        if n[0] != "_" or n == "__init__"
    }


def _as_async(name: str, signature: str) -> tuple[str, str]:
    for sync, awaited in ASYNC_NAMES.items():
        name, signature = name.replace(sync, awaited), signature.replace(sync, awaited)
    return name, signature


def test_every_public_method_keeps_its_signature_on_both_clients() -> None:
    # __init__'s transport is a type parameter of the shared class (httpx.BaseTransport for
    # Client, httpx.AsyncBaseTransport for AsyncClient): mypy checks it; inspect shows its name.
    expected = {n: s.replace("httpx.BaseTransport", "_Transport") for n, s in SIGNATURES.items()}
    assert _signatures(Client) == expected
    awaited = dict(_as_async(n, s) for n, s in expected.items())
    assert _signatures(AsyncClient) == awaited


def test_async_methods_are_coroutine_functions_and_iter_returns_an_async_iterator() -> None:
    for name in SIGNATURES:
        sync_f = getattr(Client, name)
        async_f = getattr(AsyncClient, _as_async(name, "")[0])
        assert not inspect.iscoroutinefunction(sync_f), name
        awaited = inspect.iscoroutinefunction(async_f) or inspect.isasyncgenfunction(async_f)
        assert awaited == (name not in NOT_AWAITED), name
        assert sync_f.__doc__ == async_f.__doc__ or name in ("close", "events"), name
        assert sync_f.__qualname__ == f"Client.{name}" or name == "__init__"
    it = AsyncClient("http://127.0.0.1:9").iter_tasks(status="failed")
    assert inspect.isasyncgen(it) or hasattr(it, "__anext__")


def test_help_shows_each_method_with_its_arguments_and_docstring() -> None:
    text = pydoc.render_doc(Client.create_task, renderer=pydoc.plaintext)
    assert "create_task(self, *, url: 'str', idempotency_key: 'str | None' = None" in text
    assert "POST /v1/tasks" in text
    bound = AsyncClient("http://127.0.0.1:9").get_task
    assert str(inspect.signature(bound)) == "(task_id: 'str') -> 'Task'"
    assert "GET /v1/tasks/{id}" in pydoc.render_doc(bound, renderer=pydoc.plaintext)


def _recording(seen: list[httpx.Request]) -> Any:
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        task = {"id": "tsk_1", "url": "https://example.com/", "status": "scheduled"}
        return httpx.Response(503 if len(seen) == 1 else 200, json=task)

    return answer


async def test_both_clients_send_the_same_requests_and_retry_the_same_way() -> None:
    sync_seen: list[httpx.Request] = []
    async_seen: list[httpx.Request] = []
    kw: dict[str, Any] = {"token": "t", "max_retry_wait_s": 0.0}
    with Client("http://api", transport=httpx.MockTransport(_recording(sync_seen)), **kw) as c:
        with pytest.raises(msgspec.ValidationError):
            c.get_task("tsk_1")  # the stub's task lacks fields: decoding fails after the retry
    transport = httpx.MockTransport(_recording(async_seen))
    async with AsyncClient("http://api", transport=transport, **kw) as a:
        with pytest.raises(msgspec.ValidationError):
            await a.get_task("tsk_1")
    assert len(sync_seen) == len(async_seen) == 2  # a 503 on a GET is tried again
    for s, a_ in zip(sync_seen, async_seen, strict=True):
        assert (s.method, str(s.url), s.content) == (a_.method, str(a_.url), a_.content)
        assert s.headers["Authorization"] == a_.headers["Authorization"] == "Bearer t"


def test_a_plan_is_a_generator_of_requests_tried_again_without_io() -> None:
    client = Client("http://api", token="t", max_retry_wait_s=0.5)
    tries = client._tries(_Methods.get_task.plan(client, "tsk_1"))
    call = next(tries)
    assert isinstance(call, _Call) and (call.method, call.path) == ("GET", "/v1/tasks/tsk_1")
    retry = httpx.Response(503, headers={"Retry-After": "0.25"}, request=httpx.Request("GET", "x"))
    assert tries.send(retry) == 0.25  # the seconds to sleep: the client sleeps its own way
    assert tries.send(None) is call  # then the same request again
    with pytest.raises(ValueError):
        _Methods.get_task.plan(client, "").send(None)  # an empty id never reaches the wire


async def test_a_method_declared_once_is_a_method_of_each_client() -> None:
    answer = {"id": "tsk_1"}

    class Declared(_Methods[Any]):
        @_endpoint
        def echo(self, word: str, *, twice: bool = False) -> _Plan[Any]:
            """Says ``word`` back."""
            first = yield _Call("GET", f"/{word}", _json(dict), auth=False)
            if twice:
                return [first, (yield _Call("GET", f"/{word}", _json(dict), auth=False))]
            return first

    class Sync(Declared, Client):
        pass

    class Async(Declared, AsyncClient):
        pass

    transport = httpx.MockTransport(lambda r: httpx.Response(200, json=answer))
    with Sync("http://api", transport=transport) as s:
        assert s.echo("hi") == answer
        assert s.echo("hi", twice=True) == [answer, answer]
    async with Async("http://api", transport=httpx.MockTransport(transport.handler)) as a:
        assert await a.echo("hi", twice=True) == [answer, answer]
    assert inspect.iscoroutinefunction(Async.echo) and not inspect.iscoroutinefunction(Sync.echo)
    assert str(inspect.signature(Sync.echo)) == str(inspect.signature(Async.echo))
    assert Sync.echo.__doc__ == "Says ``word`` back."
