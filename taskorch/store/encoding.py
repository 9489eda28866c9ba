"""The record's encodings: attempts, callback deliveries and task specs as a task's hash keeps
them in Redis (short names, defaults left out), and their decoders.
"""

from __future__ import annotations

from typing import Any

import msgspec

from taskorch import constants as c
from taskorch.models import Callback, CallPolicy, TaskSpec

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
