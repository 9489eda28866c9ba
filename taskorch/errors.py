"""Exceptions raised by taskorch, all below one root so callers can catch ours and only ours.

TaskorchError
├── ConfigError            bad TASKORCH_* setting; the process stops at start
├── ApiError               answered to an HTTP client as {"error": {...}}
│   ├── BadRequest         400 (invalid_json, bad_request)
│   ├── Unauthorized       401, with WWW-Authenticate: Bearer
│   ├── Forbidden          403 (missing scope)
│   ├── NotFound           404 (also for another owner's resource)
│   ├── Conflict           409 (state forbids the change; message names the status)
│   ├── PayloadTooLarge    413
│   ├── ValidationFailed   422 with one detail per field
│   ├── TooManyRequests    429 with Retry-After (sign-in throttling, stream cap)
│   └── Unavailable        503 with Retry-After (Redis unreachable or too slow)
│       └── CreateOutcomeUnknown  a create's connection was lost after it was sent
├── ApiUnreachable         taskorch.client got no answer from the API (refused, timed out)
└── TargetError            an outbound call failed (stored on the attempt, never raised to clients)
    ├── TargetBlocked      the address is private/loopback and private targets are not allowed
    ├── TargetTimeout
    └── TargetConnectionError
"""

from __future__ import annotations

from typing import Any


class TaskorchError(Exception):
    """Root of every exception taskorch raises."""


class ConfigError(TaskorchError):
    """A TASKORCH_* variable is missing or wrong; the message names it and says what is wrong."""


class ApiError(TaskorchError):
    """An error answered to the client with the contract's error body."""

    status_code = 400
    code = "bad_request"

    def __init_subclass__(
        cls, *, status_code: int | None = None, code: str | None = None, **kwargs: Any
    ) -> None:
        # Each error names its status and code in its class line (``class NotFound(ApiError,
        # status_code=404, code="not_found")``); a subclass that names none keeps its parent's.
        super().__init_subclass__(**kwargs)
        if status_code is not None:
            cls.status_code = status_code
        if code is not None:
            cls.code = code

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details or []
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}

    @property
    def retry_after_s(self) -> float | None:
        """The answer's Retry-After in seconds (429, 503), else None."""
        value = self.headers.get("Retry-After", "")
        return float(value) if value.isdigit() else None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status_code}, {self.code!r}, {self.message!r})"


class BadRequest(ApiError, status_code=400, code="bad_request"):
    """Malformed JSON (``invalid_json``) or another bad request."""


class Unauthorized(ApiError, status_code=401, code="unauthorized"):
    """A missing or invalid token (``missing_token``, ``invalid_token``); always with
    ``WWW-Authenticate: Bearer``."""

    def __init__(self, message: str, **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"WWW-Authenticate": "Bearer"})
        super().__init__(message, **kwargs)


class Forbidden(ApiError, status_code=403, code="forbidden"):
    """The token lacks the scope the route needs."""


class NotFound(ApiError, status_code=404, code="not_found"):
    """Not found, or another owner's (the two are not told apart)."""


class Conflict(ApiError, status_code=409, code="conflict"):
    """The status forbids the change; the message names the status."""


class PayloadTooLarge(ApiError, status_code=413, code="payload_too_large"):
    """The body is too large."""


class ValidationFailed(ApiError, status_code=422, code="validation_failed"):
    """One detail per invalid field, each naming its path."""


class TooManyRequests(ApiError, status_code=429, code="too_many_requests"):
    """Too many sign-ins for one user, open event streams or lists in progress; with
    ``Retry-After``."""

    def __init__(self, message: str, *, retry_after_s: int, **kwargs: Any) -> None:
        super().__init__(message, **_retry_after(retry_after_s, kwargs))


class Unavailable(ApiError, status_code=503, code="unavailable"):
    """Redis is unreachable or too slow; with ``Retry-After``."""

    def __init__(self, message: str, *, retry_after_s: int = 1, **kwargs: Any) -> None:
        super().__init__(message, **_retry_after(retry_after_s, kwargs))


def _retry_after(seconds: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    """An error's keyword arguments with a Retry-After of ``seconds`` (at least 1) unless they
    give their own headers."""
    kwargs.setdefault("headers", {"Retry-After": str(max(1, seconds))})
    return kwargs


# The one detail of a 503 on a create: whether it was stored.
NOT_STORED = {
    "outcome": "not_stored",
    "message": "Nothing was stored: Redis refused or could not be reached before the create was "
    "sent, or did not run it before its deadline (it then writes nothing). Send it again.",
}
OUTCOME_UNKNOWN = {
    "outcome": "unknown",
    "message": "The connection to Redis was lost after the create was sent: it may have been "
    "stored. Repeating it with the same Idempotency-Key is safe: it is stored at most once.",
}


class CreateOutcomeUnknown(Unavailable):
    """A create's connection to Redis was lost after the create was sent (e.g. Redis killed
    between storing it and replying): it may have been stored."""

    def __init__(self) -> None:
        super().__init__(
            "Redis went away while storing this; it may have been stored.",
            details=[dict(OUTCOME_UNKNOWN)],
        )


class ApiUnreachable(TaskorchError):
    """The client (taskorch.client) got no answer: the API refused the connection, timed out or
    hung up, and sending again was not safe or did not help."""


class TargetError(TaskorchError):
    """An outbound call could not complete; ``str(exc)`` is what the attempt records."""


class TargetBlocked(TargetError):
    """The target resolves to an address that private-target protection forbids."""


class TargetTimeout(TargetError):
    """The target did not answer within the task's timeout."""


class TargetConnectionError(TargetError):
    """The connection to the target failed (refused, reset, DNS)."""
