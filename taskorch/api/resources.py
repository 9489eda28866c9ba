"""The routes every kind of resource has, a handler and its operation built together: a page of
the owner's things, one of them, and a change to one (the route's service method does the
work; see :mod:`taskorch.api.spec` for the operations)."""

from __future__ import annotations

import enum
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from taskorch import constants as c
from taskorch.api import spec
from taskorch.api.common import JSON, list_slot, log, page_query, principal, read_body
from taskorch.api.spec import Endpoint, Handler
from taskorch.models import decode_body, rules


def owned(
    call: str,
    id_name: str,
    *,
    scope: str = "read",
    body: type[Any] | None = None,
    limit: int = c.MAX_BODY_BYTES,
    event: str | None = None,
) -> Handler:
    """A route on one of the caller's things, named by ``id_name`` in the path: it calls
    ``request.state.<service>.<method>(owner, id)`` (``call`` is ``"service.method"``), with the
    ``body`` model decoded from the request as a third argument when given, and answers what that
    returns; with ``event`` (``"<noun>.<what>"``), it logs that event with ``<noun>_id``, the
    result's id."""
    service, method = call.split(".")

    async def endpoint(request: Request) -> Response:
        p = await principal(request, scope)
        args = [p.sub, request.path_params[id_name]]
        if body is not None:
            args.append(decode_body(await read_body(request, limit), body))
        result = await getattr(getattr(request.state, service), method)(*args)
        if event is not None:
            log.info(event, **{f"{event.split('.')[0]}_id": result.id}, owner=p.sub)
        return JSON(result)

    return endpoint


def listing(call: str, prefix: str, statuses: type[enum.Enum] | None = None) -> Handler:
    """A list of the caller's things, a page at a time: ``request.state.<service>.<method>``
    (``call`` is ``"service.method"``) with the ``limit``, ``cursor`` (an id with ``prefix``) and,
    given ``statuses``, ``status`` of the query, in one of the owner's list slots."""
    service, method = call.split(".")

    async def endpoint(request: Request) -> Response:
        p = await principal(request, "read")
        query = page_query(request, prefix, statuses)
        with list_slot(request, p.sub):
            page = await getattr(getattr(request.state, service), method)(p.sub, **query)
        return JSON(page)

    return endpoint


def _path_id(path: str) -> str:
    """The name of a path's last parameter: ``sch_id`` of ``/v1/schedules/{sch_id}/pause``."""
    names: list[str] = re.findall(r"\{(\w+)\}", path)
    return names[-1]


def page(
    path: str, noun: str, id_name: str, call: str, statuses: type[enum.Enum] | None = None
) -> Endpoint:
    """``GET path``: a page of the owner's ``noun``s, newest first (``id_name`` their ids)."""
    prefix = rules.ID_PREFIXES[id_name]
    return Endpoint(
        path, listing(call, prefix, statuses), "GET", spec.list_op(noun, statuses, prefix)
    )


def one(path: str, noun: str, call: str) -> Endpoint:
    """``GET path``: one of the owner's ``noun``s, by the id in the path."""
    id_name = _path_id(path)
    return Endpoint(path, owned(call, id_name), "GET", spec.get_op(noun, id_name))


def change(
    method: str,
    path: str,
    call: str,
    event: str,
    op: dict[str, Any],
    body: type[Any] | None = None,
    limit: int = c.MAX_BODY_BYTES,
) -> Endpoint:
    """``method path``: a change to one of the owner's things (with a ``body`` model to decode,
    up to ``limit`` bytes), logged as ``event``."""
    handler = owned(call, _path_id(path), scope="write", body=body, limit=limit, event=event)
    return Endpoint(path, handler, method, op)
