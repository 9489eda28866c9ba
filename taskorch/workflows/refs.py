"""References between a workflow's steps: ``{{ path }}`` in a task spec, parsed, checked, resolved.

In a task spec's ``url``, header values and ``payload`` (at any depth) a string ``{{ path }}``
is replaced when the call is made (the contract's "Orchestrations as workflows"). ``path`` is
``input``, ``steps.<name or index>.output``, ``steps.<name or index>.status_code``, ``item``,
``index`` or ``orchestration_id``, followed by ``.key`` or ``[n]`` parts.

Only braces whose first word is one of those roots are references: any other ``{{ ... }}`` (a
Mustache or Jinja template a payload carries for its target) is sent as it is, as it was before
workflows existed. A reference with a known root must be well formed, or the create is refused.

A spec is compiled once into a :class:`Plan` that knows where its references are, and a plan
resolves against a :class:`Context` per call (a map over 10,000 items compiles its task once).
Resolution either gives the whole resolved spec or raises one :class:`ResolveError`; it never
gives a partial one. Pure: no I/O, no clock.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from taskorch.errors import TaskorchError
from taskorch.models.rules import URL_MAX_LENGTH, header_problems, url_problem

ROOTS = ("input", "steps", "item", "index", "orchestration_id")
STEP_FIELDS = ("output", "status_code")
# Roots that only a map's task can use: the map's current item and its 0-based index.
MAP_ROOTS = ("item", "index")

_BRACES = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
# A reference is braces whose content starts with a root as a whole word.
_HEAD = re.compile(r"\s*(input|steps|item|index|orchestration_id)(?![A-Za-z0-9_-])")
_PART = re.compile(r"\.([^.\[\]\s{}]+)|\[([^\]]*)\]")
_STEP = re.compile(r"\.([a-z0-9_-]{1,64})\.([a-z_]+)")
_DIGITS = re.compile(r"[0-9]+")
_enc = msgspec.json.Encoder()


# -- errors ---------------------------------------------------------------------------------------


class ResolveError(TaskorchError):
    """A call's spec could not be resolved, so the call is not made; the step fails with ``code``.

    ``field`` is where in the spec (``payload.customer.id``, ``url``, ``headers.X-Key``) and
    ``path`` the reference (``steps.charge.output.id``) when one is to blame.
    """

    code = "reference_error"

    def __init__(self, message: str, *, field: str, path: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.path = path

    def detail(self) -> dict[str, Any]:
        """The error as a step records it: ``{"code", "message", "field", "path"}``."""
        return {"code": self.code, "message": self.message, "field": self.field, "path": self.path}


class ReferenceMissing(ResolveError):
    """A reference's path leads to nothing (no such key, index, step output, or item)."""

    code = "reference_missing"


class ResolvedUrlInvalid(ResolveError):
    """The url, once its references are replaced, is not a URL a task may call."""

    code = "reference_invalid_url"


class ResolvedHeaderInvalid(ResolveError):
    """A header value, once its references are replaced, could not be sent (a line break would
    let a reference smuggle a header of its own)."""

    code = "reference_invalid_header"


# -- parsing --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ref:
    """One parsed reference. ``step`` is a name or a 0-based index for ``steps`` references."""

    root: str
    step: str | int | None = None
    field: str | None = None
    parts: tuple[str | int, ...] = ()

    @property
    def text(self) -> str:
        """The path as written in its canonical form, such as ``steps.charge.output.items[0]``."""
        out = self.root
        if self.step is not None:
            out += f".{self.step}.{self.field}"
        for p in self.parts:
            out += f"[{p}]" if isinstance(p, int) else f".{p}"
        return out


@dataclass(frozen=True, slots=True)
class Template:
    """A string holding at least one reference: literal text and references in order.

    ``whole`` when the string is exactly one reference (its value replaces the string).
    """

    pieces: tuple[str | Ref, ...]
    whole: bool

    def refs(self) -> Iterator[Ref]:
        return (p for p in self.pieces if isinstance(p, Ref))

    def sample(self, stand_in: str = "x") -> str:
        """The string with each reference replaced by ``stand_in`` (to check what is literal)."""
        return "".join(stand_in if isinstance(p, Ref) else p for p in self.pieces)


