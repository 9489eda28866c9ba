"""Queues: a named queue's rate, concurrency cap and pause; list, get and set."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from taskorch import rules
from taskorch.api import spec
from taskorch.api.common import JSON, list_slot, log, principal, read_body
from taskorch.models import QueueUpdate, decode_body
from taskorch.queues import Queues


async def list_queues(request: Request) -> Response:
    p = await principal(request, "read")
    queues: Queues = request.state.queues
    with list_slot(request, p.sub):
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


# -- routes ------------------------------------------------------------------------------------

# A queue's name (rules.queue_name_ok); PUT takes any but default, which cannot be changed.
_QUEUE_SETTABLE = {
    **rules.QUEUE_NAME_SCHEMA,
    "pattern": "^(?!default$)" + rules.QUEUE_NAME_PATTERN[1:],
    "description": "a named queue (default cannot be limited or paused)",
}


def _name(schema: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"name": "queue", "in": "path", "required": True, "schema": schema}]


ROUTES = [
    spec.Endpoint(
        "/v1/queues",
        list_queues,
        "GET",
        spec.op(
            "List the owner's queues: default first, then the named ones",
            {"200": spec.json_answer("QueueList", "Every queue, with its settings and counts")},
            op_id="listQueues",
            codes=("429",),
        ),
    ),
    spec.Endpoint(
        "/v1/queues/{queue}",
        get_queue,
        "GET",
        spec.op(
            "Get a queue: its settings, its tasks counted by status, how many wait",
            spec.it("Queue"),
            op_id="getQueue",
            codes=("404",),
            params=_name({"type": "string"}),
        ),
    ),
    spec.Endpoint(
        "/v1/queues/{queue}",
        put_queue,
        "PUT",
        spec.op(
            "Set a queue's rate, concurrency cap and pause (fields left out are kept)",
            spec.it("Queue", "It, as set"),
            op_id="putQueue",
            body="QueueUpdate",
            codes=spec.BODY_CODES,
            params=_name(_QUEUE_SETTABLE),
        ),
    ),
]
