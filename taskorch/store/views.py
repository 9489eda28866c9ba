"""A task's answer (models.Task) from its record: as read back (_task_view) and as a create
has just stored it (_created_view).
"""

from __future__ import annotations

from taskorch import constants as c
from taskorch.models import Attempt, CallbackAttempt, Task, TaskCreate, TaskStatus, fmt_ms
from taskorch.store.encoding import (
    _attempt_decoder,
    _callback_attempts_decoder,
    _StoredAttempt,
    decode_callbacks,
    decode_spec,
)


def _callback_attempts(raw: str) -> list[CallbackAttempt]:
    return [
        CallbackAttempt(
            callback=a.k,  # type: ignore[arg-type]
            number=a.n,
            started_at=fmt_ms(a.st) or "",
            finished_at=fmt_ms(a.ft) or "",
            duration_ms=a.dur,
            status_code=a.code,
            error=a.err,
            response_body=a.body,
        )
        for a in _callback_attempts_decoder.decode(raw)
    ]


def _attempt_view(a: _StoredAttempt) -> Attempt:
    return Attempt(
        number=a.n,
        scheduled_for=fmt_ms(a.sf) or "",
        started_at=fmt_ms(a.st) or "",
        finished_at=fmt_ms(a.ft),
        lateness_ms=a.lat,
        duration_ms=a.dur,
        status_code=a.code,
        error=a.err,
        response_body=a.body,
    )


# The order of Task's fields, as _created_view passes them: a batch of 1,000 answers builds
# 1,000 Tasks, and positional arguments cost a fifth of keywords. A field added to Task stops
# the import here until _created_view passes it too.
_VIEW_ORDER = (
    "id", "name", "status", "url", "method", "headers", "payload", "retries", "retry_delay",
    "backoff", "max_retry_delay", "timeout", "run_at", "created_at", "updated_at", "finished_at",
    "orchestration_id", "attempts", "schedule_id", "queue", "callback", "failure_callback",
    "callback_attempts",
)  # fmt: skip
assert Task.__struct_fields__ == _VIEW_ORDER, "Task changed: update _created_view"


def _created_view(task_id: str, body: TaskCreate, stamp: str, run_at: str | None) -> Task:
    """The view of a task a create has just stored as given, built from its body: what reading
    its record back would answer (tests/test_batch.py compares the two). ``stamp`` is its
    creation time and ``run_at`` its due time, formatted (fmt_ms)."""
    return Task(
        task_id,
        body.name or None,
        TaskStatus.scheduled,
        body.url,
        body.method,
        body.headers,
        body.payload,
        body.retries,
        body.retry_delay,
        body.backoff,
        body.max_retry_delay,
        body.timeout,
        run_at,
        stamp,
        stamp,
        None,
        None,
        [],
        None,
        body.queue,
        body.callback,
        body.failure_callback,
        [],
    )


def _task_view(h: dict[str, str], attempts: list[str]) -> Task:
    spec = decode_spec(h["spec"], h.get("url", ""))
    views = [_attempt_view(_attempt_decoder.decode(a)) for a in attempts]
    if h["status"] == "running" and h.get("started_at"):
        started, sf = int(h["started_at"]), int(h["scheduled_for"])
        views.append(
            Attempt(
                number=int(h["attempt"]),
                scheduled_for=fmt_ms(sf) or "",
                started_at=fmt_ms(started) or "",
                finished_at=None,
                lateness_ms=float(started - sf),
                duration_ms=None,
                status_code=None,
                error=None,
                response_body=None,
            )
        )
    finished = h.get("finished_at")
    callback, failure_callback = decode_callbacks(h["spec"], h.get("url", ""))
    return Task(
        id=h["id"],
        name=h.get("name") or None,
        status=TaskStatus(h["status"]),
        url=spec.url,
        method=spec.method,
        headers=spec.headers,
        payload=spec.payload,
        retries=spec.retries,
        retry_delay=spec.retry_delay,
        backoff=spec.backoff,
        max_retry_delay=spec.max_retry_delay,
        timeout=spec.timeout,
        run_at=fmt_ms(int(h["run_at"])) if h.get("run_at") else None,
        created_at=fmt_ms(int(h["created_at"])) or "",
        updated_at=fmt_ms(int(h["updated_at"])) or "",
        finished_at=fmt_ms(int(finished)) if finished else None,
        orchestration_id=h.get("orchestration_id") or None,
        attempts=views,
        schedule_id=h.get("schedule_id") or None,
        queue=h.get("queue") or c.DEFAULT_QUEUE,
        callback=callback,
        failure_callback=failure_callback,
        callback_attempts=_callback_attempts(h["callback_attempts"])
        if h.get("callback_attempts")
        else [],
    )
