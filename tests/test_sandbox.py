"""Tests of the local function runtime: real builds, real sandboxed instances, the source rules
and the refusal to run without a sandbox. Attacks on the sandbox live in tests/hostile/.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from taskorch.api import create_app
from taskorch.errors import ConfigError
from taskorch.functions import (
    BuildError,
    FunctionError,
    FunctionTimeout,
    LocalRuntime,
    SandboxLimits,
    jail,
    local_runtime,
    source,
)
from taskorch.settings import Settings

SECRET = "topsecret-0123456789abcdef0123456789abcdef"
FAST = SandboxLimits(timeout_s=1.0, cpu_s=20, idle_s=60.0)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="isolation needs root")
needs_node = pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
needs_java = pytest.mark.skipif(
    shutil.which("javac") is None or shutil.which("java") is None,
    reason="a JDK (javac, java) is not installed",
)

ECHO_PY = """
import os, uuid
TOKEN = uuid.uuid4().hex  # one per process: tells a warm call from a cold one

def handler(event, context):
    print("a line for the log, not for the protocol")
    return {
        "event": event,
        "token": TOKEN,
        "pid": os.getpid(),
        "name": context.function_name,
        "request_id": context.aws_request_id,
        "remaining_ms": context.get_remaining_time_in_millis(),
    }
"""

ECHO_JAVA = """
import java.util.*;

public class Echo {
    private static final String TOKEN = UUID.randomUUID().toString();
    private int calls;

    public Object handle(Map<String, Object> event) {
        calls++;
        System.out.println("a line for the log");
        Map<String, Object> out = new LinkedHashMap<>();
        out.put("event", event);
        out.put("calls", calls);
        out.put("token", TOKEN);
        out.put("numbers", new double[] {1.5, -2});
        return out;
    }

    public static String greet(Map<String, Object> event) {
        return "hello " + event.get("name");
    }

