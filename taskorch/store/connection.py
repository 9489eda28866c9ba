"""Connection plumbing: the Redis client for a URL, the checks at start, and the waits on an
outage. Every other module of the store (and most of taskorch) reaches Redis through these.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias, TypeVar
from urllib.parse import parse_qs, unquote, urlparse

import hiredis
import redis.asyncio as aioredis
import redis.exceptions
import structlog
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelManagedConnection, SentinelManagedSSLConnection
from redis.backoff import NoBackoff

from taskorch import cluster, oldlayout

# redis-py is untyped for mypy here (see pyproject): name the client type for readers anyway.
Redis: TypeAlias = Any
# What an unreachable Redis raises: killed (connection refused or reset), frozen (the socket
# timeout), loading its data after a restart (BusyLoadingError is a ConnectionError).
REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
T = TypeVar("T")
log = structlog.get_logger("taskorch.store")


def now_ms() -> int:
    return int(time.time() * 1000)


def new_id(prefix: str) -> str:
    """A type-prefixed id that sorts by creation time (for newest-first pages) and is unguessable.

    Tasks and orchestrations take theirs from :func:`taskorch.partitions.new_id`, which also
    names their partition; this one is for records that are not partitioned.
    """
    return f"{prefix}_{now_ms():012x}{secrets.token_hex(6)}"


def connect(url: str, **kwargs: Any) -> Redis:
    """A Redis client for ``redis://``, ``rediss://``, ``unix://``, a Sentinel or a Cluster URL.

    Sentinel: ``redis+sentinel://[:password@]host:port[,host:port]/service_name[/db]``.
    Cluster: ``redis+cluster://[:password@]host:port[,host:port...]`` (:mod:`taskorch.cluster`).
    """
    kwargs.setdefault("decode_responses", True)
    kwargs.setdefault("health_check_interval", 10)
    # One immediate retry on a broken connection: after a Redis restart every pooled connection
    # is stale, and without it the first command on each fails (redis-py's connections retry
    # nothing unless told). Timeouts are not retried: a frozen Redis must fail within its bound.
    kwargs.setdefault(
        "retry", Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,))
    )
    if cluster.is_cluster_url(url):
        return cluster.connect_cluster(url, **kwargs)
    parts = urlparse(url)
    query = parse_qs(parts.query)
    if parts.scheme == "rediss" and query.get("ssl_cert_reqs", [""])[0].lower() == "none":
        # A provider's self-signed certificate (Heroku Redis): encrypted, not verified. A name
        # check without verification means nothing, and newer redis-py would refuse the pair.
        kwargs.setdefault("ssl_check_hostname", False)
    if parts.scheme in ("redis+sentinel", "sentinel"):
        hosts = []
        for hp in parts.netloc.rsplit("@", 1)[-1].split(","):
            host, _, port = hp.partition(":")
            hosts.append((host, int(port or 26379)))
        path = [p for p in parts.path.split("/") if p]
        service = path[0] if path else "mymaster"
        db = int(path[1]) if len(path) > 1 else int(query.get("db", ["0"])[0])
        password = unquote(parts.password) if parts.password else None
        sentinel = Sentinel(hosts, password=password, **kwargs)
        kwargs.setdefault(
            "connection_class",
            hiredis_packed(
                SentinelManagedSSLConnection if kwargs.get("ssl") else SentinelManagedConnection
            ),
        )
        master = sentinel.master_for(service, db=db, password=password, **kwargs)
        close_master = master.aclose

        async def aclose(*args: Any, **kw: Any) -> None:
            # Closing the client closes its pool only; the sentinels' own connections, which
            # found the master, would otherwise stay open for the life of the process.
            await close_master(*args, **kw)
            for client in sentinel.sentinels:
                await client.aclose()

        master.aclose = aclose
        return master
    base = {"unix": UnixDomainSocketConnection, "rediss": SSLConnection}.get(
        parts.scheme, Connection
    )
    kwargs.setdefault("connection_class", hiredis_packed(base))
    return aioredis.from_url(url, **kwargs)


_packed: dict[type[Any], type[Any]] = {}


def hiredis_packed(base: type[Any]) -> type[Any]:
    """``base`` (a redis-py connection class) packing commands with hiredis's C packer.

    redis-py's asyncio connections pack every argument in Python (about 1.5 us each): a batch of
    1,000 creates sends 7,000 arguments, and packing them was a quarter of the API's CPU for a
    batch. Floats keep redis-py's ``repr`` form (hiredis would write 17 digits), since a script
    may store an argument as it came.
    """
    cls = _packed.get(base)
    if cls is None:

        def pack_command(self: Any, *args: Any) -> list[bytes]:
            if isinstance(args[0], str) and " " in args[0]:  # 'CONFIG GET' and the like
                args = (*args[0].split(), *args[1:])
            packable: Any = tuple(repr(a) if type(a) is float else a for a in args)
            return [hiredis.pack_command(packable)]  # its stub types a 1-tuple

        cls = _packed[base] = type(
            f"HiredisPacked{base.__name__}", (base,), {"pack_command": pack_command}
        )
    return cls


async def eviction_policy(redis: Redis) -> str | None:
    """Redis's ``maxmemory-policy``, or None where the provider forbids ``CONFIG GET``."""
    try:
        got = await redis.config_get("maxmemory-policy")
    except aioredis.ResponseError:
        return None
    return str(got.get("maxmemory-policy")) if got.get("maxmemory-policy") else None


