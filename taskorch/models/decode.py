"""Decoding request bodies with every problem reported: ``decode_body``, ``decode_batch``,
``convert`` and ``parse_json``, and the rules each field is held to (url, headers, times, cron,
zone, queue) beside msgspec's own."""

from __future__ import annotations

import datetime as dt
import functools
import re
from collections.abc import Callable
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

import msgspec
from msgspec import UNSET, Struct

from taskorch import constants as c
from taskorch.errors import ApiError, BadRequest, PayloadTooLarge, ValidationFailed
from taskorch.models.auth import TokenRequest
from taskorch.models.rules import QUEUE_NAME_MESSAGE, header_problems, queue_name_ok, url_problem
from taskorch.models.shared import Callback, _Input
from taskorch.models.tasks import TaskBatchItem, TaskCreate, TaskPatch

__all__ = ["convert", "decode_batch", "decode_body", "parse_json"]


def _url_rule(value: Any) -> list[tuple[str, str]]:
    msg = url_problem(value) if isinstance(value, str) else None
    return [("", msg)] if msg else []


def _headers_rule(value: Any) -> list[tuple[str, str]]:
    return header_problems(value or {})


# Rules for one field, by name, in every request struct. They run as soon as that field is well
# formed, so a bad url is reported beside a bad retries instead of after it is fixed.
def _run_at_rule(value: Any) -> list[tuple[str, str]]:
    return _run_at_problems(msgspec.convert(value, dt.datetime | None, strict=False))


def _run_at_problems(when: dt.datetime | None) -> list[tuple[str, str]]:
    if when is None:
        return []
    if when.tzinfo is None:
        return [("", "must carry a UTC offset, such as 2026-11-26T18:31:06Z")]
    try:
        too_late = when.astimezone(dt.UTC).year >= 9999
    except OverflowError:
        too_late = True
    if too_late:  # answers are in UTC, and year 10000 cannot be written
        return [("", "must be before 9999-01-01T00:00:00Z")]
    return []


def _cron_rule(value: Any) -> list[tuple[str, str]]:
    from taskorch.cron import cron_problem

    msg = cron_problem(value) if isinstance(value, str) else None
    return [("", msg)] if msg else []


def _zone_rule(value: Any) -> list[tuple[str, str]]:
    from taskorch.cron import zone

    if isinstance(value, str) and zone(value) is None:
        return [("", "is not an IANA time zone name, such as Europe/Berlin")]
    return []


def _queue_rule(value: Any) -> list[tuple[str, str]]:
    return [] if isinstance(value, str) and queue_name_ok(value) else [("", QUEUE_NAME_MESSAGE)]


def _bool_rule(value: Any) -> list[tuple[str, str]]:
    # JSON true or false only: the lenient conversion would take 0 and "no" for a pause.
    return [] if isinstance(value, bool) else [("", "must be true or false")]


_FIELD_RULES = {
    "cron": _cron_rule,
    "timezone": _zone_rule,
    "url": _url_rule,
    "headers": _headers_rule,
    "run_at": _run_at_rule,
    "start_at": _run_at_rule,
    "end_at": _run_at_rule,
    "queue": _queue_rule,
    "paused": _bool_rule,
}


# -- decoding with every problem reported -------------------------------------------------------

T = TypeVar("T", bound=_Input)


def parse_json(raw: bytes | str, what: str = "The body") -> Any:
    """Parse JSON from a client; anything unparseable is a 400 ``invalid_json``, never a 500.

    msgspec raises more than DecodeError on hostile input: RecursionError for deep nesting and
    UnicodeDecodeError for invalid UTF-8 inside a string.
    """
    if not raw.strip():
        return None
    try:
        return msgspec.json.decode(raw)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError, ValueError) as exc:
        reason = "it is nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise BadRequest(f"{what} is not valid JSON: {reason}.", code="invalid_json") from None


def decode_body(raw: bytes, kind: type[T]) -> T:
    """Parse a request body into ``kind`` or raise 400/422 listing every problem found."""
    if kind in _FLAT:
        value = _decode_valid(raw, kind)
        if value is not None:
            return value
    return convert(parse_json(raw), kind)


# Bodies that decode in one typed pass when valid (their only nested struct, a callback, is
# checked by _TYPED_RULES).
_FLAT: frozenset[type[_Input]] = frozenset({TaskCreate, TaskBatchItem, TaskPatch, TokenRequest})


class _BatchEnvelope(Struct, forbid_unknown_fields=True):
    tasks: list[msgspec.Raw]


