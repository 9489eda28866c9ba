"""Schedules: a task made on a cron expression or an interval; create, list, get, change,
delete, pause and resume."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from taskorch.api import resources, spec
from taskorch.api.common import created, idempotency_key, log, principal, read_body
from taskorch.api.spec import Endpoint
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


async def delete_schedule(request: Request) -> Response:
    p = await principal(request, "write")
    schedules: Schedules = request.state.schedules
    await schedules.delete(p.sub, request.path_params["sch_id"])
    log.info("schedule.deleted", schedule_id=request.path_params["sch_id"], owner=p.sub)
    return Response(status_code=204)


# -- routes ------------------------------------------------------------------------------------

_ONE = "/v1/schedules/{sch_id}"
_LINKED = ("getSchedule", "modifySchedule", "pauseSchedule", "resumeSchedule", "deleteSchedule")
_CREATE = spec.create_op(
    "schedule", "Run a task on a cron expression or an interval", "sch_id", *_LINKED
)
_MODIFY = spec.modify_op(
    "schedule", "Change a schedule (its occurrences not yet due are made anew)", "sch_id"
)
_DELETE = spec.delete_op(
    "deleteSchedule", "Delete a schedule and cancel its occurrences not yet started", "sch_id"
)
_IT = spec.it("Schedule")
_PAUSE = spec.change_op(
    "pauseSchedule",
    "Pause a schedule: no more occurrences, those not yet started are cancelled",
    _IT,
    "sch_id",
)
_RESUME = spec.change_op("resumeSchedule", "Resume a paused schedule from now on", _IT, "sch_id")

ROUTES = [
    Endpoint("/v1/schedules", create_schedule, "POST", _CREATE),
    resources.page("/v1/schedules", "schedule", "sch_id", "schedules.list_page", ScheduleStatus),
    resources.one(_ONE, "schedule", "schedules.get"),
    resources.change(
        "PATCH", _ONE, "schedules.modify", "schedule.modified", _MODIFY, SchedulePatch
    ),
    Endpoint(_ONE, delete_schedule, "DELETE", _DELETE),
    resources.change("POST", f"{_ONE}/pause", "schedules.pause", "schedule.paused", _PAUSE),
    resources.change("POST", f"{_ONE}/resume", "schedules.resume", "schedule.resumed", _RESUME),
]
