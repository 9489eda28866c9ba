"""Redis Cluster: the client behind ``redis+cluster://``, its pub/sub and routed Lua scripts.

``store.connect`` hands a ``redis+cluster://`` URL to :func:`connect_cluster`; everything above
the store then uses the returned client as it uses a single Redis: commands are routed by key,
``client.pubsub()`` subscribes on one live node (Redis Cluster forwards every classic PUBLISH to
every node over its bus), and :func:`run_script` runs a partition's script on the node that holds
its first key, for a plain client and a cluster alike.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlparse

import redis
import redis.asyncio as aioredis
import redis.exceptions as rex
import structlog
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection, ConnectionPool, SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
DEFAULT_PORT = 6379
# How often run_script follows a redirect (MOVED/ASK) or waits out a cluster that is down or
# busy (CLUSTERDOWN, TRYAGAIN) before giving up: a slot moves once per failover or reshard step.
_REDIRECTS = 5
_CLUSTER_DOWN_WAIT_S = 0.25
_REDIS_MAJOR = int(redis.__version__.split(".", 1)[0])
log = structlog.get_logger("taskorch.cluster")


class Script(Protocol):
    """What :func:`run_script` needs of a script: ``redis.register_script``'s result fits."""

    sha: str
    script: str | bytes


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster (``redis+cluster://``, ``rediss+cluster://``)."""
    return urlparse(url).scheme in CLUSTER_SCHEMES


def parse_seeds(url: str) -> list[tuple[str, int]]:
    """The seed nodes of ``redis+cluster://[[user]:password@]host:port[,host:port...]``."""
    netloc = urlparse(url).netloc.rsplit("@", 1)[-1]
    seeds = []
    for hp in netloc.split(","):
        host, sep, port = hp.strip().rpartition(":")
        if not sep:
            host, port = port, ""
        if not host:
            raise ValueError(f"a cluster URL names its nodes as host:port,...: {url!r}")
        seeds.append((host, int(port or DEFAULT_PORT)))
    return seeds


def connect_cluster(url: str, **kwargs: Any) -> ClusterClient:
    """A Redis Cluster client for ``redis+cluster://[[user]:password@]host:port[,host:port...]``.

    The nodes listed are seeds: the client reads the cluster's slot map from the first that
    answers and follows it (and refreshes it after a failover). ``rediss+cluster://`` speaks TLS;
    ``?ssl_cert_reqs=none`` accepts a self-signed certificate, as for ``rediss://``. Keyword
    arguments are those of ``store.connect`` (socket timeouts, ``decode_responses``,
    ``health_check_interval``, ``retry``): a broken connection is retried once, after the slot map
    is read again, so a command for a failed-over master reaches its promoted replica; a timeout
    is not retried (a frozen node fails within its bound, as a single Redis does).
    """
    parts = urlparse(url)
    if parts.scheme not in CLUSTER_SCHEMES:
        raise ValueError(f"not a Redis Cluster URL (redis+cluster://host:port,...): {url!r}")
    query = parse_qs(parts.query)
    if parts.password:
        kwargs.setdefault("password", unquote(parts.password))
    if parts.username:
        kwargs.setdefault("username", unquote(parts.username))
    if parts.scheme == "rediss+cluster":
        kwargs["ssl"] = True
        if query.get("ssl_cert_reqs", [""])[0].lower() == "none":
            kwargs.setdefault("ssl_cert_reqs", "none")
            kwargs.setdefault("ssl_check_hostname", False)
    kwargs.setdefault("retry", Retry(NoBackoff(), 1, supported_errors=(rex.ConnectionError,)))
    # redis-py 5 adds TimeoutError to the given Retry unless told which errors to retry.
    kwargs.setdefault("retry_on_error", [rex.ConnectionError])
    if _REDIS_MAJOR < 6:
        # redis-py 5 retries a cluster command 3 times more besides; 6+ takes the count from
        # ``retry`` (and warns that this argument is deprecated).
        kwargs.setdefault("cluster_error_retry_attempts", 1)
    # A plain client's pool opens connections without limit; a cluster node's refuses past
    # max_connections (MaxConnectionsError) instead of waiting, so leave room for bursts.
    kwargs.setdefault("max_connections", 10_000)
    seeds = parse_seeds(url)
    return ClusterClient(
        startup_nodes=[ClusterNode(host, port) for host, port in seeds],
        seeds=seeds,
        **kwargs,
    )


async def warm_up(client: Any, *, timeout_s: float = 10.0) -> None:
    """Read a cluster client's slot map and command table now (a no-op for any other client).

    redis-py does it on a cluster client's first command: ~0.1 s of parsing on an idle machine,
    several times that on a busy one, which would count against the first request's Redis
    deadline. A cluster that does not answer is left for that first request to report.
    """
    if isinstance(client, RedisCluster):
        try:
            await asyncio.wait_for(client.initialize(), timeout_s)
        except (rex.RedisError, OSError, TimeoutError) as exc:
            log.warning("redis.cluster_unreachable_at_start", error=str(exc) or type(exc).__name__)


class ClusterClient(RedisCluster):  # type: ignore[misc]
    """redis-py's ``RedisCluster`` with the two things taskorch needs that it lacks.

    ``pubsub()`` gives a classic subscriber on one live node, moving to another when that node
    dies (redis-py 5's asyncio cluster has no pub/sub; 6+'s subscribes on the node of the
    channel's slot, which Redis does not need for classic PUBLISH). Timeouts are not retried.
    """

    # A timeout is not retried (redis-py retries it with the connection errors): a frozen node
    # must fail within the caller's bound. The client still reads the slot map again after it.
    ERRORS_ALLOW_RETRY = (rex.ConnectionError, rex.ClusterDownError, rex.SlotNotCoveredError)

    def __init__(self, *, seeds: Sequence[tuple[str, int]], **kwargs: Any) -> None:
        self._seeds = list(seeds)
        self._pubsub_kwargs = {
            k: v
            for k, v in kwargs.items()
            if k
            in (
                "username",
                "password",
                "decode_responses",
                "health_check_interval",
                "socket_timeout",
                "socket_connect_timeout",
                "retry",
            )
            or k.startswith("ssl_")
        }
        # A subscriber whose node died reconnects once (to another node) and subscribes again;
        # redis-py 5 does so only for the errors named here.
        self._pubsub_kwargs["retry_on_error"] = [rex.ConnectionError]
        self._pubsub_ssl = bool(kwargs.get("ssl"))
        self._pubsub_pool: ConnectionPool | None = None
        super().__init__(**kwargs)

    def pubsub(self, **kwargs: Any) -> aioredis.client.PubSub:
        """A classic subscriber (SUBSCRIBE/PSUBSCRIBE) on a connection to any live node.

        Redis Cluster forwards every PUBLISH (one from a Lua script too) to every node, replicas
        included, so any one node hears them all. The connection picks a node at random among
        those known; when it breaks (the node died), the subscriber's own reconnect moves to
        another node and subscribes again. Messages published in between are lost, as they are
        when a single Redis restarts. Keyword arguments are those of ``Redis.pubsub``.
        """
        if self._pubsub_pool is None:
            self._pubsub_pool = ConnectionPool(
                connection_class=_AnyNodeSSL if self._pubsub_ssl else _AnyNode,
                nodes=self._pubsub_order,
                **self._pubsub_kwargs,
            )
        return aioredis.client.PubSub(self._pubsub_pool, **kwargs)

    def _pubsub_order(self) -> list[tuple[str, int]]:
        known = [(n.host, int(n.port)) for n in self.nodes_manager.nodes_cache.values()]
        random.shuffle(known)
        return known + [s for s in self._seeds if s not in known]

    def subscriber_addresses(self) -> list[tuple[str, int]]:
        """The nodes this client's open subscribers are connected to (host, port)."""
        pool = self._pubsub_pool
        conns = list(getattr(pool, "_in_use_connections", ())) if pool is not None else []
        return [(conn.host, int(conn.port)) for conn in conns if conn.is_connected]

    async def aclose(self) -> None:
        """Close every node's connections and the subscribers' pool."""
        if self._pubsub_pool is not None:
            await self._pubsub_pool.disconnect()
        if self._initialize:
            # Marked to read the slot map again (after a broken connection) but not yet done:
            # redis-py's aclose then closes nothing, and the nodes' connections would leak.
            await self.nodes_manager.aclose()
            await self.nodes_manager.aclose("startup_nodes")
        await super().aclose()


class _AnyNodeMixin:
    """A connection that opens to the first node of ``nodes()`` that accepts it."""

    host: str
    port: int

    def __init__(self, *, nodes: Callable[[], list[tuple[str, int]]], **kwargs: Any) -> None:
        self._nodes = nodes
        super().__init__(**kwargs)

    async def _connect(self) -> None:
        last: BaseException = rex.ConnectionError("no Redis Cluster node is known")
        for host, port in self._nodes():
            self.host, self.port = host, port
            try:
                await super()._connect()  # type: ignore[misc]
                return
            except (TimeoutError, OSError) as exc:
                last = exc
        raise last


class _AnyNode(_AnyNodeMixin, Connection):  # type: ignore[misc]
    pass


class _AnyNodeSSL(_AnyNodeMixin, SSLConnection):  # type: ignore[misc]
    pass


async def run_script(
    client: Any,
    script: Script,
    keys: Sequence[str],
    args: Sequence[Any],
    *,
    lost: Callable[[], BaseException] | None = None,
) -> Any:
    """Run ``script`` (EVALSHA, or EVAL where the node lacks it) on the node of ``keys[0]``.

    Works on a plain (or Sentinel) client and on a :class:`ClusterClient`: one code path. All of
    ``keys`` must share one hash tag (one partition). A node that lacks the script (restarted,
    or a replica just promoted: script caches are not replicated) gets it by EVAL on the same
    connection, so a missing script never needs every master to be up.

    The connection is connected before anything is sent: a failure there means nothing ran,
    and is retried once, after the cluster's slot map is read again. When the connection breaks
    once the script was sent, the outcome is unknown: with ``lost`` it raises ``lost()`` from
    the error (a create answers "may have been stored"); without it the script is sent once more,
    as a plain client's one retry does, so pass ``lost`` for any script not safe to run twice.
    A timeout is raised as is (the script may have run).
    """
    if isinstance(client, RedisCluster):
        return await _run_on_cluster(client, script, keys, args, lost=lost)
    pool = client.connection_pool
    for attempt in (0, 1):
        conn = await pool.get_connection()  # connects, retrying once: nothing sent yet
        try:
            return await _evalsha(conn, script, keys, args)
        except rex.BusyLoadingError:
            raise
        except rex.ConnectionError as exc:
            await conn.disconnect(nowait=True)
            if lost is not None:
                raise lost() from exc
            if attempt:
                raise
        except rex.TimeoutError:
            await conn.disconnect(nowait=True)
            raise
        finally:
            await pool.release(conn)
    raise AssertionError("unreachable")


async def _evalsha(
    conn: Any, script: Script, keys: Sequence[str], args: Sequence[Any], *, asking: bool = False
) -> Any:
    if asking:
        await conn.send_command("ASKING")
        await conn.read_response()
    await conn.send_command("EVALSHA", script.sha, len(keys), *keys, *args)
    try:
        return await conn.read_response()
    except rex.NoScriptError:  # a restarted node, a promoted replica: EVAL caches it there
        if asking:
            await conn.send_command("ASKING")
            await conn.read_response()
        await conn.send_command("EVAL", script.script, len(keys), *keys, *args)
        return await conn.read_response()


async def _run_on_cluster(
    client: RedisCluster,
    script: Script,
    keys: Sequence[str],
    args: Sequence[Any],
    *,
    lost: Callable[[], BaseException] | None,
) -> Any:
    if not keys:
        raise ValueError("a script on a Redis Cluster is routed by its first key: pass KEYS")
    slot = client.keyslot(keys[0])
    retried = False
    ask: tuple[str, int] | None = None
    for _ in range(_REDIRECTS):
        await client.initialize()  # reads the slot map when marked stale; else returns at once
        node = client.get_node(host=ask[0], port=ask[1]) if ask else None
        if node is None:
            ask = None
            node = client.nodes_manager.get_node_from_slot(slot)
        conn = node.acquire_connection()
        sent = False
        try:
            try:
                await _ready(conn)
                sent = True
                return await _evalsha(conn, script, keys, args, asking=ask is not None)
            finally:
                _release(node, conn)
        except rex.MovedError as exc:  # not run: the slot lives elsewhere now
            ask = None
            await _moved(client, exc)
        except rex.AskError as exc:  # not run: the slot is migrating, ask the target once
            ask = (exc.host, int(exc.port))
        except (rex.ClusterDownError, rex.TryAgainError):  # not run: failover or migration
            ask = None
            await asyncio.sleep(_CLUSTER_DOWN_WAIT_S)
            client._initialize = True  # private: read the slot map again
        except rex.BusyLoadingError:
            raise
        except (rex.ConnectionError, rex.TimeoutError) as exc:
            await conn.disconnect(nowait=True)
            client._initialize = True  # private: the node may have failed over
            if sent and isinstance(exc, rex.TimeoutError):
                raise
            if sent and lost is not None:
                raise lost() from exc
            if retried:
                raise
            retried = True
            ask = None
    raise rex.ClusterError(f"slot {slot} kept moving: gave up after {_REDIRECTS} redirects")


async def run_many(
    client: Any, script: Script, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]
) -> list[Any]:
    """Run ``script`` once per ``(keys, args)``: one round trip per node, answers in order.

    A plain client sends every call in one pipeline; a cluster sends each node the calls whose
    ``keys[0]`` it serves, pipelined on one connection (redis-py's cluster pipeline refuses
    EVALSHA). A node lacking the script gets EVAL of the calls it refused with NOSCRIPT (which
    ran nothing); a call redirected (a slot moved in a failover) is run again where it lives now.
    The first error any call answered is raised, after every call was answered. A connection
    broken on the way is raised as ``ConnectionError``: calls may have run (as with a pipeline).
    """
    if not calls:
        return []
    if not isinstance(client, RedisCluster):
        return await _run_many_plain(client, script, calls)
    await client.initialize()
    groups: dict[str, tuple[ClusterNode, list[int]]] = {}
    for i, (keys, _) in enumerate(calls):
        if not keys:
            raise ValueError("a script on a Redis Cluster is routed by its first key: pass KEYS")
        node = client.nodes_manager.get_node_from_slot(client.keyslot(keys[0]))
        groups.setdefault(node.name, (node, []))[1].append(i)
    out: list[Any] = [None] * len(calls)
    await asyncio.gather(
        *(_many_on_node(client, node, script, calls, idx, out) for node, idx in groups.values())
    )
    for i, res in enumerate(out):
        if isinstance(res, (rex.MovedError, rex.AskError, rex.ClusterDownError, rex.TryAgainError)):
            out[i] = await run_script(client, script, calls[i][0], calls[i][1])
    for res in out:
        if isinstance(res, Exception):
            raise res
    return out