    public static Object fail(Map<String, Object> event) {
        throw new IllegalStateException("boom");
    }
}
"""


@pytest.fixture
def base_dir() -> Iterator[Path]:
    # Not tmp_path: pytest keeps /tmp/pytest-of-root at 0700, which the functions' own uids
    # could not pass through to reach their folders.
    path = Path(tempfile.mkdtemp(prefix="taskorch-fn-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def runtime(base_dir: Path) -> AsyncIterator[LocalRuntime]:
    rt = LocalRuntime(base_dir, limits=FAST)
    yield rt
    await rt.close()


def processes_of(uid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            status = (entry / "status").read_text() if entry.name.isdigit() else ""
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("Uid:") and line.split()[1] == str(uid):
                pids.append(int(entry.name))
    return pids


async def no_processes_left(uid: int, wait_s: float = 3.0) -> bool:
    deadline = time.monotonic() + wait_s
    while processes_of(uid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def assert_contained(rt: LocalRuntime, base_dir: Path, function_id: str) -> None:
    """Nothing of the function survives its removal, and the runtime still serves others."""
    uid = (base_dir / function_id).stat().st_uid
    await rt.remove(function_id)
    assert await no_processes_left(uid), f"processes of uid {uid} left: {processes_of(uid)}"
    await rt.build("healthy", runtime="python", code=ECHO_PY, handler="handler")
    result = await rt.invoke("healthy", {"still": "fine"})
    assert isinstance(result, dict) and result["event"] == {"still": "fine"}


async def build_py(rt: LocalRuntime, function_id: str, code: str) -> None:
    await rt.build(function_id, runtime="python", code=code, handler="handler")


# -- python ------------------------------------------------------------------------------------


async def test_python_function_answers_an_event(runtime: LocalRuntime) -> None:
    await build_py(runtime, "fn_echo", ECHO_PY)

    result = await runtime.invoke("fn_echo", {"n": 1, "list": [1, 2.5, None, "é"]})

    assert isinstance(result, dict)
    assert result["event"] == {"n": 1, "list": [1, 2.5, None, "é"]}
    assert result["name"] == "fn_echo"
    assert len(result["request_id"]) == 36
    assert 0 < result["remaining_ms"] <= 1000


async def test_async_python_handler(runtime: LocalRuntime) -> None:
    code = "import asyncio\nasync def handler(event, context):\n    await asyncio.sleep(0)\n"
    await build_py(runtime, "fn_async", code + "    return event['x'] * 2\n")

    assert await runtime.invoke("fn_async", {"x": 21}) == 42
    assert await runtime.invoke("fn_async", {"x": 2}) == 4


async def test_warm_call_reuses_the_process(runtime: LocalRuntime) -> None:
    await build_py(runtime, "fn_warm", ECHO_PY)

    results = [await runtime.invoke("fn_warm", i) for i in range(3)]

    assert isinstance(results[0], dict)
    assert {r["token"] for r in results if isinstance(r, dict)} == {results[0]["token"]}
    assert {r["pid"] for r in results if isinstance(r, dict)} == {results[0]["pid"]}


@needs_root
async def test_idle_process_is_stopped_and_the_next_call_cold_starts(base_dir: Path) -> None:
    rt = LocalRuntime(base_dir, limits=SandboxLimits(timeout_s=1.0, idle_s=0.2))
    try:
        await build_py(rt, "fn_idle", ECHO_PY)
        first = await rt.invoke("fn_idle", None)
        uid = (base_dir / "fn_idle").stat().st_uid
        assert processes_of(uid)

        assert await no_processes_left(uid, wait_s=2.0)
        second = await rt.invoke("fn_idle", None)

        assert isinstance(first, dict) and isinstance(second, dict)
        assert first["token"] != second["token"]
    finally:
        await rt.close()


async def test_parallel_calls_get_their_own_processes(base_dir: Path) -> None:
    rt = LocalRuntime(base_dir, limits=SandboxLimits(timeout_s=5.0, max_instances=2))
    code = "import time, uuid\nTOKEN = uuid.uuid4().hex\ndef handler(event, context):\n"
    try:
        # the function's own sleep is the subject: three calls that overlap
        await build_py(rt, "fn_par", code + "    time.sleep(0.4)\n    return TOKEN\n")
        await rt.invoke("fn_par", None)  # one warm process exists already
        started = time.monotonic()

        tokens = await asyncio.gather(*(rt.invoke("fn_par", None) for _ in range(3)))

        elapsed = time.monotonic() - started
        assert len(set(tokens)) == 2  # at most two processes...
        assert 0.8 <= elapsed < 2.0  # ...so the third call waited for one
    finally:
        await rt.close()


async def test_handler_exception_is_a_function_error_and_the_process_survives(
    runtime: LocalRuntime,
) -> None:
    code = ECHO_PY + "\ndef boom(event, context):\n    raise ValueError('boom')\n"
    await runtime.build("fn_boom", runtime="python", code=code, handler="boom")
    await runtime.build("fn_ok", runtime="python", code=code, handler="handler")

    with pytest.raises(FunctionError) as caught:
        await runtime.invoke("fn_boom", {})
    assert caught.value.message == "ValueError: boom"
    assert 'File "handler.py"' in caught.value.trace
    with pytest.raises(FunctionError) as again:
        await runtime.invoke("fn_boom", {})
    assert again.value.message == "ValueError: boom"


async def test_handler_exception_keeps_the_warm_process(runtime: LocalRuntime) -> None:
    code = ECHO_PY + "\n    \nif True:\n    _h = handler\n    def handler(event, context):\n"
    code += "        if event == 'fail':\n            raise KeyError('nope')\n"
    code += "        return _h(event, context)\n"
    await build_py(runtime, "fn_flaky", code)

    before = await runtime.invoke("fn_flaky", 1)
    with pytest.raises(FunctionError, match="KeyError: 'nope'"):
        await runtime.invoke("fn_flaky", "fail")
    after = await runtime.invoke("fn_flaky", 2)

    assert isinstance(before, dict) and isinstance(after, dict)
    assert before["token"] == after["token"]


async def test_result_that_is_not_json_is_a_function_error(runtime: LocalRuntime) -> None:
    await build_py(runtime, "fn_set", "def handler(event, context):\n    return {1, 2}\n")

    with pytest.raises(FunctionError, match="TypeError: Object of type set is not JSON"):
        await runtime.invoke("fn_set", None)


async def test_timeout_kills_the_call_quickly_and_the_next_call_cold_starts(
    runtime: LocalRuntime,
) -> None:
    code = ECHO_PY + "\n_h = handler\ndef handler(event, context):\n"
    code += "    if event == 'sleep':\n        import time; time.sleep(30)\n"
    code += "    return _h(event, context)\n"
    await build_py(runtime, "fn_slow", code)
    first = await runtime.invoke("fn_slow", None)
    started = time.monotonic()

    with pytest.raises(FunctionTimeout) as caught:
        await runtime.invoke("fn_slow", "sleep")

    assert 1.0 <= time.monotonic() - started < 2.5
    assert "fn_slow did not answer within 1 s" in caught.value.message
    second = await runtime.invoke("fn_slow", None)
    assert isinstance(first, dict) and isinstance(second, dict)
    assert first["token"] != second["token"]


async def test_crashed_process_is_a_function_error_and_the_next_call_cold_starts(
    runtime: LocalRuntime,
) -> None:
    code = ECHO_PY + "\n_h = handler\ndef handler(event, context):\n"
    code += "    if event == 'exit':\n        print('bye'); os._exit(3)\n"
    code += "    return _h(event, context)\n"
    await build_py(runtime, "fn_exit", code)

    with pytest.raises(FunctionError) as caught:
        await runtime.invoke("fn_exit", "exit")

    assert caught.value.message.startswith("function process exited (code 3)")
    assert "bye" in caught.value.message  # the last output helps to see why
    result = await runtime.invoke("fn_exit", "fine")
    assert isinstance(result, dict) and result["event"] == "fine"


async def test_process_killed_by_a_limit_says_so(base_dir: Path) -> None:
    rt = LocalRuntime(base_dir, limits=SandboxLimits(timeout_s=5.0))
    code = "import resource\ndef handler(event, context):\n"
    code += "    resource.setrlimit(resource.RLIMIT_CPU, (1, 1))\n    while True:\n        pass\n"
    try:
        await build_py(rt, "fn_cpu", code)

        with pytest.raises(FunctionError) as caught:
            await rt.invoke("fn_cpu", None)

        assert caught.value.message.startswith(
            "function process exited (signal 9: killed, probably a resource limit)"
        )
    finally:
        await rt.close()


async def test_python_build_errors_carry_the_useful_message(runtime: LocalRuntime) -> None:
    with pytest.raises(BuildError) as syntax:
        await build_py(runtime, "fn_bad", "def handler(event, context)\n    return 1\n")
    assert 'File "handler.py", line 1' in syntax.value.message
    assert "SyntaxError" in syntax.value.message

    with pytest.raises(BuildError) as missing:
        await build_py(runtime, "fn_bad", "def other(event, context):\n    return 1\n")
    assert missing.value.message == "AttributeError: handler.py defines no 'handler'"

    with pytest.raises(BuildError) as imports:
        await build_py(runtime, "fn_bad", "import no_such_module_here\n")
    assert "ModuleNotFoundError: No module named 'no_such_module_here'" in imports.value.message

    with pytest.raises(KeyError):
        await runtime.invoke("fn_bad", None)


async def test_requirements_with_pip_options_are_refused(runtime: LocalRuntime) -> None:
    with pytest.raises(BuildError, match=r"requirements line 2 \('--index-url.*is not allowed"):
        await runtime.build(
            "fn_req",
            runtime="python",
            code=ECHO_PY,
            handler="handler",
            requirements="six==1.16.0\n--index-url http://127.0.0.1:6379/\n",
        )


async def test_requirements_are_installed_for_the_function(runtime: LocalRuntime) -> None:
    code = "import six\ndef handler(event, context):\n    return six.__file__\n"
    try:
        await runtime.build(
            "fn_six", runtime="python", code=code, handler="handler", requirements="six>=1.16\n"
        )
    except BuildError as exc:
        if "No matching distribution" in exc.message or "connection" in exc.message.lower():
            pytest.skip(f"no package index reachable: {exc.message[-200:]}")
        raise

    result = await runtime.invoke("fn_six", None)

    assert result == "/var/task/deps/six.py"


async def test_unknown_function_is_a_key_error(runtime: LocalRuntime) -> None:
    with pytest.raises(KeyError):
        await runtime.invoke("fn_never_built", None)
    with pytest.raises(ValueError, match="invalid function id"):
        await runtime.invoke("../etc", None)


async def test_remove_deletes_the_folder_and_the_function(
    runtime: LocalRuntime, base_dir: Path
) -> None:
    await build_py(runtime, "fn_gone", ECHO_PY)
    await runtime.invoke("fn_gone", None)

    await runtime.remove("fn_gone")

    assert not (base_dir / "fn_gone").exists()
    with pytest.raises(KeyError):
        await runtime.invoke("fn_gone", None)
    await runtime.remove("fn_gone")  # removing twice is fine


async def test_rebuild_replaces_the_code(runtime: LocalRuntime) -> None:
    await build_py(runtime, "fn_v", "def handler(event, context):\n    return 1\n")
    assert await runtime.invoke("fn_v", None) == 1

    await build_py(runtime, "fn_v", "def handler(event, context):\n    return 2\n")

    assert await runtime.invoke("fn_v", None) == 2


async def test_a_new_runtime_serves_functions_built_before(base_dir: Path) -> None:
    first = LocalRuntime(base_dir, limits=FAST)
    await build_py(first, "fn_keep", ECHO_PY)
    await first.close()

    second = LocalRuntime(base_dir, limits=FAST)
    try:
        result = await second.invoke("fn_keep", "again")
    finally:
        await second.close()

    assert isinstance(result, dict) and result["event"] == "again"


# -- node --------------------------------------------------------------------------------------


@needs_node
async def test_node_function_answers_an_event(runtime: LocalRuntime) -> None:
    code = """
