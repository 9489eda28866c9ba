"""Listing: newest-first pages of an owner's ids, merged over partitions, and the task list."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from taskorch import constants as c
from taskorch.cluster import run_many, run_script
from taskorch.models import TaskPage, TaskStatus
from taskorch.partitions import Layout
from taskorch.store.base import StoreBase
from taskorch.store.connection import Redis


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


class Listing(StoreBase):
    """Store's task list (GET /v1/tasks)."""

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
        only_default = "1" if default_only else ""
        for _ in range(c.LIST_SCAN_ROUNDS):
            each = max(1, left // len(todo))
            calls = [
                ([layout.queue(p)], [index, below, limit, name, only_default, each, *statuses])
                for p, below in todo.items()
            ]
            rows = await run_many(self.redis, self._list_scan, calls)
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
