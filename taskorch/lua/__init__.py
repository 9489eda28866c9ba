"""The Lua scripts that make every state change atomic in Redis, and their one loader.

Every script is a file of this package, ``<name>.lua``; shared helpers are in ``lib/<name>.lua``.
A file opens with a header of ``--`` comment lines naming its KEYS, ARGV and what it returns, and
``--- @include "<lib>"`` lines (BullMQ's convention) that pull in helpers: each lib once per
script, before the body, in the order first named (a lib's own includes come before it). The
header and include lines are not part of the script Redis runs. ``${NAME}`` stands for
``taskorch.constants.NAME`` (or one of the few values derived from them, :data:`DERIVED`), so
that every key name and limit comes from constants.py and the text Redis runs has the values
spelled out, as literals in the code (a generated Lua prelude of constants could not put them
inside the key-name strings, and would add locals to scripts near Lua's limit of 200).
Everything is read, expanded and checked at import: an unknown include, an include cycle or an
unknown ``${NAME}`` is an error then, not at a script's first call.

Most scripts start with the prelude (lib/prelude.lua). A status change, its index update, the
enqueueing of the next job and the event for the live view happen in one script, so a crash can
never leave a task half-changed: that is what "nothing lost" rests on.

The partitioned layout (issue #10, taskorch/partitions.py): every script runs in ONE partition. It
is routed by ``KEYS[1]``, the partition's queue ``taskorch:{<tag>}:q``, and every key it derives
(``P .. 't:' .. id`` and so on, ``P`` from lib/partition.lua) starts with the same prefix, hence
carries the same hash tag and lies in the same Redis Cluster slot. Nothing a script writes is
global.

A task record is ONE string: a msgpack map with short field names, defaults left out, the id not
stored (it is in the key) and the spec an opaque JSON string that Lua never re-encodes (cjson would
round numbers). Fields: o owner, s status, h url, p the rest of the spec (JSON, short names: see
store.records._StoredSpec; a step's whole spec, url included, when h is absent), n name, r run_at (ms after the id's own time,
a small number), c created_at (left out when
it is the id's own time), u updated_at (left out when it equals created_at), g generation,
a attempt, l lost attempts, oi orchestration id, sc the schedule that made it, st/sf/sb started_at,
scheduled_for, started_by (while running), lj/rj lost_job/retry_job (a reaper's take-back marks),
ft finished_at, q queue (absent for default), qa admitted by its queue (see taskorch/queues.py);
issue #12: b the attempts made before the last redrive (retries count from there), cj the
callback job due.
A task's job is ``<id>.<generation>`` while it is scheduled, retrying or running, and has no
definition of its own.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Protocol

from redis.commands.core import AsyncScript

from taskorch import constants as c

# The ${NAME} values that are not a constant as it stands, each derived from constants.py here.
DERIVED: dict[str, object] = {
    "QUEUE_CUT": len(c.QUEUE) + 1,  # string.sub(KEYS[1], 1, -QUEUE_CUT): the partition prefix
    "MIN_RETRY_DELAY_MS": int(c.MIN_RETRY_DELAY_S * 1000),
    "CLAIM_AHEAD_MS_TWICE": 2 * c.CLAIM_AHEAD_MS,
}

_INCLUDE = re.compile(r'--- @include "([a-z0-9_]+)"')
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z0-9_]*)\}")


class LuaError(Exception):
    """A script that cannot be built: a missing file or include, a cycle, an unknown ${NAME}."""


class _Registers(Protocol):
    def register_script(self, script: str) -> AsyncScript: ...


def _read(name: str) -> tuple[list[str], str]:
    """A file's includes and its body: the header and include lines (its leading ``--`` lines)
    taken off. ``name`` is the path below this package without ``.lua`` (``lib/prelude``)."""
    path = resources.files(__name__)
    for part in f"{name}.lua".split("/"):
        path = path.joinpath(part)
    if not path.is_file():
        raise LuaError(f"no Lua file taskorch/lua/{name}.lua")
    text = path.read_text("utf-8")
    includes: list[str] = []
    while text.startswith("--"):
        line, _, text = text.partition("\n")
        m = _INCLUDE.fullmatch(line)
        if m:
            includes.append(m.group(1))
    return includes, text


def _value(m: re.Match[str]) -> str:
    name = m.group(1)
    if name in DERIVED:
        return f"{DERIVED[name]}"
    if name.isupper() and hasattr(c, name):
        return f"{getattr(c, name)}"
    raise LuaError(f"unknown ${{{name}}}: not in taskorch.constants nor lua.DERIVED")


def build(name: str) -> str:
    """The text Redis runs for script ``name``: its includes expanded once each, depth first in
    the order named, then its body; every ``${NAME}`` replaced."""
    parts: list[str] = []
    done: set[str] = set()

    def expand(file: str, stack: tuple[str, ...]) -> None:
        includes, body = _read(file)
        for lib in includes:
            if lib in stack:
                raise LuaError(f"include cycle in {name}.lua: {' -> '.join((*stack, lib))}")
            if lib not in done:
                expand(f"lib/{lib}", (*stack, lib))
                done.add(lib)
        parts.append(body)

    expand(name, (name,))
    return _PLACEHOLDER.sub(_value, "".join(parts))


def names() -> list[str]:
    """Every script of the package (lib/ holds helpers, not scripts)."""
    root = resources.files(__name__)
    return sorted(p.name[: -len(".lua")] for p in root.iterdir() if p.name.endswith(".lua"))


SCRIPTS: dict[str, str] = {n: build(n) for n in names()}


def text(name: str) -> str:
    """Script ``name``'s text as Redis runs it (``claim`` for claim.lua)."""
    return SCRIPTS[name]


def register(redis: _Registers, name: str) -> AsyncScript:
    """``redis.register_script`` of script ``name``: what callers run with cluster.run_script."""
    return redis.register_script(SCRIPTS[name])


class Scripts:
    """The scripts one store object runs, registered once on its Redis client and named as their
    files: ``Scripts(redis, "queue_get", "queue_put").queue_put``. A name not registered here is
    an AttributeError; an unknown file is a LuaError at construction."""

    def __init__(self, redis: _Registers, *names: str) -> None:
        for name in names:
            if name not in SCRIPTS:
                raise LuaError(f"no Lua file taskorch/lua/{name}.lua")
            self.__dict__[name] = register(redis, name)

    def __getattr__(self, name: str) -> AsyncScript:
        raise AttributeError(f"script {name!r} is not registered by this owner")
