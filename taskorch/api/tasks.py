"""Tasks: create one or a batch, list, get, modify, cancel, and redrive a failed one."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from taskorch import constants as c
from taskorch import models, rules
from taskorch.api import spec
from taskorch.api.common import (
    JSON,
    created,
    deadline_ms,
    idempotency_key,
    invalid_param,
    list_slot,
    log,
    page_params,
    principal,
    read_body,
)
from taskorch.errors import ApiError, CreateOutcomeUnknown, Unavailable
from taskorch.limits import note_request, off_the_redis_clock
from taskorch.models import (
    TaskBatchItem,
    TaskCreate,
    TaskPatch,
    TaskStatus,
    decode_batch,
    decode_body,
    queue_name_ok,
)
from taskorch.schedules import Schedules
from taskorch.store import BatchItem, Store, is_id


async def create_task(request: Request) -> Response:
    p = await principal(request, "write")
    raw = await read_body(request)
    with off_the_redis_clock():
        body = decode_body(raw, TaskCreate)
    store: Store = request.state.store
    task, was_created = await store.create_task(
        p.sub, body, idempotency_key=idempotency_key(request), deadline_ms=deadline_ms()
    )
    # On the request's http.request line (status 201 created, 200 an idempotent repeat).
    note_request(task_id=task.id, owner=p.sub, run_at=task.run_at)
    return created(task, was_created, f"/v1/tasks/{task.id}")


async def create_tasks(request: Request) -> Response:
    """``POST /v1/tasks/batch``: up to MAX_BATCH_TASKS creates, each answered in its place."""
    p = await principal(request, "write")
    raw = await read_body(request, c.MAX_BATCH_BODY_BYTES)
    with off_the_redis_clock():  # up to 1,000 tasks to validate
        parsed = decode_batch(raw)
    valid = [i for i, item in enumerate(parsed) if isinstance(item, TaskBatchItem)]
    items = [item for item in parsed if isinstance(item, TaskBatchItem)]
    store: Store = request.state.store
    results = await store.create_tasks(
        p.sub,
        [BatchItem(body=item, idempotency_key=item.idempotency_key) for item in items],
        deadline_ms=deadline_ms(),
    )
    if items and all(isinstance(r, Unavailable) for r in results):
        # Redis stored none of it: the whole batch is answered as a single create would be.
        raise _outage_of(results)
    answers: list[Any] = [item.body() if isinstance(item, ApiError) else None for item in parsed]
    n_created = repeats = 0
    for i, result in zip(valid, results, strict=True):
        if isinstance(result, tuple):
            answers[i] = {"task": result[0]}
            n_created += result[1]
            repeats += not result[1]
        elif isinstance(result, ApiError):
            answers[i] = result.body()
        else:  # not an answer the contract knows: the last-resort handler's 500
            raise result
    refused = len(parsed) - n_created - repeats
    note_request(owner=p.sub, created=n_created, refused=refused, repeats=repeats)
    return JSON({"items": answers})


def _outage_of(results: list[Any]) -> Unavailable:
    """The 503 for a batch none of which was stored: ``unknown`` if any item's outcome is."""
    unknown = [r for r in results if isinstance(r, CreateOutcomeUnknown)]
    return unknown[0] if unknown else results[0]


def _queue_param(request: Request) -> str | None:
    raw = request.query_params.get("queue")
    if not raw:
        return None
    if not queue_name_ok(raw):
        raise invalid_param("queue", models.QUEUE_NAME_MESSAGE)
    return raw


async def list_tasks(request: Request) -> Response:
    p = await principal(request, "read")
    status, limit, cursor = page_params(request, TaskStatus, "tsk")
    queue, name = _queue_param(request), _name_param(request)
    schedule_id = request.query_params.get("schedule_id")
    if schedule_id and not is_id(schedule_id, "sch"):
        raise invalid_param("schedule_id", "is not a schedule id (sch_...)")
    with list_slot(request, p.sub):
        if schedule_id:  # the tasks one schedule made (another owner's: none); empty means all
            schedules: Schedules = request.state.schedules
            page = await schedules.tasks(
                p.sub, schedule_id, status=status, limit=limit, cursor=cursor, name=name
            )
        else:
            page = await request.state.store.list_tasks(
                p.sub, status=status, limit=limit, cursor=cursor, queue=queue, name=name
            )
    # Filters given together all apply. Each list above walks one index (a schedule's tasks, a
    # named queue's, or the owner's); what it cannot narrow is taken out of its page here, so a
    # page may be short, even empty, with a next_cursor (as a name= page already may).
    page.items = [
        t
        for t in page.items
        if (queue is None or t.queue == queue) and (not name or (t.name or "").startswith(name))
    ]
    return JSON(page)


