"""The local function runtime: build one uploaded source file, then run it in warm, sandboxed
child processes, the way AWS Lambda runs a function (no HTTP and no Redis here).

Each function lives in `<base_dir>/<function_id>/` (mode 0700). When the service runs as root,
the folder belongs to a uid/gid of the function's own, picked in 100000..164999 and remembered
as the folder's owner, so functions cannot read each other's files and RLIMIT_NPROC (counted per
uid) keeps a fork bomb inside its function. A child process is started as

    setpriv --pdeathsig  prlimit <limits>  unshare --net --pid --fork --kill-child --mount-proc
        sh -c <umask, bind mounts>  setpriv --reuid/--regid <uid> --clear-groups --no-new-privs
        <runtime> <bootstrap>

that is: rlimits (address space, CPU, file size, processes, no core files), a network namespace
whose only interface (loopback) is down, a PID namespace with its own /proc (the function sees
its own processes only, and all of them die with the bootstrap, which is PID 1 there), a mount
namespace where /tmp, /var/tmp and /dev/shm are the function's own `tmp/` (except one that holds
base_dir: keep base_dir out of them), umask 077, then the privilege drop. The environment is
scrubbed to PATH, HOME, LANG and TMPDIR (plus what a runtime needs); the cwd is the function's
folder. Invocations travel as one JSON document per line: requests on the child's stdin,
answers on its stdout; the bootstrap sends the handler's own output to stderr, which is logged
as `function.output` (debug).

A warm process serves one invocation at a time. A function keeps up to
`SandboxLimits.max_instances` warm processes; further calls wait for one to be free (the wait
does not count against `timeout_s`). A process idle for `idle_s`, one that timed out or died,
and one that has used half its `cpu_s` budget are stopped; the next call starts a new one.
When a function has no process left, any stray process under its uid is killed as well.

Weaker isolation, logged once as a warning: without root the child runs as the service's own
user (it can read and write everything the service can, and RLIMIT_NPROC is not applied because
it would count the service's own processes); namespaces then come from a user namespace where
the kernel allows one. Without permission to create namespaces (`unshare` fails, e.g. in a
container without CAP_SYS_ADMIN) the child shares the host's network, process list and /tmp,
and without root as well it could read the service's environment in /proc: not for production.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import sys
import time
import uuid
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import msgspec
import structlog

from taskorch.errors import TaskorchError

log = structlog.get_logger(__name__)

RUNTIMES = ("python", "node", "java")

_MIB = 1024 * 1024
# Function uids: above the usual range of real accounts; no /etc/passwd entry is needed. (This
# overlaps the first /etc/subuid range of rootless containers on hosts that use them.)
_UID_BASE = 100_000
_UID_COUNT = 65_000
# What a function child may find on PATH; a tool elsewhere must be world-executable.
_SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
# Lambda's own ceiling for a response is 6 MB; a longer line means a broken or hostile child.
_MAX_FRAME_BYTES = 8 * _MIB
# Lambda gives a function 10 s to initialise, separately from the invocation timeout.
_INIT_TIMEOUT_S = 10.0
_CHECK_TIMEOUT_S = 60.0
_COMPILE_TIMEOUT_S = 180.0
_PIP_TIMEOUT_S = 600.0
_BUILD_CPU_S = 600
_MAX_MESSAGE_CHARS = 4096
_MAX_LOG_LINE_CHARS = 2000
_TAIL_LINES = 20
# util-linux unshare cannot re-raise SIGKILL on itself when its child died of it; it prints this
# and exits 1 instead, so the line in the output is how a SIGKILL shows through the PID namespace.
_UNSHARE_SIGKILL_HINT = "sigprocmask unblock failed"
_RESOURCE_SIGNALS = {signal.SIGKILL, signal.SIGXCPU, signal.SIGXFSZ}

_FUNCTION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_JS_IDENTIFIER = re.compile(r"[A-Za-z_$][\w$]*")
_JAVA_HANDLER = re.compile(r"([A-Za-z_$][\w$]*(?:\.[A-Za-z_$][\w$]*)*)::([A-Za-z_$][\w$]*)")
_JAVA_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.DOTALL)
_JAVA_PUBLIC_TYPE = re.compile(
    r"\bpublic\s+(?:(?:final|abstract|sealed|strictfp|static)\s+)*"
    r"(?:class|record|enum|interface)\s+([A-Za-z_$][\w$]*)"
)
_JAVA_PACKAGE = re.compile(r"^\s*package\s+([\w.]+)\s*;", re.MULTILINE)
_NODE_NOISE = re.compile(r"\s+at .*\(node:internal/|Node\.js v\d")
_JS_MODULE_SYNTAX = re.compile(r"^\s*(?:export\s|import\s*[\w{*'\"])", re.MULTILINE)
# Run as root right before the uid drop: `sh -c SCRIPT sh <tmp> [<dir>...] -- <command>`. Files
# a function creates are private to it (umask 077), and inside the mount namespace its own tmp/
# is bound over each <dir> (/tmp, /var/tmp, /dev/shm), so functions cannot meet there either.
_SHARED_TMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")
_WRAPPER_SCRIPT = (
    'umask 077; unset PWD; tmp="$1"; shift; while [ "$1" != "--" ]; do '
    'if [ -d "$1" ]; then mount --bind "$tmp" "$1" || exit 125; fi; shift; done; shift; '
    'exec "$@"'
)
_PY_BOOTSTRAP = "_taskorch_bootstrap.py"
_JS_BOOTSTRAP = "_taskorch_bootstrap.js"
_JAVA_BOOTSTRAP = "TaskorchBootstrap"


class BuildError(TaskorchError):
    """The function could not be built; `message` holds the compiler or importer output."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class FunctionError(TaskorchError):
    """The handler raised, or its process died; `message` reads "<ExcType>: <msg>"."""

    def __init__(self, message: str, *, function_id: str = "", trace: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.function_id = function_id
        self.trace = trace


class FunctionTimeout(TaskorchError):
    """The invocation ran past `SandboxLimits.timeout_s`; its process was killed."""

    def __init__(self, function_id: str, timeout_s: float, *, starting: bool = False) -> None:
        what = "did not start" if starting else "did not answer"
        self.message = (
            f"function {function_id} {what} within {timeout_s:g} s and was stopped; "
            "make the handler faster or allow a longer timeout"
        )
        super().__init__(self.message)
        self.function_id = function_id
        self.timeout_s = timeout_s


@dataclass(frozen=True)
class SandboxLimits:
    """Per-process limits of a function's child processes.

    Args:
        timeout_s: wall clock per invocation.
        cpu_s: RLIMIT_CPU of a process (a warm process is recycled at half of it).
        memory_mb: RLIMIT_AS for python. Java and node reserve far more address space than
            they use, so they get `-Xmx`/`--max-old-space-size` of `memory_mb` as the real cap
            and an RLIMIT_AS of `max(memory_mb + 1536, 2048)` as a backstop.
        file_size_mb: RLIMIT_FSIZE, the largest file a function may write.
        max_processes: RLIMIT_NPROC: processes and threads of all of a function's processes
            together (root only, as it is counted per uid).
        idle_s: a warm process idle this long is stopped.
        max_instances: warm processes per function serving calls in parallel.
    """

    timeout_s: float = 30.0
    cpu_s: int = 60
    memory_mb: int = 512
    file_size_mb: int = 64
    max_processes: int = 64
    idle_s: float = 300.0
    max_instances: int = 4


@dataclass(frozen=True)
class _Spec:
    """What build() learned and invoke() needs; kept in `<base_dir>/.meta/<id>.json`."""

    runtime: str
    handler: str  # python/node: export name; java: fully qualified Class::method
    entry: str  # the file the bootstrap loads


@dataclass(frozen=True)
class _Owner:
    uid: int
    gid: int
    isolated: bool  # a uid of the function's own (the service runs as root)


class _Gone(Exception):
    """The child process died or broke the protocol; it cannot serve another call."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _describe_exit(returncode: int | None, tail: Sequence[str]) -> str:
    sig = -returncode if returncode is not None and returncode < 0 else None
    if sig is None and any(_UNSHARE_SIGKILL_HINT in line for line in tail):
        sig = signal.SIGKILL
    if sig is not None:
        name = (signal.strsignal(sig) or f"signal {sig}").lower()
        hint = ", probably a resource limit" if sig in _RESOURCE_SIGNALS else ""
        message = f"function process exited (signal {sig}: {name}{hint})"
    else:
        message = f"function process exited (code {returncode})"
    output = "\n".join(line for line in tail if not line.startswith("unshare: "))
    return f"{message}; last output:\n{output[-1000:]}" if output else message


def _relative(text: str, fn_dir: Path) -> str:
    """Paths in the function's folder made relative: the server's paths are not the user's."""
    return text.replace(f"file://{fn_dir}/", "").replace(f"{fn_dir}/", "")


def _trim(text: str, fn_dir: Path, *, keep_end: bool) -> str:
    """Shortens tool output for an error message, with the server-side folder path removed."""
    text = _relative(text, fn_dir).strip()
    if len(text) <= _MAX_MESSAGE_CHARS:
        return text
    return "..." + text[-_MAX_MESSAGE_CHARS:] if keep_end else text[:_MAX_MESSAGE_CHARS] + "..."


def _reachable_by_others(path: str) -> bool:
    """Whether a process of another uid can execute `path` (every parent folder searchable)."""
    real = Path(os.path.realpath(path))
    try:
        if not real.stat().st_mode & 0o001:
            return False
        return all(parent.stat().st_mode & 0o001 for parent in real.parents)
    except OSError:
        return False


def _uid_pids(uid: int) -> list[int]:
    """Pids of live (not zombie) processes whose real uid is `uid`."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as status:
                fields = dict(line.split(":", 1) for line in status if ":" in line)
        except OSError:
            continue
        alive = not fields.get("State", "").strip().startswith(("Z", "X"))
        if alive and fields.get("Uid", "").split()[:1] == [str(uid)]:
            found.append(int(entry.name))
    return found


def _chown_tree(top: Path, uid: int, gid: int) -> None:
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, gid)
    os.lchown(top, uid, gid)


def _rmtree(path: Path) -> None:
    # Without root a function may leave a folder it made unreadable; give it back first.
    if os.geteuid() != 0:
        for dirpath, dirnames, _ in os.walk(path):
            for name in dirnames:
                with contextlib.suppress(OSError):
                    os.chmod(os.path.join(dirpath, name), 0o700)
    # rmtree works on file descriptors here, so a symlink the function planted is not followed.
    shutil.rmtree(path, ignore_errors=True)


async def _wait_exit(proc: asyncio.subprocess.Process, timeout_s: float) -> None:
    # Not proc.wait(): on Python 3.11 it also waits for the pipes to close, which a stray
    # grandchild can hold open, and nothing else signals the exit; returncode is set as soon
    # as the child is reaped, so a short poll it is.
    deadline = time.monotonic() + timeout_s
    while proc.returncode is None and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.005)


async def _succeeds(argv: list[str]) -> tuple[bool, str]:
    """Runs a probe command; returns whether it exited 0, and its error output."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={"PATH": _SAFE_PATH},
    )
    _, err = await proc.communicate()
    return proc.returncode == 0, err.decode(errors="replace").strip()


