"""The HTTP API: Starlette routes that validate, authorise and hand over to the store.

Every error leaves as the contract's ``{"error": {...}}`` body; nothing a client sends can produce
a 500. Shared resources (the Redis client, the store, the token verifier) are made in the
lifespan and reached through ``request.state``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hmac
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import redis.exceptions
import structlog
from starlette.applications import Starlette
from starlette.convertors import StringConvertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import Match, Mount, Route
from starlette.staticfiles import StaticFiles

from taskorch import auth, cluster, lateness, metrics, openapi, partitions, signing
from taskorch import constants as c
from taskorch.errors import (
    NOT_STORED,
    OUTCOME_UNKNOWN,
    ApiError,
    BadRequest,
    ConfigError,
    CreateOutcomeUnknown,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    Unavailable,
)
from taskorch.functions import Functions
from taskorch.functions.runtime import local_runtime
from taskorch.limits import (
    Edge,
    ListSlots,
    RedisDeadline,
    StreamSlots,
    note_request,
    off_the_redis_clock,
    redis_deadline,
    set_read_timeout,
)
from taskorch.models import (
    FunctionCreate,
    OrchestrationCreate,
    OrchestrationPatch,
    OrchestrationStatus,
    QueueUpdate,
    ScheduleCreate,
    SchedulePatch,
    ScheduleStatus,
    TaskBatchItem,
    TaskCreate,
    TaskPatch,
    TaskStatus,
    TokenRequest,
    TokenResponse,
    convert,
    decode_batch,
    decode_body,
    parse_json,
    queue_name_ok,
)
from taskorch.orchestrations import Orchestrations
from taskorch.queues import Queues
from taskorch.schedules import Schedules
from taskorch.settings import Settings
from taskorch.store import BatchItem, Store, connect, is_id

E = TypeVar("E", bound=enum.Enum)

log = structlog.get_logger("taskorch.api")
WEB_DIR = Path(__file__).resolve().parent / "web"  # package data: every install serves the page
_enc = msgspec.json.Encoder()


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return _enc.encode(content) + b"\n"  # a shell prompt after curl starts on its own line


def error_response(exc: ApiError) -> Response:
    return JSON(exc.body(), status_code=exc.status_code, headers=exc.headers)


async def read_body(request: Request, limit: int = c.MAX_BODY_BYTES) -> bytes:
    """The request body, refusing more than ``limit`` bytes before reading it all.

    :class:`taskorch.limits.Edge` enforces the same caps (:func:`body_limit`) for every route
    while the body streams, multipart included; this check keeps a route's own cap explicit.
    """
    declared = request.headers.get("content-length")
    too_big = PayloadTooLarge(f"The body is larger than {limit} bytes.")
    if declared and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    with off_the_redis_clock():  # the client's pace is the read deadlines' business
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
    return b"".join(chunks)


def _deadline_ms() -> int | None:
    d = redis_deadline()
    return d.wall_ms() if d is not None else None


async def principal(request: Request, scope: str) -> auth.Principal:
    header = request.headers.get("authorization", "")
    kind, _, token = header.partition(" ")
    if kind.lower() != "bearer" or not token.strip():
        token = (
            request.query_params.get("access_token", "") if request.url.path == "/v1/events" else ""
        )
        if not token:
            raise Unauthorized("Send a token: Authorization: Bearer <JWT>.", code="missing_token")
    verifier: auth.TokenVerifier = request.state.verifier
    p = await verifier.verify(token.strip())
    p.require(scope)
    return p


def _status_param(request: Request, kind: type[E]) -> E | None:
    raw = request.query_params.get("status")
    if not raw:
        return None
    try:
        return kind(raw)
    except ValueError:
        allowed = ", ".join(s.value for s in kind)
        raise _invalid_param("status", f"must be one of {allowed}") from None


def _cursor_param(request: Request, prefix: str) -> str | None:
    cursor = request.query_params.get("cursor") or None
    if cursor is not None and not is_id(cursor, prefix):
        raise _invalid_param("cursor", "is not a cursor this service handed out")
    return cursor


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is not None and not 1 <= len(key) <= 255:
        raise BadRequest("The Idempotency-Key header must be 1 to 255 characters.")
    return key


def _limit_param(request: Request) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return c.DEFAULT_LIST_LIMIT
    # The length first: int() refuses strings of more than 4,300 digits with a ValueError.
    ok = raw.isascii() and raw.isdigit() and len(raw) <= len(str(c.MAX_LIST_LIMIT))
    if not ok or not 1 <= int(raw) <= c.MAX_LIST_LIMIT:
        raise _invalid_param("limit", f"must be a whole number from 1 to {c.MAX_LIST_LIMIT}")
    return int(raw)


def _invalid_param_body(name: str, message: str) -> ApiError:
    from taskorch.errors import ValidationFailed

    return ValidationFailed(f"{name}: {message}.", details=[{"field": name, "message": message}])


def _invalid_param(name: str, message: str) -> ApiError:
    from taskorch.errors import ValidationFailed

    return ValidationFailed(
        f"The query parameter {name} {message}.", details=[{"field": name, "message": message}]
    )


# -- routes ------------------------------------------------------------------------------------


async def create_task(request: Request) -> Response:
    p = await principal(request, "write")
    raw = await read_body(request)
    with off_the_redis_clock():
        body = decode_body(raw, TaskCreate)
    store: Store = request.state.store
    task, created = await store.create_task(
        p.sub, body, idempotency_key=_idempotency_key(request), deadline_ms=_deadline_ms()
    )
    # On the request's http.request line (status 201 created, 200 an idempotent repeat).
    note_request(task_id=task.id, owner=p.sub, run_at=task.run_at)
    return JSON(
        task, status_code=201 if created else 200, headers={"Location": f"/v1/tasks/{task.id}"}
    )


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
        deadline_ms=_deadline_ms(),
    )
    if items and all(isinstance(r, Unavailable) for r in results):
        # Redis stored none of it: the whole batch is answered as a single create would be.
        raise _outage_of(results)
    answers: list[Any] = [item.body() if isinstance(item, ApiError) else None for item in parsed]
    created = repeats = 0
    for i, result in zip(valid, results, strict=True):
        if isinstance(result, tuple):
            answers[i] = {"task": result[0]}
            created += result[1]
            repeats += not result[1]
        elif isinstance(result, ApiError):
            answers[i] = result.body()
        else:  # not an answer the contract knows: the last-resort handler's 500
            raise result
    refused = len(parsed) - created - repeats
    note_request(owner=p.sub, created=created, refused=refused, repeats=repeats)
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
        from taskorch.models import QUEUE_NAME_MESSAGE

        raise _invalid_param("queue", QUEUE_NAME_MESSAGE)
    return raw


async def list_tasks(request: Request) -> Response:
    p = await principal(request, "read")
    status = _status_param(request, TaskStatus)
    limit, cursor = _limit_param(request), _cursor_param(request, "tsk")
    queue, name = _queue_param(request), _name_param(request)
    schedule_id = request.query_params.get("schedule_id")
    if schedule_id and not is_id(schedule_id, "sch"):
        raise _invalid_param("schedule_id", "is not a schedule id (sch_...)")
    with _list_slot(request, p.sub):
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


def _list_slot(request: Request, owner: str) -> contextlib.AbstractContextManager[None]:
    """One of the owner's list slots in this process for a list or search (429 when its
    MAX_LISTS_PER_OWNER are all in progress): see limits.ListSlots."""
    slots: ListSlots = request.state.lists
    return slots.held(owner)


def _name_param(request: Request) -> str | None:
    """``name=``: a prefix of task names (issue #12); empty means no filter."""
    name = request.query_params.get("name") or None
    if name is not None and len(name) > 200:
        raise _invalid_param("name", "must be at most 200 characters (a name is)")
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


async def create_schedule(request: Request) -> Response:
    p = await principal(request, "write")
    body = decode_body(await read_body(request), ScheduleCreate)
    schedules: Schedules = request.state.schedules
    sch, created = await schedules.create(p.sub, body, idempotency_key=_idempotency_key(request))
    log.info(
        "schedule.created" if created else "schedule.idempotent_repeat",
        schedule_id=sch.id,
        owner=p.sub,
        next_runs=sch.next_runs[:1],
    )
    return JSON(
        sch,
        status_code=201 if created else 200,
        headers={"Location": f"/v1/schedules/{sch.id}"},
    )


async def list_schedules(request: Request) -> Response:
    p = await principal(request, "read")
    schedules: Schedules = request.state.schedules
    status, limit = _status_param(request, ScheduleStatus), _limit_param(request)
    cursor = _cursor_param(request, "sch")
    with _list_slot(request, p.sub):
        page = await schedules.list_page(p.sub, status=status, limit=limit, cursor=cursor)
    return JSON(page)


async def get_schedule(request: Request) -> Response:
    p = await principal(request, "read")
    schedules: Schedules = request.state.schedules
    return JSON(await schedules.get(p.sub, request.path_params["sch_id"]))


async def modify_schedule(request: Request) -> Response:
    p = await principal(request, "write")
    patch = decode_body(await read_body(request), SchedulePatch)
    schedules: Schedules = request.state.schedules
    sch = await schedules.modify(p.sub, request.path_params["sch_id"], patch)
    log.info("schedule.modified", schedule_id=sch.id, owner=p.sub)
    return JSON(sch)


async def delete_schedule(request: Request) -> Response:
    p = await principal(request, "write")
    schedules: Schedules = request.state.schedules
    await schedules.delete(p.sub, request.path_params["sch_id"])
    log.info("schedule.deleted", schedule_id=request.path_params["sch_id"], owner=p.sub)
    return Response(status_code=204)


async def pause_schedule(request: Request) -> Response:
    p = await principal(request, "write")
    schedules: Schedules = request.state.schedules
    sch = await schedules.pause(p.sub, request.path_params["sch_id"])
    log.info("schedule.paused", schedule_id=sch.id, owner=p.sub)
    return JSON(sch)


async def resume_schedule(request: Request) -> Response:
    p = await principal(request, "write")
    schedules: Schedules = request.state.schedules
    sch = await schedules.resume(p.sub, request.path_params["sch_id"])
    log.info("schedule.resumed", schedule_id=sch.id, owner=p.sub)
    return JSON(sch)


async def get_signing_keys(request: Request) -> Response:
    """The secrets that sign the owner's calls (the first is made on first use); a token that
    may only read sees their ids and ages alone: with a secret one could forge the owner's calls."""
    p = await principal(request, "read")
    keys: signing.SigningStore = request.state.signing
    return JSON(signing.view(await keys.read(p.sub), secrets=p.may("write")))


async def rotate_signing_keys(request: Request) -> Response:
    """A new secret signs from now on; the one it replaces signs too for 24 h.

    Answered only once every worker's copy of the keys has been read again since
    (SIGNING_CACHE_S), so that every call signed after the answer carries the new signature.
    """
    p = await principal(request, "write")
    keys: signing.SigningStore = request.state.signing
    stored = await keys.rotate(p.sub)
    log.info("signing.rotated", owner=p.sub)
    with off_the_redis_clock():
        await asyncio.sleep(c.SIGNING_CACHE_S + c.SIGNING_ROTATE_MARGIN_S)
    return JSON(signing.view(stored, secrets=True))


async def retry_task(request: Request) -> Response:
    """Redrive a failed task (issue #12)."""
    p = await principal(request, "write")
    task = await request.state.store.retry_task(p.sub, request.path_params["task_id"])
    log.info("task.redriven", task_id=task.id, owner=p.sub)
    return JSON(task)


async def list_queues(request: Request) -> Response:
    p = await principal(request, "read")
    queues: Queues = request.state.queues
    with _list_slot(request, p.sub):
        return JSON(await queues.list(p.sub))


async def get_queue(request: Request) -> Response:
    p = await principal(request, "read")
    queues: Queues = request.state.queues
    return JSON(await queues.get(p.sub, request.path_params["queue"]))


async def put_queue(request: Request) -> Response:
    p = await principal(request, "write")
    body = decode_body(await read_body(request), QueueUpdate)
    queues: Queues = request.state.queues
    queue = await queues.put(p.sub, request.path_params["queue"], body)
    log.info(
        "queue.set",
        owner=p.sub,
        queue=queue.name,
        rate=queue.rate,
        max_concurrent=queue.max_concurrent,
        paused=queue.paused,
    )
    return JSON(queue)


async def create_orchestration(request: Request) -> Response:
    p = await principal(request, "write")
    raw = await read_body(request, c.MAX_ORCHESTRATION_BODY_BYTES)
    with off_the_redis_clock():  # up to 10,000 steps to validate
        body = decode_body(raw, OrchestrationCreate)
    orcs: Orchestrations = request.state.orchestrations
    orc, created = await orcs.create(
        p.sub, body, idempotency_key=_idempotency_key(request), deadline_ms=_deadline_ms()
    )
    log.info(
        "orchestration.created" if created else "orchestration.idempotent_repeat",
        orchestration_id=orc.id,
        owner=p.sub,
        steps=len(orc.steps),
        run_at=orc.run_at,
    )
    return JSON(
        orc,
        status_code=201 if created else 200,
        headers={"Location": f"/v1/orchestrations/{orc.id}"},
    )


async def list_orchestrations(request: Request) -> Response:
    p = await principal(request, "read")
    orcs: Orchestrations = request.state.orchestrations
    status, limit = _status_param(request, OrchestrationStatus), _limit_param(request)
    cursor = _cursor_param(request, "orc")
    with _list_slot(request, p.sub):
        page = await orcs.list(p.sub, status=status, limit=limit, cursor=cursor)
    return JSON(page)


async def get_orchestration(request: Request) -> Response:
    p = await principal(request, "read")
    orcs: Orchestrations = request.state.orchestrations
    return JSON(await orcs.get(p.sub, request.path_params["orc_id"]))


async def modify_orchestration(request: Request) -> Response:
    p = await principal(request, "write")
    patch = decode_body(
        await read_body(request, c.MAX_ORCHESTRATION_BODY_BYTES), OrchestrationPatch
    )
    orcs: Orchestrations = request.state.orchestrations
    orc = await orcs.modify(p.sub, request.path_params["orc_id"], patch)
    log.info("orchestration.modified", orchestration_id=orc.id, owner=p.sub)
    return JSON(orc)


async def cancel_orchestration(request: Request) -> Response:
    p = await principal(request, "write")
    orcs: Orchestrations = request.state.orchestrations
    orc = await orcs.cancel(p.sub, request.path_params["orc_id"])
    log.info("orchestration.cancelled", orchestration_id=orc.id, owner=p.sub)
    return JSON(orc)


async def create_function(request: Request) -> Response:
    p = await principal(request, "write")
    fns: Functions = request.state.functions
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        body = convert(await _function_form(request), FunctionCreate)
    else:
        body = decode_body(await read_body(request), FunctionCreate)
    settings: Settings = request.state.settings
    if not settings.local_functions and (body.provider or settings.function_provider) == "local":
        # An API run without the sandbox's privileges (compose's `api`) must not run code.
        message = (
            "local functions are off on this server (TASKORCH_LOCAL_FUNCTIONS=0): "
            "use the aws provider, or the server that runs the local runtime"
        )
        raise _invalid_param_body("provider", message)
    fn = await fns.create(p.sub, body)
    return JSON(fn, status_code=201, headers={"Location": f"/v1/functions/{fn.id}"})


async def _function_form(request: Request) -> dict[str, Any]:
    """A multipart create: the code as a file (or a text field), the rest as fields."""
    declared = request.headers.get("content-length")
    if declared and declared.isascii() and declared.isdigit() and int(declared) > c.MAX_BODY_BYTES:
        raise PayloadTooLarge(f"The body is larger than {c.MAX_BODY_BYTES} bytes.")
    data: dict[str, Any] = {}
    try:
        form = await request.form(max_files=1, max_fields=20)
    except (ApiError, ClientDisconnect):  # the body passed its cap while streaming, or hung up
        raise
    except Exception as exc:  # python-multipart's parse errors
        raise BadRequest(f"The multipart body could not be read: {exc}.") from None
    try:
        for name, value in form.multi_items():
            if isinstance(value, str):
                data[name] = value
                continue
            try:
                data[name] = (await value.read()).decode("utf-8")
            except UnicodeDecodeError:
                raise _invalid_param(name, "must be UTF-8 text") from None
    finally:
        await form.close()
    if data.get("schedule") == "":  # an HTML form's empty field: no schedule
        del data["schedule"]
    if isinstance(data.get("schedule"), str):
        try:
            data["schedule"] = parse_json(data["schedule"], "The schedule field")
        except msgspec.DecodeError:
            raise _invalid_param("schedule", "must be a JSON object") from None
    return data


async def list_functions(request: Request) -> Response:
    p = await principal(request, "read")
    fns: Functions = request.state.functions
    limit, cursor = _limit_param(request), _cursor_param(request, "fn")
    with _list_slot(request, p.sub):
        page = await fns.list(p.sub, limit=limit, cursor=cursor)
    return JSON(page)


async def get_function(request: Request) -> Response:
    p = await principal(request, "read")
    fns: Functions = request.state.functions
    return JSON(await fns.get(p.sub, request.path_params["fn_id"]))


async def get_function_code(request: Request) -> Response:
    p = await principal(request, "read")
    fns: Functions = request.state.functions
    return JSON(await fns.code(p.sub, request.path_params["fn_id"]))


async def delete_function(request: Request) -> Response:
    p = await principal(request, "write")
    fns: Functions = request.state.functions
    await fns.delete(p.sub, request.path_params["fn_id"])
    return Response(status_code=204)


async def trigger_function(request: Request) -> Response:
    """A function's trigger URL: the key in the path is the credential; the body is the event."""
    from taskorch.functions import FunctionError, FunctionTimeout

    fns: Functions = request.state.functions
    try:
        raw = await read_body(request)
        event = parse_json(raw, "The event")
        fid, key = request.path_params["fn_id"], request.path_params["key"]
        try:
            result = await fns.invoke(fid, key, event)
        except FunctionTimeout as exc:
            err = ApiError(str(exc), code="function_timeout")
            err.status_code = 504
            raise err from None
        except FunctionError as exc:
            err = ApiError(exc.message, code="function_error")
            err.status_code = 500
            raise err from None
    except ApiError as exc:
        exc.headers = {**exc.headers, **_CORS}
        return error_response(exc)
    return JSON(result, headers=_CORS)


# A trigger URL is a bearer credential in itself (like a Lambda function URL without IAM auth),
# so a page on any origin that holds it may call it; cookies are never involved.
_CORS = {"Access-Control-Allow-Origin": "*"}


async def trigger_preflight(request: Request) -> Response:
    return Response(
        status_code=204,
        headers={
            **_CORS,
            "Access-Control-Allow-Methods": "POST, OPTIONS",
            "Access-Control-Allow-Headers": "Content-Type",
            "Access-Control-Max-Age": "600",
        },
    )


async def lateness_stats(request: Request) -> Response:
    """The caller's attempts by minute over the last hour: counts and p50/p99/max lateness."""
    p = await principal(request, "read")
    raw = request.query_params.get("minutes", str(c.LATENESS_WINDOW_MIN))
    top = c.LATENESS_WINDOW_MIN
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 3 and 1 <= int(raw) <= top):
        raise _invalid_param("minutes", f"must be a whole number from 1 to {top}")
    answer = await lateness.by_minute(
        request.state.redis, p.sub, minutes=int(raw), now_ms=int(time.time() * 1000)
    )
    return JSON(answer)


