"""The API's edge: what a request may be before the app spends anything on it.

* :class:`Edge` (ASGI middleware) caps every request body while it streams in, whatever length
  it declares (a chunked body declares none): past the route's cap the app's next read raises
  :class:`BodyTooLarge`, the answer is 413 with ``Connection: close``, and nothing more is read,
  spooled or buffered. Any answer given before its request's body was read to the end closes
  the connection too, so a route that takes no body cannot be fed one for ever. It also writes
  the access log, one ``http.request`` event per request, with what the route added
  (:func:`note_request`), and hands the create routes to their handlers directly.
* ``DeadlineHTTPProtocol`` is uvicorn's HTTP protocol with read deadlines: the request line and
  headers must arrive within ``read_timeout_s`` of the request's first byte (or of the connection
  opening), the body within ``read_timeout_s`` plus one second per ``MIN_BODY_RATE_BPS`` bytes. A
  client that drips a byte at a time gets 408 and a closed connection. Its request line and
  headers are counted as they arrive, before the parser holds them: past ``MAX_REQUEST_LINE_BYTES``
  414, past ``MAX_HEADERS``, ``MAX_HEADER_LINE_BYTES`` or ``MAX_HEAD_BYTES`` 431.

What a request may hold once inside (event streams, lists, its time on Redis) is
:mod:`taskorch.limits`.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable
from typing import Any

import msgspec
import structlog

from taskorch import constants as c
from taskorch.errors import PayloadTooLarge

log = structlog.get_logger("taskorch.api")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[Message], Any]


class BodyTooLarge(PayloadTooLarge):
    """Raised from ``receive`` once a body passes its cap; answered 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"The body is larger than {limit} bytes.")


def _framing(scope: Scope) -> tuple[int | None, bool]:
    """The declared Content-Length (None if absent or not a plain number) and whether the
    body is chunked, in one pass over the headers."""
    declared: int | None = None
    length_seen = chunked = False
    for name, value in scope.get("headers", []):
        if name == b"content-length" and not length_seen:
            length_seen = True
            declared = int(value) if value.isdigit() and len(value) < 20 else None
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    return declared, chunked


_PROBES = frozenset({"/healthz", "/readyz", "/metrics"})


class Edge:
    """ASGI middleware: body caps while streaming, and the access log.

    Args:
        app: the Starlette app.
        limit_for: the body cap in bytes for a request's (method, path).
        direct: ASGI apps by exact (method, path) that take the request straight from here,
            past Starlette's routing and exception middleware (the create routes: those layers
            were a sixth of a create's CPU). They must answer every error themselves; anything
            they raise still reaches the app's last-resort 500 handler, outside this one.
    """

    def __init__(
        self,
        app: Any,
        *,
        limit_for: Callable[[str, str], int],
        direct: dict[tuple[str, str], Any] | None = None,
    ) -> None:
        self.app = app
        self.limit_for = limit_for
        self.direct = direct or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        limit = self.limit_for(method, path)
        declared, chunked = _framing(scope)
        body_done = not (declared or chunked)
        app = self.direct.get((method, path), self.app)
        received = 0
        tripped = False
        status = 0

        async def capped_receive() -> Message:
            nonlocal received, tripped, body_done
            if declared is not None and declared > limit:
                tripped = True
                raise BodyTooLarge(limit)
            message: Message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    tripped = True
                    raise BodyTooLarge(limit)
                body_done = not message.get("more_body", False)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # A body the route did not read to its end (past the cap, or a route that takes
                # none) is never read: close instead of draining it for the next request.
                if tripped or not body_done:
                    message = {
                        **message,
                        "headers": [*message["headers"], (b"connection", b"close")],
                    }
            await send(message)

        fields: dict[str, Any] = {}
        fields_token = _ACCESS_FIELDS.set(fields)
        started = time.perf_counter()
        try:
            await app(scope, capped_receive, watched_send)
        except BodyTooLarge as exc:  # a route that did not catch it
            if status:
                raise
            await watched_send(
                {
                    "type": "http.response.start",
                    "status": exc.status_code,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            body = msgspec.json.encode(exc.body())
            await watched_send({"type": "http.response.body", "body": body})
        except Exception:
            status = status or 500  # answered by Starlette's last-resort handler, outside us
            raise
        finally:
            # Probes come every few seconds: at debug, so that they do not drown the rest.
            emit = log.debug if path in _PROBES else log.info
            emit(
                "http.request",
                method=method,
                path=path,
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
                **fields,
            )
            _ACCESS_FIELDS.reset(fields_token)


# What a route adds to its request's http.request line (note_request), per request.
_ACCESS_FIELDS: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "access_fields", default=None
)


def note_request(**fields: Any) -> None:
    """Add ``fields`` to the running request's ``http.request`` log line (a create's task_id):
    one line per request instead of a second one from the route."""
    current = _ACCESS_FIELDS.get()
    if current is not None:
        current.update(fields)


_408_BODY = (
    b'{"error":{"code":"request_timeout","message":"The request did not arrive in time; '
    b'send it again.","details":[]}}'
)
_408 = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(_408_BODY), _408_BODY)
)


