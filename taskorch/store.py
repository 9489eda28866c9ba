"""Task records in Redis: hashes, per-owner indexes and the deferred queue, changed only by Lua.

The API calls the ``*_task`` methods; the worker calls ``claim``/``start``/``finish``/``reap``.
Every status change is one script (see :mod:`taskorch.lua`), so a crash between two Redis
commands cannot leave a task half-changed, and a cancel or modify that races the due time is
decided by one compare-and-set on the task's current job id.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeAlias, TypeVar
from urllib.parse import parse_qs, unquote, urlparse

import msgspec
import redis.asyncio as aioredis
import redis.exceptions
import structlog
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from taskorch import cluster, lua
from taskorch import constants as c
from taskorch.errors import NOT_STORED, Conflict, CreateOutcomeUnknown, NotFound, Unavailable
from taskorch.models import (
    Attempt,
    Task,
    TaskCreate,
    TaskPage,
    TaskPatch,
    TaskSpec,
    TaskStatus,
    due_ms,
    fmt_ms,
)

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
    """A type-prefixed id that sorts by creation time (for newest-first pages) and is unguessable."""
    return f"{prefix}_{now_ms():012x}{secrets.token_hex(6)}"


_ID_BODY = re.compile(r"[0-9a-f]{24}")


def is_id(value: str, prefix: str) -> bool:
    """Whether ``value`` has the exact form :func:`new_id` gives ids of ``prefix``."""
    head, sep, body = value.partition("_")
    return head == prefix and sep == "_" and _ID_BODY.fullmatch(body) is not None


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
    return aioredis.from_url(url, **kwargs)


async def eviction_policy(redis: Redis) -> str | None:
    """Redis's ``maxmemory-policy``, or None where the provider forbids ``CONFIG GET``."""
    try:
        got = await redis.config_get("maxmemory-policy")
    except aioredis.ResponseError:
        return None
    return str(got.get("maxmemory-policy")) if got.get("maxmemory-policy") else None