class ReferenceSyntaxError(ValueError):
    """A string holds a ``{{ ... }}`` with a root word that is not a well-formed reference."""


def parse_path(text: str) -> Ref:
    """Parse the inside of ``{{ }}`` (surrounding whitespace allowed) into a :class:`Ref`.

    Raises ReferenceSyntaxError with a message naming what is wrong.
    """
    m = _HEAD.match(text)
    if m is None:
        raise ReferenceSyntaxError(f"{{{{{text}}}}} must start with one of {', '.join(ROOTS)}")
    root, pos, end = m.group(1), m.end(), len(text.rstrip())
    shown = "{{ " + text.strip() + " }}"
    step: str | int | None = None
    step_field: str | None = None
    if root == "steps":
        sm = _STEP.match(text, pos)
        if sm is None or sm.group(2) not in STEP_FIELDS:
            raise ReferenceSyntaxError(
                f"{shown} must name a step and what of it, such as {{{{ steps.charge.output }}}}"
                " or {{ steps.0.status_code }} (a step name is 1 to 64 of a-z, 0-9, _ and -)"
            )
        name = sm.group(1)
        step = int(name) if _DIGITS.fullmatch(name) else name
        step_field, pos = sm.group(2), sm.end()
    parts: list[str | int] = []
    while pos < end:
        pm = _PART.match(text, pos)
        if pm is None:
            raise ReferenceSyntaxError(
                f"{shown} is not a valid reference: after {text[m.start(1) : pos]!r} expected "
                ".key or [n]"
            )
        key, index = pm.group(1), pm.group(2)
        if key is not None:
            parts.append(key)
        elif _DIGITS.fullmatch(index):
            parts.append(int(index))
        else:
            raise ReferenceSyntaxError(f"{shown}: [{index}] must hold a whole number, such as [0]")
        pos = pm.end()
    if parts and (root in ("index", "orchestration_id") or step_field == "status_code"):
        what = step_field if step_field == "status_code" else root
        raise ReferenceSyntaxError(f"{shown}: {what} is not a list or object, so it has no parts")
    return Ref(root, step, step_field, tuple(parts))


def parse(value: str) -> Template | None:
    """A string's references as a :class:`Template`, or None when it has none (sent as is).

    Raises ReferenceSyntaxError for the first ill-formed reference.
    """
    if "{{" not in value:
        return None
    pieces: list[str | Ref] = []
    last = 0
    refs = 0
    for m in _BRACES.finditer(value):
        if _HEAD.match(m.group(1)) is None:
            continue  # not ours: stays literal text
        if m.start() > last:
            pieces.append(value[last : m.start()])
        pieces.append(parse_path(m.group(1)))
        refs += 1
        last = m.end()
    if not refs:
        return None
    if last < len(value):
        pieces.append(value[last:])
    return Template(tuple(pieces), whole=len(pieces) == 1)


def unparse(ref: Ref) -> str:
    """The reference as a string that :func:`parse` reads back as the same reference."""
    return "{{ " + ref.text + " }}"


# -- the create-time check ------------------------------------------------------------------------


