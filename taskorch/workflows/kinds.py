"""The step kinds of a workflow, their create-time checks, output keeping and a check's goto.

A step is a task spec (today's step, with an optional ``name``) or exactly one of the kind keys
``parallel``, ``map``, ``sleep``, ``sleep_until``, ``wait_for_event`` (the contract's
"Orchestrations as workflows"). :class:`WorkflowCreate` is the body of ``POST
/v1/orchestrations`` with the workflow fields; :func:`decode_workflow` gives it with each step
typed, or raises the 422 naming every problem (``steps[2].payload.customer``). Pure: no I/O.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import Meta

from taskorch import constants as c
from taskorch.errors import ValidationFailed
from taskorch.models import ConditionSpec, Seconds, StepSpec, TaskSpec, convert
from taskorch.models.shared import _Input
from taskorch.workflows.refs import (
    Context,
    ReferenceSyntaxError,
    ResolveError,
    check_strings,
    parse,
    spec_strings,
    value_of,
)

# A step's output is kept up to this many bytes of its answer's body (the contract: 64 KiB).
OUTPUT_MAX_BYTES = 64 * 1024
MAX_PARALLEL = 100  # calls of one parallel step
MAX_MAP_ITEMS = 10_000  # items of one map step
# A map's calls in flight at once: each is a task created by one script, so a map never asks
# one script to create more than a batch create may (constants.MAX_BATCH_TASKS).
MAX_MAP_CONCURRENT = c.MAX_BATCH_TASKS
DEFAULT_MAP_CONCURRENT = 10
DEFAULT_MAX_STEPS_RUN = c.DEFAULT_MAX_STEPS_RUN
# A goto loop may run steps many times over; a million steps is days of calls.
MAX_STEPS_RUN = 1_000_000

NAME_PATTERN = "^[a-z0-9_-]{1,64}$"
_NAME = re.compile(NAME_PATTERN)
_DIGITS = re.compile("[0-9]+")
NAME_MESSAGE = "must be 1 to 64 of a-z, 0-9, _ and -"
KIND_KEYS = ("parallel", "map", "sleep", "sleep_until", "wait_for_event")

StepName = Annotated[str, Meta(min_length=1, max_length=64)]


def _name_problems(field: str, name: str | None, *, step: bool) -> list[tuple[str, str]]:
    if name is None or (_NAME.fullmatch(name) and not (step and _DIGITS.fullmatch(name))):
        return []
    if step and _DIGITS.fullmatch(name):
        return [(field, "must not be only digits: steps.<n> in a reference means step index n")]
    return [(field, NAME_MESSAGE)]


class TaskStep(StepSpec):
    """A task step: today's step (a task spec with its own optional condition) and a name."""

    kind: ClassVar[str] = "task"
    name: StepName | None = None

    def check(self) -> list[tuple[str, str]]:
        return _name_problems("name", self.name, step=True)


class _Step(_Input, kw_only=True):
    """What every step of a kind has besides its kind key: a name and its own condition."""

    kind: ClassVar[str]
    name: StepName | None = None
    condition: ConditionSpec | None = None

    def check(self) -> list[tuple[str, str]]:
        return _name_problems("name", self.name, step=True)


class ParallelStep(_Step, kw_only=True):
    kind: ClassVar[str] = "parallel"
    parallel: Annotated[list[TaskSpec], Meta(min_length=2, max_length=MAX_PARALLEL)]
    min_succeeded: Annotated[int, Meta(ge=1, le=MAX_PARALLEL)] | None = None

    @property
    def needed(self) -> int:
        """How many calls must succeed (``min_succeeded``, default all)."""
        return len(self.parallel) if self.min_succeeded is None else self.min_succeeded

    def check(self) -> list[tuple[str, str]]:
        problems = super().check()
        if self.min_succeeded is not None and self.min_succeeded > len(self.parallel):
            problems.append(
                (
                    "min_succeeded",
                    f"must be at most the number of parallel calls ({len(self.parallel)})",
                )
            )
        return problems


class MapSpec(_Input, kw_only=True):
    """``map``'s body: the items (a list, or one reference to a list), the task, the pace."""

    # A list, or a string that is one reference (check_workflow): checked here rather than by
    # the type, whose message would be "must be str | array".
    items: Any
    task: TaskSpec
    max_concurrent: Annotated[int, Meta(ge=1, le=MAX_MAP_CONCURRENT)] = DEFAULT_MAP_CONCURRENT

    def check(self) -> list[tuple[str, str]]:
        if isinstance(self.items, list) and len(self.items) > MAX_MAP_ITEMS:
            return [("items", f"must hold at most {MAX_MAP_ITEMS} items, not {len(self.items)}")]
        if not isinstance(self.items, (list, str)):
            return [
                ("items", "must be a list, or one reference to a list such as {{ input.items }}")
            ]
        return []


