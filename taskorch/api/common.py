"""What every route of the API shares: the JSON answer, the body read within its cap, the
caller's token, and the query parameters each list takes."""

from __future__ import annotations

import contextlib
import enum
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import structlog
from starlette.requests import Request
from starlette.responses import Response

from taskorch import auth
from taskorch import constants as c
from taskorch.errors import ApiError, BadRequest, PayloadTooLarge, Unauthorized, ValidationFailed
from taskorch.limits import ListSlots, off_the_redis_clock, redis_deadline
from taskorch.store import is_id

E = TypeVar("E", bound=enum.Enum)

# Every module of the API logs as taskorch.api, as the one module it was.
log = structlog.get_logger("taskorch.api")
WEB_DIR = (
    Path(__file__).resolve().parent.parent / "web"
)  # package data: every install serves the page
_enc = msgspec.json.Encoder()


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return _enc.encode(content) + b"\n"  # a shell prompt after curl starts on its own line


def error_response(exc: ApiError) -> Response:
    return JSON(exc.body(), status_code=exc.status_code, headers=exc.headers)


def created(resource: Any, created: bool, location: str) -> Response:
    """A create's answer: 201 with its Location, or 200 for an Idempotency-Key repeat."""
    return JSON(resource, status_code=201 if created else 200, headers={"Location": location})


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


def deadline_ms() -> int | None:
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


def status_param(request: Request, kind: type[E]) -> E | None:
    raw = request.query_params.get("status")
    if not raw:
        return None
    try:
        return kind(raw)
    except ValueError:
        allowed = ", ".join(s.value for s in kind)
        raise invalid_param("status", f"must be one of {allowed}") from None


def cursor_param(request: Request, prefix: str) -> str | None:
    cursor = request.query_params.get("cursor") or None
    if cursor is not None and not is_id(cursor, prefix):
        raise invalid_param("cursor", "is not a cursor this service handed out")
    return cursor


def idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is not None and not 1 <= len(key) <= 255:
        raise BadRequest("The Idempotency-Key header must be 1 to 255 characters.")
    return key


def limit_param(request: Request) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return c.DEFAULT_LIST_LIMIT
    # The length first: int() refuses strings of more than 4,300 digits with a ValueError.
    ok = raw.isascii() and raw.isdigit() and len(raw) <= len(str(c.MAX_LIST_LIMIT))
    if not ok or not 1 <= int(raw) <= c.MAX_LIST_LIMIT:
        raise invalid_param("limit", f"must be a whole number from 1 to {c.MAX_LIST_LIMIT}")
    return int(raw)


def page_query(request: Request, prefix: str, statuses: type[E] | None = None) -> dict[str, Any]:
    """A list's query: its ``status`` (one of ``statuses``, when the list has them), ``limit``
    and ``cursor`` (an id with ``prefix``), as keyword arguments of the list's method."""
    query: dict[str, Any] = {}
    if statuses is not None:
        query["status"] = status_param(request, statuses)
    query["limit"], query["cursor"] = limit_param(request), cursor_param(request, prefix)
    return query


def invalid_param(name: str, message: str) -> ApiError:
    return ValidationFailed(
        f"The query parameter {name} {message}.", details=[{"field": name, "message": message}]
    )


def list_slot(request: Request, owner: str) -> contextlib.AbstractContextManager[None]:
    """One of the owner's list slots in this process for a list or search (429 when its
    MAX_LISTS_PER_OWNER are all in progress): see limits.ListSlots."""
    slots: ListSlots = request.state.lists
    return slots.held(owner)
