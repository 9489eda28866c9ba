"""Tests of the local function runtime: real builds, real sandboxed child processes.

The hostile cases need root (per-function uids, namespaces) and are skipped without it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from taskorch.functions import (
    BuildError,
    FunctionError,
    FunctionTimeout,
    LocalRuntime,
    SandboxLimits,
)

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
    with pytest.raises(BuildError, match="only package requirements"):
        await runtime.build(
            "fn_req",
            runtime="python",
            code=ECHO_PY,
            handler="handler",
            requirements="six\n--index-url http://127.0.0.1:6379/\n",
        )


async def test_requirements_are_installed_for_the_function(runtime: LocalRuntime) -> None:
    code = "import six\ndef handler(event, context):\n    return six.__file__\n"
    try:
        await runtime.build(
            "fn_six", runtime="python", code=code, handler="handler", requirements="six\n"
        )
    except BuildError as exc:
        if "No matching distribution" in exc.message or "connection" in exc.message.lower():
            pytest.skip(f"no package index reachable: {exc.message[-200:]}")
        raise

    result = await runtime.invoke("fn_six", None)

    assert isinstance(result, str) and result.endswith("deps/six.py")


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


@needs_root
async def test_huge_allocation_fails_inside_the_function(
    runtime: LocalRuntime, base_dir: Path
) -> None:
    code = "def handler(event, context):\n    return len(bytearray(4 * 1024 ** 3))\n"
    await build_py(runtime, "fn_mem", code)

    with pytest.raises(FunctionError, match=r"^MemoryError"):
        await runtime.invoke("fn_mem", None)

    await assert_contained(runtime, base_dir, "fn_mem")


@needs_root
async def test_fork_bomb_is_contained(runtime: LocalRuntime, base_dir: Path) -> None:
    code = "import os\ndef handler(event, context):\n    while True:\n        try:\n"
    code += "            os.fork()\n        except OSError:\n            pass\n"
    await build_py(runtime, "fn_bomb", code)
    uid = (base_dir / "fn_bomb").stat().st_uid

    with pytest.raises((FunctionTimeout, FunctionError)):
        await runtime.invoke("fn_bomb", None)

    assert await no_processes_left(uid)
    await assert_contained(runtime, base_dir, "fn_bomb")


@needs_root
async def test_huge_file_write_fails(runtime: LocalRuntime, base_dir: Path) -> None:
    code = "def handler(event, context):\n    chunk = b'x' * (16 * 1024 * 1024)\n"
    code += "    with open('big.bin', 'wb') as f:\n        for _ in range(128):\n"
    code += "            f.write(chunk)\n"
    await build_py(runtime, "fn_file", code)

    with pytest.raises(FunctionError, match=r"^OSError: \[Errno 27\] File too large"):
        await runtime.invoke("fn_file", None)

    assert (base_dir / "fn_file" / "big.bin").stat().st_size <= FAST.file_size_mb * 1024 * 1024
    await assert_contained(runtime, base_dir, "fn_file")


@needs_root
async def test_no_secret_reaches_the_function(
    runtime: LocalRuntime, base_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKORCH_JWT_SECRET", SECRET)
    monkeypatch.setenv("REDIS_PASSWORD", SECRET)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    code = """
import os

