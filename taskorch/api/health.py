"""The process's own routes: liveness, readiness, Prometheus metrics, and the status page."""

from __future__ import annotations

import hmac

import redis.exceptions
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from taskorch import constants as c
from taskorch import metrics
from taskorch.api import spec
from taskorch.api.common import JSON, WEB_DIR
from taskorch.errors import NotFound, Unauthorized
from taskorch.limits import RedisDeadline
from taskorch.settings import Settings


async def healthz(request: Request) -> Response:
    return JSON({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready when Redis answers a PING within TASKORCH_REDIS_TIMEOUT_S, all waits included."""
    settings: Settings = request.state.settings
    try:
        async with RedisDeadline(settings.redis_timeout_s):
            await request.state.redis.ping()
    except (redis.exceptions.RedisError, OSError, TimeoutError) as exc:
        return JSON(
            {"status": "unavailable", "redis": str(exc) or type(exc).__name__},
            status_code=503,
            headers={"Retry-After": str(c.UNAVAILABLE_RETRY_AFTER_S)},
        )
    return JSON({"status": "ok", "redis": "ok"})


async def metrics_route(request: Request) -> Response:
    settings: Settings = request.state.settings
    if settings.metrics_token is not None:
        kind, _, token = request.headers.get("authorization", "").partition(" ")
        given = token.strip().encode()
        if kind.lower() != "bearer" or not hmac.compare_digest(
            given, settings.metrics_token.encode()
        ):
            raise Unauthorized(
                "Send the metrics token: Authorization: Bearer <TASKORCH_METRICS_TOKEN>.",
                code="missing_token" if not given else "invalid_token",
            )
    text = await metrics.render(request.state.redis)
    return Response(text, media_type=metrics.CONTENT_TYPE)


async def index(request: Request) -> Response:
    page = WEB_DIR / "index.html"
    if not page.exists():
        raise NotFound("The status page is not installed.")
    settings: Settings = request.state.settings
    csp = (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        f"connect-src 'self' {settings.public_url}; frame-ancestors 'none'; base-uri 'none'"
    )
    return FileResponse(
        page,
        headers={
            "Cache-Control": "no-cache",
            "Content-Security-Policy": csp,
            "X-Content-Type-Options": "nosniff",
        },
    )


_METRICS = {
    "operationId": "metrics",
    "summary": "Prometheus metrics (a Bearer TASKORCH_METRICS_TOKEN when set)",
    "security": [],
    "responses": {
        "200": {"description": "Prometheus text format 0.0.4"},
        "401": spec.ERRORS["401"],
        "503": spec.ERRORS["503"],
    },
}

# /readyz bounds itself: no request-wide Redis deadline beside its own.
ROUTES = [
    spec.Endpoint("/", index, "GET"),
    spec.Endpoint("/healthz", healthz, "GET", spec.simple("Process up", "healthz", _200="ok")),
    spec.Endpoint(
        "/readyz",
        readyz,
        "GET",
        spec.simple("Redis reachable", "readyz", _200="ok", _503="Redis unreachable"),
        bounded=False,
    ),
    spec.Endpoint("/metrics", metrics_route, "GET", _METRICS),
]
