"""Queues (issue #12): per-owner named queues with a dispatch rate, a concurrency cap and a pause.

Every task is in a queue: ``default`` unless it names another. ``default`` is unlimited and its
tasks spread over every partition as before. A named queue's tasks, its settings and its state
live in one partition (:meth:`taskorch.partitions.Layout.queue_partition`), so that the scripts
that claim, start and finish its tasks enforce its limits atomically, across every worker:

* **Claim** (``lua/claim.lua``): a due task of a limited queue (or one with tasks already waiting)
  is not claimed but joins the queue's line, ``qw:<owner>:<queue>``, scored by its due time.
  Then each queue whose turn has come admits its first waiting tasks, in due order: each at its
  dispatch slot (the next free one, ``1000 / rate`` ms after the last: a slot schedule, GCRA
  without a burst) and while fewer than ``max_concurrent`` of its tasks are admitted. An
  admitted task is claimed for its slot like any task and carries ``qa`` until its attempt ends.
* **Start** (``lua/start.lua``): an admitted task whose queue was paused since is put back in line,
  not called.
* **Finish, reap, cancel, modify**: the task's room goes back (``run`` down by one) and the next
  waiting task may be admitted at once (the workers are woken). A worker killed mid-call gives
  its room back when its lease lapses and the reaper takes the attempt for lost.

Nothing waits in a worker: the line is in Redis, so tasks keep their order across restarts, a
cancelled waiting task leaves it, and a pause holds everything not yet started. The attempt of a
task that waited records its lateness from its own due time, the wait included.

``default`` cannot be limited or paused (its tasks are spread over every partition, where no one
script sees them all): ``PUT /v1/queues/default`` answers 422, saying to use a named queue.
"""

from __future__ import annotations

from typing import Any

import msgspec

from taskorch import constants as c
from taskorch import lua, partitions
from taskorch.cluster import run_many, run_script
from taskorch.errors import NotFound, ValidationFailed
from taskorch.models import (
    QUEUE_NAME_MESSAGE,
    Queue,
    QueueList,
    QueueUpdate,
    TaskStatus,
    queue_name_ok,
)
from taskorch.store import Redis, now_ms

_STATUSES = [s.value for s in TaskStatus]
DEFAULT_IS_FIXED = (
    "the default queue cannot be limited or paused (its tasks are spread over every partition): "
    'give the tasks to limit a named queue, such as "queue": "emails"'
)


class _PutArgs(msgspec.Struct):
    """``queue_put.lua``'s ARGV, one map (its header names these keys, as BullMQ's scripts take
    theirs): ``set`` holds each setting to change as the text the queue's hash stores, ``lift``
    the settings to lift (null); a setting in neither keeps its value."""

    owner: str
    queue: str
    now: int
    set: dict[str, str]
    lift: list[str]
    statuses: list[str]


def _text(value: float | int | bool) -> str:
    """A setting as the queue's hash stores it: a flag as '1' or '0', a number as Python writes it."""
    if isinstance(value, bool):
        return "1" if value else "0"
    return repr(value)


def _put_args(owner: str, name: str, body: QueueUpdate) -> _PutArgs:
    """The ARGV map of setting ``body``'s fields: every field of the model is a setting, by its
    name (lib/queue.lua knows each by that name)."""
    given = {f: v for f, v in msgspec.structs.asdict(body).items() if v is not msgspec.UNSET}
    return _PutArgs(
        owner=owner,
        queue=name,
        now=now_ms(),
        set={f: _text(v) for f, v in given.items() if v is not None},
        lift=[f for f, v in given.items() if v is None],
        statuses=_STATUSES,
    )


def _view(name: str, row: list[Any]) -> Queue:
    """A queue from ``lib/queue.lua``'s queue_view: its settings by name (as stored: converted
    from their text), the counts by status, the tasks waiting."""
    settings, counts, waiting = row
    fields = dict(zip(settings[::2], settings[1::2], strict=True))
    return msgspec.convert(
        {
            **fields,
            "name": name,
            "waiting": waiting,
            "counts": dict(zip(_STATUSES, counts, strict=True)),
        },
        Queue,
        strict=False,
    )


class Queues:
    """An owner's queues, for the API, around the shared Redis client."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._lua = lua.Scripts(redis, "queue_get", "queue_put", "queue_list", "has_cmsgpack")
        self._msgpack: bool | None = None  # whether the server's Lua reads msgpack, once asked

    async def _encode(self, key: str, args: msgspec.Struct) -> bytes:
        """A script's ARGV map: msgpack, or JSON where the server's Lua has no cmsgpack
        (fakeredis, for ``taskorch dev``; asked once, of the node of ``key``)."""
        if self._msgpack is None:
            self._msgpack = await run_script(self.redis, self._lua.has_cmsgpack, [key], []) == 1
        return msgspec.msgpack.encode(args) if self._msgpack else msgspec.json.encode(args)

    async def put(self, owner: str, name: str, body: QueueUpdate) -> Queue:
        """Set a queue's limits (fields left out keep theirs); the queue exists from then on."""
        if not queue_name_ok(name):
            raise ValidationFailed(
                f"The queue name {QUEUE_NAME_MESSAGE}.",
                details=[{"field": "name", "message": QUEUE_NAME_MESSAGE}],
            )
        if name == c.DEFAULT_QUEUE:
            raise ValidationFailed(
                f"The {DEFAULT_IS_FIXED}.", details=[{"field": "name", "message": DEFAULT_IS_FIXED}]
            )
        layout = await partitions.load(self.redis)
        key = layout.queue(layout.queue_partition(owner, name))
        args = await self._encode(key, _put_args(owner, name, body))
        row = await run_script(self.redis, self._lua.queue_put, [key], [args])
        return _view(name, row)

    async def get(self, owner: str, name: str) -> Queue:
        """One queue: ``default`` always; a named one once it was set or a task named it."""
        if name == c.DEFAULT_QUEUE:
            return (await self.list(owner)).items[0]
        if not queue_name_ok(name):
            raise NotFound(f"No queue {name[:64]!r} exists for this account.")
        layout = await partitions.load(self.redis)
        row = await run_script(
            self.redis,
            self._lua.queue_get,
            [layout.queue(layout.queue_partition(owner, name))],
            [owner, name, *_STATUSES],
        )
        if not row:
            raise NotFound(f"No queue {name!r} exists for this account.")
        return _view(name, row)

    async def list(self, owner: str) -> QueueList:
        """Every queue of the owner: ``default`` first (its counts are every task's but those
        of named queues), then the named ones by name."""
        layout = await partitions.load(self.redis)
        rows = await run_many(
            self.redis,
            self._lua.queue_list,
            [([layout.queue(p)], [owner, *_STATUSES]) for p in range(layout.n)],
        )
        totals = [0] * len(_STATUSES)
        named: list[Queue] = []
        for part_totals, queues, _ in rows:
            totals = [a + int(b) for a, b in zip(totals, part_totals, strict=True)]
            named += [_view(name, row) for name, row in queues]
        named.sort(key=lambda q: q.name)
        for q in named:
            totals = [t - q.counts[s] for t, s in zip(totals, _STATUSES, strict=True)]
        default = _view(c.DEFAULT_QUEUE, [rows[0][2], totals, 0])  # unlimited, never paused
        return QueueList(items=[default, *named])