async def stats(request: Request) -> Response:
    """Counts by status of the caller's tasks and orchestrations, for dashboards."""
    p = await principal(request, "read")
    redis = request.state.redis
    task_statuses = [s.value for s in TaskStatus]
    orc_statuses = [s.value for s in OrchestrationStatus]
    layout = await partitions.load(redis)
    # Summed over every partition's per-owner status indexes (one pipeline, split by node on a
    # cluster); functions are not partitioned.
    async with redis.pipeline(transaction=False) as pipe:
        for pre in layout.prefixes:
            for status in task_statuses:
                pipe.zcard(f"{pre}{c.TASK_INDEX}{p.sub}:{status}")
            for status in orc_statuses:
                pipe.zcard(f"{pre}{c.ORCH_INDEX}{p.sub}:{status}")
        pipe.zcard(f"{c.OWNER_KEY_PREFIX}{p.sub}:functions")
        rows = await pipe.execute()
    width = len(task_statuses) + len(orc_statuses)
    counts = [sum(rows[i:-1:width]) for i in range(width)] + [rows[-1]]
    n = len(task_statuses)
    return JSON(
        {
            "tasks": dict(zip(task_statuses, counts[:n], strict=True)),
            "orchestrations": dict(zip(orc_statuses, counts[n:-1], strict=True)),
            "functions": counts[-1],
        }
    )