class _ReadDeadline:
    """Mixed into uvicorn's HTTP protocol: the read deadlines described in the module docstring."""

    read_timeout_s: float = c.DEFAULT_READ_TIMEOUT_S
    # uvicorn's protocol sets these; declared for the type checker.
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    cycle: Any
    _deadline: asyncio.TimerHandle | None = None
    _deadline_at = 0.0
    _request_of: Any = None  # the cycle current when this request began (the previous one)
    _in_body = False

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._begin_request()

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and (self.cycle is None or self.cycle.response_complete):
            self._begin_request()
        super().data_received(data)  # type: ignore[misc]
        self._progress(len(data))

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]

    def _begin_request(self) -> None:
        self._request_of = self.cycle
        self._in_body = False
        self._arm(self.loop.time() + self.read_timeout_s)

    def _progress(self, n: int) -> None:
        cycle = self.cycle
        if self._deadline is None or cycle is None or cycle is self._request_of:
            return  # no request being read, or still its line and headers
        if not cycle.more_body:
            self._disarm()  # the whole request is in
        elif not self._in_body:
            self._in_body = True
            self._arm(self.loop.time() + self.read_timeout_s)
        else:
            self._arm(self._deadline_at + n / c.MIN_BODY_RATE_BPS)

    def _arm(self, at: float) -> None:
        self._disarm()
        self._deadline_at = at
        self._deadline = self.loop.call_at(at, self._timed_out)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is None or cycle is self._request_of or not cycle.response_started:
            # The app, if it runs, is waiting for the body: closing marks its cycle disconnected
            # before it can wake, so its own answer is never written after this one.
            self.transport.write(_408)
        self.transport.close()


def _refusal(status: int, code: str, message: str) -> bytes:
    body = msgspec.json.encode({"error": {"code": code, "message": message, "details": []}})
    reason = {414: b"URI Too Long", 431: b"Request Header Fields Too Large"}[status]
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\nconnection: close\r\n"
        b"content-length: %d\r\n\r\n%s" % (status, reason, len(body), body)
    )


_414 = _refusal(
    414,
    "uri_too_long",
    f"The request line is longer than {c.MAX_REQUEST_LINE_BYTES} bytes; shorten the URL.",
)
_431 = _refusal(
    431,
    "headers_too_large",
    f"The request's headers are too large: at most {c.MAX_HEADERS} headers of "
    f"{c.MAX_HEADER_LINE_BYTES} bytes each, {c.MAX_HEAD_BYTES} bytes in all.",
)