class MapStep(_Step, kw_only=True):
    kind: ClassVar[str] = "map"
    map: MapSpec


class SleepStep(_Step, kw_only=True):
    kind: ClassVar[str] = "sleep"
    sleep: Seconds


class SleepUntilStep(_Step, kw_only=True):
    kind: ClassVar[str] = "sleep"
    sleep_until: dt.datetime

    def check(self) -> list[tuple[str, str]]:
        # The rule of every time a body gives (an offset, before 9999), as models states it.
        try:
            convert({"run_at": self.sleep_until.isoformat()}, _At)
        except ValidationFailed as exc:
            return super().check() + [("sleep_until", d["message"]) for d in exc.details]
        return super().check()


class _At(_Input):
    run_at: dt.datetime


class WaitStep(_Step, kw_only=True):
    """Waits for ``POST /v1/orchestrations/{id}/events/{wait_for_event}``; ``timeout`` None
    waits until the event comes or the orchestration is cancelled."""

    kind: ClassVar[str] = "wait"
    wait_for_event: Annotated[str, Meta(min_length=1, max_length=64)]
    timeout: Seconds | None = None
    on_timeout: Literal["fail", "continue"] = "fail"

    def check(self) -> list[tuple[str, str]]:
        return super().check() + _name_problems("wait_for_event", self.wait_for_event, step=False)


Step = TaskStep | ParallelStep | MapStep | SleepStep | SleepUntilStep | WaitStep
_BY_KEY: dict[str, type[_Input]] = {
    "parallel": ParallelStep,
    "map": MapStep,
    "sleep": SleepStep,
    "sleep_until": SleepUntilStep,
    "wait_for_event": WaitStep,
}


class WorkflowCreate(_Input):
    """Body of ``POST /v1/orchestrations`` with the workflow fields. ``steps`` and ``fallback``
    are decoded by :func:`check_workflow` (a step's shape depends on its kind key, and a url may
    hold references the plain URL rule would refuse)."""

    steps: Annotated[list[Any], Meta(min_length=1, max_length=c.MAX_STEPS)]
    input: Any = None
    max_steps_run: Annotated[int, Meta(ge=1, le=MAX_STEPS_RUN)] = DEFAULT_MAX_STEPS_RUN
    condition: ConditionSpec | None = None
    fallback: Any = None
    run_at: dt.datetime | None = None
    delay: Seconds | None = None
    name: Annotated[str, Meta(max_length=200)] | None = None

    def check(self) -> list[tuple[str, str]]:
        return check_workflow(self)


@dataclass(frozen=True, slots=True)
class Workflow:
    """A decoded workflow: the body, its steps typed, its fallback, step names to indexes."""

    body: WorkflowCreate
    steps: list[Step]
    fallback: TaskSpec | None
    names: dict[str, int]


# -- decoding and the create-time checks ----------------------------------------------------------


def _join(prefix: str, field: str) -> str:
    if not field:
        return prefix
    return prefix + field if field.startswith("[") else f"{prefix}.{field}"


def step_type(data: Any) -> tuple[type[_Input] | None, str | None]:
    """The struct a step's JSON decodes as, or None and why it is neither a task nor one kind."""
    if not isinstance(data, dict):
        return None, "must be a JSON object: a task spec or one of " + ", ".join(KIND_KEYS)
    keys = [k for k in KIND_KEYS if k in data]
    if len(keys) > 1:
        return None, f"gives {' and '.join(keys)}: a step is exactly one kind"
    if keys and "url" in data:
        return None, f"gives both url and {keys[0]}: a step is a task spec or {keys[0]}, not both"
    if keys:
        return _BY_KEY[keys[0]], None
    if "url" not in data:
        return None, "must be a task spec (with url) or one of " + ", ".join(KIND_KEYS)
    return TaskStep, None


# What a url that starts with a reference is checked as at create: the real one is checked when
# the call is made, once its references are replaced.
_CHECKED_LATER = "https://reference.invalid/"


