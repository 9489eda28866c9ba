"""Orchestrations: steps run in order with a condition check between them; create, list, get,
modify, cancel."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from taskorch import constants as c
from taskorch.api import spec
from taskorch.api.common import (
    JSON,
    created,
    deadline_ms,
    idempotency_key,
    list_slot,
    log,
    page_params,
    principal,
    read_body,
)
from taskorch.limits import off_the_redis_clock
from taskorch.models import (
    OrchestrationCreate,
    OrchestrationPatch,
    OrchestrationStatus,
    decode_body,
)
from taskorch.orchestrations import Orchestrations


async def create_orchestration(request: Request) -> Response:
    p = await principal(request, "write")
    raw = await read_body(request, c.MAX_ORCHESTRATION_BODY_BYTES)
    with off_the_redis_clock():  # up to 10,000 steps to validate
        body = decode_body(raw, OrchestrationCreate)
    orcs: Orchestrations = request.state.orchestrations
    orc, was_created = await orcs.create(
        p.sub, body, idempotency_key=idempotency_key(request), deadline_ms=deadline_ms()
    )
    log.info(
        "orchestration.created" if was_created else "orchestration.idempotent_repeat",
        orchestration_id=orc.id,
        owner=p.sub,
        steps=len(orc.steps),
        run_at=orc.run_at,
    )
    return created(orc, was_created, f"/v1/orchestrations/{orc.id}")


async def list_orchestrations(request: Request) -> Response:
    p = await principal(request, "read")
    orcs: Orchestrations = request.state.orchestrations
    status, limit, cursor = page_params(request, OrchestrationStatus, "orc")
    with list_slot(request, p.sub):
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


# -- routes ------------------------------------------------------------------------------------

_OPS = spec.steerable(
    "orchestration",
    id_name="orc_id",
    statuses=OrchestrationStatus,
    create_summary="Run steps in order with a condition check between them",
    patch_when="scheduled",
    cancel_when="scheduled or running",
)
_ONE = "/v1/orchestrations/{orc_id}"

ROUTES = [
    spec.Endpoint("/v1/orchestrations", create_orchestration, "POST", _OPS["create"], create=True),
    spec.Endpoint("/v1/orchestrations", list_orchestrations, "GET", _OPS["list"]),
    spec.Endpoint(_ONE, get_orchestration, "GET", _OPS["get"]),
    spec.Endpoint(_ONE, modify_orchestration, "PATCH", _OPS["modify"]),
    spec.Endpoint(f"{_ONE}/cancel", cancel_orchestration, "POST", _OPS["cancel"]),
]