async def issue_token(request: Request) -> Response:
    body = decode_body(await read_body(request), TokenRequest)
    signin: auth.SignIn = request.state.signin
    # The client's address as uvicorn gives it: X-Forwarded-For from a trusted proxy
    # (FORWARDED_ALLOW_IPS), else the peer. Sign-ins are throttled by it (auth.SignIn).
    address = request.client.host if request.client else None
    if not await signin.authenticate(body.username, body.password, address=address):
        raise Unauthorized("Wrong username or password.", code="invalid_credentials")
    settings: Settings = request.state.settings
    token = auth.mint_token(settings, body.username)
    return JSON(
        TokenResponse(access_token=token, token_type="bearer", expires_in=settings.token_ttl_s)
    )


async def events(request: Request) -> Response:
    """Server-sent events of the owner's changes; EventSource may pass ?access_token=."""
    p = await principal(request, "read")
    slots: StreamSlots = request.state.streams
    free = slots.take(p.sub)
    pubsub = request.state.redis.pubsub(ignore_subscribe_messages=True)
    try:
        await pubsub.subscribe(c.EVENTS_CHANNEL_PREFIX + p.sub)
    except BaseException:
        free()
        with contextlib.suppress(Exception):
            await pubsub.aclose()
        raise

    stopping: asyncio.Event = request.state.stopping

    async def stream() -> AsyncIterator[bytes]:
        yield b"retry: 2000\n: connected\n\n"
        # The stream ends when the server shuts down (see _Server): an open stream would hold
        # uvicorn's graceful shutdown until its browser tab is closed.
        stop = asyncio.ensure_future(stopping.wait())
        get: asyncio.Future[Any] | None = None
        try:
            while True:
                get = asyncio.ensure_future(pubsub.get_message(timeout=15.0))
                await asyncio.wait({get, stop}, return_when=asyncio.FIRST_COMPLETED)
                if not get.done():  # the server is stopping
                    return
                yield _sse_message(get.result())
        finally:
            stop.cancel()
            if get is not None:
                get.cancel()

    async def close() -> None:
        free()
        with contextlib.suppress(Exception):
            await pubsub.aclose()

    return _EventStream(stream(), close)