def _stand_in(spec: Any) -> Any:
    """``spec`` with a url that holds references replaced by what the plain URL rule can check:
    each reference by ``0``, or the whole url when it starts with one (or its references are ill
    formed: the references' check names those)."""
    if (
        not isinstance(spec, dict)
        or not isinstance(spec.get("url"), str)
        or "{{" not in spec["url"]
    ):
        return spec
    try:
        template = parse(spec["url"])
    except ReferenceSyntaxError:
        return {**spec, "url": _CHECKED_LATER}
    if template is None:
        return spec
    starts = not isinstance(template.pieces[0], str)
    return {**spec, "url": _CHECKED_LATER if starts else template.sample("0")}


def _stand_ins(data: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = _stand_in(data)
    if isinstance(out.get("parallel"), list):
        out = {**out, "parallel": [_stand_in(s) for s in out["parallel"]]}
    m = out.get("map")
    if isinstance(m, dict) and isinstance(m.get("task"), dict):
        out = {**out, "map": {**m, "task": _stand_in(m["task"])}}
    return out


def decode_spec(
    data: Any, kind: type[_Input], where: str
) -> tuple[Any | None, list[tuple[str, str]]]:
    """``data`` as ``kind`` (a step struct or TaskSpec), or None and its problems under ``where``.

    Every field rule of :mod:`taskorch.models` applies as for today's steps, except that a url
    holding references is checked with stand-ins for them (see :func:`_stand_in`).
    """
    try:
        convert(_stand_ins(data) if isinstance(data, dict) else data, kind)
    except ValidationFailed as exc:
        return None, [(_join(where, d["field"]), d["message"]) for d in exc.details]
    return msgspec.convert(data, kind, strict=False), []


def decode_step(data: Any, where: str) -> tuple[Step | None, list[tuple[str, str]]]:
    """One step as its kind's struct, or None and (field, message) problems under ``where``."""
    kind, problem = step_type(data)
    if kind is None:
        return None, [(where, problem or "is invalid")]
    return decode_spec(data, kind, where)


def task_specs(step: Step, where: str) -> Iterator[tuple[TaskSpec, str, bool]]:
    """Each task spec of a step with its field path and whether it is a map's task."""
    if isinstance(step, TaskStep):
        yield step, where, False
    elif isinstance(step, ParallelStep):
        for i, spec in enumerate(step.parallel):
            yield spec, f"{where}.parallel[{i}]", False
    elif isinstance(step, MapStep):
        yield step.map.task, f"{where}.map.task", True


def _items_problems(step: MapStep, where: str, **known: Any) -> list[tuple[str, str]]:
    if not isinstance(step.map.items, str):
        return []
    field = f"{where}.map.items"
    try:
        template = parse(step.map.items)
    except ReferenceSyntaxError as exc:
        return [(field, str(exc))]
    if template is None or not template.whole:
        return [(field, "must be a list, or one reference to a list such as {{ input.items }}")]
    return check_strings(iter([(field, step.map.items)]), in_map=False, **known)


def check_workflow(body: WorkflowCreate) -> list[tuple[str, str]]:
    """(field, message) for what the structs cannot say: each step's kind and shape, unique
    step names, references' syntax, steps they name that do not exist, ``{{ item }}`` and
    ``{{ index }}`` outside a map's task. A reference to a later step is allowed (a check's
    goto can run it first); whether it has an output is known only when the call is made."""
    steps, problems = _typed_steps(body.steps)
    fallback: TaskSpec | None = None
    if body.fallback is not None:
        fallback, found = decode_spec(body.fallback, TaskSpec, "fallback")
        problems += found
    # Names as given, so that a step that failed to decode still counts as one a reference names.
    names: dict[str, int] = {}
    for i, data in enumerate(body.steps):
        name = data.get("name") if isinstance(data, dict) else None
        if not isinstance(name, str):
            continue
        if name in names:
            problems.append((f"steps[{i}].name", f"is already the name of steps[{names[name]}]"))
        else:
            names[name] = i
    known: dict[str, Any] = {"names": names, "n_steps": len(body.steps)}
    for i, step in steps:
        for spec, where, in_map in task_specs(step, f"steps[{i}]"):
            strs = spec_strings(spec.url, spec.headers, spec.payload, where)
            problems += check_strings(strs, in_map=in_map, **known)
        if isinstance(step, MapStep):
            problems += _items_problems(step, f"steps[{i}]", **known)
    if fallback is not None:
        strs = spec_strings(fallback.url, fallback.headers, fallback.payload, "fallback")
        problems += check_strings(strs, in_map=False, **known)
    return problems


def _typed_steps(raw: list[Any]) -> tuple[list[tuple[int, Step]], list[tuple[str, str]]]:
    """The steps that decode, with their indexes, and the problems of those that do not."""
    steps: list[tuple[int, Step]] = []
    problems: list[tuple[str, str]] = []
    for i, data in enumerate(raw):
        step, found = decode_step(data, f"steps[{i}]")
        problems += found
        if step is not None:
            steps.append((i, step))
    return steps, problems


def decode_workflow(data: Any) -> Workflow:
    """Parsed JSON as a :class:`Workflow`, or ValidationFailed (422) naming every problem."""
    body = convert(data, WorkflowCreate)
    steps: list[Step] = [
        msgspec.convert(s, step_type(s)[0] or TaskStep, strict=False)  # type: ignore[misc]
        for s in body.steps
    ]
    fallback = None
    if body.fallback is not None:
        fallback = msgspec.convert(body.fallback, TaskSpec, strict=False)
    names = {s.name: i for i, s in enumerate(steps) if s.name is not None}
    return Workflow(body, steps, fallback, names)


# -- running: map items, outputs, goto ------------------------------------------------------------


class MapItemsInvalid(ResolveError):
    """A map's ``items`` reference did not resolve to a list of at most MAX_MAP_ITEMS."""

    code = "map_items_invalid"


def map_items(step: MapStep, ctx: Context) -> list[Any]:
    """The items a map runs over: its list, or what its reference names when the step starts."""
    items = step.map.items
    if isinstance(items, list):
        return items
    template = parse(items)
    assert template is not None and template.whole
    ref = template.pieces[0]
    assert not isinstance(ref, str)
    value = value_of(ref, ctx, "map.items")
    if not isinstance(value, list):
        raise MapItemsInvalid(
            f"{items} must name a list to map over, not {type(value).__name__}.",
            field="map.items",
            path=ref.text,
        )
    if len(value) > MAX_MAP_ITEMS:
        raise MapItemsInvalid(
            f"{items} names {len(value)} items; a map runs over at most {MAX_MAP_ITEMS}.",
            field="map.items",
            path=ref.text,
        )
    return value


_JSON_TYPE = re.compile(r"^\s*application/(?:[\w.+-]*\+)?json\s*(?:;|$)", re.IGNORECASE)


def keep_output(body: bytes, content_type: str | None) -> tuple[Any, bool]:
    """A call's answer as its step's output, and whether it was cut (over OUTPUT_MAX_BYTES).

    A JSON answer (a JSON content type, or none given, and a body that parses) is its value; any
    other is text; an empty body is null. Over the limit, the first OUTPUT_MAX_BYTES (cut at a
    character's boundary) are kept as text and ``truncated`` is True: a reference into it fails.
    The caller reads one byte more than the limit (``outbound.call(keep_body=OUTPUT_MAX_BYTES +
    1)``), or it cannot tell an answer of exactly 64 KiB from a longer one.
    """
    if len(body) > OUTPUT_MAX_BYTES:
        cut = OUTPUT_MAX_BYTES
        while cut > OUTPUT_MAX_BYTES - 4 and body[cut] & 0xC0 == 0x80:
            cut -= 1  # not inside a UTF-8 sequence
        return body[:cut].decode("utf-8", "replace"), True
    if not body.strip():
        return None, False
    if not content_type or _JSON_TYPE.match(content_type):
        try:
            return msgspec.json.decode(body), False
        except (msgspec.DecodeError, RecursionError, ValueError):
            pass
    return body.decode("utf-8", "replace"), False


class GotoInvalid(ResolveError):
    """A check's answer said ``{"goto": ...}`` with something that is not one of the step names."""

    code = "goto_unknown"


def goto_target(body: bytes, names: Mapping[str, int]) -> int | None:
    """The index of the step a passed check's answer sends the orchestration to, or None to go
    on to the next (no ``goto``, or ``"goto": null``). GotoInvalid when it names no step."""
    if b"goto" not in body:
        return None
    try:
        data = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("goto") is None:
        return None
    target = data["goto"]
    if isinstance(target, str) and target in names:
        return names[target]
    known = ", ".join(sorted(names)[:10]) or "none"
    raise GotoInvalid(
        f"The check answered goto {msgspec.json.encode(target).decode()[:100]}, which names no "
        f"step of this orchestration (its step names: {known}).",
        field="goto",
    )
