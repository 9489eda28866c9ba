"""The live stream: server-sent events of the owner's changes, from Redis pub/sub."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from taskorch import constants as c
from taskorch.api import spec
from taskorch.api.common import principal
from taskorch.api.openapi import EVENT_KINDS
from taskorch.limits import StreamSlots


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
        # The stream ends when the server shuts down (see serve._server): an open stream would
        # hold uvicorn's graceful shutdown until its browser tab is closed.
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


# -- routes ------------------------------------------------------------------------------------


def _sse_event() -> dict[str, Any]:
    """One server-sent event of ``GET /v1/events``. Before OpenAPI 3.2 (``itemSchema``), the
    ``schema`` of a ``text/event-stream`` describes each event, as the SSE parser reads it: an
    object of its fields, ``data`` a string (here the JSON of an Event)."""
    return {
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"type": "string", "enum": list(EVENT_KINDS)},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": spec.ref("Event"),
            },
            "id": {"type": "string"},
            "retry": {"type": "integer", "minimum": 0},
        },
    }


_STREAM = {
    "description": "An endless text/event-stream: `retry: 2000`, then an event per change "
    "(`event: <type>`, `data: <Event as JSON>`) and a comment line every 15 s. The schema "
    "describes each event.",
    "content": {"text/event-stream": {"schema": _sse_event()}},
}
_ACCESS_TOKEN = {
    "name": "access_token",
    "in": "query",
    "description": "the token, for EventSource, which cannot send headers",
    "schema": {"type": "string"},
}

_EVENTS = (
    "Server-sent events of the owner's changes (event: task, orchestration, schedule, function; "
    "data: the JSON of an Event, {type, id, status})"
)
_OP = spec.op(_EVENTS, {"200": _STREAM}, op_id="events", codes=("429",), params=[_ACCESS_TOKEN])

ROUTES = [spec.Endpoint("/v1/events", events, "GET", _OP)]