_envelope = msgspec.json.Decoder(_BatchEnvelope)


def decode_batch(raw: bytes) -> list[TaskBatchItem | ApiError]:
    """A batch body: each task as :func:`decode_body` would give it, or the error it would raise.

    The envelope (``{"tasks": [...]}`` with 1..MAX_BATCH_TASKS entries) must be right, or the
    whole request fails (400/422) as any body would; a bad task fails alone, in its place, with
    the field paths a single create of it would name, and a task larger than a single create may
    be (MAX_BODY_BYTES) is refused as 413 would refuse it.
    """
    try:
        tasks = _envelope.decode(raw).tasks
    except Exception:  # malformed, or not the envelope: say why as for any body
        tasks = _envelope_problems(parse_json(raw))
    n = len(tasks)
    if not 1 <= n <= c.MAX_BATCH_TASKS:
        message = f"must hold 1 to {c.MAX_BATCH_TASKS} tasks, not {n}"
        raise ValidationFailed(
            f"The request has 1 invalid field: tasks {message}.",
            details=[{"field": "tasks", "message": message}],
        )
    out: list[TaskBatchItem | ApiError] = []
    for item in tasks:
        body = bytes(item)
        if len(body) > c.MAX_BODY_BYTES:
            out.append(PayloadTooLarge(f"The task is larger than {c.MAX_BODY_BYTES} bytes."))
            continue
        try:
            out.append(decode_body(body, TaskBatchItem))
        except ApiError as exc:
            out.append(exc)
    return out


def _envelope_problems(data: Any) -> list[msgspec.Raw]:
    """Raise the 422 for a batch body that parsed but is not ``{"tasks": [...]}``."""
    problems: list[tuple[str, str]] = []
    if not isinstance(data, dict):
        problems.append(("", "must be a JSON object"))
    else:
        problems += [(k, "is not a known field") for k in data if k != "tasks"]
        if "tasks" not in data:
            problems.append(("tasks", "is required"))
        elif not isinstance(data["tasks"], list):
            problems.append(("tasks", "must be an array of tasks"))
    raise _failed(problems or [("", "is invalid")])


@functools.cache
def _decoder(kind: type[T]) -> msgspec.json.Decoder[T]:
    return msgspec.json.Decoder(kind, strict=False)


def _decode_valid(raw: bytes | str, kind: type[T]) -> T | None:
    """``raw`` as ``kind`` when it is valid as it stands, else None.

    The common case takes one typed msgspec pass plus the field rules (a create spent more on
    the field-by-field walk than on its Redis script). Any problem at all returns None, so that
    :func:`convert` walks the body and names every problem: this path never decides an error,
    and on success gives the value the walk would (tests/test_models.py compares the two).
    """
    try:
        value = _decoder(kind).decode(raw)
    except Exception:  # malformed, invalid, too deep: the walk below reports it
        return None
    for name, rule in _typed_rules(kind):
        if rule(getattr(value, name)):
            return None
    if _given(getattr(value, "run_at", None)) and _given(getattr(value, "delay", None)):
        return None
    return None if value.check() else value


@functools.cache
def _typed_rules(kind: type[_Input]) -> list[tuple[str, Callable[[Any], list[tuple[str, str]]]]]:
    return [(name, rule) for name, rule in _TYPED_RULES.items() if name in kind.__struct_fields__]


def _given(value: Any) -> bool:
    return value is not None and value is not UNSET


def _callback_rule(value: Any) -> list[tuple[str, str]]:
    if not isinstance(value, Callback):
        return []
    return _url_rule(value.url) + (_headers_rule(value.headers) if value.headers else [])


_TYPED_RULES: dict[str, Callable[[Any], list[tuple[str, str]]]] = {
    "url": lambda v: _url_rule(v) if isinstance(v, str) else [],
    "headers": lambda v: _headers_rule(v) if v and isinstance(v, dict) else [],
    "run_at": lambda v: _run_at_problems(v) if isinstance(v, dt.datetime) else [],
    "queue": lambda v: _queue_rule(v) if isinstance(v, str) else [],
    "callback": _callback_rule,
    "failure_callback": _callback_rule,
}


def convert(data: Any, kind: type[T]) -> T:
    """Validate already parsed JSON ``data`` as ``kind``; raise ValidationFailed with paths."""
    problems = _problems(data, kind, "")
    if not problems:
        try:
            return msgspec.convert(data, kind, strict=False)
        except msgspec.ValidationError as exc:  # a rule the walk above did not foresee
            problems = [_from_msgspec(exc, "")]
    raise _failed(problems)