def check_redis(settings: Any, *, require_reachable: bool = False) -> None:
    """At start (``taskorch serve``, ``taskorch check``): Redis must keep what it is given, and
    must not hold the old single-node layout (``taskorch migrate`` rewrites it first).

    A queue needs ``maxmemory-policy noeviction``: any other policy lets Redis delete scheduled
    tasks when memory fills, silently. ``TASKORCH_REDIS_POLICY_CHECK`` says what to do about
    it: ``refuse`` (the default: stop with one line saying how to fix it), ``warn`` or ``off``.
    An unreachable Redis is refused only with ``require_reachable`` (``taskorch check``); at
    start the API answers 503 and /readyz says so until it is back.
    """
    import asyncio

    import structlog

    from taskorch.errors import ConfigError

    log = structlog.get_logger("taskorch.redis")

    async def read() -> tuple[str | None, bool]:
        client = connect(settings.redis_url, socket_connect_timeout=5, socket_timeout=5)
        try:
            return await eviction_policy(client), await oldlayout.old_layout_present(client)
        finally:
            await client.aclose()

    try:
        policy, old_layout = asyncio.run(read())
    except Exception as exc:  # unreachable, auth, TLS
        if require_reachable:
            raise ConfigError(f"Redis at TASKORCH_REDIS_URL is unreachable: {exc}") from None
        log.warning("redis.unreachable_at_start", error=str(exc) or type(exc).__name__)
        return
    if old_layout:  # its tasks would never fire: see taskorch/migrate.py
        raise ConfigError(oldlayout.MESSAGE)
    if settings.redis_policy_check == "off":
        return
    if policy is None:
        log.warning("redis.policy_unknown", reason="CONFIG GET maxmemory-policy is not allowed")
    elif policy != "noeviction":
        message = (
            f"Redis's maxmemory-policy is {policy}: Redis may delete scheduled tasks when its "
            "memory fills. Set it to noeviction (redis-cli CONFIG SET maxmemory-policy "
            "noeviction, or your provider's setting), or set TASKORCH_REDIS_POLICY_CHECK=warn "
            "to run anyway"
        )
        if settings.redis_policy_check == "refuse":
            raise ConfigError(message)
        log.warning("redis.eviction_policy", policy=policy, message=message)


def from_flat(flat: list[str]) -> dict[str, str]:
    """A hash as Lua's HGETALL hands it over (a flat list), as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


async def until_reachable(op: Callable[[], Awaitable[T]], *, what: str) -> T:
    """Run ``op`` until Redis answers it, waiting out outages with a capped backoff.

    For worker steps whose work must not be thrown away (an outcome in hand, a start whose
    reply may have been lost): each is a script that is safe to run again.
    """
    delay = 0.05
    while True:
        try:
            return await op()
        except REDIS_DOWN as exc:
            log.warning("worker.redis_unavailable", error=str(exc), during=what, retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