async def _many_on_node(
    client: RedisCluster,
    node: ClusterNode,
    script: Script,
    calls: Sequence[tuple[Sequence[str], Sequence[Any]]],
    idx: list[int],
    out: list[Any],
) -> None:
    conn = node.acquire_connection()
    try:
        await _ready(conn)
        answers = await _pipelined(conn, "EVALSHA", script.sha, calls, idx)
        again = [i for i, a in zip(idx, answers, strict=True) if isinstance(a, rex.NoScriptError)]
        for i, a in zip(idx, answers, strict=True):
            out[i] = a
        if again:  # a restarted node, a promoted replica: EVAL caches the script there
            evals = await _pipelined(conn, "EVAL", script.script, calls, again)
            for i, a in zip(again, evals, strict=True):
                out[i] = a
    except (rex.ConnectionError, rex.TimeoutError):
        await conn.disconnect(nowait=True)
        client._initialize = True  # private: the node may have failed over
        raise
    finally:
        _release(node, conn)


async def _pipelined(
    conn: Any,
    command: str,
    body: str | bytes,
    calls: Sequence[tuple[Sequence[str], Sequence[Any]]],
    idx: list[int],
) -> list[Any]:
    packed = conn.pack_commands(
        [(command, body, len(calls[i][0]), *calls[i][0], *calls[i][1]) for i in idx]
    )
    await conn.send_packed_command(packed)
    answers: list[Any] = []
    for _ in idx:
        try:
            answers.append(await conn.read_response())
        except rex.ResponseError as exc:  # an error reply: the connection is still in step
            answers.append(exc)
    return answers