def _failed(problems: list[tuple[str, str]]) -> ValidationFailed:
    n = len(problems)
    return ValidationFailed(
        f"The request has {n} invalid field{'s' if n > 1 else ''}: "
        + "; ".join(f"{f or 'body'} {m}" for f, m in problems[:5])
        + ".",
        details=[{"field": f, "message": m} for f, m in problems],
    )


def _join(prefix: str, name: str | int) -> str:
    if isinstance(name, int):
        return f"{prefix}[{name}]"
    return f"{prefix}.{name}" if prefix else name


def _problems(data: Any, kind: Any, path: str) -> list[tuple[str, str]]:
    """Walk ``data`` against struct ``kind``, collecting one problem per bad field."""
    if not isinstance(data, dict):
        return [(path, "must be a JSON object")]
    problems: list[tuple[str, str]] = []
    fields = _fields(kind)
    hints: dict[str, str] = getattr(kind, "_field_hints", {})
    for key in data:
        if key not in fields:
            problems.append((_join(path, key), hints.get(key, "is not a known field")))
    for name, field in fields.items():
        sub = _join(path, name)
        if name not in data:
            if field.required:
                problems.append((sub, "is required"))
            continue
        found = _field_problems(data[name], field.type, sub)
        if not found and name in _FIELD_RULES:
            found = [(_join(sub, f) if f else sub, m) for f, m in _FIELD_RULES[name](data[name])]
        problems += found
    if "run_at" in fields and data.get("run_at") is not None and data.get("delay") is not None:
        problems.append((_join(path, "delay"), "give run_at or delay, not both"))
    if not problems:
        # The fields are each well formed: now the rules that span fields (``check``).
        try:
            value = msgspec.convert(data, kind, strict=False)
        except msgspec.ValidationError as exc:
            return [_from_msgspec(exc, path)]
        problems += [(_join(path, f), m) for f, m in value.check()]
    return problems


@functools.cache
def _fields(kind: type[Any]) -> dict[str, msgspec.structs.FieldInfo]:
    # msgspec.structs.fields evaluates the annotations on every call: once per struct is enough
    # (for a 10,000-step orchestration it was 9 s of a 10 s request).
    return {f.encode_name: f for f in msgspec.structs.fields(kind)}


def _field_problems(value: Any, typ: Any, path: str) -> list[tuple[str, str]]:
    struct = _struct_in(typ)
    if struct is not None and isinstance(value, dict):
        return _problems(value, struct, path)
    items = _struct_list_in(typ)
    if items is not None and isinstance(value, list):
        out: list[tuple[str, str]] = []
        for i, item in enumerate(value):
            out += _field_problems(item, items, _join(path, i))
        if not out:
            try:
                msgspec.convert(value, typ, strict=False)
            except msgspec.ValidationError as exc:
                out.append(_from_msgspec(exc, path))
        return out
    try:
        msgspec.convert(value, typ, strict=False)
    except msgspec.ValidationError as exc:
        return [_from_msgspec(exc, path)]
    return []


def _members(typ: Any) -> tuple[Any, ...]:
    if get_origin(typ) is Annotated:
        return _members(get_args(typ)[0])
    if get_origin(typ) in (Union, getattr(__import__("types"), "UnionType", Union)):
        return tuple(m for a in get_args(typ) for m in _members(a))
    return (typ,)


def _struct_in(typ: Any) -> type[Struct] | None:
    for m in _members(typ):
        if isinstance(m, type) and issubclass(m, _Input):
            return m
    return None


def _struct_list_in(typ: Any) -> Any | None:
    for m in _members(typ):
        if get_origin(m) is list and _struct_in(get_args(m)[0]) is not None:
            return get_args(m)[0]
    return None


_AT = re.compile(r" - at `\$(.*)`$")


def _from_msgspec(exc: msgspec.ValidationError, path: str) -> tuple[str, str]:
    """Turn msgspec's "Expected `int`, got `str` - at `$.a[0]`" into (path, message)."""
    text = str(exc)
    where = ""
    if m := _AT.search(text):
        where = m.group(1)
        text = text[: m.start()]
    where = where.lstrip(".")
    full = path + ("." + where if where and not where.startswith("[") and path else where)
    message = text[0].lower() + text[1:] if text else "is invalid"
    message = message.replace("expected", "must be", 1).replace("`", "")
    return full, message