def _children_of(pid: int) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                data = stat.read()
        except OSError:
            continue
        # Field 2, the command name, may hold spaces and parentheses: parse after the last ")".
        fields = data[data.rfind(b")") + 2 :].split()
        if len(fields) > 1 and fields[1] == str(pid).encode():
            found.append(int(entry.name))
    return found


async def _terminate(proc: asyncio.subprocess.Process, *, namespaced: bool) -> None:
    """SIGKILLs a child's process group, its namespace's PID 1 first, and reaps the child."""
    if namespaced and proc.returncode is None:
        # Kill the namespace's PID 1 and let `unshare` reap it; that kills the rest of the
        # namespace too. Were `unshare` killed first, PID 1 would be reparented to the host's
        # init, which in a container is often a process that never reaps (us, say), and the
        # zombie would count against the function's RLIMIT_NPROC for good.
        for child in await asyncio.to_thread(_children_of, proc.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(child, signal.SIGKILL)
        await _wait_exit(proc, 1.0)
    if proc.returncode is None:  # once reaped, its pid (our pgid) may belong to someone else
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    await _wait_exit(proc, 2.0)


class _Instance:
    """One warm child process and its side of the line protocol."""

    def __init__(
        self, function_id: str, proc: asyncio.subprocess.Process, *, namespaced: bool
    ) -> None:
        self.function_id = function_id
        self.proc = proc
        self.namespaced = namespaced
        self.tail: deque[str] = deque(maxlen=_TAIL_LINES)
        self.last_used = time.monotonic()
        self.cpu_s = 0.0
        self._seq = 0
        self._drain = asyncio.create_task(self._drain_output())

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    async def _drain_output(self) -> None:
        assert self.proc.stderr is not None
        pending = b""
        while chunk := await self.proc.stderr.read(65536):
            *lines, pending = (pending + chunk).split(b"\n")
            if len(pending) > _MAX_LOG_LINE_CHARS:
                lines.append(pending)
                pending = b""
            for line in lines:
                self._log(line)
        if pending:
            self._log(pending)

    def _log(self, raw: bytes) -> None:
        line = raw.decode(errors="replace")[:_MAX_LOG_LINE_CHARS]
        self.tail.append(line)
        if not line.startswith("unshare: "):  # our wrapper's words, not the function's
            log.debug("function.output", function_id=self.function_id, line=line)

    async def read_frame(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        try:
            line = await self.proc.stdout.readuntil(b"\n")
        except asyncio.IncompleteReadError:
            raise _Gone(await self._exit_message()) from None
        except asyncio.LimitOverrunError:
            raise _Gone(f"the result is larger than {_MAX_FRAME_BYTES // _MIB} MiB") from None
        try:
            frame = msgspec.json.decode(line)
        except msgspec.DecodeError:
            raise _Gone("function process wrote something that is not a JSON response") from None
        if not isinstance(frame, dict):
            raise _Gone("function process wrote something that is not a JSON response")
        return frame

    async def call(self, event: bytes, request_id: str, deadline_ms: int) -> dict[str, Any]:
        """Sends one request and waits for its answer (the caller bounds the wait)."""
        assert self.proc.stdin is not None
        self._seq += 1
        head = b'{"id":%d,"request_id":"%s","deadline_ms":%d,"event":' % (
            self._seq,
            request_id.encode(),
            deadline_ms,
        )
        try:
            self.proc.stdin.write(head + event + b"}\n")
            await self.proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            raise _Gone(await self._exit_message()) from None
        reply = await self.read_frame()
        if reply.get("id") != self._seq:
            raise _Gone("function process answered out of turn")
        cpu_s = reply.get("cpu_s")
        if isinstance(cpu_s, int | float):
            self.cpu_s = float(cpu_s)
        return reply

    async def _exit_message(self) -> str:
        await _wait_exit(self.proc, 2.0)
        if self.alive:  # stdout closed, yet still running: it broke the protocol
            return "function process closed its output"
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._drain), 1.0)
        return _describe_exit(self.proc.returncode, self.tail)

    async def stop(self) -> None:
        """Kills the process group and reaps the process."""
        await _terminate(self.proc, namespaced=self.namespaced)
        # Log what it wrote last, unless a stray process holds the pipe open.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._drain), 0.2)
        self._drain.cancel()