def _join(prefix: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{prefix}[{key}]"
    return f"{prefix}.{key}" if prefix else key


Key = str | int


def leaves(value: Any) -> Iterator[tuple[tuple[Key, ...], str]]:
    """Each string in a JSON value at any depth (not object keys) with its path, in document
    order. A loop, not recursion: a body may nest as deep as the JSON parser allows."""
    stack: list[tuple[tuple[Key, ...], Any]] = [((), value)]
    while stack:
        path, v = stack.pop()
        if isinstance(v, str):
            yield path, v
        elif isinstance(v, dict):
            stack.extend(((*path, k), x) for k, x in reversed(v.items()))
        elif isinstance(v, list):
            stack.extend(((*path, i), v[i]) for i in range(len(v) - 1, -1, -1))


def field_of(prefix: str, path: tuple[Key, ...]) -> str:
    """A path as the contract's error details write it: ``payload.items[2].sku``."""
    for key in path:
        prefix = _join(prefix, key)
    return prefix


def strings(value: Any, prefix: str) -> Iterator[tuple[str, str]]:
    """Each string in a JSON value at any depth, with its field path under ``prefix``."""
    return ((field_of(prefix, path), text) for path, text in leaves(value))


def spec_strings(
    url: str, headers: Mapping[str, str], payload: Any, where: str
) -> Iterator[tuple[str, str]]:
    """The strings of a task spec that may hold references, each with its field path."""
    yield _join(where, "url"), url
    for name, text in headers.items():
        yield _join(_join(where, "headers"), name), text
    yield from strings(payload, _join(where, "payload"))


def ref_problems(ref: Ref, *, names: Mapping[str, int], n_steps: int, in_map: bool) -> list[str]:
    """What a create can know is wrong with a well-formed reference: an unknown step name, a
    step index past the last step, ``item``/``index`` outside a map's task. A later step is
    fine: a check's ``goto`` can make it run before this one."""
    shown = unparse(ref)
    if ref.root in MAP_ROOTS and not in_map:
        return [
            f"{shown}: {ref.root} is a map's current {'item' if ref.root == 'item' else 'index'}, "
            "so it can be used only inside a map's task"
        ]
    if isinstance(ref.step, int) and ref.step >= n_steps:
        return [
            f"{shown} refers to step {ref.step}, but the orchestration has {n_steps} step"
            f"{'s' if n_steps != 1 else ''} (0 to {n_steps - 1})"
        ]
    if isinstance(ref.step, str) and ref.step not in names:
        return [f"{shown} refers to a step named {ref.step!r}, which this orchestration lacks"]
    return []


def check_strings(
    found: Iterable[tuple[str, str]],
    *,
    names: Mapping[str, int],
    n_steps: int,
    in_map: bool,
) -> list[tuple[str, str]]:
    """(field, message) for each reference problem in ``found`` (as :func:`spec_strings` gives)."""
    problems: list[tuple[str, str]] = []
    for path, text in found:
        try:
            template = parse(text)
        except ReferenceSyntaxError as exc:
            problems.append((path, str(exc)))
            continue
        if template is not None:
            for ref in template.refs():
                found_here = ref_problems(ref, names=names, n_steps=n_steps, in_map=in_map)
                problems += [(path, m) for m in found_here]
    return problems


# -- resolution -----------------------------------------------------------------------------------


_ABSENT: Any = msgspec.UNSET  # no item: the call is not a map's


@dataclass(slots=True)
class StepResult:
    """What a finished step left for later references (``truncated``: its output was over the
    64 KiB kept, and only the start of its body, as text, is kept)."""

    output: Any = None
    status_code: int | None = None
    truncated: bool = False


@dataclass(slots=True)
class Context:
    """What references resolve against: ``steps`` by index (None: not finished), ``names`` maps
    a step name to its index; ``item``/``index`` are set for a map's calls (see :meth:`at`)."""

    orchestration_id: str
    input: Any = None
    steps: Sequence[StepResult | None] = ()
    names: Mapping[str, int] = field(default_factory=dict)
    item: Any = _ABSENT
    index: int | None = None

    def at(self, index: int, item: Any) -> Context:
        """The context of a map's call for ``item`` at ``index``."""
        return Context(self.orchestration_id, self.input, self.steps, self.names, item, index)


def _missing(ref: Ref, where: str, why: str) -> ReferenceMissing:
    return ReferenceMissing(f"{unparse(ref)} refers to nothing: {why}.", field=where, path=ref.text)


def _root_value(ref: Ref, ctx: Context, where: str) -> tuple[Any, bool]:
    """The value a reference's root and step name, and whether it is a truncated output."""
    root = ref.root
    if root == "input":
        return ctx.input, False
    if root == "item" or root == "index":
        if ctx.item is _ABSENT:
            raise _missing(ref, where, "this call is not one of a map's")
        return (ctx.item if root == "item" else ctx.index), False
    if root == "orchestration_id":
        return ctx.orchestration_id, False
    i = ref.step if isinstance(ref.step, int) else ctx.names.get(ref.step or "")
    result = ctx.steps[i] if i is not None and 0 <= i < len(ctx.steps) else None
    if result is None:
        raise _missing(ref, where, f"step {ref.step} has not finished")
    if ref.field == "status_code":
        if result.status_code is None:
            raise _missing(ref, where, f"step {ref.step} got no HTTP answer")
        return result.status_code, False
    return result.output, result.truncated


def value_of(ref: Ref, ctx: Context, where: str = "") -> Any:
    """The JSON value ``ref`` names in ``ctx``; ReferenceMissing when there is none."""
    value, truncated = _root_value(ref, ctx, where)
    if truncated and ref.parts:
        walked = f"steps.{ref.step}.{ref.field}"
        raise _missing(ref, where, f"{walked} was over 64 KiB and only its start was kept")
    for part in ref.parts:
        if isinstance(part, int):
            if isinstance(value, list) and part < len(value):
                value = value[part]
                continue
        elif isinstance(value, dict) and part in value:
            value = value[part]
            continue
        raise _lost(ref, ctx, where)
    return value


def _lost(ref: Ref, ctx: Context, where: str) -> ReferenceMissing:
    """The error for a path that leads nowhere, naming the part where it stops (walked again:
    the way there is kept only when it is needed)."""
    value, _ = _root_value(ref, ctx, where)
    walked = ref.root if ref.step is None else f"steps.{ref.step}.{ref.field}"
    for part in ref.parts:
        if isinstance(part, int):
            if not isinstance(value, list) or part >= len(value):
                size = f"a list of {len(value)}" if isinstance(value, list) else _kind(value)
                return _missing(ref, where, f"{walked} is {size}, so it has no [{part}]")
            walked += f"[{part}]"
        elif not isinstance(value, dict) or part not in value:
            what = "an object without that key" if isinstance(value, dict) else _kind(value)
            return _missing(ref, where, f"{walked} is {what}, so it has no .{part}")
        else:
            walked += f".{part}"
        value = value[part]
    raise AssertionError("the path was found")  # pragma: no cover - value_of found it missing


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def as_text(value: Any) -> str:
    """How a value is inserted into a longer string: a string as is, anything else as JSON."""
    return value if isinstance(value, str) else _enc.encode(value).decode()


def _text(template: Template, ctx: Context, where: str) -> str:
    return "".join(
        p if isinstance(p, str) else as_text(value_of(p, ctx, where)) for p in template.pieces
    )


class _Payload:
    """Where a payload's references are, found once: the containers on the way to each (copied
    per call, parents first, so the spec itself is never changed and constant parts are shared
    between calls, not copied) and each reference's container and key. Resolving is a loop over
    those, never a walk of the whole payload, and never recursion."""

    __slots__ = ("containers", "holes", "payload", "whole")

    def __init__(self, payload: Any) -> None:
        self.payload = payload
        self.whole: Template | None = None
        # (parent container's index, key); index 0 is the payload itself
        self.containers: list[tuple[int, Key]] = [(-1, "")]
        self.holes: list[tuple[int, Key, Template, str]] = []
        seen: dict[tuple[Key, ...], int] = {(): 0}
        for path, text in leaves(payload):
            template = parse(text)
            if template is None:
                continue
            if not path:
                self.whole = template
                continue
            parent = 0
            for depth in range(1, len(path)):
                j = seen.get(path[:depth])
                if j is None:
                    j = seen[path[:depth]] = len(self.containers)
                    self.containers.append((parent, path[depth - 1]))
                parent = j
            self.holes.append((parent, path[-1], template, field_of("payload", path)))

    def __bool__(self) -> bool:
        return self.whole is not None or bool(self.holes)

    def resolve(self, ctx: Context) -> Any:
        if self.whole is not None:
            return _value_or_text(self.whole, ctx, "payload")
        values = [_value_or_text(t, ctx, where) for _, _, t, where in self.holes]
        copies: list[Any] = [_copy(self.payload)]
        for parent, key in self.containers[1:]:
            child = _copy(copies[parent][key])
            copies[parent][key] = child
            copies.append(child)
        for (at, key, _, _), value in zip(self.holes, values, strict=True):
            copies[at][key] = value
        return copies[0]


def _copy(container: Any) -> Any:
    return dict(container) if isinstance(container, dict) else list(container)


def _value_or_text(template: Template, ctx: Context, where: str) -> Any:
    """A string that is one reference becomes its value; a longer one, text."""
    if template.whole:
        ref = template.pieces[0]
        assert isinstance(ref, Ref)
        return value_of(ref, ctx, where)
    return _text(template, ctx, where)


@dataclass(frozen=True, slots=True)
class Call:
    """A task spec's url, headers and payload with every reference replaced."""

    url: str
    headers: dict[str, str]
    payload: Any


# A url whose literal start holds its scheme and whole authority (up to the first /, ? or #):
# whatever a reference inserts after that lands in the path, query or fragment, where the URL rule
# refuses only control characters.
_AUTHORITY = re.compile(r" *[Hh][Tt][Tt][Pp][Ss]?://[^/?#]*[/?#]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _resolved_url_problem(url: str, tail_only: bool) -> str | None:
    if len(url) > URL_MAX_LENGTH:
        return f"is longer than {URL_MAX_LENGTH} characters"
    if tail_only:
        return "must not contain control characters" if _CONTROL.search(url) else None
    return url_problem(url)


class Plan:
    """A task spec's ``url``, header values and ``payload``, compiled once: :meth:`resolve`
    replaces the references for one call. Raises ReferenceSyntaxError on an ill-formed one
    (the create refused those, so only a record from elsewhere can hold one)."""

    __slots__ = ("_headers", "_payload", "_tail_only", "_url", "headers", "payload", "url")

    def __init__(self, url: str, headers: Mapping[str, str], payload: Any) -> None:
        self.url, self.headers, self.payload = url, dict(headers), payload
        self._url = parse(url)
        # The full URL rule runs per call only where a reference can change the authority.
        self._tail_only = (
            self._url is not None
            and isinstance(self._url.pieces[0], str)
            and _AUTHORITY.match(self._url.pieces[0]) is not None
            and url_problem(self._url.sample("0")) is None
        )
        self._headers = [(k, t) for k, v in self.headers.items() if (t := parse(v)) is not None]
        self._payload = _Payload(payload)

    @property
    def has_refs(self) -> bool:
        return bool(self._url or self._headers or self._payload)

    def refs(self) -> Iterator[Ref]:
        """Every reference of the spec (url, then headers, then payload)."""
        templates = [self._url, *(t for _, t in self._headers)]
        templates += [self._payload.whole, *(t for _, _, t, _ in self._payload.holes)]
        for template in templates:
            if template is not None:
                yield from template.refs()

    def steps_needed(self) -> set[str | int]:
        """The steps (names and indexes as written) whose results a call needs: the step machine
        reads only those, so that step 9,999 of a long orchestration costs what step 1 does."""
        return {r.step for r in self.refs() if r.step is not None}

    def resolve(self, ctx: Context) -> Call:
        """The call for ``ctx``: all references replaced, or one ResolveError and no call."""
        url = self.url
        if self._url is not None:
            url = _text(self._url, ctx, "url")
            problem = _resolved_url_problem(url, self._tail_only)
            if problem:
                raise ResolvedUrlInvalid(
                    f"The url {problem} once its references are replaced: {url[:200]!r}.",
                    field="url",
                )
        headers = self.headers
        if self._headers:
            changed = {k: _text(t, ctx, f"headers.{k}") for k, t in self._headers}
            for name, message in header_problems(changed):
                raise ResolvedHeaderInvalid(
                    f"The header {name} {message} once its references are replaced.",
                    field=f"headers.{name}",
                )
            headers = {**headers, **changed}
        payload = self._payload.resolve(ctx) if self._payload else self.payload
        return Call(url, headers, payload)
