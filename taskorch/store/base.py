"""What every part of the Store shares: the client, the scripts registered on it, the layout,
and reading records by id.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from taskorch import lua, partitions
from taskorch.cluster import run_many, run_script
from taskorch.models import Task
from taskorch.partitions import Layout
from taskorch.store.connection import Redis, from_flat
from taskorch.store.records import _task_view


class StoreBase:
    """The client and its scripts; the parts of :class:`taskorch.store.Store` build on it."""

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
        [(h, _)] = await self._run_at(task_id, self._view, [task_id])
        return from_flat(h) if h else None

    async def _run_at(self, task_id: str, script: Any, args: list[Any]) -> Any:
        """Run ``script`` in the partition ``task_id`` names (routed by its queue key)."""
        layout = await self.layout()
        q = layout.queue(layout.partition_of(task_id))
        return await run_script(self.redis, script, [q], args)
