"""The local function runtime: build one uploaded source file, then run it in warm sandboxed
instances, the way AWS Lambda runs a function (no HTTP and no Redis here).

Each function lives in `<base_dir>/<function_id>/` (mode 0700). When the service runs as root,
the folder belongs to a uid of the function's own, picked in 100000..164999 and remembered as
the folder's owner. Every process runs in the sandbox of `jail.py`, each instance in cgroups of
its own (`cgroups.py`); the code is read-only at `/var/task`, `/tmp` a fresh size-limited tmpfs.
Invocations travel as one JSON document per line: requests on the child's stdin, answers on a
pipe of their own; the child's stdout and stderr (the handler's output, the runtime's warnings)
are its log, `function.output`. An instance is frozen between calls (see `process.py`).

Without a sandbox (`SandboxUnavailable` at start) the runtime refuses to exist, unless the
operator passes `unsafe=True` (TASKORCH_UNSAFE_FUNCTIONS=1): functions then run as plain
processes of the service's user with rlimits only, and a warning says so at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import shutil
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import msgspec
import structlog

from taskorch.errors import ConfigError
from taskorch.functions import source
from taskorch.functions.build import Builder, Spec, relative, remove_tree
from taskorch.functions.errors import BuildError, FunctionError, SandboxUnavailable
from taskorch.functions.jail import SAFE_PATH, UID_BASE, UID_COUNT, Jail, Limits, default_python
from taskorch.functions.pool import Pools
from taskorch.functions.process import Sandboxed, spawn
from taskorch.settings import Settings

log = structlog.get_logger("taskorch.functions")

RUNTIMES = source.RUNTIMES
_FUNCTION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_BUILD_MEMORY_MB = 1024


@dataclass(frozen=True)
class SandboxLimits:
    """What one instance of a function may use.

    Args:
        timeout_s: wall clock per invocation.
        memory_mb: memory of the whole instance (all its processes, its /tmp and /dev/shm
            included); java and node get 3/4 of it as heap.
        disk_mb: size of the instance's /tmp (and of its /dev/shm); counted in `memory_mb`.
        max_processes: processes and threads of the instance together.
        cpus: CPU share of the instance (1.0 = one core).
        cpu_s: CPU seconds of one process (RLIMIT_CPU); a warm instance is recycled once it
            has used half of it, all its processes together as the kernel counts them.
        file_size_mb: the largest file a function may write.
        idle_s: a warm instance idle this long is stopped.
        max_instances: warm instances per function serving calls in parallel.
        max_waiting: calls per function that may wait for a busy instance; a call beyond is
            refused at once (`FunctionBusy`, 429 at the trigger URL).
        max_wait_s: the longest a call waits for an instance before it is refused so.
    """

    timeout_s: float = 30.0
    memory_mb: int = 512
    disk_mb: int = 64
    max_processes: int = 64
    cpus: float = 1.0
    cpu_s: int = 60
    file_size_mb: int = 64
    idle_s: float = 300.0
    max_instances: int = 4
    max_waiting: int = 8
    max_wait_s: float = 5.0


class LocalRuntime:
    """Builds functions under `base_dir` and runs them in warm sandboxed instances.

    Args:
        base_dir: folder for all functions.
        limits: limits applied to every instance.
        python: interpreter for python functions (default: one the function uids can run).
        unsafe: run without a sandbox when none can be made (never for untrusted code).

    Raises:
        SandboxUnavailable: the sandbox cannot be made here and `unsafe` is not set.
    """

    def __init__(
        self,
        base_dir: Path,
        *,
        limits: SandboxLimits = SandboxLimits(),
        python: str | None = None,
        unsafe: bool = False,
    ) -> None:
        self._base = Path(base_dir).absolute()
        self._meta = self._base / ".meta"
        self._limits = limits
        self._root = os.geteuid() == 0
        self._python = python or default_python()
        self._tools: dict[str, str | None] = {
            name: shutil.which(name, path=SAFE_PATH) for name in ("node", "java", "javac")
        }
        self._tools["python"] = self._python
        try:
            self._jail: Jail | None = Jail.probe(python=self._python)
        except SandboxUnavailable as exc:
            if not unsafe:
                raise
            self._jail = None
            log.warning(
                "function.sandbox.unsafe",
                reason=str(exc),
                effect="functions run unisolated as this service's user: never for untrusted code",
            )
        self._specs: dict[str, Spec] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._pools = Pools(
            self._start,
            timeout_s=limits.timeout_s,
            cpu_s=limits.cpu_s,
            idle_s=limits.idle_s,
            max_instances=limits.max_instances,
            max_waiting=limits.max_waiting,
            max_wait_s=limits.max_wait_s,
        )

    @property
    def isolated(self) -> bool:
        """Whether functions run in the sandbox (False only in the unsafe mode)."""
        return self._jail is not None

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
        source.check_handler(runtime, handler)
        wanted = source.parse_requirements(runtime, requirements)
        started = time.monotonic()
        async with self._lock(function_id):
            await self._pools.stop(function_id)
            await asyncio.to_thread(self._forget, function_id)
            uid = await self._fresh_dir(function_id)
            builder = Builder(
                jail=self._jail,
                fn_dir=self._base / function_id,
                uid=uid,
                limits=self._process_limits(_BUILD_MEMORY_MB, cpu_s=600, processes=256),
                command=self._command,
                tools=self._tools,
            )
            log.info("function.build.started", function_id=function_id, runtime=runtime)
            try:
                if runtime == "python":
                    spec = await builder.python(code, handler, wanted)
                elif runtime == "node":
                    spec = await builder.node(code, handler)
                else:
                    spec = await builder.java(code, handler, self._jvm_flags())
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
            FunctionBusy: every instance is busy and no more calls may wait.
        """
        try:
            payload = msgspec.json.encode(event)
        except (RecursionError, msgspec.EncodeError) as exc:
            raise FunctionError(f"the event cannot be sent to the function: {exc}") from None
        while True:
            pool = self._pools.known(function_id)
            if pool is None:
                self._check_id(function_id)
                spec = self._specs.get(function_id) or self._load_spec(function_id)
                pool = self._pools.get(function_id, spec)
            reply = await self._pools.invoke(pool, payload)
            if reply is not None:
                break  # else: rebuilt or stopped while we waited for a slot
        if reply.get("ok") is True:
            return reply.get("result")
        message = relative(str(reply.get("error") or "the handler failed"))
        trace = relative(str(reply.get("trace", "")))
        log.info("function.invoke.failed", function_id=function_id, error=message[:500])
        raise FunctionError(message, function_id=function_id, trace=trace)

    async def remove(self, function_id: str) -> None:
        """Stops the function's instances and deletes its folder (no error if unknown)."""
        self._check_id(function_id)
        async with self._lock(function_id):
            await self._pools.stop(function_id)
            await remove_tree(self._base / function_id)
            await asyncio.to_thread(self._forget, function_id)
        log.info("function.removed", function_id=function_id)

    async def close(self) -> None:
        """Stops every warm instance; later calls start new ones."""
        await self._pools.close()

    # -- processes ----------------------------------------------------------------------------

    async def _start(self, function_id: str, spec: Spec) -> Sandboxed:
        frame_pipe = os.pipe()  # the answers' own pipe: stdout is only a log (process.py)
        try:
            argv, env = self._command(spec, "serve", function_id, frame_fd=frame_pipe[1])
            uid = self._owner(function_id)
        except BaseException:
            os.close(frame_pipe[0])
            os.close(frame_pipe[1])
            raise
        return await spawn(
            self._jail,
            argv,
            function_id=function_id,
            fn_dir=self._base / function_id,
            uid=uid,
            limits=self._process_limits(self._limits.memory_mb, cpu_s=self._limits.cpu_s),
            env=env,
            frame_pipe=frame_pipe,
        )

    def _process_limits(self, memory_mb: int, *, cpu_s: int, processes: int = 0) -> Limits:
        limits = self._limits
        return Limits(
            memory_mb=memory_mb,
            disk_mb=limits.disk_mb,
            max_processes=max(limits.max_processes, processes),
            cpus=limits.cpus,
            cpu_s=cpu_s,
            file_size_mb=limits.file_size_mb,
            address_space_mb=max(memory_mb + 1536, 2048),
        )

    def _command(
        self, spec: Spec, mode: str, function_id: str = "", *, frame_fd: int = 1
    ) -> tuple[list[str], dict[str, str]]:
        """The argv and environment of a bootstrap in `mode` (relative to the code folder).

        `frame_fd`: the file descriptor the bootstrap writes its answers to (1, stdout, for a
        build's "check"; a pipe of its own for a warm instance, see `process.py`).
        """
        memory_mb = self._limits.memory_mb
        env = {"PATH": SAFE_PATH, "HOME": "/tmp", "LANG": "C.UTF-8", "TMPDIR": "/tmp"}
        args = [mode, spec.handler, function_id, str(memory_mb), str(frame_fd)]
        heap_mb = max(64, memory_mb * 3 // 4)
        if spec.runtime == "python":
            return [self._python, "-I", "-u", "_taskorch_bootstrap.py", *args], env
        if spec.runtime == "node":
            node = self._tools["node"] or "node"
            argv = [node, f"--max-old-space-size={heap_mb}", "_taskorch_bootstrap.js", *args]
            return [*argv, spec.entry], env
        # glibc gives each thread a 64 MiB malloc arena reservation; the JVM has many threads.
        env["MALLOC_ARENA_MAX"] = "2"
        java = self._tools["java"] or "java"
        # The bootstrap writes its answers to `frame_fd`, which Java can open only through
        # FileDescriptor's private field.
        opens = ["--add-opens=java.base/java.io=ALL-UNNAMED"]
        argv = [java, *self._jvm_flags(), *opens, "-cp", "classes", "TaskorchBootstrap", *args]
        return argv, env

    def _jvm_flags(self) -> list[str]:
        # Serial GC and C1 only: fewer threads and a faster start, the trade AWS Lambda's Java
        # runtime makes by default.
        heap_mb = max(64, self._limits.memory_mb * 3 // 4)
        return [
            f"-Xmx{heap_mb}m",
            "-Xss1m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-XX:-UsePerfData",
            "-Djava.io.tmpdir=/tmp",
        ]

    # -- folders, owners and specs ------------------------------------------------------------

    async def _fresh_dir(self, function_id: str) -> int | None:
        """Empties the function's folder and gives it to the function's uid (root only)."""
        await asyncio.to_thread(self._base.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(self._meta.mkdir, mode=0o700, exist_ok=True)
        if self._root:
            # Function uids pass through the base folder to their own (bwrap opens it as the
            # function's uid), but cannot list it.
            self._base.chmod(0o711)
        fn_dir = self._base / function_id
        uid = await asyncio.to_thread(self._claim_uid, function_id)
        await remove_tree(fn_dir)
        fn_dir.mkdir(mode=0o700)
        if uid is not None:
            os.lchown(fn_dir, uid, uid)
        return uid

    def _claim_uid(self, function_id: str) -> int | None:
        if not self._root:
            return None
        with open(self._meta / "uids.lock", "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)  # other processes sharing base_dir
            with contextlib.suppress(OSError, RuntimeError):
                return self._owner(function_id)  # a rebuild keeps its uid
            taken: set[int] = set()
            for entry in os.scandir(self._base):
                if entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
                    taken.add(entry.stat(follow_symlinks=False).st_uid)
            start = zlib.crc32(function_id.encode()) % UID_COUNT
            for step in range(UID_COUNT):
                uid = UID_BASE + (start + step) % UID_COUNT
                if uid not in taken:
                    # Hold the uid with an empty folder, so no other build picks it.
                    fn_dir = self._base / function_id
                    fn_dir.mkdir(mode=0o700, exist_ok=True)
                    os.lchown(fn_dir, uid, uid)
                    return uid
        raise BuildError("no free function uid left; remove unused functions")

    def _owner(self, function_id: str) -> int | None:
        if not self._root:
            return None
        uid = (self._base / function_id).stat(follow_symlinks=False).st_uid
        if not UID_BASE <= uid < UID_BASE + UID_COUNT:
            # Never run code as an account that is not a function's own (root above all).
            raise RuntimeError(f"{self._base / function_id} belongs to uid {uid}, not a function")
        return uid

    def _remember(self, function_id: str, spec: Spec) -> None:
        path = self._meta / f"{function_id}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(msgspec.json.encode(spec))
        os.replace(tmp, path)
        self._specs[function_id] = spec

    def _forget(self, function_id: str) -> None:
        self._specs.pop(function_id, None)
        with contextlib.suppress(FileNotFoundError):
            (self._meta / f"{function_id}.json").unlink()

    def _load_spec(self, function_id: str) -> Spec:
        try:
            spec = msgspec.json.decode((self._meta / f"{function_id}.json").read_bytes(), type=Spec)
        except FileNotFoundError:
            raise KeyError(f"function {function_id} is not built") from None
        self._specs[function_id] = spec
        return spec

    def _lock(self, function_id: str) -> asyncio.Lock:
        return self._locks.setdefault(function_id, asyncio.Lock())

    @staticmethod
    def _check_id(function_id: str) -> None:
        if not _FUNCTION_ID.fullmatch(function_id):
            raise ValueError(f"invalid function id {function_id!r}: use letters, digits, _ and -")


def local_runtime(settings: Settings) -> LocalRuntime | None:
    """The local runtime for the API, or ConfigError when local functions would run unisolated.

    When the default provider is `aws`, a host without a sandbox only loses local functions
    (creating one answers 422); when it is `local`, the service refuses to start unless
    TASKORCH_UNSAFE_FUNCTIONS=1 accepts running them unisolated.
    """
    limits = SandboxLimits(timeout_s=settings.function_timeout_s)
    try:
        return LocalRuntime(
            Path(settings.functions_dir), limits=limits, unsafe=settings.unsafe_functions
        )
    except SandboxUnavailable as exc:
        if settings.function_provider == "local":
            raise ConfigError(
                f"TASKORCH_FUNCTION_PROVIDER is local but functions cannot be sandboxed here: "
                f"{exc}; or set TASKORCH_UNSAFE_FUNCTIONS=1 to run them unisolated (never for "
                "code you do not trust)"
            ) from None
        log.warning(
            "function.sandbox.unavailable", reason=str(exc), effect="provider=local is refused"
        )
        return None
