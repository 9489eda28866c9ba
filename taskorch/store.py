"""Task records in Redis: hashes, per-owner indexes and the deferred queue, changed only by Lua.

The API calls the ``*_task`` methods; the worker calls ``claim``/``start``/``finish``/``reap``.
Every status change is one script (see :mod:`taskorch.lua`), so a crash between two Redis
commands cannot leave a task half-changed, and a cancel or modify that races the due time is
decided by one compare-and-set on the task's current job id.
"""

from __future__ import annotations

import asyncio
import functools
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeAlias, TypeVar
from urllib.parse import parse_qs, unquote, urlparse

import hiredis
import msgspec
import redis.asyncio as aioredis
import redis.exceptions
import structlog
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import (
    Sentinel,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)
from redis.backoff import NoBackoff

from taskorch import cluster, lua, oldlayout, partitions
from taskorch import constants as c
from taskorch.cluster import run_many, run_script
from taskorch.errors import (
    NOT_STORED,
    Conflict,
    CreateOutcomeUnknown,
    NotFound,
    TaskorchError,
    Unavailable,
)
from taskorch.models import (
    Attempt,
    Callback,
    CallbackAttempt,
    CallPolicy,
    Task,
    TaskCreate,
    TaskPage,
    TaskPatch,
    TaskSpec,
    TaskStatus,
    due_ms,
    fmt_ms,
)
from taskorch.partitions import Layout

# redis-py is untyped for mypy here (see pyproject): name the client type for readers anyway.
Redis: TypeAlias = Any
# What an unreachable Redis raises: killed (connection refused or reset), frozen (the socket
# timeout), loading its data after a restart (BusyLoadingError is a ConnectionError).
REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
T = TypeVar("T")
log = structlog.get_logger("taskorch.store")
_spec_decoder = msgspec.json.Decoder(TaskSpec)


def now_ms() -> int:
    return int(time.time() * 1000)


def new_id(prefix: str) -> str:
    """A type-prefixed id that sorts by creation time (for newest-first pages) and is unguessable.

    Tasks and orchestrations take theirs from :func:`taskorch.partitions.new_id`, which also
    names their partition; this one is for records that are not partitioned.
    """
    return f"{prefix}_{now_ms():012x}{secrets.token_hex(6)}"


# Whether a value has the exact form new_id gives ids of a prefix (the rule: taskorch.rules).
from taskorch.models.rules import is_id as is_id  # noqa: E402


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


async def page_ids(
    redis: Redis, owner: str, kind: str, status: str | None, *, limit: int, cursor: str | None
) -> tuple[list[str], str | None]:
    """One newest-first page of an owner's ids of ``kind`` from a global per-owner index (kept for
    functions, which are not partitioned: see :func:`list_ids` for tasks and orchestrations).
    """
    index = f"{c.OWNER_KEY_PREFIX}{owner}:{kind}" + (f":{status}" if status else "")
    ids = await redis.zrevrangebylex(
        index, f"({cursor}" if cursor else "+", "-", start=0, num=limit + 1
    )
    more = len(ids) > limit
    ids = ids[:limit]
    return ids, (ids[-1] if more and ids else None)


async def list_ids(
    redis: Redis,
    layout: Layout,
    script: Any,
    index: str,
    statuses: Sequence[str],
    *,
    limit: int,
    cursor: str | None,
) -> tuple[list[str], str | None]:
    """One newest-first page of an owner's ids merged over every partition and ``statuses``.

    ``index`` is the owner's index prefix within a partition (``i:<owner>:``). Each partition
    answers its own newest ``limit + 1`` ids below the cursor in one script (lua/list_ids.lua); they
    are merged here. Ids sort by creation time and the cursor is the last id handed out, so pages
    stay stable while tasks change status (a task is listed by its id, whatever index it is in).
    """
    rows = await run_many(
        redis,
        script,
        [([layout.queue(p)], [index, cursor or "", limit, *statuses]) for p in range(layout.n)],
    )
    ids = sorted((i for row in rows for i in row), reverse=True)
    more = len(ids) > limit
    ids = ids[:limit]
    return ids, (ids[-1] if more and ids else None)


class _StoredAttempt(msgspec.Struct, omit_defaults=True):
    """An attempt as kept in Redis: times in epoch ms, formatted only when answered."""

    n: int
    sf: int
    st: int
    ft: int | None = None
    lat: float = 0.0
    dur: float | None = None
    code: int | None = None
    err: str | None = None
    body: str | None = None


_attempt_encoder = msgspec.json.Encoder()
_attempt_decoder = msgspec.json.Decoder(_StoredAttempt)


class _StoredCallbackAttempt(msgspec.Struct, omit_defaults=True):
    """A callback delivery as kept in ``t:<id>:cb`` (times in epoch ms)."""

    k: str  # callback | failure_callback
    n: int
    st: int
    ft: int
    dur: float = 0.0
    code: int | None = None
    err: str | None = None
    body: str | None = None


_callback_attempts_decoder = msgspec.json.Decoder(list[_StoredCallbackAttempt])


def encode_callback_attempt(
    *,
    kind: str,
    number: int,
    started_ms: float,
    finished_ms: float,
    status_code: int | None,
    error: str | None,
    body: str | None,
) -> str:
    a = _StoredCallbackAttempt(
        k=kind,
        n=number,
        st=int(started_ms),
        ft=int(finished_ms),
        dur=round(finished_ms - started_ms, 3),
        code=status_code,
        err=error,
        body=body,
    )
    return _attempt_encoder.encode(a).decode()


