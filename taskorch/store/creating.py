"""Creating tasks: one or a batch, each in its partition, with its Idempotency-Key."""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Sequence
from typing import Any

import msgspec

from taskorch import constants as c
from taskorch import partitions
from taskorch.cluster import run_script
from taskorch.errors import NOT_STORED, CreateOutcomeUnknown, TaskorchError, Unavailable
from taskorch.models import Task, TaskCreate, due_ms, fmt_ms
from taskorch.partitions import Layout
from taskorch.store.base import StoreBase
from taskorch.store.connection import REDIS_DOWN, Redis, from_flat, now_ms
from taskorch.store.records import _created_view, _spec_parts, _task_view


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


class Creates(StoreBase):
    """Store's creates (the API's POST /v1/tasks and /v1/tasks/batch)."""

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
