"""The Starlette app: every domain module's routes, wrapped so that every error leaves as the
contract's ``{"error": {...}}`` body and nothing a client sends can produce a 500.

Shared resources (the Redis client, the store, the token verifier) are made in the lifespan and
reached through ``request.state``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

import redis.exceptions
from starlette.applications import Starlette
from starlette.convertors import StringConvertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Match, Mount, Route
from starlette.staticfiles import StaticFiles

from taskorch import auth, cluster, signing
from taskorch import constants as c
from taskorch.api import (
    events,
    functions,
    health,
    openapi,
    orchestrations,
    queues,
    schedules,
    signing_keys,
    stats,
    tasks,
    tokens,
)
from taskorch.api.common import JSON, WEB_DIR, error_response, log
from taskorch.api.spec import Endpoint, Handler
from taskorch.errors import (
    NOT_STORED,
    OUTCOME_UNKNOWN,
    ApiError,
    ConfigError,
    NotFound,
    Unavailable,
)
from taskorch.functions import Functions
from taskorch.functions.runtime import local_runtime
from taskorch.limits import Edge, ListSlots, RedisDeadline, StreamSlots, set_read_timeout
from taskorch.orchestrations import Orchestrations
from taskorch.queues import Queues
from taskorch.schedules import Schedules
from taskorch.settings import Settings
from taskorch.store import Store, connect, is_id


async def openapi_route(request: Request) -> Response:
    return JSON(openapi.document(request.state.settings, ROUTES))


# Every route, each declared once in its domain's module with its OpenAPI operation: the app's
# routes and /openapi.json's paths are both built from this list.
ROUTES: list[Endpoint] = [
    *health.ROUTES,
    Endpoint("/openapi.json", openapi_route, "GET"),
    *tokens.ROUTES,
    *tasks.ROUTES,
    *schedules.ROUTES,
    *signing_keys.ROUTES,
    *queues.ROUTES,
    *orchestrations.ROUTES,
    *functions.ROUTES,
    *stats.ROUTES,
    *events.ROUTES,
]


# Path ids must have the exact form the service hands out: anything else names nothing (404)
# and never reaches Redis, where ``tsk_x:attempts`` would name another key.
_PATH_IDS = {
    "task_id": ("tsk", "task"),
    "orc_id": ("orc", "orchestration"),
    "fn_id": ("fn", "function"),
    "sch_id": ("sch", "schedule"),
}
# A Redis that is down, frozen (the client's timeout), loading its data, read-only (a replica
# after a failover), full (noeviction refuses writes) or a cluster mid-failover: the request can
# succeed later, so 503 with Retry-After rather than a 500.
_REDIS_OUTAGE = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
)


def _check_path_ids(request: Request) -> None:
    for name, value in request.path_params.items():
        if name in _PATH_IDS and not is_id(value, _PATH_IDS[name][0]):
            raise NotFound(f"No {_PATH_IDS[name][1]} {value[:64]!r} exists for this account.")


def _wrap(route: Endpoint) -> Handler:
    """Turn our errors into contract bodies and a lost Redis into 503, never a 500.

    Each route's Redis work is bounded in total by TASKORCH_REDIS_TIMEOUT_S (RedisDeadline),
    except where the route does more than Redis work (a function's upload, a trigger's run) or
    bounds itself (/readyz): ``route.bounded`` is false there, and each Redis call still has
    TASKORCH_REDIS_TIMEOUT_S. Past it the answer is 503, whatever redis-py's pool was waiting on.
    """
    endpoint, bounded, create = route.handler, route.bounded, route.create

    async def handler(request: Request) -> Response:
        deadline = RedisDeadline(request.state.settings.redis_timeout_s) if bounded else None
        try:
            if request.scope["path"].startswith("/v1/"):  # not .url, which builds a URL
                _check_path_ids(request)
            if deadline is None:
                return await endpoint(request)
            async with deadline.running():
                return await endpoint(request)
        except TimeoutError:
            if deadline is None or not deadline.expired():
                raise
            log.error("api.redis_unavailable", error="request deadline", path=request.url.path)
            return error_response(
                Unavailable(
                    "Redis did not answer in time; try again shortly.",
                    retry_after_s=c.UNAVAILABLE_RETRY_AFTER_S,
                    details=[dict(NOT_STORED if deadline.prompt() else OUTCOME_UNKNOWN)]
                    if create
                    else None,
                )
            )
        except ApiError as exc:
            return error_response(exc)
        except ClientDisconnect:
            # The client hung up mid-body: nobody is left to answer, and it is not our error.
            log.info("api.client_disconnected", path=request.url.path)
            return Response(status_code=400)
        except _REDIS_OUTAGE as exc:
            log.error("api.redis_unavailable", error=str(exc), path=request.url.path)
            full = isinstance(exc, redis.exceptions.OutOfMemoryError)
            message = (
                "Redis is full (maxmemory reached); try again later."
                if full
                else "Redis is unreachable; try again shortly."
            )
            return error_response(
                Unavailable(
                    message,
                    retry_after_s=c.UNAVAILABLE_RETRY_AFTER_S,
                    # Refused, unreachable, or no answer by the deadline the script carries;
                    # a connection lost after sending is CreateOutcomeUnknown, an ApiError.
                    details=[dict(NOT_STORED)] if create else None,
                )
            )

    return handler


def body_limit(method: str, path: str) -> int:
    """The body cap of a route: orchestrations carry up to 10,000 steps, a batch up to 1,000
    tasks, the rest 1 MiB."""
    if path == "/v1/orchestrations" or path.startswith("/v1/orchestrations/"):
        return c.MAX_ORCHESTRATION_BODY_BYTES
    if path == "/v1/tasks/batch":
        return c.MAX_BATCH_BODY_BYTES
    return c.MAX_BODY_BYTES


class _TaskIdConvertor(StringConvertor):
    """A task id in a path: any segment but ``batch``, so that ``/v1/tasks/batch`` is its own
    route and a GET or PATCH there answers 405 rather than "no task 'batch'"."""

    regex = "(?!batch(?:/|$))[^/]+"


register_url_convertor("task", _TaskIdConvertor())


def _direct_routes() -> dict[tuple[str, str], Any]:
    """The create routes as plain ASGI apps, for :class:`Edge` to call past Starlette's routing.

    What Starlette's ``request_response`` does, less its exception wrapper: ``_wrap`` answers
    every error of ours, and nothing here raises HTTPException.
    """

    def asgi(route: Endpoint) -> Any:
        handler = _wrap(route)

        async def app(scope: Any, receive: Any, send: Any) -> None:
            response = await handler(Request(scope, receive, send))
            await response(scope, receive, send)

        return app

    direct = {("POST", "/v1/tasks"), ("POST", "/v1/tasks/batch")}
    return {(r.method, r.path): asgi(r) for r in ROUTES if (r.method, r.path) in direct}


def _routes(extra: list[Any]) -> list[Any]:
    out: list[Any] = [
        Route(r.path.replace("{task_id}", "{task_id:task}"), _wrap(r), methods=[r.method])
        for r in ROUTES
    ] + extra
    if (WEB_DIR / "static").is_dir():
        # The page's files go gzip-compressed to browsers that accept it (issue #13: it loads in
        # well under 100 KB); only they: API answers stay as they are.
        static = GZipMiddleware(StaticFiles(directory=WEB_DIR / "static"), minimum_size=500)
        out.append(Mount("/static", static, name="static"))
    return out


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        err = ApiError(
            f"{request.method} is not allowed on {request.url.path}.", code="method_not_allowed"
        )
    else:
        err = ApiError(
            exc.detail or "Not found.", code="not_found" if exc.status_code == 404 else "error"
        )
    err.status_code = exc.status_code
    if exc.status_code == 405:
        err.headers = {**err.headers, "Allow": _allowed(request)}
    return error_response(err)


def _allowed(request: Request) -> str:
    """Every method some route serves at this path (Starlette's own Allow names one route's)."""
    methods: set[str] = set()
    for route in request.app.routes:
        if isinstance(route, Route) and route.matches(request.scope)[0] != Match.NONE:
            methods |= route.methods or set()
    return ", ".join(sorted(methods))


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("api.unexpected_error", path=request.url.path)
    err = ApiError("Something went wrong on our side; it has been logged.", code="internal_error")
    return JSON(err.body(), status_code=500)


def lambda_provider(settings: Settings) -> Any | None:
    """The AWS provider when AWS is configured; required when it is the default provider.

    boto3 is the ``aws`` extra: without it there is no provider, and choosing it stops the start.
    """
    from taskorch.functions.errors import AWS_EXTRA_MISSING

    try:
        from taskorch.functions.aws import AwsProviderError, AwsSettings, LambdaProvider
    except ModuleNotFoundError as exc:
        if exc.name not in ("boto3", "botocore"):
            raise
        if settings.function_provider == "aws":
            raise ConfigError(f"TASKORCH_FUNCTION_PROVIDER=aws {AWS_EXTRA_MISSING}") from None
        return None

    env = dict(os.environ)
    if settings.aws_region:
        env.setdefault("TASKORCH_AWS_REGION", settings.aws_region)
    if settings.aws_lambda_role:
        env.setdefault("TASKORCH_AWS_LAMBDA_ROLE", settings.aws_lambda_role)
    try:
        return LambdaProvider(AwsSettings.from_env(env))
    except AwsProviderError as exc:
        if settings.function_provider == "aws":
            raise ConfigError(f"TASKORCH_FUNCTION_PROVIDER is aws but {exc}") from None
        return None


def create_app(
    settings: Settings, *, redis_client: Any = None, extra_routes: list[Any] | None = None
) -> Starlette:
    """Build the API. ``redis_client`` lets tests inject one; otherwise one is made at startup,
    with every call bounded by TASKORCH_REDIS_TIMEOUT_S so a frozen Redis answers 503.

    Also sets this process's read deadline for uvicorn's protocol (TASKORCH_READ_TIMEOUT_S), so
    that every process that builds the app from settings, a uvicorn worker included, has it.
    """
    set_read_timeout(settings.read_timeout_s)
    aws = lambda_provider(settings)
    runtime = local_runtime(settings) if settings.local_functions else None
    # Set when the server begins to shut down (``taskorch serve`` does, see serve._server): the
    # event streams end then, so that an open status page does not hold the shutdown.
    stopping = asyncio.Event()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        client = redis_client
        if client is None:
            client = connect(
                settings.redis_url,
                socket_timeout=settings.redis_timeout_s,
                socket_connect_timeout=settings.redis_timeout_s,
            )
        await cluster.warm_up(client)  # a cluster's slot map: not in the first request's time
        store = Store(client)
        signin = auth.SignIn(client)
        functions = Functions(
            client,
            store,
            public_url=settings.public_url,
            default_provider=settings.function_provider,
            runtime=runtime,
            aws=aws,
        )
        functions.resume()
        schedules = Schedules(client)
        try:
            yield {
                "settings": settings,
                "redis": client,
                "store": store,
                "orchestrations": Orchestrations(client),
                "schedules": schedules,
                "signing": signing.SigningStore(client),
                "queues": Queues(client),
                "functions": functions,
                "verifier": auth.TokenVerifier(settings, redis=client),
                "signin": signin,
                "streams": StreamSlots(),
                "stopping": stopping,
                "lists": ListSlots(),
            }
        finally:
            await schedules.close()
            signin.close()
            await functions.close()
            if runtime is not None:
                await runtime.close()
            if redis_client is None:
                await client.aclose()

    app = Starlette(
        routes=_routes(extra_routes or []),
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, Exception: _unexpected},
        middleware=[Middleware(Edge, limit_for=body_limit, direct=_direct_routes())],
    )
    app.state.stopping = stopping
    return app