def _callback_attempts(raw: str) -> list[CallbackAttempt]:
    return [
        CallbackAttempt(
            callback=a.k,  # type: ignore[arg-type]
            number=a.n,
            started_at=fmt_ms(a.st) or "",
            finished_at=fmt_ms(a.ft) or "",
            duration_ms=a.dur,
            status_code=a.code,
            error=a.err,
            response_body=a.body,
        )
        for a in _callback_attempts_decoder.decode(raw)
    ]


def encode_attempt(
    *,
    number: int,
    scheduled_for_ms: int,
    started_ms: float,
    finished_ms: float,
    status_code: int | None,
    error: str | None,
    body: str | None,
) -> str:
    a = _StoredAttempt(
        n=number,
        sf=scheduled_for_ms,
        st=int(started_ms),
        ft=int(finished_ms),
        lat=round(started_ms - scheduled_for_ms, 3),
        dur=round(finished_ms - started_ms, 3),
        code=status_code,
        err=error,
        body=body,
    )
    return _attempt_encoder.encode(a).decode()


def _attempt_view(a: _StoredAttempt) -> Attempt:
    return Attempt(
        number=a.n,
        scheduled_for=fmt_ms(a.sf) or "",
        started_at=fmt_ms(a.st) or "",
        finished_at=fmt_ms(a.ft),
        lateness_ms=a.lat,
        duration_ms=a.dur,
        status_code=a.code,
        error=a.err,
        response_body=a.body,
    )


class Claimed(msgspec.Struct):
    """A job this worker now holds: due at ``due_ms``, its function, argument and task spec.

    ``scheduled_ms`` is when a task was due for this attempt, where it goes later (``due_ms``):
    its queue made it wait for a later dispatch slot, or a reaper took it back from a dead worker
    and queued it again at that time. Its attempt's lateness, ``X-Taskorch-Scheduled-For`` and
    the lateness figures count from ``scheduled_ms`` (0: the same as ``due_ms``).
    """

    job: str
    due_ms: int
    function: str
    arg: str
    spec: TaskSpec | None
    base: int = 0  # attempts made before the task's last redrive (its retry budget starts after)
    owner: str = ""  # a task's owner, whose secrets sign its call
    scheduled_ms: int = 0


class BatchItem(msgspec.Struct):
    """One task of :meth:`Store.create_tasks`: its body and optional Idempotency-Key."""

    body: TaskCreate
    idempotency_key: str | None = None


async def run_create(client: Redis, script: Any, keys: list[str], args: list[Any]) -> list[Any]:
    """Run a create's script and say, when it fails, whether it may have been stored.

    The connection is taken (connected, health-checked) before the script is sent: a failure
    there is an outage like any other (nothing sent, nothing stored). A connection lost once the
    script was sent raises :class:`CreateOutcomeUnknown` (:func:`taskorch.cluster.run_script`,
    on a single Redis and a cluster alike). A timeout is not "unknown": the script carries the
    request's deadline and writes nothing past it, which it answers with ``{-1}``.
    """
    res: list[Any] = await run_script(client, script, keys, args, lost=CreateOutcomeUnknown)
    if res and res[0] == -1:
        raise Unavailable(
            "Redis did not run this create before its deadline, so it stored nothing.",
            details=[dict(NOT_STORED)],
        )
    return res


