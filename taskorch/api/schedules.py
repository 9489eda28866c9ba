"""Schedules: a task made on a cron expression or an interval; create, list, get, change,
delete, pause and resume."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from taskorch.api import spec
from taskorch.api.common import (
    JSON,
    created,
    idempotency_key,
    list_slot,
    log,
    page_params,
    principal,
    read_body,
)
from taskorch.models import ScheduleCreate, SchedulePatch, ScheduleStatus, decode_body
from taskorch.schedules import Schedules


async def create_schedule(request: Request) -> Response:
    p = await principal(request, "write")
    body = decode_body(await read_body(request), ScheduleCreate)
    schedules: Schedules = request.state.schedules
    sch, was_created = await schedules.create(p.sub, body, idempotency_key=idempotency_key(request))
    log.info(
        "schedule.created" if was_created else "schedule.idempotent_repeat",
        schedule_id=sch.id,
        owner=p.sub,
        next_runs=sch.next_runs[:1],
    )
    return created(sch, was_created, f"/v1/schedules/{sch.id}")


async def list_schedules(request: Request) -> Response:
    p = await principal(request, "read")
    schedules: Schedules = request.state.schedules
    status, limit, cursor = page_params(request, ScheduleStatus, "sch")
    with list_slot(request, p.sub):
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


# -- routes ------------------------------------------------------------------------------------

_IDS = spec.path_id("sch_id")
_IT = spec.it("Schedule")
_LINKS = spec.links(
    "sch_id", "getSchedule", "modifySchedule", "pauseSchedule", "resumeSchedule", "deleteSchedule"
)
_PAUSE = "Pause a schedule: no more occurrences, those not yet started are cancelled"

ROUTES = [
    spec.Endpoint(
        "/v1/schedules",
        create_schedule,
        "POST",
        spec.op(
            "Run a task on a cron expression or an interval",
            spec.created_answers("Schedule"),
            op_id="createSchedule",
            body="ScheduleCreate",
            codes=spec.BODY_CODES,
            params=[spec.IDEMPOTENCY],
            links=_LINKS,
        ),
    ),
    spec.Endpoint(
        "/v1/schedules",
        list_schedules,
        "GET",
        spec.op(
            "List schedules, newest first",
            {"200": spec.json_answer("SchedulePage", "A page")},
            op_id="listSchedules",
            codes=("422", "429"),
            params=spec.list_params(ScheduleStatus, "sch"),
        ),
    ),
    spec.Endpoint(
        "/v1/schedules/{sch_id}",
        get_schedule,
        "GET",
        spec.op("Get a schedule", _IT, op_id="getSchedule", codes=("404",), params=_IDS),
    ),
    spec.Endpoint(
        "/v1/schedules/{sch_id}",
        modify_schedule,
        "PATCH",
        spec.op(
            "Change a schedule (its occurrences not yet due are made anew)",
            _IT,
            op_id="modifySchedule",
            body="SchedulePatch",
            codes=("400", "404", "409", "413", "422"),
            params=_IDS,
        ),
    ),
    spec.Endpoint(
        "/v1/schedules/{sch_id}",
        delete_schedule,
        "DELETE",
        spec.op(
            "Delete a schedule and cancel its occurrences not yet started",
            {"204": {"description": "Deleted"}},
            op_id="deleteSchedule",
            codes=("404",),
            params=_IDS,
        ),
    ),
    spec.Endpoint(
        "/v1/schedules/{sch_id}/pause",
        pause_schedule,
        "POST",
        spec.op(_PAUSE, _IT, op_id="pauseSchedule", codes=spec.CHANGE_CODES, params=_IDS),
    ),
    spec.Endpoint(
        "/v1/schedules/{sch_id}/resume",
        resume_schedule,
        "POST",
        spec.op(
            "Resume a paused schedule from now on",
            _IT,
            op_id="resumeSchedule",
            codes=spec.CHANGE_CODES,
            params=_IDS,
        ),
    ),
]