const token = Math.random();
exports.handler = async (event, context) => {
  console.log('a line for the log');
  return { event, token, name: context.functionName };
};
exports.plain = (event) => event.n + 1;
exports.callback = (event, context, callback) => callback(null, 'called back');
"""
    await runtime.build("fn_node", runtime="node", code=code, handler="handler")
    await runtime.build("fn_plain", runtime="node", code=code, handler="plain")
    await runtime.build("fn_cb", runtime="node", code=code, handler="callback")

    first = await runtime.invoke("fn_node", {"a": [1, "x"]})
    second = await runtime.invoke("fn_node", {})

    assert isinstance(first, dict) and isinstance(second, dict)
    assert first["event"] == {"a": [1, "x"]} and first["name"] == "fn_node"
    assert first["token"] == second["token"]
    assert await runtime.invoke("fn_plain", {"n": 41}) == 42
    assert await runtime.invoke("fn_cb", None) == "called back"


@needs_node
async def test_node_es_module_and_errors(runtime: LocalRuntime) -> None:
    code = "export const handler = async (event) => {\n"
    code += "  if (event.fail) throw new RangeError('too far');\n  return event;\n};\n"
    await runtime.build("fn_esm", runtime="node", code=code, handler="handler")

    assert await runtime.invoke("fn_esm", {"ok": True}) == {"ok": True}
    with pytest.raises(FunctionError, match=r"^RangeError: too far$") as caught:
        await runtime.invoke("fn_esm", {"fail": True})
    assert "at handler (index.mjs:2:" in caught.value.trace


@needs_node
async def test_node_build_errors_carry_the_useful_message(runtime: LocalRuntime) -> None:
    with pytest.raises(BuildError) as syntax:
        await runtime.build(
            "fn_nbad",
            runtime="node",
            code="exports.handler = async (event) => {\n  return {a: 1,, };\n};\n",
            handler="handler",
        )
    assert syntax.value.message.startswith("index.js:2\n  return {a: 1,, };\n")
    assert "SyntaxError: Unexpected token ','" in syntax.value.message
    assert "node:internal" not in syntax.value.message

    with pytest.raises(BuildError, match=r'index\.js does not export "handler"'):
        await runtime.build(
            "fn_nbad", runtime="node", code="exports.other = () => 1;\n", handler="handler"
        )


# -- java --------------------------------------------------------------------------------------


@needs_java
async def test_java_function_answers_an_event(runtime: LocalRuntime) -> None:
    await runtime.build("fn_java", runtime="java", code=ECHO_JAVA, handler="Echo::handle")
    event = {"s": 'é\n"', "i": 7, "big": 12345678901234, "f": 0.25, "l": [True, None, {}]}

    first = await runtime.invoke("fn_java", event)
    second = await runtime.invoke("fn_java", {})

    assert isinstance(first, dict) and isinstance(second, dict)
    assert first["event"] == event
    assert first["numbers"] == [1.5, -2.0]
    assert (first["calls"], second["calls"]) == (1, 2)  # one instance, kept warm
    assert first["token"] == second["token"]


@needs_java
async def test_java_static_method_string_result_and_exception(runtime: LocalRuntime) -> None:
    await runtime.build("fn_greet", runtime="java", code=ECHO_JAVA, handler="Echo::greet")
    await runtime.build("fn_jfail", runtime="java", code=ECHO_JAVA, handler="Echo::fail")

    assert await runtime.invoke("fn_greet", {"name": "ada"}) == "hello ada"
    with pytest.raises(FunctionError) as caught:
        await runtime.invoke("fn_jfail", {})
    assert caught.value.message == "java.lang.IllegalStateException: boom"


@needs_java
async def test_java_build_errors_carry_the_useful_message(runtime: LocalRuntime) -> None:
    broken = ECHO_JAVA.replace("calls++;", "calls++")
    with pytest.raises(BuildError) as compile_error:
        await runtime.build("fn_jbad", runtime="java", code=broken, handler="Echo::handle")
    assert "Echo.java:" in compile_error.value.message
    assert "error: ';' expected" in compile_error.value.message

    with pytest.raises(BuildError) as missing:
        await runtime.build("fn_jbad", runtime="java", code=ECHO_JAVA, handler="Echo::nothing")
    assert "class Echo has no public method nothing" in missing.value.message


# -- hostile functions -------------------------------------------------------------------------


@needs_root
async def test_endless_loop_is_stopped_at_the_timeout(
    runtime: LocalRuntime, base_dir: Path
) -> None:
    await build_py(
        runtime, "fn_loop", "def handler(event, context):\n    while True:\n        pass\n"
    )
    started = time.monotonic()

    with pytest.raises(FunctionTimeout):
        await runtime.invoke("fn_loop", None)

    assert time.monotonic() - started < 2.5
    assert await no_processes_left((base_dir / "fn_loop").stat().st_uid)
    await assert_contained(runtime, base_dir, "fn_loop")


# -- source rules, written once for the local runtime and AWS -------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("requests==2.32.3", ["requests==2.32.3"]),
        ("# tools\n\nPyYAML >= 6.0 , < 7  # pinned below 7\n", ["PyYAML>=6.0,<7"]),
        ("pydantic[email]~=2.7\nsix===1.16.0", ["pydantic[email]~=2.7", "six===1.16.0"]),
        ("", []),
    ],
)
def test_requirements_are_names_with_versions(text: str, expected: list[str]) -> None:
    assert source.parse_requirements("python", text) == expected


@pytest.mark.parametrize(
    "line",
    [
        "tmp/../../fn_other/evil",
        "fn_other/evil==1.0",
        "./pkg",
        "six",
        "six==1.0 ; python_version > '3'",
        "six @ https://example.com/six.whl",
        "-r /etc/passwd",
        "six==1.0 --hash=sha256:00",
        "six==1.0+local",
        "six==../1",
    ],
)
def test_requirements_beyond_names_and_versions_are_refused(line: str) -> None:
    with pytest.raises(BuildError, match=r"requirements line 2 .* is not allowed"):
        source.parse_requirements("python", f"six==1.16.0\n{line}\n")


@pytest.mark.parametrize(
    ("code", "entry"),
    [
        ("exports.handler = async () => 1;", "index.js"),
        ("const x = await import('./y.js');\nmodule.exports.handler = x;", "index.js"),
        ("export const handler = async () => 1;", "index.mjs"),
        ("export default function () {}", "index.mjs"),
        ("import fs from 'fs';\nexports.handler = () => fs;", "index.mjs"),
        ("import { readFileSync } from 'fs';", "index.mjs"),
        ("import 'side-effect';", "index.mjs"),
        ("// export const handler = 1\nexports.handler = () => 1;", "index.js"),
    ],
)
def test_es_modules_are_told_from_commonjs(code: str, entry: str) -> None:
    assert source.node_entry(code) == entry


def test_java_layout_follows_the_public_type_and_package() -> None:
    code = "// public class Decoy {}\npackage a.b;\n\npublic final class Main { }\nclass H {}\n"
    assert source.java_layout(code, "H::run") == source.JavaLayout("Main", "a.b.H", "run")
    with pytest.raises(BuildError, match="must look like Class::method"):
        source.java_layout(code, "H.run")


# -- refusing to run unsafe -------------------------------------------------------------------


@pytest.fixture
def no_bwrap(monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = shutil.which

    def which(name: str, *args: object, **kw: object) -> str | None:
        return None if name == "bwrap" else real_which(name, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(jail.shutil, "which", which)
    monkeypatch.setattr(jail, "_probed", {})


def test_without_a_sandbox_provider_local_is_refused_at_start(
    no_bwrap: None, base_dir: Path
) -> None:
    settings = Settings.from_env(
        {"TASKORCH_JWT_SECRET": SECRET, "TASKORCH_FUNCTIONS_DIR": str(base_dir)}
    )

    with pytest.raises(ConfigError) as caught:
        create_app(settings)

    message = str(caught.value)
    assert "\n" not in message
    assert "bwrap not found: install bubblewrap" in message
    assert "TASKORCH_UNSAFE_FUNCTIONS=1" in message


async def test_unsafe_functions_run_unisolated_when_the_operator_says_so(
    no_bwrap: None, base_dir: Path
) -> None:
    rt = LocalRuntime(base_dir, limits=FAST, unsafe=True)
    try:
        assert not rt.isolated
        await build_py(rt, "fn_unsafe", ECHO_PY)
        result = await rt.invoke("fn_unsafe", {"x": 1})
        assert isinstance(result, dict) and result["event"] == {"x": 1}
    finally:
        await rt.close()


def test_with_the_aws_default_a_host_without_sandbox_only_loses_local_functions(
    no_bwrap: None, base_dir: Path
) -> None:
    settings = Settings.from_env(
        {
            "TASKORCH_JWT_SECRET": SECRET,
            "TASKORCH_FUNCTIONS_DIR": str(base_dir),
            "TASKORCH_FUNCTION_PROVIDER": "aws",
            "TASKORCH_AWS_REGION": "us-east-1",
            "TASKORCH_AWS_LAMBDA_ROLE": "arn:aws:iam::123456789012:role/taskorch",
        }
    )
    assert local_runtime(settings) is None
