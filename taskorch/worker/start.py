"""Starting: the compare-and-set of every task due now to ``running``, a batch per round trip,
all sent at once; what START skips or gives up is handed back.
"""

from __future__ import annotations

import asyncio
import functools
import heapq

import structlog

from taskorch import constants as c
from taskorch.store import Claimed, until_reachable
from taskorch.worker.calls import _host
from taskorch.worker.state import WorkerState

log = structlog.get_logger("taskorch.worker")


class Starting(WorkerState):
    """Starts due tasks (lua/start.lua) and queues their calls for the pump."""

    async def _flush_start(self) -> None:
        """Compare-and-set every task due now to running, START_BATCH per round trip, all sent
        at once (Redis runs them one after the other; each reply lets its calls go)."""
        await asyncio.sleep(0)  # let timers due in this same loop iteration join the batch
        batch, self._due = self._due, []
        self._start_scheduled = False
        for i in range(0, len(batch), c.START_BATCH):
            self._spawn(self._start_chunk(batch[i : i + c.START_BATCH]))

    async def _start_chunk(self, chunk: list[Claimed]) -> None:
        # Signing keys read while START runs, so that the calls rarely wait for them (a copy
        # warmed at the claim, a second before, may just have grown too old).
        self.signer.warm({cl.owner for cl in chunk if cl.owner})
        start = functools.partial(
            self.store.start,
            [(cl.arg, cl.job) for cl in chunk],
            worker=self.id,
            lease_ms=self.expiry_ms,
        )
        try:
            # However long Redis is away: START is safe to repeat, and the claims stay ours.
            numbers = await until_reachable(start, what="start")
        except asyncio.CancelledError:
            await self._hand_back(chunk, reason="cancelled")
            raise
        except Exception:
            log.exception("worker.start_crashed", jobs=len(chunk))
            await self._hand_back(chunk, reason="start_crashed")
            return
        for cl, n in zip(chunk, numbers, strict=True):
            if n:
                assert cl.spec is not None
                entry = (cl.due_ms, next(self._seq), _host(cl.spec.url), cl, n)
                heapq.heappush(self._ready, entry)
            else:
                self._held.pop(cl.job, None)
                log.info("task.skipped", task_id=cl.arg, job=cl.job, reason="changed")
        self._pump()