def check_redis(settings: Any, *, require_reachable: bool = False) -> None:
    """At start (``taskorch serve``, ``taskorch check``): Redis must keep what it is given.

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

    async def read() -> str | None:
        client = connect(settings.redis_url, socket_connect_timeout=5, socket_timeout=5)
        try:
            return await eviction_policy(client)
        finally:
            await client.aclose()

    if settings.redis_policy_check == "off" and not require_reachable:
        return
    try:
        policy = asyncio.run(read())
    except Exception as exc:  # unreachable, auth, TLS
        if require_reachable:
            raise ConfigError(f"Redis at TASKORCH_REDIS_URL is unreachable: {exc}") from None
        log.warning("redis.unreachable_at_start", error=str(exc) or type(exc).__name__)
        return
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
    """One newest-first page of an owner's ids of ``kind`` (optionally with ``status``).

    Ids sort by creation time, so the index is a sorted set of equal scores read by lex range,
    and the cursor is simply the last id handed out. Returns (ids, next cursor or None).
    """
    index = f"{c.OWNER_KEY_PREFIX}{owner}:{kind}" + (f":{status}" if status else "")
    ids = await redis.zrevrangebylex(
        index, f"({cursor}" if cursor else "+", "-", start=0, num=limit + 1
    )
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
    """A job this worker now holds: due at ``due_ms``, its arq definition and task spec."""

    job: str
    due_ms: int
    function: str
    arg: str
    spec: TaskSpec | None


async def run_create(client: Redis, script: Any, args: list[Any]) -> list[Any]:
    """Run a create's script and say, when it fails, whether it may have been stored.

    The connection is taken from the pool (connected, health-checked) before the script is sent:
    a failure there is an outage like any other (nothing sent, nothing stored). A connection
    lost once the script was sent raises :class:`CreateOutcomeUnknown`. A timeout is not
    "unknown": the script carries the request's deadline and writes nothing past it, which it
    answers with ``{-1}``. redis-py closes a connection whose send or read was interrupted
    (timeout, cancellation), so none goes back to the pool with a reply pending.
    """
    pool = client.connection_pool
    conn = await pool.get_connection()
    try:
        try:
            await conn.send_command("EVALSHA", script.sha, 0, *args)
            try:
                res: list[Any] = await conn.read_response()
            except redis.exceptions.NoScriptError:  # a restarted Redis: EVAL caches it again
                await conn.send_command("EVAL", script.script, 0, *args)
                res = await conn.read_response()
        except redis.exceptions.BusyLoadingError:
            raise
        except redis.exceptions.ConnectionError as exc:
            await conn.disconnect(nowait=True)
            raise CreateOutcomeUnknown() from exc
        except redis.exceptions.TimeoutError:
            await conn.disconnect(nowait=True)
            raise
    finally:
        await pool.release(conn)
    if res[0] == -1:
        raise Unavailable(
            "Redis did not run this create before its deadline, so it stored nothing.",
            details=[dict(NOT_STORED)],
        )
    return res


class Store:
    """All Redis access. One per process, built around an injected client."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        reg = redis.register_script
        self._create = reg(lua.PRELUDE + lua.CREATE_TASK)
        self._cancel = reg(lua.PRELUDE + lua.CANCEL_TASK)
        self._modify = reg(lua.PRELUDE + lua.MODIFY_TASK)
        self._claim = reg(lua.PRELUDE + lua.CLAIM)
        self._start = reg(lua.PRELUDE + lua.START)
        self._finish = reg(lua.PRELUDE + lua.FINISH)
        self._reap = reg(lua.PRELUDE + lua.REAP)
        self._release = reg(lua.PRELUDE + lua.RELEASE)
        self._renew = reg(lua.RENEW)
        self._done = reg(lua.PRELUDE + lua.DONE)
        self._purge = reg(lua.PRELUDE + lua.PURGE)

    # -- tasks, for the API ----------------------------------------------------------------

    async def create_task(
        self,
        owner: str,
        body: TaskCreate,
        *,
        idempotency_key: str | None = None,
        idempotency_kind: str = "tsk",
        orchestration_id: str = "",
        deadline_ms: int | None = None,
    ) -> tuple[Task, bool]:
        """Store a new task and enqueue its first attempt. Returns (task, created).

        ``deadline_ms`` (Unix ms): past it by Redis's clock nothing is written (503 not_stored).

        Idempotency keys are per owner and per ``idempotency_kind``: a task's key never meets an
        orchestration's (``orc``) or one the service uses itself. The answer comes from the
        script that stored the task, so a stored task is never answered with a 503.
        """
        now = now_ms()
        task_id = new_id("tsk")
        spec = _spec_json(body)
        idem = idempotency_redis_key(owner, idempotency_kind, idempotency_key)
        created, h, attempts = await run_create(
            self.redis,
            self._create,
            [
                task_id,
                owner,
                spec,
                body.name or "",
                due_ms(body.run_at, body.delay, now),
                now,
                idem,
                c.IDEMPOTENCY_TTL_S,
                orchestration_id,
                c.CLAIM_AHEAD_MS,
                "" if deadline_ms is None else deadline_ms,
            ],
        )
        return _task_view(from_flat(h), attempts), bool(created)

    async def get_task(self, owner: str, task_id: str) -> Task:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(c.TASK_KEY_PREFIX + task_id)
            pipe.lrange(c.TASK_KEY_PREFIX + task_id + ":attempts", 0, -1)
            h, attempts = await pipe.execute()
        if not h or h.get("owner") != owner:
            raise NotFound(f"No task {task_id!r} exists for this account.")
        return _task_view(h, attempts)

    async def list_tasks(
        self, owner: str, *, status: TaskStatus | None, limit: int, cursor: str | None
    ) -> TaskPage:
        ids, next_cursor = await page_ids(
            self.redis, owner, "tasks", status and status.value, limit=limit, cursor=cursor
        )
        async with self.redis.pipeline(transaction=False) as pipe:
            for tid in ids:
                pipe.hgetall(c.TASK_KEY_PREFIX + tid)
                pipe.lrange(c.TASK_KEY_PREFIX + tid + ":attempts", 0, -1)
            rows = await pipe.execute()
        items = [_task_view(h, a) for h, a in zip(rows[::2], rows[1::2], strict=True) if h]
        return TaskPage(items=items, next_cursor=next_cursor)

    async def cancel_task(self, owner: str, task_id: str) -> Task:
        res = await self._cancel(args=[task_id, owner, now_ms()])
        _raise_for(res, task_id, "cancelled")
        return _task_view(from_flat(res[1]), res[2])

    async def modify_task(self, owner: str, task_id: str, patch: TaskPatch) -> Task:
        """Apply ``patch``; the old version's job is removed in the same script that adds the new."""
        from taskorch.models import convert

        for _ in range(10):  # only a concurrent modify makes us read again
            h = await self.redis.hgetall(c.TASK_KEY_PREFIX + task_id)
            if not h or h.get("owner") != owner:
                raise NotFound(f"No task {task_id!r} exists for this account.")
            if h.get("orchestration_id"):
                _raise_for(["in_orchestration", h["orchestration_id"]], task_id, "modified")
            if h["status"] not in ("scheduled", "retrying"):
                raise Conflict(
                    f"The task is {h['status']}: only a scheduled or retrying task can be modified."
                )
            merged = msgspec.json.decode(h["spec"])
            changes = {
                f: v
                for f in patch.__struct_fields__
                if (v := getattr(patch, f)) is not msgspec.UNSET
            }
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
            name = h.get("name", "")
            if "name" in changes:
                name = changes["name"] or ""
            now = now_ms()
            due = int(h["run_at"])
            if changes.get("run_at") is not None or changes.get("delay") is not None:
                due = due_ms(changes.get("run_at"), changes.get("delay"), now)
            res = await self._modify(
                args=[task_id, owner, now, h["gen"], _spec_json(spec), name, due, c.CLAIM_AHEAD_MS]
            )
            if res[0] != "stale":
                _raise_for(res, task_id, "modified")
                return _task_view(from_flat(res[1]), res[2])
        raise Conflict("The task is being changed by another request; try again.")

    # -- the worker's side -----------------------------------------------------------------

    async def claim(
        self, *, worker: str, horizon_ms: int, lease_ms: int, limit: int
    ) -> list[Claimed]:
        rows = await self._claim(args=[horizon_ms, now_ms(), lease_ms, worker, limit])
        out = []
        for job, due, data, spec in rows:
            d = msgspec.json.decode(data)
            out.append(
                Claimed(
                    job=job,
                    due_ms=int(float(due)),
                    function=d["f"],
                    arg=d["a"][0],
                    spec=_spec_decoder.decode(spec) if spec else None,
                )
            )
        return out

    async def start(
        self, pairs: Sequence[tuple[str, str]], *, worker: str, lease_ms: int
    ) -> list[int]:
        """Compare-and-set each (task_id, job) to running; 0 where it was cancelled or changed.

        Safe to repeat: the same worker starting the same job again gets the same attempt
        number (what to do when the reply to the first was lost).
        """
        args: list[Any] = [now_ms(), worker, lease_ms]
        for task_id, job in pairs:
            args += [task_id, job]
        return [int(x) for x in await self._start(args=args)]

    async def finish(self, outcomes: Iterable[Sequence[Any]]) -> list[int]:
        """Record attempts' outcomes in one round trip; each row is FINISH's ARGV."""
        async with self.redis.pipeline(transaction=False) as pipe:
            n = 0
            for row in outcomes:
                await self._finish(args=list(row), client=pipe)
                n += 1
            if not n:
                return []
            return [int(x) for x in await pipe.execute()]

    async def reap(self, *, gap_ms: int, grace_ms: int, limit: int = 200) -> int:
        """Recover lapsed claims; -1 while reapers hold back after an outage (see lua.REAP)."""
        return int(await self._reap(args=[now_ms(), limit, c.MAX_LOST_ATTEMPTS, gap_ms, grace_ms]))

    async def renew(self, claims: Sequence[tuple[str, int]], *, expiry_ms: int) -> None:
        """Push the (job, due ms) claims this worker holds forward to ``expiry_ms`` after their
        due time or now (Redis's clock), whichever is later; lapsed ones are not revived."""
        if claims:
            args: list[Any] = [expiry_ms]
            for job, due in claims:
                args += [job, due]
            await self._renew(args=args)

    async def release(self, worker: str, jobs: Sequence[tuple[str, int]]) -> int:
        args: list[Any] = [worker]
        for job, due in jobs:
            args += [job, due]
        return int(await self._release(args=args))

    async def done(self, job: str, worker: str) -> None:
        await self._done(args=[job, worker, "done"])

    async def purge(self, *, older_than_ms: int, limit: int = 200) -> int:
        """Delete up to ``limit`` records that finished before ``older_than_ms``."""
        return int(await self._purge(args=[older_than_ms, limit]))

    async def heartbeat(self, worker: str) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(c.WORKERS_KEY, {worker: now_ms()})
            pipe.zremrangebyscore(c.WORKERS_KEY, "-inf", now_ms() - 60_000)
            await pipe.execute()


def idempotency_redis_key(owner: str, kind: str, key: str | None) -> str:
    """The Redis key of an owner's Idempotency-Key for one kind of record ('' for none)."""
    return f"{c.IDEMPOTENCY_KEY_PREFIX}{owner}:{kind}:{key}" if key else ""


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


def _spec_json(body: TaskSpec) -> str:
    spec = TaskSpec(**{f: getattr(body, f) for f in TaskSpec.__struct_fields__})
    return msgspec.json.encode(spec).decode()


def _raise_for(res: list[str], task_id: str, verb: str) -> None:
    if res[0] == "not_found":
        raise NotFound(f"No task {task_id!r} exists for this account.")
    if res[0] == "conflict":
        raise Conflict(f"The task is {res[1]}: only a scheduled or retrying task can be {verb}.")
    if res[0] == "in_orchestration":
        raise Conflict(
            f"The task is a step of orchestration {res[1]}: modify or cancel the orchestration."
        )


def _task_view(h: dict[str, str], attempts: list[str]) -> Task:
    spec = _spec_decoder.decode(h["spec"])
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
    )