class Store:
    """All Redis access. One per process, built around an injected client.

    Every call runs in the partitions it concerns (see :mod:`taskorch.partitions`): one script per
    partition, routed by that partition's queue key, so the same code serves a single Redis,
    Sentinel and Redis Cluster.
    """

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.more_due = False  # see claim
        self._claim_turn = 0
        self._create = lua.register(redis, "create_tasks")
        self._view = lua.register(redis, "view_tasks")
        self._list = lua.register(redis, "list_ids")
        self._list_scan = lua.register(redis, "list_scan")
        self._cancel = lua.register(redis, "cancel_task")
        self._modify = lua.register(redis, "modify_task")
        self._retry = lua.register(redis, "retry_task")
        self._claim = lua.register(redis, "claim")
        self._start = lua.register(redis, "start")
        self._finish = lua.register(redis, "finish")
        self._reap = lua.register(redis, "reap")
        self._callback_done = lua.register(redis, "callback_done")
        self._release = lua.register(redis, "release")
        self._renew = lua.register(redis, "renew")
        self._done = lua.register(redis, "done")
        self._purge = lua.register(redis, "purge")

    async def layout(self) -> Layout:
        """The deployment's partitions (read from Redis once per client)."""
        return await partitions.load(self.redis)

    # -- tasks, for the API ----------------------------------------------------------------

    async def create_task(
        self,
        owner: str,
        body: TaskCreate,
        *,
        idempotency_key: str | None = None,
        idempotency_kind: str = "tsk",
        deadline_ms: int | None = None,
    ) -> tuple[Task, bool]:
        """Store a new task and enqueue its first attempt. Returns (task, created).

        ``deadline_ms`` (Unix ms): past it by Redis's clock nothing is written (503 not_stored).

        Idempotency keys are per owner and per ``idempotency_kind``: a task's key never meets an
        orchestration's (``orc``) or one the service uses itself. The answer comes from the
        script that stored the task, so a stored task is never answered with a 503.
        """
        [res] = await self.create_tasks(
            owner,
            [BatchItem(body, idempotency_key)],
            idempotency_kind=idempotency_kind,
            deadline_ms=deadline_ms,
        )
        if isinstance(res, TaskorchError):
            raise res
        return res

    async def create_tasks(
        self,
        owner: str,
        items: Sequence[BatchItem],
        *,
        idempotency_kind: str = "tsk",
        deadline_ms: int | None = None,
    ) -> list[tuple[Task, bool] | TaskorchError]:
        """Store many tasks of one owner: one script call per partition touched, run at once.

        Returns one result per item, in order: ``(task, created)``, where ``created`` is False
        for an Idempotency-Key already used (the task answered is the one created under it; a
        key repeated within the batch answers the first item's task), or the error of that item:
        :class:`~taskorch.errors.Unavailable` (``not_stored``: its partition's script ran past
        ``deadline_ms``, nothing of it was written) or
        :class:`~taskorch.errors.CreateOutcomeUnknown` (the connection to its partition was lost
        once the script was sent). Outages before anything was sent raise as for one create.
        Items without a key land in partitions at random; an item with one in the partition its
        key names, so that a repeat finds it. Deadline semantics are those of
        :meth:`create_task`, per partition.
        """
        layout = await self.layout()
        now = now_ms()
        groups: dict[int, list[int]] = {}
        args_by: dict[int, list[Any]] = {}
        dues: list[int] = []
        rand = os.urandom(2 * len(items))
        places = [
            _place(layout, owner, item, int.from_bytes(rand[2 * i : 2 * i + 2]))
            for i, item in enumerate(items)
        ]
        ids = partitions.ids_at("tsk", places, layout.n, now)
        for i, item in enumerate(items):
            p = places[i]
            groups.setdefault(p, []).append(i)
            args = args_by.setdefault(
                p,
                [
                    now,
                    c.IDEMPOTENCY_TTL_S,
                    c.CLAIM_AHEAD_MS,
                    "" if deadline_ms is None else deadline_ms,
                    layout.n,
                    p,
                ],
            )
            body = item.body
            dues.append(due_ms(body.run_at, body.delay, now))
            args += [
                ids[i],
                owner,
                *_spec_parts(body, body.callback, body.failure_callback),
                body.name or "",
                dues[i],
                idempotency_redis_key(
                    layout.prefixes[p], owner, idempotency_kind, item.idempotency_key
                ),
                "" if body.queue == c.DEFAULT_QUEUE else body.queue,
            ]
        ps = list(groups)
        replies = await asyncio.gather(
            *(run_create(self.redis, self._create, [layout.queue(p)], args_by[p]) for p in ps),
            return_exceptions=True,
        )
        out: list[tuple[Task, bool] | TaskorchError | None] = [None] * len(items)
        elsewhere: dict[int, str] = {}
        stamp = fmt_ms(now) or ""
        times = functools.lru_cache(maxsize=64)(fmt_ms)  # a batch's tasks mostly share due times
        for p, reply in zip(ps, replies, strict=True):
            if isinstance(reply, REDIS_DOWN):
                # This partition's node was out of reach while others may have stored theirs:
                # answered per task (as the API answers an outage), not for the whole batch.
                reply = Unavailable(
                    "Redis is unreachable; try again shortly.", details=[dict(NOT_STORED)]
                )
            if isinstance(reply, (Unavailable, CreateOutcomeUnknown)):
                for i in groups[p]:
                    out[i] = reply
                continue
            if isinstance(reply, BaseException):
                raise reply
            for i, row in zip(groups[p], reply, strict=True):
                if row[0] == 1:
                    out[i] = (_created_view(ids[i], items[i].body, stamp, times(dues[i])), True)
                elif row[0] == 2:
                    elsewhere[i] = row[1]
                else:
                    out[i] = (_task_view(from_flat(row[1]), row[2]), False)
        if elsewhere:
            # Keys carried over by taskorch migrate: the record is read where its id says; one
            # that retention has deleted frees its key, and the item is created afresh.
            found = await self._views(layout, list(elsewhere.values()))
            again: list[int] = []
            for i, tid in elsewhere.items():
                task = found.get(tid)
                if task is not None and await self._owned(tid, owner):
                    out[i] = (task, False)
                else:
                    key = items[i].idempotency_key
                    p = _place(layout, owner, items[i])
                    await self.redis.delete(
                        idempotency_redis_key(layout.prefixes[p], owner, idempotency_kind, key)
                    )
                    again.append(i)
            if again:
                redo = await self.create_tasks(
                    owner,
                    [items[i] for i in again],
                    idempotency_kind=idempotency_kind,
                    deadline_ms=deadline_ms,
                )
                for i, r in zip(again, redo, strict=True):
                    out[i] = r
        return [r for r in out if r is not None]

    async def _owned(self, task_id: str, owner: str) -> bool:
        h = await self.read_task(task_id)
        return h is not None and h.get("owner") == owner

    async def _views(self, layout: Layout, ids: Sequence[str]) -> dict[str, Task]:
        """The tasks of ``ids`` that exist, read by one script per partition."""
        groups: dict[int, list[str]] = {}
        for tid in ids:
            groups.setdefault(layout.partition_of(tid), []).append(tid)
        ps = list(groups)
        rows = await run_many(self.redis, self._view, [([layout.queue(p)], groups[p]) for p in ps])
        out: dict[str, Task] = {}
        for p, row in zip(ps, rows, strict=True):
            for tid, (h, attempts) in zip(groups[p], row, strict=True):
                if h:
                    out[tid] = _task_view(from_flat(h), attempts)
        return out

    async def read_task(self, task_id: str) -> dict[str, str] | None:
        """A task's fields as the scripts answer them (any owner), or None."""
        layout = await self.layout()
        [(h, _)] = await run_script(
            self.redis, self._view, [layout.queue(layout.partition_of(task_id))], [task_id]
        )
        return from_flat(h) if h else None

    async def get_task(self, owner: str, task_id: str) -> Task:
        layout = await self.layout()
        p = layout.partition_of(task_id)
        [(h, attempts)] = await run_script(self.redis, self._view, [layout.queue(p)], [task_id])
        view = from_flat(h)
        if not view or view.get("owner") != owner:
            raise NotFound(f"No task {task_id!r} exists for this account.")
        return _task_view(view, attempts)

    async def list_tasks(
        self,
        owner: str,
        *,
        status: TaskStatus | None,
        limit: int,
        cursor: str | None,
        queue: str | None = None,
        name: str | None = None,
    ) -> TaskPage:
        """One newest-first page of the owner's tasks; ``name`` keeps those whose name starts
        with it, ``queue`` those of one queue (see :meth:`_scanned_ids`)."""
        layout = await self.layout()
        statuses = [status.value] if status else [s.value for s in TaskStatus]
        if queue is not None and queue != c.DEFAULT_QUEUE and name:
            ids, next_cursor = await self._scanned_ids(
                layout,
                f"{c.QUEUE_INDEX}{owner}:{queue}:",
                [layout.queue_partition(owner, queue)],
                statuses,
                name,
                False,
                limit=limit,
                cursor=cursor,
            )
        elif queue is not None and queue != c.DEFAULT_QUEUE:
            # A named queue's tasks are all in its partition, in its own status indexes.
            p = layout.queue_partition(owner, queue)
            got = await run_script(
                self.redis,
                self._list,
                [layout.queue(p)],
                [f"{c.QUEUE_INDEX}{owner}:{queue}:", cursor or "", limit, *statuses],
            )
            ids = sorted(got, reverse=True)
            next_cursor = ids[limit - 1] if len(ids) > limit else None
            ids = ids[:limit]
        elif name or queue is not None:
            ids, next_cursor = await self._scanned_ids(
                layout,
                f"{c.TASK_INDEX}{owner}:",
                range(layout.n),
                statuses,
                name or "",
                queue is not None,
                limit=limit,
                cursor=cursor,
            )
        else:
            ids, next_cursor = await list_ids(
                self.redis,
                layout,
                self._list,
                f"{c.TASK_INDEX}{owner}:",
                statuses,
                limit=limit,
                cursor=cursor,
            )
        views = await self._views(layout, ids) if ids else {}
        items = [views[i] for i in ids if i in views]
        return TaskPage(items=items, next_cursor=next_cursor)

    async def _scanned_ids(
        self,
        layout: Layout,
        index: str,
        parts: Iterable[int],
        statuses: Sequence[str],
        name: str,
        default_only: bool,
        *,
        limit: int,
        cursor: str | None,
    ) -> tuple[list[str], str | None]:
        """A page of ids of tasks named ``name...`` (and of the default queue alone when
        ``default_only``) from ``index`` (a prefix: the owner's, or a named queue's) in ``parts``,
        which no index narrows: the partitions read LIST_SCAN_BUDGET of the newest records below
        the cursor between them (lua/list_scan.lua). Each gets an equal
        share first; what the partitions that ran out of records left over goes to those that
        have more, in up to LIST_SCAN_ROUNDS rounds (an owner whose tasks are all in one named
        queue has them in one partition). Where a partition stopped early, the page holds only
        what is newer than where it stopped and its cursor goes on from there: a page may be
        short, even empty, with a next_cursor."""
        left = c.LIST_SCAN_BUDGET
        todo = {p: cursor or "" for p in parts}  # partition -> where it goes on
        stops: dict[int, str] = {}
        found: list[str] = []
        for _ in range(c.LIST_SCAN_ROUNDS):
            each = max(1, left // len(todo))
            rows = await run_many(
                self.redis,
                self._list_scan,
                [
                    (
                        [layout.queue(p)],
                        [
                            index,
                            below,
                            limit,
                            name,
                            "1" if default_only else "",
                            each,
                            *statuses,
                        ],
                    )
                    for p, below in todo.items()
                ],
            )
            more: dict[int, str] = {}
            for p, (got, stop, read) in zip(todo, rows, strict=True):
                found += got
                left -= int(read)
                if stop:
                    more[p] = stops[p] = stop
                else:
                    stops.pop(p, None)
            todo = more
            cutoff = max(stops.values()) if stops else None
            if not todo or left < len(todo):
                break
            if sum(1 for i in found if cutoff is None or i >= cutoff) > limit:
                break  # a page is full above where any partition stopped: more cannot change it
        cutoff = max(stops.values()) if stops else None
        ids = sorted(found, reverse=True)
        if cutoff is not None:
            ids = [i for i in ids if i >= cutoff]  # below it, a partition has not looked
        if len(ids) > limit:
            return ids[:limit], ids[limit - 1]
        return ids, cutoff

    async def cancel_task(self, owner: str, task_id: str) -> Task:
        layout = await self.layout()
        res = await run_script(
            self.redis,
            self._cancel,
            [layout.queue(layout.partition_of(task_id))],
            [task_id, owner, now_ms()],
        )
        _raise_for(res, task_id, "cancelled")
        return _task_view(from_flat(res[1]), res[2])

    async def task_record(self, task_id: str) -> tuple[dict[str, str], Task] | None:
        """A task's fields as the scripts answer them and its view (any owner), or None."""
        layout = await self.layout()
        [(h, attempts)] = await run_script(
            self.redis, self._view, [layout.queue(layout.partition_of(task_id))], [task_id]
        )
        if not h:
            return None
        fields = from_flat(h)
        return fields, _task_view(fields, attempts)

    async def callback_done(
        self,
        task_id: str,
        job: str,
        attempt: str,
        *,
        next_job: str = "",
        next_arg: str = "",
        next_due_ms: int = 0,
    ) -> bool:
        """Record a callback delivery and schedule the next (lua/callback_done.lua); False when
        the job was no longer the task's callback job."""
        layout = await self.layout()
        res = await run_script(
            self.redis,
            self._callback_done,
            [layout.queue(layout.partition_of(task_id))],
            [task_id, job, attempt, now_ms(), next_job, next_arg, next_due_ms, c.CLAIM_AHEAD_MS],
        )
        return bool(res)

    async def retry_task(self, owner: str, task_id: str) -> Task:
        """Redrive a failed task: scheduled again now with a fresh retry budget (lua/retry_task.lua)."""
        layout = await self.layout()
        res = await run_script(
            self.redis,
            self._retry,
            [layout.queue(layout.partition_of(task_id))],
            [task_id, owner, now_ms(), c.CLAIM_AHEAD_MS],
        )
        if res[0] == "conflict":
            raise Conflict(f"The task is {res[1]}: only a failed task can be retried.")
        if res[0] == "in_orchestration":
            raise Conflict(
                f"The task is a step of orchestration {res[1]}: a step cannot be retried alone."
            )
        _raise_for(res, task_id, "retried")
        return _task_view(from_flat(res[1]), res[2])

    async def modify_task(self, owner: str, task_id: str, patch: TaskPatch) -> Task:
        """Apply ``patch``; the old version's job is removed in the same script that adds the new."""
        from taskorch.models import convert

        layout = await self.layout()
        q = layout.queue(layout.partition_of(task_id))
        for _ in range(10):  # only a concurrent modify makes us read again
            h = await self.read_task(task_id)
            if not h or h.get("owner") != owner:
                raise NotFound(f"No task {task_id!r} exists for this account.")
            if h.get("orchestration_id"):
                _raise_for(["in_orchestration", h["orchestration_id"]], task_id, "modified")
            if h["status"] not in ("scheduled", "retrying"):
                raise Conflict(
                    f"The task is {h['status']}: only a scheduled or retrying task can be modified."
                )
            merged = msgspec.to_builtins(decode_spec(h["spec"], h.get("url", "")))
            changes = {
                f: v
                for f in patch.__struct_fields__
                if (v := getattr(patch, f)) is not msgspec.UNSET
            }
            queue = h.get("queue") or c.DEFAULT_QUEUE
            if changes.get("queue", queue) != queue:
                # Its queue's partition holds it (its id says where): it cannot move.
                raise Conflict(
                    f"The task is in queue {queue!r} and cannot move to another; cancel it and "
                    f"create a new one in queue {changes['queue']!r}.",
                    details=[{"field": "queue", "message": "a task cannot move between queues"}],
                )
            for f in (
                "url",
                "method",
                "headers",
                "payload",
                "retries",
                "retry_delay",
                "backoff",
                "max_retry_delay",
                "timeout",
            ):
                if f in changes:
                    merged[f] = changes[f]
            spec = convert(merged, TaskSpec)
            callback, failure_callback = decode_callbacks(h["spec"], h.get("url", ""))
            callback = changes.get("callback", callback)
            failure_callback = changes.get("failure_callback", failure_callback)
            name = h.get("name", "")
            if "name" in changes:
                name = changes["name"] or ""
            now = now_ms()
            due = int(h["run_at"])
            if changes.get("run_at") is not None or changes.get("delay") is not None:
                due = due_ms(changes.get("run_at"), changes.get("delay"), now)
            res = await run_script(
                self.redis,
                self._modify,
                [q],
                [
                    task_id,
                    owner,
                    now,
                    h["gen"],
                    *_spec_parts(spec, callback, failure_callback),
                    name,
                    due,
                    c.CLAIM_AHEAD_MS,
                ],
            )
            if res[0] != "stale":
                _raise_for(res, task_id, "modified")
                return _task_view(from_flat(res[1]), res[2])
        raise Conflict("The task is being changed by another request; try again.")

    # -- the worker's side -----------------------------------------------------------------

    async def claim(
        self,
        *,
        worker: str,
        horizon_ms: int,
        lease_ms: int,
        limit: int,
        claim_id: str = "",
        lost: Sequence[str] = (),
        answered: str = "",
    ) -> list[Claimed]:
        """Claim due jobs from every partition at once, at most ``limit`` in all.

        The partitions share ``limit`` (the worker's room: it never holds more than it can
        start), the remainder going to each in turn. Afterwards ``more_due`` says whether a
        partition answered its whole share, so that more may be waiting there now.

        ``claim_id`` (unique per claim) makes the claim safe to lose: name it in ``lost`` in a
        later claim, after this one's reply never came, and that claim also answers the jobs
        this one took that are still leased to ``worker`` (see lua/claim.lua). The answer may then
        hold more than ``limit``. ``answered`` names the last claim whose reply came, whose
        record is then dropped.
        """
        layout = await self.layout()
        n, now = layout.n, now_ms()
        extra = [claim_id, answered, *lost] if claim_id else []
        limit = max(limit, 0)
        first = self._claim_turn % n
        self._claim_turn += 1
        rows: list[Any] = []
        if limit < n and not lost:
            # Too little room to share: partitions in turn until it is taken (a worker this
            # full is rare; the common case below is one round trip).
            left = limit
            for i in range(n):
                if left <= 0:
                    break
                q = layout.queue((first + i) % n)
                row = await run_script(
                    self.redis, self._claim, [q], [horizon_ms, now, lease_ms, worker, left, *extra]
                )
                rows.append(row)
                left -= len(row)
            self.more_due = left <= 0
        else:
            shares = [limit // n + ((p - first) % n < limit % n) for p in range(n)]
            rows = await run_many(
                self.redis,
                self._claim,
                [
                    ([layout.queue(p)], [horizon_ms, now, lease_ms, worker, share, *extra])
                    for p, share in enumerate(shares)
                ],
            )
            self.more_due = any(len(r) == share for share, r in zip(shares, rows, strict=True))
        out = []
        for part in rows:
            for job, due, fn, arg, url, spec, *more in part:
                out.append(
                    Claimed(
                        job=job,
                        due_ms=int(float(due)),
                        function=fn,
                        arg=arg,
                        spec=decode_spec(spec, url) if fn == "fire_task" else None,
                        base=int(more[0]) if more else 0,
                        owner=more[1] if len(more) > 1 else "",
                        scheduled_ms=int(more[2]) if len(more) > 2 else 0,
                    )
                )
        return out

    async def _per_partition(
        self, keys: Sequence[str], script: Any, build: Callable[[list[int]], list[Any]]
    ) -> list[tuple[list[int], Any]]:
        """Run ``script`` once per partition of ``keys`` (ids or job ids) with the args
        ``build(indexes of keys in it)``, all in one pipeline; (indexes, reply) per partition."""
        layout = await self.layout()
        groups: dict[int, list[int]] = {}
        for i, k in enumerate(keys):
            groups.setdefault(layout.partition_of(k), []).append(i)
        calls = [([layout.queue(p)], build(idx)) for p, idx in groups.items()]
        replies = await run_many(self.redis, script, calls)
        return list(zip(groups.values(), replies, strict=True))

    @staticmethod
    def _in_order(n: int, parts: list[tuple[list[int], Any]]) -> list[Any]:
        out: list[Any] = [None] * n
        for idx, reply in parts:
            for i, r in zip(idx, reply, strict=True):
                out[i] = r
        return out

    async def start(
        self, pairs: Sequence[tuple[str, str]], *, worker: str, lease_ms: int
    ) -> list[int]:
        """Compare-and-set each (task_id, job) to running; 0 where it was cancelled or changed.

        Safe to repeat: the same worker starting the same job again gets the same attempt
        number (what to do when the reply to the first was lost). One script per partition.
        """
        if not pairs:
            return []
        now = now_ms()

        def build(idx: list[int]) -> list[Any]:
            args: list[Any] = [now, worker, lease_ms]
            for i in idx:
                args += list(pairs[i])
            return args

        parts = await self._per_partition([t for t, _ in pairs], self._start, build)
        return [int(x) for x in self._in_order(len(pairs), parts)]

    async def finish(self, outcomes: Iterable[Sequence[Any]]) -> list[int]:
        """Record attempts' outcomes, one script per partition; each row is (task id, job,
        outcome, attempt JSON, next due, now, wake ms, metric fields...)."""
        rows = [list(r) for r in outcomes]
        if not rows:
            return []

        def build(idx: list[int]) -> list[Any]:
            args: list[Any] = [rows[idx[0]][6]]
            for i in idx:
                row = rows[i][:6] + rows[i][7:]
                args += [len(row), *row]
            return args

        parts = await self._per_partition([r[0] for r in rows], self._finish, build)
        return [int(x) for x in self._in_order(len(rows), parts)]

    async def reap(self, *, gap_ms: int, grace_ms: int, limit: int = 200) -> int:
        """Recover lapsed claims in every partition; -1 while reapers hold back after an outage
        and nothing was recovered (see lua/reap.lua)."""
        layout = await self.layout()
        args = [now_ms(), limit, c.MAX_LOST_ATTEMPTS, gap_ms, grace_ms]
        got = await run_many(
            self.redis, self._reap, [([layout.queue(p)], args) for p in range(layout.n)]
        )
        ns = [int(n) for n in got]
        recovered = sum(n for n in ns if n > 0)
        return recovered if recovered or min(ns) >= 0 else -1

    async def renew(self, claims: Sequence[tuple[str, int]], *, expiry_ms: int) -> None:
        """Push the (job, due ms) claims this worker holds forward to ``expiry_ms`` after their
        due time or now (Redis's clock), whichever is later; lapsed ones are not revived."""
        if not claims:
            return

        def build(idx: list[int]) -> list[Any]:
            args: list[Any] = [expiry_ms]
            for i in idx:
                args += list(claims[i])
            return args

        await self._per_partition([j for j, _ in claims], self._renew, build)

    async def release(self, worker: str, jobs: Sequence[tuple[str, int]]) -> int:
        """Hand unstarted claims back to their queues; how many went back."""
        if not jobs:
            return 0

        def build(idx: list[int]) -> list[Any]:
            args: list[Any] = [worker]
            for i in idx:
                args += list(jobs[i])
            return args

        parts = await self._per_partition([j for j, _ in jobs], self._release, build)
        return sum(int(n) for _, n in parts)

    async def done(self, job: str, worker: str) -> None:
        layout = await self.layout()
        await run_script(
            self.redis, self._done, [layout.queue(layout.partition_of(job))], [job, worker, "done"]
        )

    async def purge(self, *, older_than_ms: int, limit: int = 200) -> int:
        """Delete up to ``limit`` records per partition that finished before ``older_than_ms``,
        and the occurrences of deleted schedules (constants.SCHEDULES_DELETED): beyond their
        newest DELETED_SCHEDULE_KEEP at once, those DELETED_SCHEDULE_KEEP_S after the delete (or
        at ``older_than_ms``, when that comes first)."""
        layout = await self.layout()
        now = now_ms()
        gone = max(older_than_ms, now - int(c.DELETED_SCHEDULE_KEEP_S * 1000))
        got = await run_many(
            self.redis,
            self._purge,
            [
                ([layout.queue(p)], [older_than_ms, limit, now, gone, c.DELETED_SCHEDULE_KEEP])
                for p in range(layout.n)
            ],
        )
        return sum(int(n) for n in got)

    async def heartbeat(self, worker: str) -> None:
        # One global key, written per worker (not per task): one slot, so a plain pipeline.
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(c.WORKERS_KEY, {worker: now_ms()})
            pipe.zremrangebyscore(c.WORKERS_KEY, "-inf", now_ms() - 60_000)
            await pipe.execute()


def _place(layout: Layout, owner: str, item: BatchItem, rand16: int | None = None) -> int:
    """The partition of a new task: its named queue's (with its Idempotency-Key, so that a
    repeat of the same body finds it), else its key's, else any (see Layout.pick)."""
    if item.body.queue != c.DEFAULT_QUEUE:
        return layout.queue_partition(owner, item.body.queue)
    return layout.pick(owner, item.idempotency_key, rand16)


def idempotency_redis_key(prefix: str, owner: str, kind: str, key: str | None) -> str:
    """The Redis key of an owner's Idempotency-Key for one kind of record in the partition of
    ``prefix`` ('' for none)."""
    return f"{prefix}{c.IDEMPOTENCY}{owner}:{kind}:{key}" if key else ""


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


class _StoredRest(msgspec.Struct, omit_defaults=True):
    """A spec but its url, as a task record keeps it: one-letter names, defaults left out (the
    record is most of what a pending task costs Redis; issue #10). _spec_parts passes the
    fields in this order."""

    m: str = "POST"
    h: dict[str, str] = {}
    b: Any = None
    r: int = c.DEFAULT_RETRIES
    d: float = c.DEFAULT_RETRY_DELAY_S
    x: float = c.DEFAULT_BACKOFF
    mx: float = c.DEFAULT_MAX_RETRY_DELAY_S
    t: float = c.DEFAULT_TIMEOUT_S
    # issue #12: callback and failure_callback. lua/lib/callbacks.lua looks for '"cb":{' and '"fc":{'.
    cb: _StoredCallback | None = None
    fc: _StoredCallback | None = None


class _StoredCallback(msgspec.Struct, omit_defaults=True):
    u: str
    h: dict[str, str] = {}


class _StoredSpec(_StoredRest, omit_defaults=True, kw_only=True):
    """A whole spec in the same short form: an orchestration's step (its url included)."""

    u: str


_REST_NAMES = dict(
    m="method",
    h="headers",
    b="payload",
    r="retries",
    d="retry_delay",
    x="backoff",
    mx="max_retry_delay",
    t="timeout",
)
_stored_encoder = msgspec.json.Encoder()
_rest_decoder = msgspec.json.Decoder(_StoredRest)
_stored_spec_decoder = msgspec.json.Decoder(_StoredSpec)


# _spec_parts passes a spec's call policy positionally, in CallPolicy's order (written out there and
# in _created_view: a star of attrgetter cost a batch 1.4 us per task more).
assert tuple(_REST_NAMES.values()) == CallPolicy.__struct_fields__, "see _spec_parts"
assert _StoredRest.__struct_fields__[:8] == tuple(_REST_NAMES), "see _spec_parts"


def _spec_parts(
    body: TaskSpec, callback: Callback | None = None, failure_callback: Callback | None = None
) -> tuple[str, str]:
    """A task's (url, rest of its spec) as its record keeps them ('' when the rest is defaults)."""
    rest = _stored_encoder.encode(
        _StoredRest(
            body.method,
            body.headers,
            body.payload,
            body.retries,
            body.retry_delay,
            body.backoff,
            body.max_retry_delay,
            body.timeout,
            _stored_callback(callback),
            _stored_callback(failure_callback),
        )
    ).decode()
    return body.url, "" if rest == "{}" else rest


def _stored_callback(cb: Callback | None) -> _StoredCallback | None:
    return None if cb is None else _StoredCallback(u=cb.url, h=cb.headers)


def decode_callbacks(raw: str, url: str) -> tuple[Callback | None, Callback | None]:
    """A task's (callback, failure_callback) from its stored spec (a step has neither)."""
    if not url or not raw:
        return None, None
    rest = _rest_decoder.decode(raw)
    return tuple(  # type: ignore[return-value]
        None if x is None else Callback(url=x.u, headers=x.h) for x in (rest.cb, rest.fc)
    )


def _spec_json(body: TaskSpec) -> str:
    """A whole spec in the record's short form (an orchestration's steps)."""
    fields = {short: getattr(body, full) for short, full in _REST_NAMES.items()}
    return _stored_encoder.encode(_StoredSpec(u=body.url, **fields)).decode()


def decode_spec(raw: str, url: str = "") -> TaskSpec:
    """A stored spec: a task's url and rest, a step's whole spec in short form, or (from before
    the partitioned layout) a whole spec in the API's form."""
    if url:
        rest = _rest_decoder.decode(raw) if raw else _StoredRest()
        return TaskSpec(
            url=url, **{full: getattr(rest, short) for short, full in _REST_NAMES.items()}
        )
    if raw.startswith('{"'):
        try:
            stored = _stored_spec_decoder.decode(raw)
        except msgspec.ValidationError:
            return _spec_decoder.decode(raw)
        return TaskSpec(
            url=stored.u, **{full: getattr(stored, short) for short, full in _REST_NAMES.items()}
        )
    return _spec_decoder.decode(raw)


def _raise_for(res: list[str], task_id: str, verb: str) -> None:
    if res[0] == "not_found":
        raise NotFound(f"No task {task_id!r} exists for this account.")
    if res[0] == "conflict":
        raise Conflict(f"The task is {res[1]}: only a scheduled or retrying task can be {verb}.")
    if res[0] == "in_orchestration":
        raise Conflict(
            f"The task is a step of orchestration {res[1]}: modify or cancel the orchestration."
        )


# The order of Task's fields, as _created_view passes them: a batch of 1,000 answers builds
# 1,000 Tasks, and positional arguments cost a fifth of keywords. A field added to Task stops
# the import here until _created_view passes it too.
_VIEW_ORDER = (
    "id", "name", "status", "url", "method", "headers", "payload", "retries", "retry_delay",
    "backoff", "max_retry_delay", "timeout", "run_at", "created_at", "updated_at", "finished_at",
    "orchestration_id", "attempts", "schedule_id", "queue", "callback", "failure_callback",
    "callback_attempts",
)  # fmt: skip
assert Task.__struct_fields__ == _VIEW_ORDER, "Task changed: update _created_view"


def _created_view(task_id: str, body: TaskCreate, stamp: str, run_at: str | None) -> Task:
    """The view of a task a create has just stored as given, built from its body: what reading
    its record back would answer (tests/test_batch.py compares the two). ``stamp`` is its
    creation time and ``run_at`` its due time, formatted (fmt_ms)."""
    return Task(
        task_id,
        body.name or None,
        TaskStatus.scheduled,
        body.url,
        body.method,
        body.headers,
        body.payload,
        body.retries,
        body.retry_delay,
        body.backoff,
        body.max_retry_delay,
        body.timeout,
        run_at,
        stamp,
        stamp,
        None,
        None,
        [],
        None,
        body.queue,
        body.callback,
        body.failure_callback,
        [],
    )


def _task_view(h: dict[str, str], attempts: list[str]) -> Task:
    spec = decode_spec(h["spec"], h.get("url", ""))
    views = [_attempt_view(_attempt_decoder.decode(a)) for a in attempts]
    if h["status"] == "running" and h.get("started_at"):
        started, sf = int(h["started_at"]), int(h["scheduled_for"])
        views.append(
            Attempt(
                number=int(h["attempt"]),
                scheduled_for=fmt_ms(sf) or "",
                started_at=fmt_ms(started) or "",
                finished_at=None,
                lateness_ms=float(started - sf),
                duration_ms=None,
                status_code=None,
                error=None,
                response_body=None,
            )
        )
    finished = h.get("finished_at")
    callback, failure_callback = decode_callbacks(h["spec"], h.get("url", ""))
    return Task(
        id=h["id"],
        name=h.get("name") or None,
        status=TaskStatus(h["status"]),
        url=spec.url,
        method=spec.method,
        headers=spec.headers,
        payload=spec.payload,
        retries=spec.retries,
        retry_delay=spec.retry_delay,
        backoff=spec.backoff,
        max_retry_delay=spec.max_retry_delay,
        timeout=spec.timeout,
        run_at=fmt_ms(int(h["run_at"])) if h.get("run_at") else None,
        created_at=fmt_ms(int(h["created_at"])) or "",
        updated_at=fmt_ms(int(h["updated_at"])) or "",
        finished_at=fmt_ms(int(finished)) if finished else None,
        orchestration_id=h.get("orchestration_id") or None,
        attempts=views,
        schedule_id=h.get("schedule_id") or None,
        queue=h.get("queue") or c.DEFAULT_QUEUE,
        callback=callback,
        failure_callback=failure_callback,
        callback_attempts=_callback_attempts(h["callback_attempts"])
        if h.get("callback_attempts")
        else [],
    )
