"""A task's record as Redis keeps it and as the API answers it.

The encodings (attempts, callback deliveries and specs with one-letter names and defaults left
out, and their decoders), and the views built from them: a record read back (_task_view) and
one a create has just stored (_created_view).
"""

from __future__ import annotations

from typing import Any

import msgspec

from taskorch import constants as c
from taskorch.models import (
    Attempt,
    Callback,
    CallbackAttempt,
    CallPolicy,
    Task,
    TaskCreate,
    TaskSpec,
    TaskStatus,
    fmt_ms,
)

_spec_decoder = msgspec.json.Decoder(TaskSpec)


class _StoredAttempt(msgspec.Struct, omit_defaults=True):
    """An attempt as kept in Redis: times in epoch ms, formatted only when answered."""

    n: int
    sf: int
    st: int
    ft: int | None = None
    lat: float = 0.0
    dur: float | None = None
    code: int | None = None
    err: str | None = None
    body: str | None = None


_attempt_encoder = msgspec.json.Encoder()
_attempt_decoder = msgspec.json.Decoder(_StoredAttempt)


class _StoredCallbackAttempt(msgspec.Struct, omit_defaults=True):
    """A callback delivery as kept in ``t:<id>:cb`` (times in epoch ms)."""

    k: str  # callback | failure_callback
    n: int
    st: int
    ft: int
    dur: float = 0.0
    code: int | None = None
    err: str | None = None
    body: str | None = None


_callback_attempts_decoder = msgspec.json.Decoder(list[_StoredCallbackAttempt])


def encode_callback_attempt(
    *,
    kind: str,
    number: int,
    started_ms: float,
    finished_ms: float,
    status_code: int | None,
    error: str | None,
    body: str | None,
) -> str:
    a = _StoredCallbackAttempt(
        k=kind,
        n=number,
        st=int(started_ms),
        ft=int(finished_ms),
        dur=round(finished_ms - started_ms, 3),
        code=status_code,
        err=error,
        body=body,
    )
    return _attempt_encoder.encode(a).decode()


def encode_attempt(
    *,
    number: int,
    scheduled_for_ms: int,
    started_ms: float,
    finished_ms: float,
    status_code: int | None,
    error: str | None,
    body: str | None,
) -> str:
    a = _StoredAttempt(
        n=number,
        sf=scheduled_for_ms,
        st=int(started_ms),
        ft=int(finished_ms),
        lat=round(started_ms - scheduled_for_ms, 3),
        dur=round(finished_ms - started_ms, 3),
        code=status_code,
        err=error,
        body=body,
    )
    return _attempt_encoder.encode(a).decode()


class _StoredRest(msgspec.Struct, omit_defaults=True):
    """A spec but its url, as a task record keeps it: one-letter names, defaults left out (the
    record is most of what a pending task costs Redis; issue #10). _spec_parts passes the
    fields in this order."""

    m: str = "POST"
    h: dict[str, str] = {}
    b: Any = None
    r: int = c.DEFAULT_RETRIES
    d: float = c.DEFAULT_RETRY_DELAY_S
    x: float = c.DEFAULT_BACKOFF
    mx: float = c.DEFAULT_MAX_RETRY_DELAY_S
    t: float = c.DEFAULT_TIMEOUT_S
    # issue #12: callback and failure_callback. lua/lib/callbacks.lua looks for '"cb":{' and '"fc":{'.
    cb: _StoredCallback | None = None
    fc: _StoredCallback | None = None


class _StoredCallback(msgspec.Struct, omit_defaults=True):
    u: str
    h: dict[str, str] = {}


class _StoredSpec(_StoredRest, omit_defaults=True, kw_only=True):
    """A whole spec in the same short form: an orchestration's step (its url included)."""

    u: str


_REST_NAMES = dict(
    m="method",
    h="headers",
    b="payload",
    r="retries",
    d="retry_delay",
    x="backoff",
    mx="max_retry_delay",
    t="timeout",
)
_stored_encoder = msgspec.json.Encoder()
_rest_decoder = msgspec.json.Decoder(_StoredRest)
_stored_spec_decoder = msgspec.json.Decoder(_StoredSpec)


# _spec_parts passes a spec's call policy positionally, in CallPolicy's order (written out there and
# in _created_view: a star of attrgetter cost a batch 1.4 us per task more).
assert tuple(_REST_NAMES.values()) == CallPolicy.__struct_fields__, "see _spec_parts"
assert _StoredRest.__struct_fields__[:8] == tuple(_REST_NAMES), "see _spec_parts"


def _spec_parts(
    body: TaskSpec, callback: Callback | None = None, failure_callback: Callback | None = None
) -> tuple[str, str]:
    """A task's (url, rest of its spec) as its record keeps them ('' when the rest is defaults)."""
    rest = _stored_encoder.encode(
        _StoredRest(
            body.method,
            body.headers,
            body.payload,
            body.retries,
            body.retry_delay,
            body.backoff,
            body.max_retry_delay,
            body.timeout,
            _stored_callback(callback),
            _stored_callback(failure_callback),
        )
    ).decode()
    return body.url, "" if rest == "{}" else rest


def _stored_callback(cb: Callback | None) -> _StoredCallback | None:
    return None if cb is None else _StoredCallback(u=cb.url, h=cb.headers)


def decode_callbacks(raw: str, url: str) -> tuple[Callback | None, Callback | None]:
    """A task's (callback, failure_callback) from its stored spec (a step has neither)."""
    if not url or not raw:
        return None, None
    rest = _rest_decoder.decode(raw)
    return tuple(  # type: ignore[return-value]
        None if x is None else Callback(url=x.u, headers=x.h) for x in (rest.cb, rest.fc)
    )


def _spec_json(body: TaskSpec) -> str:
    """A whole spec in the record's short form (an orchestration's steps)."""
    fields = {short: getattr(body, full) for short, full in _REST_NAMES.items()}
    return _stored_encoder.encode(_StoredSpec(u=body.url, **fields)).decode()


def decode_spec(raw: str, url: str = "") -> TaskSpec:
    """A stored spec: a task's url and rest, a step's whole spec in short form, or (from before
    the partitioned layout) a whole spec in the API's form."""
    if url:
        rest = _rest_decoder.decode(raw) if raw else _StoredRest()
        return TaskSpec(
            url=url, **{full: getattr(rest, short) for short, full in _REST_NAMES.items()}
        )
    if raw.startswith('{"'):
        try:
            stored = _stored_spec_decoder.decode(raw)
        except msgspec.ValidationError:
            return _spec_decoder.decode(raw)
        return TaskSpec(
            url=stored.u, **{full: getattr(stored, short) for short, full in _REST_NAMES.items()}
        )
    return _spec_decoder.decode(raw)


def call_view_fields(a: Any) -> dict[str, Any]:
    """A stored call's times and answer (``st``, ``ft``, ``code``, ``err``, ``body``) as the
    API's views name them: a callback delivery's and a condition check's."""
    return {
        "started_at": fmt_ms(a.st) or "",
        "finished_at": fmt_ms(a.ft) or "",
        "status_code": a.code,
        "error": a.err,
        "response_body": a.body,
    }


def _callback_attempts(raw: str) -> list[CallbackAttempt]:
    return [
        CallbackAttempt(
            callback=a.k,  # type: ignore[arg-type]
            number=a.n,
            duration_ms=a.dur,
            **call_view_fields(a),
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
