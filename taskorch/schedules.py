"""Recurring schedules: the API's records and the makers that turn them into tasks.

A schedule lives in one partition (its task's named queue's, else one at random) and its
occurrences are ordinary tasks made in that same partition, a little ahead of their time
(``SCHEDULE_AHEAD_MS``), so that they are claimed and fired like any task: to the millisecond,
surviving a worker's death or a Redis restart the same way. Every worker runs a maker
(:meth:`Schedules.make_due`, about once a second): it reads the schedules whose next occurrences
are due to be made, computes their times here (:mod:`taskorch.cron`) and hands them to one script
together with the version of the schedule it read. The script makes them only if the schedule
is still at that version, and moves the version on: however many makers look at once, each
occurrence is made once, and while any worker lives none is missed.

When every worker was down (the partition's makers' round was not run for ``SCHEDULE_LATE_MS``
and no maker vouches that it was alive meanwhile: see lua/sched_due.lua), the times missed meanwhile
follow the schedule's ``catch_up``: ``one`` runs the latest of them late, then the grid goes on;
``none`` runs none; ``all`` runs each (at most ``SCHEDULE_CATCH_UP_MAX``, the latest).
Occurrences made before the downtime count as missed times too: ``none`` and ``one`` cancel the
ones they do not run. A Redis outage while workers live is no downtime: the times it held are
made when Redis is back and run late, each once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import msgspec
import structlog

from taskorch import constants as c
from taskorch import lua, partitions
from taskorch.cluster import run_many, run_script
from taskorch.cron import Rule, zone
from taskorch.errors import Conflict, NotFound
from taskorch.models import (
    Schedule,
    ScheduleCreate,
    SchedulePage,
    SchedulePatch,
    ScheduleStatus,
    ScheduleTask,
    TaskPage,
    TaskSpec,
    TaskStatus,
    fmt_ms,
)
from taskorch.partitions import Layout
from taskorch.store.connection import REDIS_DOWN, Redis, from_flat, now_ms
from taskorch.store.creating import idempotency_redis_key
from taskorch.store.listing import list_ids
from taskorch.store.records import _spec_parts, _task_view

log = structlog.get_logger("taskorch.schedules")
_enc = msgspec.json.Encoder()
_task_dec = msgspec.json.Decoder(ScheduleTask)
# The last millisecond the API can write (9999-12-31T23:59:59.999Z): "no end".
FOREVER_MS = 253402300799999


def _ms(value: Any) -> int:
    return round(float(value.timestamp()) * 1000)


def _bound(ms: int) -> str:
    """The id prefix below which lie the occurrences due at or before ``ms - 1``."""
    return f"tsk_{ms:012x}"


def rule_of(h: dict[str, str]) -> Rule:
    """When a stored schedule runs."""
    return Rule(
        cron=h.get("cron") or None,
        every_ms=int(h["ev"]) if h.get("ev") else None,
        tz=zone(h.get("tz", "UTC")) or zone("UTC"),  # type: ignore[arg-type]
        start_ms=int(h["sa"]),
        end_ms=int(h["ea"]) if h.get("ea") else None,
    )


def _view(sid: str, h: dict[str, str], last: str, now: int) -> Schedule:
    status = ScheduleStatus(h["s"])
    rule = rule_of(h)
    runs = rule.after(now - 1, FOREVER_MS, c.NEXT_RUNS) if status is ScheduleStatus.active else []
    return Schedule(
        id=sid,
        name=h.get("n") or None,
        status=status,
        cron=rule.cron,
        every=rule.every_ms / 1000 if rule.every_ms is not None else None,
        timezone=h.get("tz", "UTC"),
        task=_task_dec.decode(h["task"]),
        start_at=fmt_ms(rule.start_ms) or "",
        end_at=fmt_ms(rule.end_ms),
        catch_up=h.get("cu", "one"),  # type: ignore[arg-type]
        next_runs=[fmt_ms(t) or "" for t in runs],
        last_task_id=last or None,
        created_at=fmt_ms(int(h["c"])) or "",
        updated_at=fmt_ms(int(h["u"])) or "",
    )


def _fields(
    *,
    name: str | None,
    cron: str | None,
    every: float | None,
    timezone: str,
    task: ScheduleTask,
    start_ms: int,
    end_ms: int | None,
    catch_up: str,
) -> list[Any]:
    """A schedule's definition as its hash keeps it (field, value, ...)."""
    return [
        "n", name or "",
        "cron", cron or "",
        "ev", round(every * 1000) if every is not None else "",
        "tz", timezone,
        "task", _enc.encode(task).decode(),
        "sa", start_ms,
        "ea", "" if end_ms is None else end_ms,
        "cu", catch_up,
    ]  # fmt: skip


