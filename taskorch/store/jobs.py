"""The worker's side: claim, start, finish, renew, release, reap, done, purge, heartbeat, and
recording a callback delivery.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgspec

from taskorch import constants as c
from taskorch.cluster import run_many, run_script
from taskorch.models import TaskSpec
from taskorch.store.base import StoreBase
from taskorch.store.connection import now_ms
from taskorch.store.records import decode_spec


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
    orc: str = ""  # an orchestration's task: its orchestration (its step's output is kept)


class WorkerCalls(StoreBase):
    """Store's calls for the worker (jobs by id, one script per partition)."""

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
                        orc=more[3] if len(more) > 3 else "",
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
        res = await self._run_at(
            task_id,
            self._callback_done,
            [task_id, job, attempt, now_ms(), next_job, next_arg, next_due_ms, c.CLAIM_AHEAD_MS],
        )
        return bool(res)
