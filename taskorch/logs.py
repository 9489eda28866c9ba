"""structlog set-up: JSON lines in production, readable lines in development.

A function's trigger URL is a credential (``/fn/<id>/<key>``), so every line that leaves the
process, ours through structlog or uvicorn's and the standard library's through ``logging``, goes
through :func:`redact` first: whatever route, handler or traceback mentions a path, the key never
reaches the log.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any

import msgspec
import structlog

# /fn/<id>/<key>: the key is the path's third segment; keep the id, which identifies nothing secret.
_TRIGGER_KEY = re.compile(r"(/fn/[^/\s?#\"'\\]+/)[^/\s?#\"'\\]+")
REDACTED = "[redacted]"


def redact(text: str) -> str:
    """``text`` with the key of every trigger URL in it replaced by ``[redacted]``."""
    return _TRIGGER_KEY.sub(r"\1" + REDACTED, text) if "/fn/" in text else text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    return value


def redact_processor(
    logger: Any, method_name: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """structlog processor: trigger keys out of every value, tracebacks included."""
    for v in event_dict.values():  # most lines hold only numbers and plain words: as they are
        if not (isinstance(v, int | float | None) or (isinstance(v, str) and "/fn/" not in v)):
            return {k: _redact_value(v) for k, v in event_dict.items()}
    return event_dict


def add_timestamp(
    logger: Any, method_name: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    """``timestamp`` as structlog's ``TimeStamper(fmt="iso", utc=True)`` writes it, in a tenth
    of the time: the date and time of day are formatted once per second."""
    now = time.time()
    second = int(now)
    if second != _second[0]:
        _second[:] = [second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))]
    event_dict["timestamp"] = f"{_second[1]}.{int((now - second) * 1e6):06d}Z"
    return event_dict


_second: list[Any] = [-1, ""]
_json = msgspec.json.Encoder(enc_hook=repr)  # what JSON cannot hold is written as its repr


def _dumps(obj: Any, **kwargs: Any) -> str:
    return _json.encode(obj).decode()


class RedactFilter(logging.Filter):
    """A ``logging`` filter doing what :func:`redact_processor` does, for uvicorn's loggers."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        if record.exc_info:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


def configure(*, fmt: str = "json", level: str = "info") -> None:
    lvl = getattr(logging, level.upper(), logging.INFO)
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if fmt == "console"
        else structlog.processors.JSONRenderer(serializer=_dumps)  # msgspec: a third of the time
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            add_timestamp,
            structlog.processors.format_exc_info,
            redact_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(
        level=max(lvl, logging.WARNING),
        stream=sys.stderr,
        format="%(name)s %(levelname)s %(message)s",
    )
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactFilter) for f in handler.filters):
            handler.addFilter(RedactFilter())