class Schedules:
    """Schedules for the API and the workers' makers, around the shared Redis client."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._lua = lua.Scripts(
            redis,
            "sched_create",
            "sched_view",
            "sched_change",
            "sched_due",
            "sched_make",
            "sched_task_ids",
            "list_ids",
            "view_tasks",
        )
        self._soon: set[asyncio.Task[None]] = set()
        self._rounds: dict[int, int] = {}  # partition -> this maker's last round there (Redis ms)
        self._tried: float | None = None  # when this maker's last round ended, ok or not

    async def _keys(self, sid: str) -> tuple[Layout, int, list[str]]:
        """A schedule's layout, partition and the keys its scripts name: queue, record, sz."""
        layout = await partitions.load(self.redis)
        p = layout.partition_of(sid)
        pre = layout.prefixes[p]
        return layout, p, [layout.queue(p), pre + c.SCHEDULE + sid, pre + c.SCHEDULES_DUE]

    # -- the API's side ----------------------------------------------------------------------

    async def create(
        self, owner: str, body: ScheduleCreate, *, idempotency_key: str | None = None
    ) -> tuple[Schedule, bool]:
        """Store a schedule; its first occurrences are made at once (and by the workers).
        Returns (schedule, created): with an Idempotency-Key used before (24 h, per owner), the
        schedule created under it and False."""
        now = now_ms()
        layout = await partitions.load(self.redis)
        queue = getattr(body.task, "queue", "default")
        # A named queue's partition: a repeat carries the same body, so finds its key there.
        p = (
            layout.queue_partition(owner, queue)
            if queue != "default"
            else layout.pick(owner, idempotency_key)
        )
        sid = partitions.id_at("sch", p, layout.n, now)
        start = _ms(body.start_at) if body.start_at else now
        end = _ms(body.end_at) if body.end_at else None
        fields = _fields(
            name=body.name,
            cron=body.cron,
            every=body.every,
            timezone=body.timezone,
            task=body.task,
            start_ms=start,
            end_ms=end,
            catch_up=body.catch_up,
        )
        _, _, keys = await self._keys(sid)
        # An end_at already past, or before the first run, leaves nothing to run: ended at once.
        over = end is not None and (end < start or end <= now)
        status = ScheduleStatus.ended if over else ScheduleStatus.active
        idem = idempotency_redis_key(layout.prefixes[p], owner, "sch", idempotency_key)
        created, got, (h, last) = await run_script(
            self.redis,
            self._lua.sched_create,
            keys,
            [sid, owner, now, _bound(now + 1), status, idem, c.IDEMPOTENCY_TTL_S, *fields],
        )
        view = from_flat(h)
        if created and not over:
            self._make_soon(layout, p, sid, view)
        return _view(got, view, last, now), bool(created)

    async def get(self, owner: str, sid: str) -> Schedule:
        h, last = await self._read(sid)
        if not h or h.get("o") != owner:
            raise NotFound(f"No schedule {sid!r} exists for this account.")
        return _view(sid, h, last, now_ms())

    async def _read(self, sid: str) -> tuple[dict[str, str], str]:
        _, _, keys = await self._keys(sid)
        [(h, last)] = await run_script(
            self.redis, self._lua.sched_view, keys[:1], [_bound(now_ms() + 1), sid]
        )
        return from_flat(h), last

    async def list_page(
        self, owner: str, *, status: ScheduleStatus | None, limit: int, cursor: str | None
    ) -> SchedulePage:
        layout = await partitions.load(self.redis)
        statuses = [status.value] if status else [s.value for s in ScheduleStatus]
        ids, next_cursor = await list_ids(
            self.redis,
            layout,
            self._lua.list_ids,
            f"{c.SCHEDULE_INDEX}{owner}:",
            statuses,
            limit=limit,
            cursor=cursor,
        )
        now = now_ms()
        groups: dict[int, list[str]] = {}
        for sid in ids:
            groups.setdefault(layout.partition_of(sid), []).append(sid)
        rows = await run_many(
            self.redis,
            self._lua.sched_view,
            [([layout.queue(p)], [_bound(now + 1), *g]) for p, g in groups.items()],
        )
        views: dict[str, Schedule] = {}
        for g, row in zip(groups.values(), rows, strict=True):
            for sid, (h, last) in zip(g, row, strict=True):
                if h:
                    views[sid] = _view(sid, from_flat(h), last, now)
        return SchedulePage(items=[views[i] for i in ids if i in views], next_cursor=next_cursor)

    async def modify(self, owner: str, sid: str, patch: SchedulePatch) -> Schedule:
        """Change a schedule; the occurrences made for its old definition and not yet due are
        cancelled, and the new one is made from now on."""
        for _ in range(10):  # only a concurrent change (or a maker) makes us read again
            h, _ = await self._read(sid)
            if not h or h.get("o") != owner:
                raise NotFound(f"No schedule {sid!r} exists for this account.")
            if h["s"] == ScheduleStatus.ended:
                raise Conflict("The schedule is ended: it can no longer be changed.")
            fields = self._merged(h, patch)
            res = await self._run_change("patch", owner, sid, h["v"], fields)
            if res is not None:
                return res
        raise Conflict("The schedule is being changed by another request; try again.")

    def _merged(self, h: dict[str, str], patch: SchedulePatch) -> list[Any]:
        old = _view(sid="", h=h, last="", now=0)
        given = {
            f: v for f in patch.__struct_fields__ if (v := getattr(patch, f)) is not msgspec.UNSET
        }
        cron, every = old.cron, old.every
        if "cron" in given:
            cron, every = given["cron"], None
        if "every" in given:
            cron, every = None, given["every"]
        if "task" in given and given["task"].queue != old.task.queue:
            raise Conflict(
                f"The schedule's tasks go through queue {old.task.queue!r}, and a schedule cannot "
                f"move to queue {given['task'].queue!r}: delete it and create a new one."
            )
        start_ms = _ms(given["start_at"]) if "start_at" in given else int(h["sa"])
        end = given.get("end_at", msgspec.UNSET)
        end_ms = old_end(h) if end is msgspec.UNSET else (None if end is None else _ms(end))
        return _fields(
            name=given["name"] if "name" in given else old.name,
            cron=cron,
            every=every,
            timezone=given.get("timezone", old.timezone),
            task=given.get("task", old.task),
            start_ms=start_ms,
            end_ms=end_ms,
            catch_up=given.get("catch_up", old.catch_up),
        )

    async def pause(self, owner: str, sid: str) -> Schedule:
        """Stop making occurrences and cancel those made but not started."""
        return await self._change_or_raise("pause", owner, sid)

    async def resume(self, owner: str, sid: str) -> Schedule:
        """Make occurrences again from now on (what fell in the pause is not caught up)."""
        return await self._change_or_raise("resume", owner, sid)

    async def delete(self, owner: str, sid: str) -> None:
        """Remove a schedule and cancel the occurrences made but not started."""
        await self._change("delete", owner, sid, "", [])

    async def _change_or_raise(self, op: str, owner: str, sid: str) -> Schedule:
        res = await self._run_change(op, owner, sid, "", [])
        assert res is not None  # no expected version: never stale
        return res

    async def _change(
        self, op: str, owner: str, sid: str, version: str, fields: list[Any]
    ) -> tuple[Layout, int, int, list[Any]]:
        """Run sched_change.lua's ``op`` on a schedule of ``owner``'s: its layout, partition, the
        time it ran with, and the script's answer (NotFound when there is no such schedule)."""
        layout, p, keys = await self._keys(sid)
        now = now_ms()
        args = [op, sid, owner, now, _bound(now + 1), version, *fields]
        res = await run_script(self.redis, self._lua.sched_change, keys, args)
        if res[0] == "not_found":
            raise NotFound(f"No schedule {sid!r} exists for this account.")
        return layout, p, now, res

    async def _run_change(
        self, op: str, owner: str, sid: str, version: str, fields: list[Any]
    ) -> Schedule | None:
        layout, p, now, res = await self._change(op, owner, sid, version, fields)
        if res[0] == "stale":
            return None
        if res[0] == "conflict":
            raise Conflict(f"The schedule is {res[1]}: it can no longer be changed.")
        h, last = res[1]
        view = from_flat(h)
        if view["s"] == ScheduleStatus.active:
            self._make_soon(layout, p, sid, view)
        return _view(sid, view, last, now)

    async def tasks(
        self,
        owner: str,
        sid: str,
        *,
        status: TaskStatus | None,
        limit: int,
        cursor: str | None,
        name: str | None = None,
    ) -> TaskPage:
        """``GET /v1/tasks?schedule_id=``: the tasks a schedule made, newest first (of
        ``status`` and named ``name...`` when given: a scan of LIST_SCAN_BUDGET a request)."""
        _, _, keys = await self._keys(sid)
        ids, stopped = await run_script(
            self.redis,
            self._lua.sched_task_ids,
            keys[:1],
            [
                owner,
                sid,
                cursor or "",
                limit,
                status.value if status else "",
                c.LIST_SCAN_BUDGET,
                name or "",
            ],
        )
        more = len(ids) > limit
        ids = ids[:limit]
        rows = await run_script(self.redis, self._lua.view_tasks, keys[:1], ids) if ids else []
        items = [_task_view(from_flat(h), a) for h, a in rows if h]
        next_cursor = ids[-1] if more and ids else (stopped or None)
        return TaskPage(items=items, next_cursor=next_cursor)

    def _make_soon(self, layout: Layout, p: int, sid: str, h: dict[str, str]) -> None:
        """Make the first occurrences now, beside the request (a worker's maker would within
        a second): a schedule whose first time is a second away still fires on time."""

        async def make() -> None:
            try:
                await self.make(layout, p, sid, h, downtime=None)
            except (TimeoutError, *REDIS_DOWN) as exc:
                log.warning("schedule.make_deferred", schedule_id=sid, error=str(exc))

        t = asyncio.ensure_future(make())
        self._soon.add(t)
        t.add_done_callback(self._soon.discard)

    async def close(self) -> None:
        """Wait for the makes started beside requests (at shutdown)."""
        if self._soon:
            await asyncio.gather(*self._soon, return_exceptions=True)

    # -- the makers (every worker) -----------------------------------------------------------

    async def make_due(self, *, now: int | None = None) -> int:
        """One makers' round over every partition (at ``now``, which tests name); how many
        occurrences it made."""
        layout = await partitions.load(self.redis)
        now = now_ms() if now is None else now
        # Whether this maker can vouch that it was alive through any gap since its last round
        # here: it has tried every SCHEDULE_MAKE_EVERY_S since (a Redis outage fails the tries,
        # it does not stop them). A pause of its own (a stopped process) vouches for nothing.
        began = time.monotonic()
        if self._tried is None or began - self._tried > c.SCHEDULE_LATE_MS / 1000:
            self._rounds.clear()
        try:
            rows = await run_many(
                self.redis,
                self._lua.sched_due,
                [
                    ([layout.queue(p)], [now, c.SCHEDULE_DUE_BATCH, self._rounds.get(p, "")])
                    for p in range(layout.n)
                ],
            )
        finally:
            self._tried = time.monotonic()
        jobs, sids = [], []
        for p, (down, items, at, cut_ago, from_ago) in enumerate(rows):
            self._rounds[p] = int(at)
            downtime = (now - int(cut_ago), now - int(from_ago)) if int(down) else None
            for sid, flat in items:
                jobs.append(self.make(layout, p, sid, from_flat(flat), downtime=downtime, now=now))
                sids.append(sid)
        made = await asyncio.gather(*jobs, return_exceptions=True)
        for sid, got in zip(sids, made, strict=True):
            if isinstance(got, REDIS_DOWN):
                raise got
            if isinstance(got, BaseException):  # one bad schedule must not stop the others
                log.error("schedule.make_failed", schedule_id=sid, error=repr(got))
        return sum(n for n in made if isinstance(n, int) and n > 0)

    async def make(
        self,
        layout: Layout,
        p: int,
        sid: str,
        h: dict[str, str],
        *,
        downtime: tuple[int, int] | None,
        now: int | None = None,
    ) -> int:
        """Make the occurrences of schedule ``sid`` (its hash ``h`` as read) up to
        SCHEDULE_AHEAD_MS from ``now`` (tests name a time); -1 when another maker or a change
        came first.

        ``downtime`` is (missed cut-off, the last round before it), Redis ms, when every worker
        was down (lua/sched_due.lua): what was due before the cut-off follows ``catch_up``. Without
        it nothing is caught up: times a maker alive all along could not make (Redis was out of
        reach) are made now, each due at its own time, and run late."""
        if h.get("s") != ScheduleStatus.active:
            return -1
        now = now_ms() if now is None else now
        rule = rule_of(h)
        made_until = int(h["mu"])
        catch: list[Any] = ["", "", 0, 0]
        missed: list[int] = []
        since = made_until
        cut = now - c.SCHEDULE_LATE_MS
        if downtime is not None:
            cut = downtime[0]
            mode = h.get("cu", "one")
            if made_until < cut:
                if mode == "one":
                    missed = rule.before(cut, made_until, 1)
                elif mode == "all":
                    missed = rule.before(cut, made_until, c.SCHEDULE_CATCH_UP_MAX)[::-1]
                since = cut
            catch = [cut, mode, len(missed), downtime[1]]
        times = rule.after(since, now + c.SCHEDULE_AHEAD_MS, c.SCHEDULE_MAKE_BATCH)
        full = len(times) == c.SCHEDULE_MAKE_BATCH
        until = times[-1] if full else now + c.SCHEDULE_AHEAD_MS
        look = self._next_look(rule, now, until, times, full)
        task = _task_dec.decode(h["task"])
        url, rest = _spec_parts(
            TaskSpec(**{f: getattr(task, f) for f in TaskSpec.__struct_fields__})
        )
        name = task.name or h.get("n", "")
        queue = "" if task.queue == c.DEFAULT_QUEUE else task.queue
        occurrences: list[Any] = []
        # A missed time's task is made now, due at its own time (it fires at once and its
        # lateness says how late); an id carries its due time, so ids sort in run order.
        for i, t in enumerate(missed):
            tid = partitions.id_at("tsk", p, layout.n, cut - len(missed) + i)
            occurrences += [tid, t, url, rest, name]
        for t in times:
            occurrences += [partitions.id_at("tsk", p, layout.n, t), t, url, rest, name]
        pre = layout.prefixes[p]
        n = await run_script(
            self.redis,
            self._lua.sched_make,
            [layout.queue(p), pre + c.SCHEDULE + sid, pre + c.SCHEDULES_DUE],
            [sid, h["v"], now, until, look, c.CLAIM_AHEAD_MS, *catch, queue, *occurrences],
        )
        if n > 0 or look == "":
            log.info(
                "schedule.made",
                schedule_id=sid,
                tasks=n,
                caught_up=len(missed),
                ended=look == "",
            )
        return int(n)

    @staticmethod
    def _next_look(rule: Rule, now: int, until: int, times: Sequence[int], full: bool) -> Any:
        """When a maker should look at the schedule again ('' once it has ended): when its next
        time is half the lead away, and soon after its first new occurrence was due (so that,
        if every worker goes down meanwhile, the first maker back sees what was missed)."""
        if full:
            return now
        nxt = rule.next_after(until)
        if nxt is None:
            if rule.end_ms is not None and now < rule.end_ms:
                return rule.end_ms
            return ""
        look = nxt - c.SCHEDULE_AHEAD_MS // 2
        if times:
            look = min(look, times[0] + c.SCHEDULE_LATE_MS)
        return max(now, look)


def old_end(h: dict[str, str]) -> int | None:
    return int(h["ea"]) if h.get("ea") else None
