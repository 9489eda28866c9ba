"""Orchestrations: steps run in order with a condition check between them; create, list, get,
modify, cancel, retry. A create's steps may pass data on (references, taskorch.workflows)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from taskorch import constants as c
from taskorch import models
from taskorch.api import resources, spec
from taskorch.api.common import created, deadline_ms, idempotency_key, log, principal, read_body
from taskorch.api.spec import Endpoint
from taskorch.limits import off_the_redis_clock
from taskorch.orchestrations import Orchestrations
from taskorch.workflows.accept import accept


async def create_orchestration(request: Request) -> Response:
    p = await principal(request, "write")
    raw = await read_body(request, c.MAX_ORCHESTRATION_BODY_BYTES)
    with off_the_redis_clock():  # up to 10,000 steps to validate
        accepted = accept(models.parse_json(raw))
    orcs: Orchestrations = request.state.orchestrations
    orc, was_created = await orcs.create(
        p.sub,
        accepted.body,
        idempotency_key=idempotency_key(request),
        deadline_ms=deadline_ms(),
        kinds=accepted.kinds,
    )
    log.info(
        "orchestration.created" if was_created else "orchestration.idempotent_repeat",
        orchestration_id=orc.id,
        owner=p.sub,
        steps=len(orc.steps),
        run_at=orc.run_at,
    )
    return created(orc, was_created, f"/v1/orchestrations/{orc.id}")


# -- routes ------------------------------------------------------------------------------------

_ONE = "/v1/orchestrations/{orc_id}"
_LINKED = ("getOrchestration", "modifyOrchestration", "cancelOrchestration", "retryOrchestration")
_CREATE = spec.create_op(
    "orchestration", "Run steps in order with a condition check between them", "orc_id", *_LINKED
)
_MODIFY = spec.modify_op("orchestration", "Modify a orchestration while scheduled", "orc_id")
_CANCEL = spec.change_op(
    "cancelOrchestration",
    "Cancel a orchestration while scheduled or running",
    spec.it("Orchestration"),
    "orc_id",
)
_RETRY = spec.change_op(
    "retryOrchestration",
    "Run a failed or stopped orchestration again from the step that ended it",
    spec.it("Orchestration"),
    "orc_id",
)

ROUTES = [
    Endpoint("/v1/orchestrations", create_orchestration, "POST", _CREATE, create=True),
    resources.page(
        "/v1/orchestrations",
        "orchestration",
        "orc_id",
        "orchestrations.list",
        models.OrchestrationStatus,
    ),
    resources.one(_ONE, "orchestration", "orchestrations.get"),
    resources.change(
        "PATCH",
        _ONE,
        "orchestrations.modify",
        "orchestration.modified",
        _MODIFY,
        models.OrchestrationPatch,
        c.MAX_ORCHESTRATION_BODY_BYTES,
    ),
    resources.change(
        "POST", f"{_ONE}/cancel", "orchestrations.cancel", "orchestration.cancelled", _CANCEL
    ),
    resources.change(
        "POST", f"{_ONE}/retry", "orchestrations.retry", "orchestration.retried", _RETRY
    ),
]
