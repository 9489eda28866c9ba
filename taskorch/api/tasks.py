"""Tasks: create one or a batch, list, get, modify, cancel, and redrive a failed one."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from taskorch import constants as c
from taskorch import models
from taskorch.api import resources, spec
from taskorch.api.common import (
    JSON,
    created,
    deadline_ms,
    idempotency_key,
    invalid_param,
    list_slot,
    log,
    page_query,
    principal,
    read_body,
)
from taskorch.api.spec import Endpoint
from taskorch.errors import ApiError, CreateOutcomeUnknown, Unavailable
from taskorch.limits import note_request, off_the_redis_clock
from taskorch.models import rules
from taskorch.schedules import Schedules
from taskorch.store import BatchItem, Store, is_id


async def create_task(request: Request) -> Response:
    p = await principal(request, "write")
    raw = await read_body(request)
    with off_the_redis_clock():
        body = models.decode_body(raw, models.TaskCreate)
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
        parsed = models.decode_batch(raw)
    valid = [i for i, item in enumerate(parsed) if isinstance(item, models.TaskBatchItem)]
    items = [item for item in parsed if isinstance(item, models.TaskBatchItem)]
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
    if not models.queue_name_ok(raw):
        raise invalid_param("queue", models.QUEUE_NAME_MESSAGE)
    return raw


async def list_tasks(request: Request) -> Response:
    p = await principal(request, "read")
    query = page_query(request, "tsk", models.TaskStatus)
    queue, name = _queue_param(request), _name_param(request)
    schedule_id = request.query_params.get("schedule_id")
    if schedule_id and not is_id(schedule_id, "sch"):
        raise invalid_param("schedule_id", "is not a schedule id (sch_...)")
    with list_slot(request, p.sub):
        if schedule_id:  # the tasks one schedule made (another owner's: none); empty means all
            schedules: Schedules = request.state.schedules
            page = await schedules.tasks(p.sub, schedule_id, name=name, **query)
        else:
            page = await request.state.store.list_tasks(p.sub, queue=queue, name=name, **query)
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


async def modify_task(request: Request) -> Response:
    p = await principal(request, "write")
    patch = models.decode_body(await read_body(request), models.TaskPatch)
    task = await request.state.store.modify_task(p.sub, request.path_params["task_id"], patch)
    log.info("task.modified", task_id=task.id, owner=p.sub, run_at=task.run_at)
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
_FILTERS = (_QUEUE_FILTER, _NAME_FILTER)
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
_ONE = "/v1/tasks/{task_id}"
_CREATE = spec.create_op(
    "task", "Schedule an HTTP call", "task_id", "getTask", "modifyTask", "cancelTask"
)
_MODIFY = spec.modify_op("task", "Modify a task while scheduled or retrying", "task_id")
_CANCEL = spec.change_op(
    "cancelTask", "Cancel a task while scheduled or retrying", spec.it("Task"), "task_id"
)
_RETRY = spec.change_op(
    "retryTask",
    "Redrive a failed task: scheduled again now with a fresh retry budget; its attempts are "
    "kept and numbering goes on",
    spec.it("Task", "It, scheduled"),
    "task_id",
)

ROUTES = [
    Endpoint("/v1/tasks", create_task, "POST", _CREATE, create=True),
    Endpoint("/v1/tasks/batch", create_tasks, "POST", _BATCH, create=True),
    Endpoint(
        "/v1/tasks", list_tasks, "GET", spec.list_op("task", models.TaskStatus, "tsk", *_FILTERS)
    ),
    resources.one(_ONE, "task", "store.get_task"),
    Endpoint(_ONE, modify_task, "PATCH", _MODIFY),
    # Redrive a failed task (issue #12).
    resources.change("POST", f"{_ONE}/retry", "store.retry_task", "task.redriven", _RETRY),
    resources.change("POST", f"{_ONE}/cancel", "store.cancel_task", "task.cancelled", _CANCEL),
]