async def _run_many_plain(
    client: Any, script: Script, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]
) -> list[Any]:
    for attempt in (0, 1):
        async with client.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            out = list(await pipe.execute(raise_on_error=False))
        errors = [r for r in out if isinstance(r, Exception)]
        if attempt == 0 and errors and all(isinstance(e, rex.NoScriptError) for e in errors):
            await client.script_load(script.script)  # NOSCRIPT ran nothing: run them again
            continue
        if errors:
            raise errors[0]
        return out
    raise AssertionError("unreachable")


async def _ready(conn: Any) -> None:
    """Connect ``conn`` and make sure it is fit to send on, as a plain client's pool does: a
    pooled connection to a node that died since reads as closed, and is opened again (to
    whatever answers at that address) before anything is sent."""
    # redis-py 8 renamed can_read_destructive (and deprecated the old name).
    can_read = getattr(conn, "can_read", None) or conn.can_read_destructive
    await conn.connect()
    try:
        if await can_read():
            raise rex.ConnectionError("the connection has data nobody asked for")
    except (rex.ConnectionError, rex.TimeoutError, OSError):
        await conn.disconnect()
        await conn.connect()
        if await can_read():
            raise rex.ConnectionError("the connection is not ready") from None


def _release(node: ClusterNode, conn: Any) -> None:
    release = getattr(node, "release", None)
    if release is not None:  # redis-py 6+
        release(conn)
    else:  # redis-py 5
        node._free.append(conn)


async def _moved(client: RedisCluster, exc: rex.MovedError) -> None:
    manager = client.nodes_manager
    if hasattr(manager, "move_slot"):  # redis-py 6+
        await manager.move_slot(exc)
    else:  # redis-py 5 applies it on the next lookup
        manager._moved_exception = exc
