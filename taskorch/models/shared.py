"""What every body and answer shares: the field types, the base of request bodies, how one HTTP
call is made and retried, a callback, and the error answer."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

from taskorch import constants as c
from taskorch.models.rules import URL_MAX_LENGTH

__all__ = [
    "CallPolicy",
    "Callback",
    "Error",
    "ErrorBody",
    "ErrorDetail",
    "Method",
    "QueueName",
    "Seconds",
    "TaskSpec",
    "Timestamp",
    "Url",
]

Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
# Capped so that no duration overflows a timestamp (about 300 years; JSON's 1e400 is infinity).
Seconds = Annotated[float, Meta(ge=0, le=1e10, description="seconds, fractions allowed")]
Timestamp = Annotated[str, Meta(extra_json_schema={"format": "date-time"})]
# A queue's name: checked by decode._queue_rule (a message a person can act on), documented in the
# OpenAPI document with the pattern (api.openapi._tighten).
QueueName = Annotated[str, Meta(min_length=1, max_length=64)]
# A target URL: checked by decode._url_rule (rules.url_problem), published as rules.URL_SCHEMA.
Url = Annotated[str, Meta(min_length=1, max_length=URL_MAX_LENGTH)]


class _Input(Struct, forbid_unknown_fields=True):
    """Base of request bodies: unknown fields are rejected, as the contract says."""

    def check(self) -> list[tuple[str, str]]:
        """Cross-field rules msgspec cannot express: (field, message) pairs."""
        return []


class CallPolicy(_Input, kw_only=True):
    """How one HTTP call is made and retried: shared by tasks, steps and function schedules."""

    method: Method = "POST"
    headers: dict[str, str] = {}
    payload: Any = None
    retries: Annotated[int, Meta(ge=0, le=c.MAX_RETRIES)] = c.DEFAULT_RETRIES
    retry_delay: Seconds = c.DEFAULT_RETRY_DELAY_S
    backoff: Annotated[float, Meta(ge=1, le=c.MAX_BACKOFF)] = c.DEFAULT_BACKOFF
    max_retry_delay: Seconds = c.DEFAULT_MAX_RETRY_DELAY_S
    timeout: Annotated[float, Meta(ge=1, le=c.MAX_TIMEOUT_S)] = c.DEFAULT_TIMEOUT_S


class TaskSpec(CallPolicy, kw_only=True):
    """What one HTTP call is and how it is retried: the part shared by tasks and steps."""

    url: Url


class Callback(_Input):
    """Where a task's final Task is POSTed (issue #12): a url and headers, as a task's."""

    url: Url
    headers: dict[str, str] = {}


class ErrorDetail(Struct, omit_defaults=True):
    """One detail of an error: a validation problem names its ``field``; the 503 of a create
    says in ``outcome`` whether it was stored (``not_stored``, ``unknown``)."""

    message: str
    field: str | None = None
    outcome: Literal["not_stored", "unknown"] | None = None


class ErrorBody(Struct):
    code: str
    message: str
    details: list[ErrorDetail]


class Error(Struct):
    error: ErrorBody
