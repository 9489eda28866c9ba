"""Callbacks (issue #12): the final Task POSTed to ``callback`` or ``failure_callback``.

The script that records a task's final outcome also schedules a ``cb`` job in the task's
partition (``lua/lib/callbacks.lua``), so there is one delivery per outcome whatever becomes of the
worker. This handler makes one delivery attempt: it reads the task, POSTs the Task as
``GET /v1/tasks/{id}`` answers it, signed as every call is, and records the attempt and the next
one (the task's own retry policy: ``retries``, ``retry_delay``, ``backoff``,
``max_retry_delay``, ``Retry-After``, ``timeout``) in one script (``lua/callback_done.lua``).

Each delivery of one outcome carries ``webhook-id`` and ``Idempotency-Key``
``<task id>.cb<n>`` (the same for its retries, another for a later outcome after a redrive):
a delivery repeats only when its worker died mid-call, and then with the same id.
"""

from __future__ import annotations

import math
import random

import aiohttp
import structlog

from taskorch.models import retry_wait_s
from taskorch.signing import Signer
from taskorch.store import Store, encode_callback_attempt, until_reachable
from taskorch.worker.sender import Sender

log = structlog.get_logger("taskorch.callbacks")


class Callbacks(Sender):
    """The worker's handler of ``cb`` jobs."""

    def __init__(
        self, store: Store, session: aiohttp.ClientSession, signer: Signer | None = None
    ) -> None:
        super().__init__(store.redis, session, signer)
        self.store = store

    async def handle(self, arg: str) -> None:
        task_id, gen, status, n_text = arg.split("|")
        n = int(n_text)
        job = f"{task_id}.cb{gen}.{n}"
        got = await until_reachable(lambda: self.store.task_record(task_id), what="callback_read")
        if got is None or got[0].get("callback_job") != job:
            log.info("callback.skipped", task_id=task_id, job=job, reason="stale")
            return
        fields, task = got
        kind = "callback" if status == "succeeded" else "failure_callback"
        target = task.callback if kind == "callback" else task.failure_callback
        if task.status != status or target is None:
            # A payload that held the text the script looks for, or a changed task: nothing
            # to deliver. Recorded as done, so the job ends.
            log.info("callback.none", task_id=task_id, job=job, status=task.status)
            await until_reachable(
                lambda: self.store.callback_done(task_id, job, ""), what="callback_done"
            )
            return
        msg_id = f"{task_id}.cb{gen}"
        result = await self.send(
            target,
            task,
            task.timeout,
            method="POST",
            msg_id=msg_id,
            owner=fields["owner"],
            extra_headers={
                "X-Taskorch-Task-Id": task_id,
                "X-Taskorch-Callback": kind,
                "X-Taskorch-Attempt": str(n),
            },
        )
        attempt = encode_callback_attempt(
            kind=kind,
            number=n,
            started_ms=result.started_ms,
            finished_ms=result.finished_ms,
            status_code=result.status_code,
            error=result.error,
            body=result.excerpt(),
        )
        next_job = next_arg = ""
        next_due = 0
        if not result.ok and n <= task.retries:
            wait = retry_wait_s(task, n, random.random(), result.retry_after_s)  # type: ignore[arg-type]
            next_due = math.ceil(result.finished_ms + wait * 1000)
            next_job = f"{task_id}.cb{gen}.{n + 1}"
            next_arg = f"{task_id}|{gen}|{status}|{n + 1}"
        recorded = await until_reachable(
            lambda: self.store.callback_done(
                task_id, job, attempt, next_job=next_job, next_arg=next_arg, next_due_ms=next_due
            ),
            what="callback_done",
        )
        log.info(
            "callback.attempt",
            task_id=task_id,
            callback=kind,
            attempt=n,
            status_code=result.status_code,
            error=result.error,
            outcome="delivered" if result.ok else "retry" if next_job else "gave_up",
            recorded=recorded,
        )
