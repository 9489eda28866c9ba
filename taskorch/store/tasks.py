"""The API's calls on one task: read, cancel, retry, modify."""

from __future__ import annotations

import msgspec

from taskorch import constants as c
from taskorch.cluster import run_script
from taskorch.errors import Conflict, NotFound
from taskorch.models import Task, TaskPatch, TaskSpec, due_ms
from taskorch.store.base import StoreBase
from taskorch.store.connection import from_flat, now_ms
from taskorch.store.records import _spec_parts, _task_view, decode_callbacks, decode_spec


class TaskCalls(StoreBase):
    """Store's calls on one task by id, for the API."""

    async def get_task(self, owner: str, task_id: str) -> Task:
        [(h, attempts)] = await self._run_at(task_id, self._view, [task_id])
        view = from_flat(h)
        if not view or view.get("owner") != owner:
            raise NotFound(f"No task {task_id!r} exists for this account.")
        return _task_view(view, attempts)

    async def cancel_task(self, owner: str, task_id: str) -> Task:
        res = await self._run_at(task_id, self._cancel, [task_id, owner, now_ms()])
        _raise_for(res, task_id, "cancelled")
        return _task_view(from_flat(res[1]), res[2])

    async def task_record(self, task_id: str) -> tuple[dict[str, str], Task] | None:
        """A task's fields as the scripts answer them and its view (any owner), or None."""
        [(h, attempts)] = await self._run_at(task_id, self._view, [task_id])
        if not h:
            return None
        fields = from_flat(h)
        return fields, _task_view(fields, attempts)

    async def retry_task(self, owner: str, task_id: str) -> Task:
        """Redrive a failed task: scheduled again now with a fresh retry budget (lua/retry_task.lua)."""
        res = await self._run_at(task_id, self._retry, [task_id, owner, now_ms(), c.CLAIM_AHEAD_MS])
        if res[0] == "conflict":
            raise Conflict(f"The task is {res[1]}: only a failed task can be retried.")
        if res[0] == "in_orchestration":
            raise Conflict(
                f"The task is a step of orchestration {res[1]}: a step cannot be retried alone."
            )
        _raise_for(res, task_id, "retried")
        return _task_view(from_flat(res[1]), res[2])

    async def modify_task(self, owner: str, task_id: str, patch: TaskPatch) -> Task:
        """Apply ``patch``; the old version's job is removed in the same script that adds the new."""
        from taskorch.models import convert

        layout = await self.layout()
        q = layout.queue(layout.partition_of(task_id))
        for _ in range(10):  # only a concurrent modify makes us read again
            h = await self.read_task(task_id)
            if not h or h.get("owner") != owner:
                raise NotFound(f"No task {task_id!r} exists for this account.")
            if h.get("orchestration_id"):
                _raise_for(["in_orchestration", h["orchestration_id"]], task_id, "modified")
            if h["status"] not in ("scheduled", "retrying"):
                raise Conflict(
                    f"The task is {h['status']}: only a scheduled or retrying task can be modified."
                )
            merged = msgspec.to_builtins(decode_spec(h["spec"], h.get("url", "")))
            changes = {
                f: v
                for f in patch.__struct_fields__
                if (v := getattr(patch, f)) is not msgspec.UNSET
            }
            queue = h.get("queue") or c.DEFAULT_QUEUE
            if changes.get("queue", queue) != queue:
                # Its queue's partition holds it (its id says where): it cannot move.
                raise Conflict(
                    f"The task is in queue {queue!r} and cannot move to another; cancel it and "
                    f"create a new one in queue {changes['queue']!r}.",
                    details=[{"field": "queue", "message": "a task cannot move between queues"}],
                )
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
            callback, failure_callback = decode_callbacks(h["spec"], h.get("url", ""))
            callback = changes.get("callback", callback)
            failure_callback = changes.get("failure_callback", failure_callback)
            name = h.get("name", "")
            if "name" in changes:
                name = changes["name"] or ""
            now = now_ms()
            due = int(h["run_at"])
            if changes.get("run_at") is not None or changes.get("delay") is not None:
                due = due_ms(changes.get("run_at"), changes.get("delay"), now)
            res = await run_script(
                self.redis,
                self._modify,
                [q],
                [
                    task_id,
                    owner,
                    now,
                    h["gen"],
                    *_spec_parts(spec, callback, failure_callback),
                    name,
                    due,
                    c.CLAIM_AHEAD_MS,
                ],
            )
            if res[0] != "stale":
                _raise_for(res, task_id, "modified")
                return _task_view(from_flat(res[1]), res[2])
        raise Conflict("The task is being changed by another request; try again.")


def _raise_for(res: list[str], task_id: str, verb: str) -> None:
    if res[0] == "not_found":
        raise NotFound(f"No task {task_id!r} exists for this account.")
    if res[0] == "conflict":
        raise Conflict(f"The task is {res[1]}: only a scheduled or retrying task can be {verb}.")
    if res[0] == "in_orchestration":
        raise Conflict(
            f"The task is a step of orchestration {res[1]}: modify or cancel the orchestration."
        )