def read(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError as exc:
        return type(exc).__name__

def handler(event, context):
    pids = [name for name in os.listdir("/proc") if name.isdigit()]
    return {
        "env": dict(os.environ),
        "pid1": read("/proc/1/environ"),
        "host": read(f"/proc/{event['host_pid']}/environ"),
        "all": [read(f"/proc/{pid}/environ") for pid in pids],
        "pids": pids,
    }
"""
    await build_py(runtime, "fn_env", code)

    result = await runtime.invoke("fn_env", {"host_pid": os.getpid()})

    assert isinstance(result, dict)
    assert SECRET not in json.dumps(result)
    assert set(result["env"]) <= {"PATH", "HOME", "LANG", "TMPDIR", "LC_CTYPE"}
    # In its own PID namespace the function is PID 1: its /proc/1 is itself, and the host's
    # processes (this test's included) are not there to read at all.
    assert result["pids"] == ["1"]
    assert result["host"] == "FileNotFoundError"
    await assert_contained(runtime, base_dir, "fn_env")


@needs_root
async def test_host_network_is_unreachable(runtime: LocalRuntime, base_dir: Path) -> None:
    connections = 0

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    code = """
import socket

def handler(event, context):
    outcomes = []
    for host in ("127.0.0.1", "1.1.1.1"):
        try:
            socket.create_connection((host, event["port"]), timeout=0.5).close()
            outcomes.append("connected")
        except OSError as exc:
            outcomes.append(f"{type(exc).__name__}: {exc}")
    return outcomes
"""
    try:
        await build_py(runtime, "fn_net", code)
        outcomes = await runtime.invoke("fn_net", {"port": port})
    finally:
        server.close()
        await server.wait_closed()

    assert isinstance(outcomes, list)
    assert "connected" not in outcomes
    assert all("unreachable" in outcome or "refused" in outcome for outcome in outcomes)
    assert connections == 0
    await assert_contained(runtime, base_dir, "fn_net")


@needs_root
async def test_another_functions_files_are_unreadable(
    runtime: LocalRuntime, base_dir: Path
) -> None:
    victim = f"SECRET = {SECRET!r}\n" + ECHO_PY + "\n_h = handler\ndef handler(event, context):\n"
    victim += "    for folder in ('/var/tmp', '/dev/shm', '/tmp'):\n"
    victim += (
        "        with open(folder + '/victim-secret', 'w') as f:\n            f.write(SECRET)\n"
    )
    victim += "    return _h(event, context)\n"
    await build_py(runtime, "fn_victim", victim)
    await runtime.invoke("fn_victim", None)  # leaves its secret in the temporary folders
    code = """
import os

def attempt(action):
    try:
        return repr(action())
    except OSError as exc:
        return type(exc).__name__

def handler(event, context):
    victim = os.path.join(event["base"], "fn_victim")
    return {
        "list": attempt(lambda: os.listdir(victim)),
        "read": attempt(lambda: open(os.path.join(victim, "handler.py")).read()),
        "base": attempt(lambda: os.listdir(event["base"])),
        "own": attempt(lambda: os.listdir(".")),
        "var_tmp": attempt(lambda: open("/var/tmp/victim-secret").read()),
        "dev_shm": attempt(lambda: open("/dev/shm/victim-secret").read()),
        # The test's base_dir lies in /tmp, so there /tmp is shared: umask 077 guards it.
        "tmp": attempt(lambda: open("/tmp/victim-secret").read()),
    }
"""
    await build_py(runtime, "fn_thief", code)

    result = await runtime.invoke("fn_thief", {"base": str(base_dir)})

    assert isinstance(result, dict)
    assert result["list"] == result["read"] == result["base"] == "PermissionError"
    os.unlink("/tmp/victim-secret")
    # /var/tmp and /dev/shm are each function's own tmp/ folder, not the host's shared ones.
    assert result["var_tmp"] == result["dev_shm"] == "FileNotFoundError"
    assert (base_dir / "fn_victim" / "tmp" / "victim-secret").read_text() == SECRET
    assert not await asyncio.to_thread(os.path.exists, "/var/tmp/victim-secret")
    assert result["tmp"] == "PermissionError"
    assert "handler.py" in result["own"]
    assert SECRET not in json.dumps(result)
    assert (base_dir / "fn_victim").stat().st_uid != (base_dir / "fn_thief").stat().st_uid
    await assert_contained(runtime, base_dir, "fn_thief")


@needs_root
async def test_without_namespaces_the_uid_still_catches_escaped_processes(
    base_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_namespaces(self: LocalRuntime) -> list[str]:
        return []

    monkeypatch.setattr(LocalRuntime, "_probe_namespaces", no_namespaces)
    rt = LocalRuntime(base_dir, limits=FAST)
    code = "import subprocess\ndef handler(event, context):\n"
    code += "    subprocess.Popen(['sleep', '60'], start_new_session=True)  # leaves our group\n"
    code += "    while True:\n        pass\n"
    try:
        await build_py(rt, "fn_escape", code)
        uid = (base_dir / "fn_escape").stat().st_uid

        with pytest.raises(FunctionTimeout):
            await rt.invoke("fn_escape", None)

        assert await no_processes_left(uid)
        await assert_contained(rt, base_dir, "fn_escape")
    finally:
        await rt.close()
