"""User functions: a record in Redis, a build (local sandbox or AWS Lambda), and a trigger URL.

Functions are a neighbour of tasks, not a layer: once ready, a function is just a URL that tasks
(and anyone holding the URL) can call. The trigger URL carries an unguessable key, like a Lambda
function URL without IAM auth.

Builds run in the API process as background tasks. The set ``fn-building`` lists every build not
yet finished, and each API process resumes those at start, so a crash mid-build does not leave a
function ``building`` for ever. Local builds are per host: an API process that is asked to call a
function it has not built (another replica built it, or this one restarted) builds it from the
source kept in Redis first.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from typing import Any

import msgspec
import structlog

from taskorch import constants as c
from taskorch.errors import NotFound, TooManyRequests, ValidationFailed
from taskorch.functions.errors import AWS_EXTRA_MISSING, FunctionBusy
from taskorch.models import (
    Function,
    FunctionCode,
    FunctionCreate,
    FunctionPage,
    FunctionSchedule,
    FunctionStatus,
    TaskCreate,
    fmt_ms,
)
from taskorch.store import Redis, Store, new_id, now_ms, page_ids

log = structlog.get_logger("taskorch.functions")
_enc = msgspec.json.Encoder()
_schedule_dec = msgspec.json.Decoder(FunctionSchedule)

# Only one build of a function at a time in this process (a resume and a lazy build may race).
_build_locks: dict[str, asyncio.Lock] = {}


class Functions:
    """Functions for the API.

    Args:
        redis: the shared client.
        store: the task store, for schedule-on-create.
        public_url: base of trigger URLs.
        default_provider: ``local`` or ``aws``.
        runtime: the local sandboxed runtime (:class:`LocalRuntime`), None when the host
            cannot sandbox functions.
        aws: the Lambda provider, or None when AWS is not configured.
    """

    def __init__(
        self,
        redis: Redis,
        store: Store,
        *,
        public_url: str,
        default_provider: str,
        runtime: Any,
        aws: Any | None,
    ) -> None:
        self.redis = redis
        self.store = store
        self.public_url = public_url.rstrip("/")
        self.default_provider = default_provider
        self.runtime = runtime
        self.aws = aws
        self._tasks: set[asyncio.Task[None]] = set()
        # Builds running in this process: a resume at start must not build a second time what
        # a create made a moment later (two deploys, two URLs).
        self._active: set[str] = set()

    # -- API -------------------------------------------------------------------------------

    async def create(self, owner: str, body: FunctionCreate) -> Function:
        provider = body.provider or self.default_provider
        if provider == "aws" and self.aws is None:
            message = "the aws provider is not configured: set TASKORCH_AWS_REGION and TASKORCH_AWS_LAMBDA_ROLE"
            if not _boto3_installed():
                message = f"the aws provider {AWS_EXTRA_MISSING} (not installed on this API)"
            raise ValidationFailed(
                f"provider: {message}.", details=[{"field": "provider", "message": message}]
            )
        if provider == "local" and self.runtime is None:
            message = "local functions are unavailable: this host cannot sandbox them"
            raise ValidationFailed(
                f"provider: {message}.", details=[{"field": "provider", "message": message}]
            )
        fid = new_id("fn")
        handler = body.handler or "handler"
        record = {
            "id": fid,
            "owner": owner,
            "name": body.name,
            "runtime": body.runtime,
            "handler": handler,
            "provider": provider,
            "status": FunctionStatus.building.value,
            "code": body.code,
            "requirements": body.requirements or "",
            "schedule": _enc.encode(body.schedule).decode() if body.schedule else "",
            "key": secrets.token_urlsafe(24),
            "created_at": now_ms(),
            "url": "",
            "error": "",
            "task_id": "",
        }
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(c.FUNCTION_KEY_PREFIX + fid, mapping=record)
            pipe.zadd(f"{c.OWNER_KEY_PREFIX}{owner}:functions", {fid: 0})
            pipe.sadd(c.FUNCTION_BUILDING_KEY, fid)
            await pipe.execute()
        await self._publish(owner, fid, "building")
        self._spawn_build(fid)
        log.info(
            "function.created",
            function_id=fid,
            owner=owner,
            runtime=body.runtime,
            provider=provider,
        )
        return await self.get(owner, fid)

    async def get(self, owner: str, fid: str) -> Function:
        h = await self.redis.hgetall(c.FUNCTION_KEY_PREFIX + fid)
        if not h or h.get("owner") != owner:
            raise NotFound(f"No function {fid!r} exists for this account.")
        return self._view(h)

    async def code(self, owner: str, fid: str) -> FunctionCode:
        """The source and requirements as uploaded (what the build used)."""
        h = await self.redis.hgetall(c.FUNCTION_KEY_PREFIX + fid)
        if not h or h.get("owner") != owner:
            raise NotFound(f"No function {fid!r} exists for this account.")
        return FunctionCode(
            id=h["id"],
            runtime=h["runtime"],
            handler=h["handler"],
            code=h["code"],
            requirements=h.get("requirements") or None,
        )

    async def list(self, owner: str, *, limit: int, cursor: str | None) -> FunctionPage:
        ids, next_cursor = await page_ids(
            self.redis, owner, "functions", None, limit=limit, cursor=cursor
        )
        async with self.redis.pipeline(transaction=False) as pipe:
            for fid in ids:
                pipe.hgetall(c.FUNCTION_KEY_PREFIX + fid)
            rows = await pipe.execute()
        return FunctionPage(items=[self._view(h) for h in rows if h], next_cursor=next_cursor)

    async def delete(self, owner: str, fid: str) -> None:
        h = await self.redis.hgetall(c.FUNCTION_KEY_PREFIX + fid)
        if not h or h.get("owner") != owner:
            raise NotFound(f"No function {fid!r} exists for this account.")
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(c.FUNCTION_KEY_PREFIX + fid)
            pipe.zrem(f"{c.OWNER_KEY_PREFIX}{owner}:functions", fid)
            pipe.srem(c.FUNCTION_BUILDING_KEY, fid)
            await pipe.execute()
        if h.get("task_id"):
            try:
                await self.store.cancel_task(owner, h["task_id"])
            except Exception:  # already fired or finished: nothing to stop
                pass
        if h["provider"] == "aws" and self.aws is not None:
            await self.aws.remove(fid)
        elif self.runtime is not None:
            try:
                await self.runtime.remove(fid)
            except Exception:  # the record is gone; what is left on disk is logged, not answered
                log.exception("function.remove_failed", function_id=fid)
        await self._publish(owner, fid, "deleted")
        log.info("function.deleted", function_id=fid, owner=owner)

    async def invoke(self, fid: str, key: str, event: object) -> object:
        """Call a ready local function through its trigger; wrong id or key is NotFound.

        Every instance busy and its waiting calls at their bound: 429 `function_busy` with
        Retry-After (TooManyRequests), as AWS Lambda throttles.
        """
        h = await self.redis.hgetall(c.FUNCTION_KEY_PREFIX + fid)
        if not h or not hmac.compare_digest(h.get("key", "").encode(), key.encode()):
            raise NotFound("No function answers at this URL.")
        if (
            h["status"] != FunctionStatus.ready.value
            or h["provider"] != "local"
            or self.runtime is None
        ):
            from taskorch.errors import Conflict

            raise Conflict(f"The function is {h['status']}: it can be called once it is ready.")
        try:
            try:
                return await self.runtime.invoke(fid, event)
            except KeyError:
                # Built by another API process, or before this one restarted: build it here first.
                await self._build_local(fid, h)
                return await self.runtime.invoke(fid, event)
        except FunctionBusy as exc:
            raise TooManyRequests(
                exc.message, retry_after_s=exc.retry_after_s, code="function_busy"
            ) from None

    # -- builds ----------------------------------------------------------------------------

    def resume(self) -> None:
        """Restart builds that a previous process left unfinished."""

        async def go() -> None:
            for fid in await self.redis.smembers(c.FUNCTION_BUILDING_KEY):
                log.info("function.build_resumed", function_id=fid)
                await self._build(fid)

        self._track(asyncio.ensure_future(go()))

    def _spawn_build(self, fid: str) -> None:
        self._track(asyncio.ensure_future(self._build(fid)))

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _build(self, fid: str) -> None:
        if fid in self._active:
            return
        self._active.add(fid)
        try:
            await self._build_once(fid)
        finally:
            self._active.discard(fid)

    async def _build_once(self, fid: str) -> None:
        h = await self.redis.hgetall(c.FUNCTION_KEY_PREFIX + fid)
        if not h or h["status"] != FunctionStatus.building.value:
            await self.redis.srem(c.FUNCTION_BUILDING_KEY, fid)
            return
        started = now_ms()
        try:
            if h["provider"] == "aws":
                if self.aws is None:
                    raise RuntimeError("the aws provider is not configured on this API process")
                url = await self.aws.deploy(
                    fid,
                    runtime=h["runtime"],
                    code=h["code"],
                    handler=h["handler"],
                    requirements=h["requirements"] or None,
                )
            else:
                await self._build_local(fid, h)
                url = f"{self.public_url}/fn/{fid}/{h['key']}"
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            await self._finish(h, status=FunctionStatus.failed, error=message)
            log.warning("function.build_failed", function_id=fid, error=message[:500])
            return
        task_id = ""
        if h["schedule"]:
            task_id = await self._schedule(h, url)
        await self._finish(h, status=FunctionStatus.ready, url=url, task_id=task_id)
        log.info(
            "function.ready", function_id=fid, build_ms=now_ms() - started, task_id=task_id or None
        )

    async def _build_local(self, fid: str, h: dict[str, str]) -> None:
        if self.runtime is None:
            raise RuntimeError("local functions are unavailable: this host cannot sandbox them")
        lock = _build_locks.setdefault(fid, asyncio.Lock())
        async with lock:
            await self.runtime.build(
                fid,
                runtime=h["runtime"],
                code=h["code"],
                handler=h["handler"],
                requirements=h["requirements"] or None,
            )

    async def _schedule(self, h: dict[str, str], url: str) -> str:
        sched = _schedule_dec.decode(h["schedule"])
        fields = {f: getattr(sched, f) for f in FunctionSchedule.__struct_fields__}
        body = TaskCreate(url=url, **fields)
        # The idempotency key makes a resumed build schedule the same task, not a second one. It
        # is derived from the trigger key, which the owner learns only once the function is
        # ready, so no one can claim it first with an Idempotency-Key of their own.
        digest = hashlib.sha256(f"schedule:{h['key']}".encode()).hexdigest()
        task, _ = await self.store.create_task(
            h["owner"], body, idempotency_key=f"function:{h['id']}:{digest}"
        )
        return task.id

    async def _finish(
        self,
        h: dict[str, str],
        *,
        status: FunctionStatus,
        url: str = "",
        error: str = "",
        task_id: str = "",
    ) -> None:
        key = c.FUNCTION_KEY_PREFIX + h["id"]
        if not await self.redis.exists(key):  # deleted while building
            await self.redis.srem(c.FUNCTION_BUILDING_KEY, h["id"])
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                key,
                mapping={"status": status.value, "url": url, "error": error, "task_id": task_id},
            )
            pipe.srem(c.FUNCTION_BUILDING_KEY, h["id"])
            await pipe.execute()
        await self._publish(h["owner"], h["id"], status.value)

    async def _publish(self, owner: str, fid: str, status: str) -> None:
        event = _enc.encode({"type": "function", "id": fid, "status": status})
        await self.redis.publish(c.EVENTS_CHANNEL_PREFIX + owner, event)

    @staticmethod
    def _view(h: dict[str, str]) -> Function:
        return Function(
            id=h["id"],
            name=h["name"],
            runtime=h["runtime"],
            handler=h["handler"],
            provider=h["provider"],
            status=FunctionStatus(h["status"]),
            url=h.get("url") or None,
            error=h.get("error") or None,
            task_id=h.get("task_id") or None,
            created_at=fmt_ms(int(h["created_at"])) or "",
        )


def _boto3_installed() -> bool:
    """Whether the ``aws`` extra is here (imported only when a function asks for AWS)."""
    try:
        import boto3  # noqa: F401
    except ImportError:
        return False
    return True
