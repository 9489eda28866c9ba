"""The Lua scripts as files (issue #20): taskorch/lua/*.lua and lib/*.lua, read by one loader.

Every include resolves (and a missing one or a cycle is an error), no ``${NAME}`` is left, no
helper is defined twice, every script compiles on a real redis-server, the files ship in the
wheel, and no Lua is left inside a Python string of the package.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import redis

from taskorch import lua, queues
from taskorch.models import Queue, QueueUpdate
from tests.conftest import RedisServer

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "taskorch"
LUA = PACKAGE / "lua"
FILES = sorted(LUA.glob("*.lua")) + sorted((LUA / "lib").glob("*.lua"))
_FUNCTION = re.compile(r"^local function ([A-Za-z_][A-Za-z0-9_]*)", re.M)


def test_every_script_file_is_loaded_and_every_include_resolves() -> None:
    scripts = {p.stem for p in LUA.glob("*.lua")}
    libs = {p.stem for p in (LUA / "lib").glob("*.lua")}
    assert {"claim", "start", "finish", "reap", "create_tasks", "sched_make"} <= scripts
    assert set(lua.SCRIPTS) == scripts
    used: set[str] = set()
    for path in FILES:
        includes, body = lua._read(str(path.relative_to(LUA).with_suffix("")))
        assert set(includes) <= libs, (path.name, includes)
        used.update(includes)
        assert "@include" not in body, path.name  # includes are in the file's opening lines
        header = path.read_text()[: -len(body) or None]
        assert header.startswith("--"), f"{path.name} has no header comment"
    assert used == libs, f"libs no script includes: {libs - used}"


def test_a_missing_include_or_a_cycle_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    files = {
        "top": (["a"], "top\n"),
        "lib/a": (["b"], "a\n"),
        "lib/b": (["a"], "b\n"),
        "lone": (["nowhere"], "x\n"),
        "twice": (["c", "d"], "twice ${TASK}\n"),
        "lib/c": (["d"], "c\n"),
        "lib/d": ([], "d\n"),
        "odd": ([], "${NO_SUCH_CONSTANT}\n"),
    }

    def read(name: str) -> tuple[list[str], str]:
        if name not in files:
            raise lua.LuaError(f"no Lua file taskorch/lua/{name}.lua")
        return files[name]

    monkeypatch.setattr(lua, "_read", read)
    with pytest.raises(
        lua.LuaError, match=re.escape("include cycle in top.lua: top -> a -> b -> a")
    ):
        lua.build("top")
    with pytest.raises(lua.LuaError, match=re.escape("no Lua file taskorch/lua/lib/nowhere.lua")):
        lua.build("lone")
    with pytest.raises(lua.LuaError, match="NO_SUCH_CONSTANT"):
        lua.build("odd")
    # A lib named twice (here by a lib and by the script) is expanded once, before its user.
    assert lua.build("twice") == "d\nc\ntwice t:\n"


def test_no_placeholder_is_left_and_no_helper_is_defined_twice() -> None:
    for name, text in lua.SCRIPTS.items():
        assert "${" not in text, name
        assert "@include" not in text, name
        defined = _FUNCTION.findall(text)
        twice = {f for f in defined if defined.count(f) > 1}
        assert not twice, f"{name}.lua defines {twice} more than once"
    owners: dict[str, str] = {}
    for path in sorted((LUA / "lib").glob("*.lua")):
        for f in _FUNCTION.findall(path.read_text()):
            assert f not in owners, f"{f} is defined in {owners[f]} and {path.name}"
            owners[f] = path.name


def test_every_script_compiles_on_redis(redis_server: RedisServer) -> None:
    client = redis.Redis(port=redis_server.port)
    try:
        for name, text in lua.SCRIPTS.items():
            try:
                client.script_load(text)
            except redis.ResponseError as exc:
                pytest.fail(f"{name}.lua does not compile: {exc}")
    finally:
        client.close()


def test_no_lua_inside_a_python_string_of_the_package() -> None:
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        assert "redis.call(" not in text and "redis.pcall(" not in text, path


def test_the_wheel_ships_every_lua_file(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("taskorch-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [p for p in FILES if str(p.relative_to(ROOT)) not in names]
    assert not missing, missing


def test_store_and_migrate_form_no_import_circle() -> None:
    """The store package never imports migrate.py (the old layout's check is in oldlayout.py), so
    neither hides an import inside a function to dodge a circle."""

    def imported(module: str) -> set[str]:
        path = PACKAGE / module
        files = sorted(path.glob("*.py")) if path.is_dir() else [PACKAGE / f"{module}.py"]
        out: set[str] = set()
        for node in (n for f in files for n in ast.walk(ast.parse(f.read_text()))):
            if isinstance(node, ast.ImportFrom) and node.module:
                out.add(node.module)
                out.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                out.update(a.name for a in node.names)
        return out

    assert "taskorch.migrate" not in imported("store")
    assert "taskorch.store" in imported("migrate")
    top = {
        n.module
        for n in ast.parse((PACKAGE / "migrate.py").read_text()).body
        if isinstance(n, ast.ImportFrom)
    }
    assert "taskorch.store" in top  # at the top: nothing to dodge


def test_an_owner_runs_only_the_scripts_it_registered() -> None:
    """lua.Scripts names each script as its file; a script the owner did not register, or a
    file that does not exist, is an error at once rather than a None run later."""

    class _Fake:
        def register_script(self, script: str) -> str:
            return script

    owned = lua.Scripts(_Fake(), "queue_get", "queue_put")  # type: ignore[arg-type]
    assert owned.queue_put == lua.text("queue_put")
    with pytest.raises(AttributeError, match="queue_list"):
        _ = owned.queue_list
    with pytest.raises(lua.LuaError, match="no_such_script"):
        lua.Scripts(_Fake(), "no_such_script")  # type: ignore[arg-type]


# The scripts whose ARGV is one map, and the struct the Python side sends it as.
_ARGV_MAPS: dict[str, type] = {"queue_put": queues._PutArgs}
_MAP_HEADER = re.compile(r"^-- ARGV\[1\]: a map \{([^}]*)\}", re.M)


def test_each_argv_map_is_named_in_its_header_as_the_python_side_sends_it() -> None:
    """A script that takes one named map says so in its header, ``-- ARGV[1]: a map {k, ...}``,
    naming the keys in the order of the struct that sends it; its body reads those keys (as
    ``A.<key>``) and no other argument."""
    mapped = set()
    for path in sorted(LUA.glob("*.lua")):
        _, body = lua._read(path.stem)
        m = _MAP_HEADER.search(path.read_text()[: -len(body) or None])
        if not m:
            continue
        mapped.add(path.stem)
        named = [k.strip() for k in m.group(1).split(",")]
        assert path.stem in _ARGV_MAPS, f"{path.name} takes a map: name its struct in _ARGV_MAPS"
        assert named == list(_ARGV_MAPS[path.stem].__struct_fields__), path.name
        assert set(re.findall(r"\bA\.([a-z_]+)", body)) == set(named), path.name
        assert set(re.findall(r"ARGV\[(\d+)\]", body)) == {"1"}, path.name
    assert mapped == set(_ARGV_MAPS)


def test_lib_queue_names_the_settings_as_the_models_do() -> None:
    """lib/queue.lua's field list is where a queue setting is named for the Lua: each of
    QueueUpdate's fields, which Queue answers too, and nothing else."""
    text = (LUA / "lib" / "queue.lua").read_text()
    settings = re.findall(r"\bsetting = '([a-z_]+)'", text)
    assert settings == list(QueueUpdate.__struct_fields__)
    assert set(settings) <= set(Queue.__struct_fields__)
