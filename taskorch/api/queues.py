"""Queues: a named queue's rate, concurrency cap and pause; list, get and set."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from taskorch.api import resources, spec
from taskorch.api.common import JSON, list_slot, log, principal, read_body
from taskorch.models import QueueUpdate, decode_body, rules
from taskorch.queues import Queues


async def list_queues(request: Request) -> Response:
    p = await principal(request, "read")
    queues: Queues = request.state.queues
    with list_slot(request, p.sub):
        return JSON(await queues.list(p.sub))


async def put_queue(request: Request) -> Response:
    p = await principal(request, "write")
    body = decode_body(await read_body(request), QueueUpdate)
    queues: Queues = request.state.queues
    queue = await queues.put(p.sub, request.path_params["queue"], body)
    # The settings the body set, by their names (a lifted limit logs as null): a new setting
    # needs no line here.
    given = {f: v for f, v in msgspec.structs.asdict(body).items() if v is not msgspec.UNSET}
    log.info("queue.set", owner=p.sub, queue=queue.name, **given)
    return JSON(queue)


# -- routes ------------------------------------------------------------------------------------

# A queue's name (rules.queue_name_ok); PUT takes any but default, which cannot be changed.
_QUEUE_SETTABLE = {
    **rules.QUEUE_NAME_SCHEMA,
    "pattern": "^(?!default$)" + rules.QUEUE_NAME_PATTERN[1:],
    "description": "a named queue (default cannot be limited or paused)",
}


def _name(schema: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"name": "queue", "in": "path", "required": True, "schema": schema}]


_EVERY = {"200": spec.json_answer("QueueList", "Every queue, with its settings and counts")}
_LIST = spec.op(
    "List the owner's queues: default first, then the named ones",
    _EVERY,
    op_id="listQueues",
    codes=("429",),
)
_GET = "Get a queue: its settings, its tasks counted by status, how many wait"
_PUT = "Set a queue's rate, concurrency cap and pause (fields left out are kept)"
_AS_SET = spec.it("Queue", "It, as set")
_ONE = "/v1/queues/{queue}"

ROUTES = [
    spec.Endpoint("/v1/queues", list_queues, "GET", _LIST),
    spec.Endpoint(
        _ONE,
        resources.owned("queues.get", "queue"),
        "GET",
        spec.op(
            _GET,
            spec.it("Queue"),
            op_id="getQueue",
            codes=("404",),
            params=_name({"type": "string"}),
        ),
    ),
    spec.Endpoint(
        _ONE,
        put_queue,
        "PUT",
        spec.op(
            _PUT,
            _AS_SET,
            op_id="putQueue",
            body="QueueUpdate",
            codes=spec.BODY_CODES,
            params=_name(_QUEUE_SETTABLE),
        ),
    ),
]