@dataclass
class _Pool:
    """The warm processes of one function."""

    spec: _Spec
    owner: _Owner
    slots: asyncio.Semaphore
    idle: list[_Instance] = field(default_factory=list)
    instances: set[_Instance] = field(default_factory=set)
    starting: int = 0
    closed: bool = False  # the function was rebuilt, removed or the runtime closed
    # Held while starting a process and while sweeping the uid, so a sweep never kills a
    # process that is being started.
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class LocalRuntime:
    """Builds functions under `base_dir` and runs them in warm sandboxed processes.

    Args:
        base_dir: folder for all functions; every parent folder must be world-executable
            when running as root, since the functions' uids must reach their own folder.
        limits: limits applied to every function's processes.
        python: interpreter for python functions; by default the service's own, or when the
            functions' uids cannot execute that one (e.g. a pyenv under /root), the system's
            python3.
    """

    def __init__(
        self,
        base_dir: Path,
        *,
        limits: SandboxLimits = SandboxLimits(),
        python: str | None = None,
    ) -> None:
        self._base = Path(base_dir).absolute()
        self._meta = self._base / ".meta"
        self._limits = limits
        self._root = os.geteuid() == 0
        self._tools = {
            name: shutil.which(name, path=os.environ.get("PATH", "") + os.pathsep + _SAFE_PATH)
            for name in ("setpriv", "prlimit", "unshare", "node", "java", "javac")
        }
        self._python = python or self._pick_python()
        self._specs: dict[str, _Spec] = {}
        self._pools: dict[str, _Pool] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._namespaces: list[str] | None = None  # unshare's arguments, probed at first use
        self._private_tmp = False
        self._private_tmp_dirs = [
            d for d in _SHARED_TMP_DIRS if not self._base.is_relative_to(Path(d).resolve())
        ]
        self._reaper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- public API ---------------------------------------------------------------------------

    async def build(
        self,
        function_id: str,
        *,
        runtime: str,
        code: str,
        handler: str,
        requirements: str | None = None,
    ) -> None:
        """Writes, compiles and checks a function; raises BuildError with the tool's output."""
        self._check_id(function_id)
        if runtime not in RUNTIMES:
            raise BuildError(f"unknown runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")
        if requirements and requirements.strip() and runtime != "python":
            raise BuildError("requirements are only supported for python functions")
        started = time.monotonic()
        async with self._lock(function_id):
            await self._stop_pool(function_id)
            await asyncio.to_thread(self._forget, function_id)
            self._require_tools()
            fn_dir = self._base / function_id
            owner = await asyncio.to_thread(self._fresh_dir, function_id)
            await self._sweep(owner)  # nothing left from an earlier life of this uid
            log.info("function.build.started", function_id=function_id, runtime=runtime)
            try:
                if runtime == "python":
                    spec = await self._build_python(fn_dir, owner, code, handler, requirements)
                elif runtime == "node":
                    spec = await self._build_node(fn_dir, owner, code, handler)
                else:
                    spec = await self._build_java(fn_dir, owner, code, handler)
            except BuildError as exc:
                log.warning(
                    "function.build.failed",
                    function_id=function_id,
                    runtime=runtime,
                    error=exc.message[:500],
                )
                raise
            await asyncio.to_thread(self._remember, function_id, spec)
        log.info(
            "function.build.succeeded",
            function_id=function_id,
            runtime=runtime,
            duration_ms=round((time.monotonic() - started) * 1000),
        )

    async def invoke(self, function_id: str, event: object) -> object:
        """Runs the handler on `event` and returns its result.

        Raises:
            KeyError: the function is not built.
            FunctionError: the handler raised, or its process died.
            FunctionTimeout: no answer within `timeout_s`.
        """
        payload = msgspec.json.encode(event)
        self._start_reaper()
        while True:
            pool = self._pool(function_id)
            async with pool.slots:
                if pool.closed:  # rebuilt or stopped while we waited for a slot
                    continue
                inst = self._take_idle(pool) or await self._start(function_id, pool)
                reply = await self._call(function_id, pool, inst, payload)
                break
        if reply.get("ok") is True:
            return reply.get("result")
        folder = self._base / function_id
        message = _relative(str(reply.get("error") or "the handler failed"), folder)
        trace = _relative(str(reply.get("trace", "")), folder)
        log.info("function.invoke.failed", function_id=function_id, error=message[:500])
        raise FunctionError(message, function_id=function_id, trace=trace)

    async def remove(self, function_id: str) -> None:
        """Stops the function's processes and deletes its folder (no error if unknown)."""
        self._check_id(function_id)
        async with self._lock(function_id):
            await self._stop_pool(function_id)
            fn_dir = self._base / function_id
            if fn_dir.is_dir():
                await self._sweep(self._owner(function_id))
                await asyncio.to_thread(_rmtree, fn_dir)
            await asyncio.to_thread(self._forget, function_id)
        log.info("function.removed", function_id=function_id)

    async def close(self) -> None:
        """Stops every warm process; later calls start new ones."""
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        for function_id in list(self._pools):
            await self._stop_pool(function_id)
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- warm processes -----------------------------------------------------------------------

    def _pool(self, function_id: str) -> _Pool:
        pool = self._pools.get(function_id)
        if pool is None:
            self._check_id(function_id)
            spec = self._specs.get(function_id) or self._load_spec(function_id)
            pool = _Pool(
                spec, self._owner(function_id), asyncio.Semaphore(self._limits.max_instances)
            )
            self._pools[function_id] = pool
        return pool

    def _take_idle(self, pool: _Pool) -> _Instance | None:
        while pool.idle:
            inst = pool.idle.pop()  # most recent first, so the others age out when load drops
            if inst.alive:
                return inst
            self._background(self._retire(pool, inst, "died"))
        return None

    async def _call(
        self, function_id: str, pool: _Pool, inst: _Instance, payload: bytes
    ) -> dict[str, Any]:
        """One request/answer on a warm process; a process that fails it is retired."""
        timeout_s = self._limits.timeout_s
        request_id = str(uuid.uuid4())
        deadline_ms = int((time.time() + timeout_s) * 1000)
        try:
            async with asyncio.timeout(timeout_s):
                reply = await inst.call(payload, request_id, deadline_ms)
        except TimeoutError:
            await self._retire(pool, inst, "timeout")
            log.warning("function.invoke.timeout", function_id=function_id, timeout_s=timeout_s)
            raise FunctionTimeout(function_id, timeout_s) from None
        except _Gone as exc:
            await self._retire(pool, inst, "died")
            message = _relative(exc.message, self._base / function_id)
            log.warning("function.invoke.died", function_id=function_id, error=message)
            raise FunctionError(message, function_id=function_id) from None
        except BaseException:
            # Cancelled mid-call: a late answer would put the stream out of step.
            self._background(self._retire(pool, inst, "cancelled"))
            raise
        inst.last_used = time.monotonic()
        if pool.closed:
            self._background(self._retire(pool, inst, "stopped"))
        elif inst.cpu_s >= self._limits.cpu_s / 2:
            # RLIMIT_CPU counts over the life of a process: retire it well before the kernel
            # kills it in the middle of a call.
            self._background(self._retire(pool, inst, "cpu_budget"))
        else:
            pool.idle.append(inst)
        return reply

    async def _start(self, function_id: str, pool: _Pool) -> _Instance:
        started = time.monotonic()
        async with pool.lock:
            pool.starting += 1
        try:
            argv, env, address_space_mb = self._command(function_id, pool.spec, "serve")
            proc = await self._spawn(
                argv,
                function_id,
                pool.owner,
                env=env,
                address_space_mb=address_space_mb,
                cpu_s=self._limits.cpu_s,
                network=False,
            )
            inst = _Instance(function_id, proc, namespaced=bool(self._namespaces))
            pool.instances.add(inst)
        finally:
            pool.starting -= 1
        init_timeout_s = max(_INIT_TIMEOUT_S, self._limits.timeout_s)
        try:
            async with asyncio.timeout(init_timeout_s):
                frame = await inst.read_frame()
        except TimeoutError:
            await self._retire(pool, inst, "init_timeout")
            raise FunctionTimeout(function_id, init_timeout_s, starting=True) from None
        except _Gone as exc:
            await self._retire(pool, inst, "init_failed")
            message = f"function failed to start: {exc.message}"
            raise FunctionError(message, function_id=function_id) from None
        except BaseException:
            self._background(self._retire(pool, inst, "cancelled"))
            raise
        if frame.get("ready") is not True:
            await self._retire(pool, inst, "init_failed")
            error = str(frame.get("error") or "no reason given")
            raise FunctionError(f"function failed to start: {error}", function_id=function_id)
        log.info(
            "function.instance.started",
            function_id=function_id,
            pid=proc.pid,
            cold_start_ms=round((time.monotonic() - started) * 1000, 1),
        )
        return inst

    async def _retire(self, pool: _Pool, inst: _Instance, reason: str) -> None:
        pool.instances.discard(inst)
        if inst in pool.idle:
            pool.idle.remove(inst)
        await inst.stop()
        log.info("function.instance.stopped", function_id=inst.function_id, reason=reason)
        if not pool.instances and pool.starting == 0:
            async with pool.lock:
                if not pool.instances and pool.starting == 0:
                    await self._sweep(pool.owner)

    async def _stop_pool(self, function_id: str) -> None:
        pool = self._pools.pop(function_id, None)
        if pool is not None:
            pool.closed = True
            for inst in list(pool.instances):
                await self._retire(pool, inst, "stopped")

    def _start_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.create_task(self._reap_idle())

    async def _reap_idle(self) -> None:
        interval_s = min(max(self._limits.idle_s / 4, 0.05), 5.0)
        while True:
            await asyncio.sleep(interval_s)
            now = time.monotonic()
            for pool in list(self._pools.values()):
                for inst in list(pool.idle):
                    if now - inst.last_used >= self._limits.idle_s or not inst.alive:
                        pool.idle.remove(inst)
                        try:
                            await self._retire(pool, inst, "idle" if inst.alive else "died")
                        except Exception:
                            log.exception("function.instance.stop_failed")

    def _background(self, coro: Awaitable[None]) -> None:
        async def run() -> None:
            await coro

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- sandbox ------------------------------------------------------------------------------

    async def _spawn(
        self,
        argv: list[str],
        function_id: str,
        owner: _Owner,
        *,
        env: dict[str, str],
        address_space_mb: int,
        cpu_s: int,
        network: bool,
        stdin: int = asyncio.subprocess.PIPE,
    ) -> asyncio.subprocess.Process:
        limits = self._limits
        setpriv, prlimit = self._tools["setpriv"], self._tools["prlimit"]
        if setpriv is None or prlimit is None:
            raise RuntimeError("local functions need util-linux (setpriv, prlimit) installed")
        # The first setpriv only ties the child's life to ours (rlimits and namespaces cannot be
        # set up after dropping root, so the uid change comes last).
        command = [setpriv, "--pdeathsig=KILL", "--", prlimit]
        command += [
            f"--as={address_space_mb * _MIB}",
            f"--cpu={cpu_s}",
            f"--fsize={limits.file_size_mb * _MIB}",
            "--core=0",
        ]
        if owner.isolated:
            command.append(f"--nproc={limits.max_processes}")
        command += ["--", *await self._namespace_args(network=network)]
        command += ["/bin/sh", "-c", _WRAPPER_SCRIPT, "sh", str(self._base / function_id / "tmp")]
        if self._namespaces and self._private_tmp:
            command += self._private_tmp_dirs
        command += ["--", setpriv]
        if owner.isolated:
            command += [
                f"--reuid={owner.uid}",
                f"--regid={owner.gid}",
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
            ]
        command += ["--no-new-privs", "--pdeathsig=KILL", "--", *argv]
        return await asyncio.create_subprocess_exec(
            *command,
            stdin=stdin,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=self._base / function_id,
            env=env,
            start_new_session=True,  # its own process group, killed as one
            limit=_MAX_FRAME_BYTES,
        )

    async def _namespace_args(self, *, network: bool) -> list[str]:
        if self._namespaces is None:
            self._namespaces = await self._probe_namespaces()
        if not self._namespaces or not network:
            return list(self._namespaces)
        return [arg for arg in self._namespaces if arg != "--net"]

    async def _probe_namespaces(self) -> list[str]:
        unshare = self._tools["unshare"]
        if unshare is None:
            ok, reason = False, "unshare is not installed"
        else:
            user = [] if self._root else ["--user", "--map-current-user"]
            args = [unshare, *user, "--net", "--pid", "--fork", "--kill-child", "--mount-proc"]
            ok, reason = await _succeeds([*args, "--", "true"])
        if not ok:
            effect = "functions share the host's network, processes and /tmp"
            if not self._root:
                effect += "; running as the service's own user they can read its environment"
            log.warning("function.sandbox.no_namespaces", reason=reason, effect=effect)
            return []
        wrapper = ["/bin/sh", "-c", _WRAPPER_SCRIPT, "sh", "/tmp", "/tmp", "--", "true"]
        self._private_tmp, reason = await _succeeds([*args, "--", *wrapper])
        shared = [d for d in _SHARED_TMP_DIRS if d not in self._private_tmp_dirs]
        if not self._private_tmp:
            shared = list(_SHARED_TMP_DIRS)
        elif shared:
            # Covering a folder that holds base_dir would hide the function's own folder.
            reason = f"base_dir {self._base} is inside it"
        if shared:
            log.warning(
                "function.sandbox.shared_tmp",
                dirs=shared,
                reason=reason,
                effect="functions can meet in these folders (their files are still mode 0600)",
            )
        return [*args, "--"]

    async def _sweep(self, owner: _Owner) -> None:
        """Kills every process left under the function's uid (orphans, setsid escapees)."""
        if not (owner.isolated and _UID_BASE <= owner.uid < _UID_BASE + _UID_COUNT):
            return
        for _ in range(5):
            if not await asyncio.to_thread(_uid_pids, owner.uid):
                return
            # kill(-1) as that uid reaches exactly its processes, in one atomic pass. (Python,
            # because the kill(1) commands of procps and util-linux disagree on "-1".)
            killer = "import os, signal; os.kill(-1, signal.SIGKILL)"
            proc = await asyncio.create_subprocess_exec(
                self._python or sys.executable,
                "-I",
                "-S",
                "-c",
                killer,
                user=owner.uid,
                group=owner.gid,
                extra_groups=[],
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                env={"PATH": _SAFE_PATH},
            )
            await proc.wait()
            await asyncio.sleep(0.02)
        log.warning("function.sandbox.stray_processes", uid=owner.uid)

    def _command(
        self, function_id: str, spec: _Spec, mode: str
    ) -> tuple[list[str], dict[str, str], int]:
        """The child's argv, environment and RLIMIT_AS (MiB) for a bootstrap in `mode`."""
        fn_dir = self._base / function_id
        memory_mb = self._limits.memory_mb
        env = {
            "PATH": _SAFE_PATH,
            "HOME": str(fn_dir),
            "LANG": "C.UTF-8",
            "TMPDIR": str(fn_dir / "tmp"),
        }
        args = [mode, spec.handler, function_id, str(memory_mb)]
        jit_address_space_mb = max(memory_mb + 1536, 2048)
        if spec.runtime == "python":
            return [self._python or "python3", "-I", "-u", _PY_BOOTSTRAP, *args], env, memory_mb
        if spec.runtime == "node":
            node = self._tools["node"] or "node"
            argv = [node, f"--max-old-space-size={memory_mb}", _JS_BOOTSTRAP, *args, spec.entry]
            return argv, env, jit_address_space_mb
        # glibc gives each thread a 64 MiB malloc arena reservation; the JVM has many threads.
        env["MALLOC_ARENA_MAX"] = "2"
        java = self._tools["java"] or "java"
        argv = [java, *self._jvm_flags(fn_dir, ""), "-cp", "classes", _JAVA_BOOTSTRAP, *args]
        return argv, env, jit_address_space_mb

    def _jvm_flags(self, fn_dir: Path, prefix: str) -> list[str]:
        # Serial GC and C1 only: fewer threads (RLIMIT_NPROC counts them) and a faster start,
        # the same trade AWS Lambda's Java runtime makes by default.
        flags = [
            f"-Xmx{self._limits.memory_mb}m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-XX:-UsePerfData",
            f"-Djava.io.tmpdir={fn_dir / 'tmp'}",
        ]
        return [prefix + flag for flag in flags]

    # -- building -----------------------------------------------------------------------------

    async def _build_python(
        self, fn_dir: Path, owner: _Owner, code: str, handler: str, requirements: str | None
    ) -> _Spec:
        if not handler.isidentifier():
            raise BuildError(f"handler must be a Python function name, not {handler!r}")
        if not self._python:
            raise BuildError(
                "no Python interpreter that function users may run was found; "
                "install python3 system-wide or pass LocalRuntime(python=...)"
            )
        files = {"handler.py": code, _PY_BOOTSTRAP: _bootstrap_source("bootstrap.py")}
        if requirements and requirements.strip():
            _check_requirements(requirements)
            files["requirements.txt"] = requirements
        await asyncio.to_thread(self._write_files, fn_dir, owner, files)
        if "requirements.txt" in files:
            await self._pip_install(fn_dir, owner)
        spec = _Spec("python", handler, "handler.py")
        await self._check(fn_dir, owner, spec)
        return spec

    async def _pip_install(self, fn_dir: Path, owner: _Owner) -> None:
        function_id = fn_dir.name
        argv = [self._python or "python3", "-I", "-m", "pip", "install", "--target", "deps"]
        # Wheels only: building an sdist runs its setup code, with network access, at build time.
        argv += ["--only-binary=:all:", "--no-cache-dir", "--no-input", "--progress-bar=off"]
        argv += ["--disable-pip-version-check", "-r", "requirements.txt"]
        env = {"PATH": _SAFE_PATH, "HOME": str(fn_dir), "LANG": "C.UTF-8"}
        env["TMPDIR"] = str(fn_dir / "tmp")
        # The operator's index, mirror, certificate and proxy settings apply to the install.
        env.update(
            (key, value)
            for key, value in os.environ.items()
            if key.startswith("PIP_") or key.lower() in ("http_proxy", "https_proxy", "no_proxy")
        )

        def progress(line: str) -> None:
            log.info("function.build.pip", function_id=function_id, line=line[:500])

        rc, out, err = await self._run(
            argv,
            fn_dir,
            owner,
            env=env,
            address_space_mb=max(self._limits.memory_mb, 1024),
            timeout_s=_PIP_TIMEOUT_S,
            what="pip install",
            network=True,
            on_line=progress,
        )
        if rc != 0:
            raise BuildError(
                "pip install failed:\n" + _trim(out + "\n" + err, fn_dir, keep_end=True)
            )

    async def _build_node(self, fn_dir: Path, owner: _Owner, code: str, handler: str) -> _Spec:
        if not _JS_IDENTIFIER.fullmatch(handler):
            raise BuildError(f"handler must be the name of an export, not {handler!r}")
        node = self._tool("node")
        entry = "index.mjs" if _JS_MODULE_SYNTAX.search(code) else "index.js"
        files = {entry: code, _JS_BOOTSTRAP: _bootstrap_source("bootstrap.js")}
        await asyncio.to_thread(self._write_files, fn_dir, owner, files)
        env = {"PATH": _SAFE_PATH, "HOME": str(fn_dir), "LANG": "C.UTF-8"}
        rc, out, err = await self._run(
            [node, "--check", entry],
            fn_dir,
            owner,
            env=env,
            address_space_mb=max(self._limits.memory_mb + 1536, 2048),
            timeout_s=_CHECK_TIMEOUT_S,
            what="node --check",
        )
        if rc != 0:
            # Node's own frames and version banner say nothing about the user's code.
            lines = (err or out).splitlines()
            useful = [line for line in lines if not _NODE_NOISE.match(line)]
            text = re.sub(r"\n{3,}", "\n\n", "\n".join(useful))
            raise BuildError(_trim(text, fn_dir, keep_end=False))
        spec = _Spec("node", handler, entry)
        await self._check(fn_dir, owner, spec)
        return spec

    async def _build_java(self, fn_dir: Path, owner: _Owner, code: str, handler: str) -> _Spec:
        match = _JAVA_HANDLER.fullmatch(handler)
        if match is None:
            raise BuildError(f"handler must look like Class::method, not {handler!r}")
        javac = self._tool("javac")
        self._tool("java")
        class_name, method = match.groups()
        source = _JAVA_COMMENT.sub(" ", code)
        public = _JAVA_PUBLIC_TYPE.search(source)
        package = _JAVA_PACKAGE.search(source)
        if "." not in class_name and package:
            class_name = f"{package.group(1)}.{class_name}"
        file_stem = public.group(1) if public else class_name.rsplit(".", 1)[-1]
        if file_stem == _JAVA_BOOTSTRAP:
            raise BuildError(f"the class name {_JAVA_BOOTSTRAP} is reserved; rename your class")
        files = {
            f"{file_stem}.java": code,
            f"{_JAVA_BOOTSTRAP}.java": _bootstrap_source(f"{_JAVA_BOOTSTRAP}.java"),
            "classes/.keep": "",
        }
        await asyncio.to_thread(self._write_files, fn_dir, owner, files)
        argv = [javac, *self._jvm_flags(fn_dir, "-J"), "-proc:none", "-implicit:none"]
        argv += ["-encoding", "UTF-8", "-nowarn", "-d", "classes"]
        argv += [f"{file_stem}.java", f"{_JAVA_BOOTSTRAP}.java"]
        env = {"PATH": _SAFE_PATH, "HOME": str(fn_dir), "LANG": "C.UTF-8", "MALLOC_ARENA_MAX": "2"}
        rc, out, err = await self._run(
            argv,
            fn_dir,
            owner,
            env=env,
            address_space_mb=max(self._limits.memory_mb + 1536, 2048),
            timeout_s=_COMPILE_TIMEOUT_S,
            what="javac",
        )
        if rc != 0:
            raise BuildError(_trim(out + err, fn_dir, keep_end=False))
        spec = _Spec("java", f"{class_name}::{method}", "classes")
        await self._check(fn_dir, owner, spec)
        return spec

    async def _check(self, fn_dir: Path, owner: _Owner, spec: _Spec) -> None:
        """Loads the handler in a sandboxed bootstrap, as a cold start would."""
        argv, env, address_space_mb = self._command(fn_dir.name, spec, "check")
        rc, out, err = await self._run(
            argv,
            fn_dir,
            owner,
            env=env,
            address_space_mb=address_space_mb,
            timeout_s=_CHECK_TIMEOUT_S,
            what="loading the handler",
        )
        try:
            frame = json.loads(out.splitlines()[0]) if out.strip() else {}
        except ValueError:
            frame = {}
        if frame.get("ready") is True and rc == 0:
            return
        if "trace" in frame:
            error = _trim(str(frame.get("error", "")), fn_dir, keep_end=False)
            # A Python traceback ends with the error; a JVM or V8 stack starts with it.
            keep_end = spec.runtime == "python"
            trace = _trim(str(frame["trace"]), fn_dir, keep_end=keep_end)
            if trace and (keep_end or error in trace):
                raise BuildError(trace)
            raise BuildError(f"{error}\n{trace}".strip())
        tail = err.splitlines()[-_TAIL_LINES:]
        raise BuildError(_trim(_describe_exit(rc, tail), fn_dir, keep_end=True))

    async def _run(
        self,
        argv: list[str],
        fn_dir: Path,
        owner: _Owner,
        *,
        env: dict[str, str],
        address_space_mb: int,
        timeout_s: float,
        what: str,
        network: bool = False,
        on_line: Callable[[str], None] | None = None,
    ) -> tuple[int, str, str]:
        """Runs a build step in the sandbox; returns (exit code, stdout, stderr)."""
        proc = await self._spawn(
            argv,
            fn_dir.name,
            owner,
            env=env,
            address_space_mb=address_space_mb,
            cpu_s=_BUILD_CPU_S,
            network=network,
            stdin=asyncio.subprocess.DEVNULL,
        )
        assert proc.stdout is not None and proc.stderr is not None
        out_lines: deque[str] = deque(maxlen=2000)

        async def read_stdout(stream: asyncio.StreamReader) -> None:
            while raw := await stream.readline():
                line = raw.decode(errors="replace").rstrip()
                out_lines.append(line)
                if on_line is not None:
                    on_line(line)

        try:
            async with asyncio.timeout(timeout_s):
                _, err = await asyncio.gather(read_stdout(proc.stdout), proc.stderr.read())
                await proc.wait()
        except TimeoutError:
            raise BuildError(f"{what} did not finish within {timeout_s:g} s") from None
        except ValueError:  # a line longer than the stream limit
            raise BuildError(f"{what} wrote an absurdly long line of output") from None
        finally:
            await _terminate(proc, namespaced=bool(self._namespaces))
            await self._sweep(owner)
        rc = proc.returncode if proc.returncode is not None else -1
        return rc, "\n".join(out_lines), err.decode(errors="replace")

    # -- folders, owners and specs ------------------------------------------------------------

    def _fresh_dir(self, function_id: str) -> _Owner:
        """Empties the function's folder and gives it to the function's uid."""
        self._base.mkdir(parents=True, exist_ok=True)
        self._meta.mkdir(mode=0o700, exist_ok=True)
        if self._root:
            # Others may pass through the base folder to their own folder, but not list it.
            self._base.chmod(0o711)
        fn_dir = self._base / function_id
        with open(self._meta / "uids.lock", "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)  # other processes sharing base_dir
            try:
                owner = self._owner(function_id)  # a rebuild keeps its uid
            except (OSError, RuntimeError):
                owner = self._allocate_owner(function_id)
            if fn_dir.exists():
                _rmtree(fn_dir)
            fn_dir.mkdir(mode=0o700)
            if owner.isolated:
                # Hold the uid while the folder is still root's, so no other build picks it.
                os.lchown(fn_dir, -1, owner.gid)
        return owner

    def _allocate_owner(self, function_id: str) -> _Owner:
        if not self._root:
            return _Owner(os.getuid(), os.getgid(), isolated=False)
        taken: set[int] = set()
        for entry in os.scandir(self._base):
            if entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
                st = entry.stat(follow_symlinks=False)
                taken.update((st.st_uid, st.st_gid))
        start = zlib.crc32(function_id.encode()) % _UID_COUNT
        for step in range(_UID_COUNT):
            uid = _UID_BASE + (start + step) % _UID_COUNT
            if uid not in taken:
                return _Owner(uid, uid, isolated=True)
        raise BuildError("no free function uid left; remove unused functions")

    def _owner(self, function_id: str) -> _Owner:
        if not self._root:
            return _Owner(os.getuid(), os.getgid(), isolated=False)
        st = (self._base / function_id).stat()
        uid = st.st_uid if st.st_uid != 0 else st.st_gid  # the gid marks a build in progress
        if not _UID_BASE <= uid < _UID_BASE + _UID_COUNT:
            # Never run code as an account that is not a function's own (root above all).
            raise RuntimeError(f"{self._base / function_id} belongs to uid {uid}, not a function")
        return _Owner(uid, uid, isolated=True)

    def _write_files(self, fn_dir: Path, owner: _Owner, files: dict[str, str]) -> None:
        for name, text in files.items():
            path = fn_dir / name
            path.parent.mkdir(mode=0o700, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        (fn_dir / "tmp").mkdir(mode=0o700, exist_ok=True)
        if owner.isolated:
            _chown_tree(fn_dir, owner.uid, owner.gid)

    def _remember(self, function_id: str, spec: _Spec) -> None:
        path = self._meta / f"{function_id}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(msgspec.json.encode(spec))
        os.replace(tmp, path)
        self._specs[function_id] = spec

    def _forget(self, function_id: str) -> None:
        self._specs.pop(function_id, None)
        with contextlib.suppress(FileNotFoundError):
            (self._meta / f"{function_id}.json").unlink()

    def _load_spec(self, function_id: str) -> _Spec:
        try:
            spec = msgspec.json.decode(
                (self._meta / f"{function_id}.json").read_bytes(), type=_Spec
            )
        except FileNotFoundError:
            raise KeyError(f"function {function_id} is not built") from None
        self._specs[function_id] = spec
        return spec

    # -- small helpers ------------------------------------------------------------------------

    def _lock(self, function_id: str) -> asyncio.Lock:
        return self._locks.setdefault(function_id, asyncio.Lock())

    @staticmethod
    def _check_id(function_id: str) -> None:
        if not _FUNCTION_ID.fullmatch(function_id):
            raise ValueError(f"invalid function id {function_id!r}: use letters, digits, _ and -")

    def _require_tools(self) -> None:
        missing = [name for name in ("setpriv", "prlimit") if not self._tools[name]]
        if missing:
            raise BuildError(
                f"local functions need util-linux's {' and '.join(missing)}; install util-linux"
            )

    def _tool(self, name: str) -> str:
        path = self._tools[name]
        if path is None:
            raise BuildError(f"{name} is not installed on this server")
        if self._root and not _reachable_by_others(path):
            raise BuildError(f"{path} cannot be run by function users; install {name} system-wide")
        return path

    def _pick_python(self) -> str | None:
        if not self._root or _reachable_by_others(sys.executable):
            return sys.executable
        for candidate in ("/usr/local/bin/python3", "/usr/bin/python3"):
            if _reachable_by_others(candidate):
                return candidate
        return None


def _bootstrap_source(name: str) -> str:
    return (resources.files("taskorch") / "runtimes" / name).read_text(encoding="utf-8")


def _check_requirements(requirements: str) -> None:
    for number, raw in enumerate(requirements.splitlines(), start=1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("-", ".", "/")) or "://" in line:
            raise BuildError(
                f"requirements.txt line {number} ({line!r}): only package requirements are "
                "allowed here, not pip options, paths or URLs"
            )