def _sse_message(msg: dict[str, Any] | None) -> bytes:
    """What one pub/sub message (or none within 15 s: a ping) becomes on the event stream."""
    if msg is None:
        return b": ping\n\n"
    data = msg["data"]
    if data[:1] in (b"[", "["):
        # A script that changed many tasks at once sends their events as one message.
        return b"".join(_sse(event) for event in msgspec.json.decode(data))
    return _sse(msgspec.json.decode(data), data)


def _sse(event: dict[str, Any], raw: bytes | str | None = None) -> bytes:
    """One server-sent event: its type, and its JSON as the script published it."""
    data = _events_encoder.encode(event) if raw is None else raw
    if isinstance(data, bytes):
        data = data.decode()
    return f"event: {event.get('type', 'message')}\ndata: {data}\n\n".encode()


_events_encoder = msgspec.json.Encoder()


class _EventStream(StreamingResponse):
    """A stream whose slot and pub/sub connection are given back however it ends, even when the
    client hangs up before the first byte (when the generator's own ``finally`` never runs)."""

    def __init__(self, content: AsyncIterator[bytes], close: Callable[[], Awaitable[None]]) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )
        self._close = close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._close()


async def healthz(request: Request) -> Response:
    return JSON({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready when Redis answers a PING within TASKORCH_REDIS_TIMEOUT_S, all waits included."""
    settings: Settings = request.state.settings
    try:
        async with RedisDeadline(settings.redis_timeout_s):
            await request.state.redis.ping()
    except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
        return JSON(
            {"status": "unavailable", "redis": str(exc) or type(exc).__name__},
            status_code=503,
            headers={"Retry-After": str(c.UNAVAILABLE_RETRY_AFTER_S)},
        )
    return JSON({"status": "ok", "redis": "ok"})


async def metrics_route(request: Request) -> Response:
    settings: Settings = request.state.settings
    if settings.metrics_token is not None:
        kind, _, token = request.headers.get("authorization", "").partition(" ")
        given = token.strip().encode()
        if kind.lower() != "bearer" or not hmac.compare_digest(
            given, settings.metrics_token.encode()
        ):
            raise Unauthorized(
                "Send the metrics token: Authorization: Bearer <TASKORCH_METRICS_TOKEN>.",
                code="missing_token" if not given else "invalid_token",
            )
    text = await metrics.render(request.state.redis)
    return Response(text, media_type=metrics.CONTENT_TYPE)


async def openapi_route(request: Request) -> Response:
    return JSON(openapi.document(request.state.settings))


async def index(request: Request) -> Response:
    page = WEB_DIR / "index.html"
    if not page.exists():
        raise NotFound("The status page is not installed.")
    settings: Settings = request.state.settings
    csp = (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        f"connect-src 'self' {settings.public_url}; frame-ancestors 'none'; base-uri 'none'"
    )
    return FileResponse(
        page,
        headers={
            "Cache-Control": "no-cache",
            "Content-Security-Policy": csp,
            "X-Content-Type-Options": "nosniff",
        },
    )


# -- the app -----------------------------------------------------------------------------------


# Path ids must have the exact form the service hands out: anything else names nothing (404)
# and never reaches Redis, where ``tsk_x:attempts`` would name another key.
_PATH_IDS = {
    "task_id": ("tsk", "task"),
    "orc_id": ("orc", "orchestration"),
    "fn_id": ("fn", "function"),
    "sch_id": ("sch", "schedule"),
}
# A Redis that is down, frozen (the client's timeout), loading its data, read-only (a replica
# after a failover), full (noeviction refuses writes) or a cluster mid-failover: the request can
# succeed later, so 503 with Retry-After rather than a 500.
_REDIS_OUTAGE = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
)


def _check_path_ids(request: Request) -> None:
    for name, value in request.path_params.items():
        if name in _PATH_IDS and not is_id(value, _PATH_IDS[name][0]):
            raise NotFound(f"No {_PATH_IDS[name][1]} {value[:64]!r} exists for this account.")


def _wrap(
    endpoint: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """Turn our errors into contract bodies and a lost Redis into 503, never a 500.

    Each route's Redis work is bounded in total by TASKORCH_REDIS_TIMEOUT_S (RedisDeadline),
    except where the route does more than Redis work (a function's upload, a trigger's run) or
    bounds itself (/readyz). Past it the answer is 503, whatever redis-py's pool was waiting on.
    """
    bounded = endpoint not in _OWN_BOUNDS
    create = endpoint in _CREATES

    async def handler(request: Request) -> Response:
        deadline = RedisDeadline(request.state.settings.redis_timeout_s) if bounded else None
        try:
            if request.scope["path"].startswith("/v1/"):  # not .url, which builds a URL
                _check_path_ids(request)
            if deadline is None:
                return await endpoint(request)
            async with deadline.running():
                return await endpoint(request)
        except TimeoutError:
            if deadline is None or not deadline.expired():
                raise
            log.error("api.redis_unavailable", error="request deadline", path=request.url.path)
            return error_response(
                Unavailable(
                    "Redis did not answer in time; try again shortly.",
                    retry_after_s=c.UNAVAILABLE_RETRY_AFTER_S,
                    details=[dict(NOT_STORED if deadline.prompt() else OUTCOME_UNKNOWN)]
                    if create
                    else None,
                )
            )
        except ApiError as exc:
            return error_response(exc)
        except ClientDisconnect:
            # The client hung up mid-body: nobody is left to answer, and it is not our error.
            log.info("api.client_disconnected", path=request.url.path)
            return Response(status_code=400)
        except _REDIS_OUTAGE as exc:
            log.error("api.redis_unavailable", error=str(exc), path=request.url.path)
            full = isinstance(exc, redis.exceptions.OutOfMemoryError)
            message = (
                "Redis is full (maxmemory reached); try again later."
                if full
                else "Redis is unreachable; try again shortly."
            )
            return error_response(
                Unavailable(
                    message,
                    retry_after_s=c.UNAVAILABLE_RETRY_AFTER_S,
                    # Refused, unreachable, or no answer by the deadline the script carries;
                    # a connection lost after sending is CreateOutcomeUnknown, an ApiError.
                    details=[dict(NOT_STORED)] if create else None,
                )
            )

    return handler


# Routes whose time is more than Redis work (a function's upload and build, its removal from
# the runtime or AWS, a trigger's run of the function) or that bound themselves (/readyz): no
# request-wide Redis deadline; each Redis call still has TASKORCH_REDIS_TIMEOUT_S.
_OWN_BOUNDS: set[Callable[[Request], Awaitable[Response]]] = {
    create_function,
    delete_function,
    trigger_function,
    readyz,
}
_CREATES: set[Callable[[Request], Awaitable[Response]]] = {
    create_task,
    create_tasks,
    create_orchestration,
}

ROUTES: list[tuple[str, Callable[[Request], Awaitable[Response]], str]] = [
    ("/", index, "GET"),
    ("/healthz", healthz, "GET"),
    ("/readyz", readyz, "GET"),
    ("/metrics", metrics_route, "GET"),
    ("/openapi.json", openapi_route, "GET"),
    ("/v1/auth/token", issue_token, "POST"),
    ("/v1/tasks", create_task, "POST"),
    ("/v1/tasks/batch", create_tasks, "POST"),
    ("/v1/tasks", list_tasks, "GET"),
    ("/v1/tasks/{task_id}", get_task, "GET"),
    ("/v1/tasks/{task_id}", modify_task, "PATCH"),
    ("/v1/tasks/{task_id}/cancel", cancel_task, "POST"),
    ("/v1/schedules", create_schedule, "POST"),
    ("/v1/schedules", list_schedules, "GET"),
    ("/v1/schedules/{sch_id}", get_schedule, "GET"),
    ("/v1/schedules/{sch_id}", modify_schedule, "PATCH"),
    ("/v1/schedules/{sch_id}", delete_schedule, "DELETE"),
    ("/v1/schedules/{sch_id}/pause", pause_schedule, "POST"),
    ("/v1/schedules/{sch_id}/resume", resume_schedule, "POST"),
    ("/v1/tasks/{task_id}/retry", retry_task, "POST"),
    ("/v1/signing-keys", get_signing_keys, "GET"),
    ("/v1/signing-keys/rotate", rotate_signing_keys, "POST"),
    ("/v1/queues", list_queues, "GET"),
    ("/v1/queues/{queue}", get_queue, "GET"),
    ("/v1/queues/{queue}", put_queue, "PUT"),
    ("/v1/orchestrations", create_orchestration, "POST"),
    ("/v1/orchestrations", list_orchestrations, "GET"),
    ("/v1/orchestrations/{orc_id}", get_orchestration, "GET"),
    ("/v1/orchestrations/{orc_id}", modify_orchestration, "PATCH"),
    ("/v1/orchestrations/{orc_id}/cancel", cancel_orchestration, "POST"),
    ("/v1/functions", create_function, "POST"),
    ("/v1/functions", list_functions, "GET"),
    ("/v1/functions/{fn_id}", get_function, "GET"),
    ("/v1/functions/{fn_id}", delete_function, "DELETE"),
    ("/v1/functions/{fn_id}/code", get_function_code, "GET"),
    ("/fn/{fn_id}/{key}", trigger_function, "POST"),
    ("/fn/{fn_id}/{key}", trigger_preflight, "OPTIONS"),
    ("/v1/stats", stats, "GET"),
    ("/v1/stats/lateness", lateness_stats, "GET"),
    ("/v1/events", events, "GET"),
]


def body_limit(method: str, path: str) -> int:
    """The body cap of a route: orchestrations carry up to 10,000 steps, a batch up to 1,000
    tasks, the rest 1 MiB."""
    if path == "/v1/orchestrations" or path.startswith("/v1/orchestrations/"):
        return c.MAX_ORCHESTRATION_BODY_BYTES
    if path == "/v1/tasks/batch":
        return c.MAX_BATCH_BODY_BYTES
    return c.MAX_BODY_BYTES


class _TaskIdConvertor(StringConvertor):
    """A task id in a path: any segment but ``batch``, so that ``/v1/tasks/batch`` is its own
    route and a GET or PATCH there answers 405 rather than "no task 'batch'"."""

    regex = "(?!batch(?:/|$))[^/]+"


register_url_convertor("task", _TaskIdConvertor())


def _direct_routes() -> dict[tuple[str, str], Any]:
    """The create routes as plain ASGI apps, for :class:`Edge` to call past Starlette's routing.

    What Starlette's ``request_response`` does, less its exception wrapper: ``_wrap`` answers
    every error of ours, and nothing here raises HTTPException.
    """

    def asgi(endpoint: Callable[[Request], Awaitable[Response]]) -> Any:
        handler = _wrap(endpoint)

        async def app(scope: Any, receive: Any, send: Any) -> None:
            response = await handler(Request(scope, receive, send))
            await response(scope, receive, send)

        return app

    return {
        ("POST", "/v1/tasks"): asgi(create_task),
        ("POST", "/v1/tasks/batch"): asgi(create_tasks),
    }


def _routes(extra: list[Any]) -> list[Any]:
    out: list[Any] = [
        Route(p.replace("{task_id}", "{task_id:task}"), _wrap(fn), methods=[m])
        for p, fn, m in ROUTES
    ] + extra
    if (WEB_DIR / "static").is_dir():
        # The page's files go gzip-compressed to browsers that accept it (issue #13: it loads in
        # well under 100 KB); only they: API answers stay as they are.
        static = GZipMiddleware(StaticFiles(directory=WEB_DIR / "static"), minimum_size=500)
        out.append(Mount("/static", static, name="static"))
    return out


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        err = ApiError(
            f"{request.method} is not allowed on {request.url.path}.", code="method_not_allowed"
        )
    else:
        err = ApiError(
            exc.detail or "Not found.", code="not_found" if exc.status_code == 404 else "error"
        )
    err.status_code = exc.status_code
    if exc.status_code == 405:
        err.headers = {**err.headers, "Allow": _allowed(request)}
    return error_response(err)


def _allowed(request: Request) -> str:
    """Every method some route serves at this path (Starlette's own Allow names one route's)."""
    methods: set[str] = set()
    for route in request.app.routes:
        if isinstance(route, Route) and route.matches(request.scope)[0] != Match.NONE:
            methods |= route.methods or set()
    return ", ".join(sorted(methods))


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("api.unexpected_error", path=request.url.path)
    err = ApiError("Something went wrong on our side; it has been logged.", code="internal_error")
    return JSON(err.body(), status_code=500)


def lambda_provider(settings: Settings) -> Any | None:
    """The AWS provider when AWS is configured; required when it is the default provider.

    boto3 is the ``aws`` extra: without it there is no provider, and choosing it stops the start.
    """
    from taskorch.functions.errors import AWS_EXTRA_MISSING

    try:
        from taskorch.functions.aws import AwsProviderError, AwsSettings, LambdaProvider
    except ModuleNotFoundError as exc:
        if exc.name not in ("boto3", "botocore"):
            raise
        if settings.function_provider == "aws":
            raise ConfigError(f"TASKORCH_FUNCTION_PROVIDER=aws {AWS_EXTRA_MISSING}") from None
        return None

    env = dict(os.environ)
    if settings.aws_region:
        env.setdefault("TASKORCH_AWS_REGION", settings.aws_region)
    if settings.aws_lambda_role:
        env.setdefault("TASKORCH_AWS_LAMBDA_ROLE", settings.aws_lambda_role)
    try:
        return LambdaProvider(AwsSettings.from_env(env))
    except AwsProviderError as exc:
        if settings.function_provider == "aws":
            raise ConfigError(f"TASKORCH_FUNCTION_PROVIDER is aws but {exc}") from None
        return None


def create_app(
    settings: Settings, *, redis_client: Any = None, extra_routes: list[Any] | None = None
) -> Starlette:
    """Build the API. ``redis_client`` lets tests inject one; otherwise one is made at startup,
    with every call bounded by TASKORCH_REDIS_TIMEOUT_S so a frozen Redis answers 503.

    Also sets this process's read deadline for uvicorn's protocol (TASKORCH_READ_TIMEOUT_S), so
    that every process that builds the app from settings, a uvicorn worker included, has it.
    """
    set_read_timeout(settings.read_timeout_s)
    aws = lambda_provider(settings)
    runtime = local_runtime(settings) if settings.local_functions else None
    # Set when the server begins to shut down (``taskorch serve`` does, see _Server): the event
    # streams end then, so that an open status page does not hold the shutdown.
    stopping = asyncio.Event()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        client = redis_client
        if client is None:
            client = connect(
                settings.redis_url,
                socket_timeout=settings.redis_timeout_s,
                socket_connect_timeout=settings.redis_timeout_s,
            )
        await cluster.warm_up(client)  # a cluster's slot map: not in the first request's time
        store = Store(client)
        signin = auth.SignIn(client)
        functions = Functions(
            client,
            store,
            public_url=settings.public_url,
            default_provider=settings.function_provider,
            runtime=runtime,
            aws=aws,
        )
        functions.resume()
        schedules = Schedules(client)
        try:
            yield {
                "settings": settings,
                "redis": client,
                "store": store,
                "orchestrations": Orchestrations(client),
                "schedules": schedules,
                "signing": signing.SigningStore(client),
                "queues": Queues(client),
                "functions": functions,
                "verifier": auth.TokenVerifier(settings, redis=client),
                "signin": signin,
                "streams": StreamSlots(),
                "stopping": stopping,
                "lists": ListSlots(),
            }
        finally:
            await schedules.close()
            signin.close()
            await functions.close()
            if runtime is not None:
                await runtime.close()
            if redis_client is None:
                await client.aclose()

    app = Starlette(
        routes=_routes(extra_routes or []),
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, Exception: _unexpected},
        middleware=[Middleware(Edge, limit_for=body_limit, direct=_direct_routes())],
    )
    app.state.stopping = stopping
    return app


_CHILD_ENV = "TASKORCH_SERVE_CHILD"  # set by serve() in the API processes it starts


def serve(settings: Settings) -> None:
    """Entry point of ``taskorch serve``: ``TASKORCH_WEB_CONCURRENCY`` processes on one port.

    One process serves in place. For several, this process starts that many ``taskorch serve``
    children, each with its own app, lifespan and Redis pool, listening on the same port with
    ``SO_REUSEPORT`` (the kernel spreads connections over them), and stays as their supervisor:
    SIGTERM or SIGINT is passed on to all, and if one dies the rest are stopped, so that the
    platform's restart policy sees a failed process rather than a quietly smaller one.
    """
    import uvicorn

    from taskorch.limits import DeadlineHTTPProtocol
    from taskorch.logs import configure
    from taskorch.store import check_redis

    configure(fmt=settings.log_format, level=settings.log_level)
    child = os.environ.get(_CHILD_ENV) == "1"
    if not child:
        check_redis(settings)
    app = create_app(settings)  # built here too, so that bad settings stop the parent at once
    if settings.web_concurrency > 1 and not child:
        sys.exit(_supervise(settings))
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        log_config=None,  # uvicorn's lines go through logs.configure's handler, which redacts
        proxy_headers=True,
        access_log=False,  # the Edge middleware logs each request as http.request
        http=DeadlineHTTPProtocol,  # read deadlines and head limits: see taskorch/limits.py
        h11_max_incomplete_event_size=c.MAX_HEAD_BYTES,  # h11's own cap, if it is the parser
        timeout_keep_alive=settings.keep_alive_s,
    )
    server = _server(config, app.state.stopping)
    if child:
        server.run(sockets=[_reuseport_socket(settings.host, settings.port)])
    else:
        server.run()


def _server(config: Any, stopping: asyncio.Event) -> Any:
    """A uvicorn server that ends the app's event streams as it begins to shut down.

    uvicorn's graceful shutdown waits for every response to finish and tells the app nothing
    (the lifespan's shutdown comes after), so an open status page's stream would hold it until
    the tab is closed. Setting ``stopping`` first ends each stream; EventSource reconnects to
    whichever server answers next.
    """
    import uvicorn

    class _Server(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            stopping.set()
            await super().shutdown(sockets)

    return _Server(config)


def _reuseport_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def _supervise(settings: Settings) -> int:
    import signal
    import subprocess
    import time

    env = {**os.environ, _CHILD_ENV: "1"}
    children = [
        subprocess.Popen([sys.executable, "-m", "taskorch", "serve"], env=env)
        for _ in range(settings.web_concurrency)
    ]
    log.info("api.processes", count=len(children), port=settings.port)
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for p in children:
            if p.poll() is None:
                p.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping and all(p.poll() is None for p in children):
        time.sleep(0.2)
    if not stopping:
        log.error("api.process_exited", codes=[p.poll() for p in children])
        stop(signal.SIGTERM, None)
    for p in children:
        p.wait()
    return 0 if stopping else 1