class _HeadLimits(_ReadDeadline):
    """Mixed into uvicorn's HTTP protocol: a request's line and headers are counted in the bytes
    as they arrive, before the parser sees them, and refused past their limits (constants.py).

    The head is scanned from the first byte of a request to its blank line, and that much alone
    is handed to the parser first, so that its state tells whether a body follows; scanning starts
    again once the parser has the whole request. Pipelining is approximate: a head that begins
    inside the same read as the previous request's body ends is scanned from the next read on, so
    it may hold one read (at most 256 KiB) more than the limits; and h11 keeps a request sent
    behind one still being answered to itself, within its own cap (set to MAX_HEAD_BYTES).
    """

    _head_open = True  # reading a request's line and headers (else a body, or waiting on one)
    _head_of: Any = None  # the parser's cycle when this head began (the previous request's)
    _head_bytes = 0
    _line_bytes = 0  # of the line being read, its end of line included
    _lines = 0  # complete lines of this head that are not blank: the request line, then headers
    _prev_cr = False  # the last byte scanned was a CR (a CRLF split over two reads)
    _refused = False

    def data_received(self, data: bytes) -> None:
        while data and not self._refused and not self.transport.is_closing():
            if not self._head_open:
                super().data_received(data)
                self._after_feed()
                return
            end = self._scan(data)
            if self._refused:
                return
            if end is None:
                super().data_received(data)
                return
            super().data_received(data[:end])
            data = data[end:]
            self._head_open = False
            self._after_feed()

    def _after_feed(self) -> None:
        cycle = self.cycle
        if cycle is not None and cycle is not self._head_of and not cycle.more_body:
            self._open_head()  # the parser has this whole request: the next bytes are a head

    def _open_head(self) -> None:
        self._head_open = True
        self._head_of = self.cycle
        self._head_bytes = self._line_bytes = self._lines = 0
        self._prev_cr = False

    def _scan(self, data: bytes) -> int | None:
        """Count ``data`` into the head: the offset just past the head's blank line if it ends
        in ``data``, else None (and ``_refused`` set if a limit was passed)."""
        start, size = 0, len(data)
        while start < size:
            nl = data.find(b"\n", start)
            stop = size if nl < 0 else nl + 1
            self._line_bytes += stop - start
            self._head_bytes += stop - start
            line_cap = c.MAX_REQUEST_LINE_BYTES if self._lines == 0 else c.MAX_HEADER_LINE_BYTES
            if self._line_bytes > line_cap + 2:  # + CRLF
                self._refuse(_414 if self._lines == 0 else _431, "line")
                return None
            if self._head_bytes > c.MAX_HEAD_BYTES:
                self._refuse(_431, "size")
                return None
            if nl < 0:
                self._prev_cr = data[-1:] == b"\r"
                return None
            before = data[nl - 1 : nl] if nl > start else (b"\r" if self._prev_cr else b"")
            blank = self._line_bytes == 1 or (self._line_bytes == 2 and before == b"\r")
            self._line_bytes = 0
            self._prev_cr = False
            start = stop
            if not blank:
                self._lines += 1
                if self._lines > c.MAX_HEADERS + 1:  # + the request line
                    self._refuse(_431, "count")
                    return None
            elif self._lines:  # (blank lines before a request line are skipped, as RFC 9112 asks)
                return stop
        return None

    def _refuse(self, answer: bytes, reason: str) -> None:
        """Answer 414/431 and close: half-close at once, and drop what else arrives for
        HEAD_REFUSED_LINGER_S, so that the client reads the answer rather than a reset."""
        self._refused = True
        self._disarm()
        transport = self.transport
        log.info("http.head_refused", status=int(answer[9:12]), reason=reason)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            transport.close()  # a pipelined request is still being answered: no room for ours
            return
        transport.write(answer)
        if transport.can_write_eof():
            transport.write_eof()
        self.loop.call_later(c.HEAD_REFUSED_LINGER_S, transport.close)


def set_read_timeout(read_timeout_s: float) -> None:
    """Set this process's read deadline (TASKORCH_READ_TIMEOUT_S) for DeadlineHTTPProtocol."""
    _ReadDeadline.read_timeout_s = read_timeout_s


def __getattr__(name: str) -> Any:
    """``DeadlineHTTPProtocol``: uvicorn's HTTP protocol (httptools when installed, else h11) with
    the read deadlines and the head limits. Built on first use, so that a worker importing this package does not
    import uvicorn; reachable by name, so that uvicorn's worker processes can unpickle it."""
    if name != "DeadlineHTTPProtocol":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    cls = type(name, (_HeadLimits, AutoHTTPProtocol), {"__module__": __name__})
    globals()[name] = cls
    return cls
