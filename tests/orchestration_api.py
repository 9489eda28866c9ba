"""A real HTTP server (Starlette on uvicorn, 127.0.0.1) that answers the two orchestration routes
the live API does not have yet, ``POST /v1/orchestrations/{id}/retry`` and
``POST /v1/orchestrations/{id}/events/{name}``, as the contract says they answer, and keeps every
request it was sent: the client's and the CLI's tests check what went over the wire.

- retry: 200 with ``answer`` (the JSON of a real orchestration, which the test sets) for the id
  ``FAILED``; 409 ``conflict`` for ``SUCCEEDED``; 404 ``not_found`` for any other id.
- events: 202 for ``FAILED`` or ``SUCCEEDED``, the first event of each name; 409 for a second one
  of the same name; 404 for any other id."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.helpers import free_port

FAILED = "orc_0000000000000000000000fail"
SUCCEEDED = "orc_0000000000000000000000done"


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class OrchestrationApi:
    url: str
    answer: dict[str, Any] = field(default_factory=dict)  # what retry of FAILED answers
    seen: list[Seen] = field(default_factory=list)
    events: set[tuple[str, str]] = field(default_factory=set)


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "details": []}}, status)


def _app(api: OrchestrationApi) -> Starlette:
    async def keep(request: Request) -> None:
        body = await request.body()
        api.seen.append(Seen(request.method, request.url.path, dict(request.headers), body))

    async def retry(request: Request) -> Response:
        await keep(request)
        orc_id = request.path_params["id"]
        if orc_id == FAILED:
            return JSONResponse(api.answer)
        if orc_id == SUCCEEDED:
            return _error(409, "conflict", "The orchestration is succeeded; only a failed or "
                          "stopped one can be retried.")  # fmt: skip
        return _error(404, "not_found", "No such orchestration.")

    async def event(request: Request) -> Response:
        await keep(request)
        orc_id, name = request.path_params["id"], request.path_params["name"]
        if orc_id not in (FAILED, SUCCEEDED):
            return _error(404, "not_found", "No such orchestration.")
        if (orc_id, name) in api.events:
            return _error(409, "conflict", f"The event {name} was already sent for this wait.")
        api.events.add((orc_id, name))
        return JSONResponse({"orchestration_id": orc_id, "name": name}, 202)

    return Starlette(
        routes=[
            Route("/v1/orchestrations/{id}/retry", retry, methods=["POST"]),
            Route("/v1/orchestrations/{id}/events/{name}", event, methods=["POST"]),
        ]
    )


@pytest.fixture(scope="module")
def orchestration_server() -> Iterator[OrchestrationApi]:
    port = free_port()
    api = OrchestrationApi(f"http://127.0.0.1:{port}")
    config = uvicorn.Config(_app(api), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:  # uvicorn sets it once the socket listens
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.01)
        yield api
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def orchestration_api(orchestration_server: OrchestrationApi) -> OrchestrationApi:
    """The module's server, with no request or event kept from an earlier test."""
    orchestration_server.seen.clear()
    orchestration_server.events.clear()
    return orchestration_server