def _name_param(request: Request) -> str | None:
    """``name=``: a prefix of task names (issue #12); empty means no filter."""
    name = request.query_params.get("name") or None
    if name is not None and len(name) > 200:
        raise invalid_param("name", "must be at most 200 characters (a name is)")
    return name


async def get_task(request: Request) -> Response:
    p = await principal(request, "read")
    return JSON(await request.state.store.get_task(p.sub, request.path_params["task_id"]))


async def modify_task(request: Request) -> Response:
    p = await principal(request, "write")
    patch = decode_body(await read_body(request), TaskPatch)
    task = await request.state.store.modify_task(p.sub, request.path_params["task_id"], patch)
    log.info("task.modified", task_id=task.id, owner=p.sub, run_at=task.run_at)
    return JSON(task)


async def cancel_task(request: Request) -> Response:
    p = await principal(request, "write")
    task = await request.state.store.cancel_task(p.sub, request.path_params["task_id"])
    log.info("task.cancelled", task_id=task.id, owner=p.sub)
    return JSON(task)


async def retry_task(request: Request) -> Response:
    """Redrive a failed task (issue #12)."""
    p = await principal(request, "write")
    task = await request.state.store.retry_task(p.sub, request.path_params["task_id"])
    log.info("task.redriven", task_id=task.id, owner=p.sub)
    return JSON(task)


# -- routes ------------------------------------------------------------------------------------

_QUEUE_FILTER = {
    "name": "queue",
    "in": "query",
    "description": "only this queue's tasks (empty: every queue's)",
    # Empty means every queue, like no parameter at all.
    "schema": {"type": "string", "pattern": "^(" + rules.QUEUE_NAME_PATTERN[1:-1] + ")?$"},
}
# issue #12: GET /v1/tasks?name= (a prefix of task names)
_NAME_FILTER = {
    "name": "name",
    "in": "query",
    "description": "only tasks whose name starts with this; a page may then be short (even "
    "empty) with a next_cursor to go on from",
    "schema": {"type": "string", "maxLength": 200},
}
# The server takes ?schedule_id= too (sch_..., empty: every task), but the published document
# has never listed it: the parameter is left out here so that /openapi.json stays as it was.
_OPS = spec.steerable(
    "task",
    id_name="task_id",
    statuses=TaskStatus,
    create_summary="Schedule an HTTP call",
    patch_when="scheduled or retrying",
    cancel_when="scheduled or retrying",
    filters=(_QUEUE_FILTER, _NAME_FILTER),
)
_BATCH = spec.op(
    "Schedule up to 1,000 HTTP calls; each is answered in its place",
    {
        "200": spec.json_answer(
            "TaskBatchResult",
            "One item per task sent, in order: {task} (stored, or the first task of a repeated "
            "idempotency_key) or {error} (that task alone was refused: validation_failed, "
            "payload_too_large, or unavailable with details[0].outcome not_stored or unknown)",
        )
    },
    op_id="createTasks",
    body="TaskBatch",
    codes=spec.BODY_CODES,
)
_RETRY = spec.op(
    "Redrive a failed task: scheduled again now with a fresh retry budget; its attempts are "
    "kept and numbering goes on",
    spec.it("Task", "It, scheduled"),
    op_id="retryTask",
    codes=spec.CHANGE_CODES,
    params=spec.path_id("task_id"),
)

ROUTES = [
    spec.Endpoint("/v1/tasks", create_task, "POST", _OPS["create"], create=True),
    spec.Endpoint("/v1/tasks/batch", create_tasks, "POST", _BATCH, create=True),
    spec.Endpoint("/v1/tasks", list_tasks, "GET", _OPS["list"]),
    spec.Endpoint("/v1/tasks/{task_id}", get_task, "GET", _OPS["get"]),
    spec.Endpoint("/v1/tasks/{task_id}", modify_task, "PATCH", _OPS["modify"]),
    spec.Endpoint("/v1/tasks/{task_id}/cancel", cancel_task, "POST", _OPS["cancel"]),
    spec.Endpoint("/v1/tasks/{task_id}/retry", retry_task, "POST", _RETRY),
]
