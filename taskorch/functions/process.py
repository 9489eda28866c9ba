"""Starting and stopping sandboxed processes, and the line protocol of a warm instance.

Every process gets a cgroup of its own (when the host offers cgroups). Stopping one SIGKILLs our
direct child, which takes bwrap's child with it (`--die-with-parent`), and with it the PID
namespace and everything in it; then every process left in the cgroup is killed and the cgroup
removed. No step needs to change uid, so stopping works the same on any event loop (uvloop
refuses the `user`/`group` arguments of asyncio subprocesses).

A warm instance reads one JSON request per line on its stdin and answers one JSON document per
line on a pipe of its own (the "frame pipe", an fd number given to the bootstrap), never on its
stdout: whatever the runtime, the handler or a child writes to stdout or stderr (a JVM warning,
a C library, `print`) goes to one log pipe, logged as `function.output`, and cannot break the
protocol. Between calls the instance is frozen (cgroup v2 freezer, where there is one;
`FREEZE_AFTER_S` after its answer): what the handler left running uses no CPU until the next
call thaws it, as on AWS Lambda. The CPU an
instance used is counted by the kernel (its cgroup's `cpu.stat`, else its main process's
`/proc/<pid>/stat`), never taken from what the function answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import structlog

from taskorch.functions.cgroups import InstanceCgroup
from taskorch.functions.jail import Jail, Limits, Mount

log = structlog.get_logger("taskorch.functions")

_MIB = 1024 * 1024
# Lambda's own ceiling for a response is 6 MB; a longer line means a broken or hostile child.
MAX_FRAME_BYTES = 8 * _MIB
_MAX_LOG_LINE_CHARS = 2000
TAIL_LINES = 20
_RESOURCE_SIGNALS = {signal.SIGKILL, signal.SIGXCPU, signal.SIGXFSZ}
# An instance that answered is frozen once it has stayed idle this long: calls back to back skip
# the freeze and thaw (about 0.1 ms), and what it left running gets at most this much CPU.
FREEZE_AFTER_S = 0.05
# An instance's CPU is read after a call at most this often (a read costs about 30 us).
CPU_READ_EVERY_S = 0.1
_names = itertools.count(1)


class Gone(Exception):
    """The child process died or broke the protocol; it cannot serve another call."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class Sandboxed:
    """A started process, the cgroup it lives in and, for a warm instance, its frame pipe."""

    proc: asyncio.subprocess.Process
    cgroup: InstanceCgroup | None
    unsafe: bool
    frames: asyncio.StreamReader | None = None  # the answers; None: on stdout (build steps)
    frames_transport: asyncio.ReadTransport | None = None
    _main_pid: int | None = None

    def freeze(self) -> None:
        """Freezes every process of the instance (no-op without a v2 cgroup)."""
        if self.cgroup is not None:
            self.cgroup.freeze()

    def thaw(self) -> None:
        if self.cgroup is not None:
            self.cgroup.thaw()

    async def cpu_s(self) -> float | None:
        """CPU seconds the instance used so far, as the kernel counts them (None: unknown).

        Every process of the instance together where its cgroup counts them (v2), else the
        runtime's own process (what RLIMIT_CPU counts), read from `/proc/<pid>/stat`.
        """
        if self.cgroup is not None:
            usage_us = self.cgroup.cpu_usage_us()
            if usage_us is not None:
                return usage_us / 1e6
        if self._main_pid is None:
            if self.unsafe:  # prlimit exec()s the runtime: our child is the runtime
                self._main_pid = self.proc.pid
            else:  # bwrap --as-pid-1 has one child, the runtime
                children = await asyncio.to_thread(_children_of, self.proc.pid)
                if not children:
                    return None
                self._main_pid = children[0]
        return _process_cpu_s(self._main_pid)

    async def stop(self) -> None:
        """Kills the process and everything it started, and reaps it."""
        if self.frames_transport is not None:  # first: a stop cut short must not leak it
            self.frames_transport.close()
        if self.proc.returncode is None:
            if self.unsafe:  # no PID namespace: the process group is the best we have
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
            else:
                # Kill the namespace's PID 1 (bwrap's child) and let bwrap reap it: the kernel
                # then kills the whole namespace and bwrap exits. Were bwrap killed first, its
                # child would be left to the host's init, which in a container may never reap.
                try:
                    children = await asyncio.to_thread(_children_of, self.proc.pid)
                except OSError as exc:
                    # /proc could not be read (seen once in CI: EBADF under load). Killing bwrap
                    # below still ends its child: the jail runs it --die-with-parent.
                    log.warning("function.stop.children_unknown", pid=self.proc.pid, error=str(exc))
                    children = []
                for child in children:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(child, signal.SIGKILL)
                # SIGKILL ends a frozen process too, but bwrap (in the same cgroup) can reap
                # its child only once thawed.
                self.thaw()
                await wait_exit(self.proc, 1.0)
                if self.proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        self.proc.kill()
        self.thaw()  # a frozen instance's processes die of the kill below only once thawed
        if self.cgroup is not None:
            await asyncio.to_thread(self.cgroup.remove)
        await wait_exit(self.proc, 5.0)


def _process_cpu_s(pid: int) -> float | None:
    """utime + stime of one process, from /proc (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()
    try:  # fields 14 and 15 of stat(5), counted from the state (field 3) here
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (IndexError, ValueError):
        return None


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


async def spawn(
    jail: Jail | None,
    argv: Sequence[str],
    *,
    function_id: str,
    fn_dir: Path,
    uid: int | None,
    limits: Limits,
    env: dict[str, str],
    writable_task: bool = False,
    network: bool = False,
    extra: Sequence[Mount] = (),
    stdin: int = asyncio.subprocess.PIPE,
    frame_pipe: tuple[int, int] | None = None,
) -> Sandboxed:
    """Starts `argv` in the sandbox (or, with no jail, as a plain process: the unsafe mode).

    With `frame_pipe` (the two ends of an `os.pipe()`, whose write end's number `argv` gives the
    bootstrap), the answers come on that pipe (`Sandboxed.frames`) and the process's stdout and
    stderr share one pipe, its log (`proc.stdout`); both ends are closed here (the read end by
    `Sandboxed.stop`). Without it, stdout and stderr are separate pipes (build steps).
    """
    try:
        return await _spawn(
            jail,
            argv,
            function_id=function_id,
            fn_dir=fn_dir,
            uid=uid,
            limits=limits,
            env=env,
            writable_task=writable_task,
            network=network,
            extra=extra,
            stdin=stdin,
            frame_pipe=frame_pipe,
        )
    finally:
        if frame_pipe is not None:
            os.close(frame_pipe[1])  # the child holds its own copy


async def _spawn(
    jail: Jail | None,
    argv: Sequence[str],
    *,
    function_id: str,
    fn_dir: Path,
    uid: int | None,
    limits: Limits,
    env: dict[str, str],
    writable_task: bool,
    network: bool,
    extra: Sequence[Mount],
    stdin: int,
    frame_pipe: tuple[int, int] | None,
) -> Sandboxed:
    cgroup = None
    if jail is None:
        command, fds = list(argv), list[int]()
        prlimit = shutil.which("prlimit")
        if prlimit:
            command = [
                prlimit,
                f"--as={limits.address_space_mb * _MIB}",
                f"--cpu={limits.cpu_s}",
                f"--fsize={limits.file_size_mb * _MIB}",
                "--core=0",
                "--",
                *argv,
            ]
        env = {**env, "TMPDIR": str(fn_dir / "tmp"), "HOME": str(fn_dir / "tmp")}
        (fn_dir / "tmp").mkdir(exist_ok=True)
    else:
        if jail.cgroups is not None:
            name = f"{function_id}-{os.getpid()}-{next(_names)}"
            cgroup = await asyncio.to_thread(
                jail.cgroups.create,
                name,
                memory_mb=limits.memory_mb,
                max_pids=limits.max_processes,
                cpus=limits.cpus,
            )
        command, fds = jail.command(
            argv,
            task_dir=fn_dir,
            uid=uid,
            limits=limits,
            cgroup=cgroup,
            env=env,
            writable_task=writable_task,
            network=network,
            extra=extra,
        )
    try:
        proc = await asyncio.create_subprocess_exec(
            *command,
            stdin=stdin,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE if frame_pipe is None else asyncio.subprocess.STDOUT,
            cwd=fn_dir,
            env=env if jail is None else {"PATH": "/usr/bin:/bin"},
            start_new_session=True,
            pass_fds=fds if frame_pipe is None else [*fds, frame_pipe[1]],
            limit=MAX_FRAME_BYTES,
        )
    except BaseException:
        if frame_pipe is not None:
            os.close(frame_pipe[0])
        if cgroup is not None:
            await asyncio.to_thread(cgroup.remove)
        raise
    finally:
        for fd in fds:
            os.close(fd)
    box = Sandboxed(proc, cgroup, unsafe=jail is None)
    if frame_pipe is not None:
        loop = asyncio.get_running_loop()
        box.frames = asyncio.StreamReader(limit=MAX_FRAME_BYTES, loop=loop)
        try:
            box.frames_transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(box.frames, loop=loop),  # type: ignore[arg-type]
                os.fdopen(frame_pipe[0], "rb", buffering=0),
            )
        except BaseException:
            await box.stop()
            raise
    return box


async def wait_exit(proc: asyncio.subprocess.Process, timeout_s: float) -> None:
    # Not proc.wait(): on Python 3.11 it also waits for the pipes to close, which a stray
    # grandchild can hold open; returncode is set as soon as the child is reaped.
    deadline = time.monotonic() + timeout_s
    while proc.returncode is None and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.005)


def describe_exit(returncode: int | None, tail: Sequence[str], *, oom: bool = False) -> str:
    """What a dead process's exit status means, with its last output."""
    sig = -returncode if returncode is not None and returncode < 0 else None
    if oom:
        message = "function process exited: out of memory (the instance's memory limit)"
    elif sig is not None:
        name = (signal.strsignal(sig) or f"signal {sig}").lower()
        hint = ", probably a resource limit" if sig in _RESOURCE_SIGNALS else ""
        message = f"function process exited (signal {sig}: {name}{hint})"
    elif returncode is not None and returncode > 128 and returncode - 128 in _RESOURCE_SIGNALS:
        # bwrap's own PID 1 reports a child killed by a signal as 128 + the signal.
        sig = returncode - 128
        name = (signal.strsignal(sig) or f"signal {sig}").lower()
        message = f"function process exited (signal {sig}: {name}, probably a resource limit)"
    else:
        message = f"function process exited (code {returncode})"
    output = "\n".join(tail)
    return f"{message}; last output:\n{output[-1000:]}" if output else message


class Instance:
    """One warm sandboxed process and its side of the line protocol."""

    def __init__(self, function_id: str, box: Sandboxed) -> None:
        self.function_id = function_id
        self.box = box
        self.proc = box.proc
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.last_used = time.monotonic()
        self.cpu_s = 0.0  # CPU seconds used so far, as the kernel counts them
        self._seq = 0
        self._drain = asyncio.create_task(self._drain_output())
        self._frozen = False
        self._cpu_read_at = 0.0
        self._freeze_timer: asyncio.TimerHandle | None = None

    def _freeze(self) -> None:
        self._freeze_timer = None
        self.box.freeze()
        self._frozen = True

    def _thaw(self) -> None:
        if self._freeze_timer is not None:
            self._freeze_timer.cancel()
            self._freeze_timer = None
        if self._frozen:
            self.box.thaw()
            self._frozen = False

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    async def _drain_output(self) -> None:
        # With a frame pipe, stdout and stderr are the one log pipe; else stdout is the protocol.
        log_pipe = self.proc.stdout if self.box.frames is not None else self.proc.stderr
        assert log_pipe is not None
        pending = b""
        while chunk := await log_pipe.read(65536):
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
        log.debug("function.output", function_id=self.function_id, line=line)

    async def read_frame(self) -> dict[str, Any]:
        frames = self.box.frames if self.box.frames is not None else self.proc.stdout
        assert frames is not None
        try:
            line = await frames.readuntil(b"\n")
        except asyncio.IncompleteReadError:
            raise Gone(await self._exit_message()) from None
        except asyncio.LimitOverrunError:
            raise Gone(f"the result is larger than {MAX_FRAME_BYTES // _MIB} MiB") from None
        try:
            frame = msgspec.json.decode(line)
        except (msgspec.DecodeError, RecursionError):
            raise Gone(
                "function process wrote something that is not a JSON response "
                "(or one nested too deeply)"
            ) from None
        if not isinstance(frame, dict):
            raise Gone("function process wrote something that is not a JSON response")
        return frame

    async def call(self, event: bytes, request_id: str, deadline_ms: int) -> dict[str, Any]:
        """Sends one request and waits for its answer (the caller bounds the wait).

        The instance is thawed for the call and frozen again once it has answered (and stayed
        idle `FREEZE_AFTER_S`); `cpu_s` is then what the kernel counted, whatever it answered.
        """
        assert self.proc.stdin is not None
        self._seq += 1
        head = b'{"id":%d,"request_id":"%s","deadline_ms":%d,"event":' % (
            self._seq,
            request_id.encode(),
            deadline_ms,
        )
        self._thaw()
        try:
            self.proc.stdin.write(head + event + b"}\n")
            await self.proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            raise Gone(await self._exit_message()) from None
        reply = await self.read_frame()
        if self.box.cgroup is not None and self.box.cgroup.freezer is not None:
            loop = asyncio.get_running_loop()
            self._freeze_timer = loop.call_later(FREEZE_AFTER_S, self._freeze)
        if reply.get("id") != self._seq:
            raise Gone("function process answered out of turn")
        now = time.monotonic()
        if now - self._cpu_read_at >= CPU_READ_EVERY_S:  # calls back to back: 10 reads a second
            self._cpu_read_at = now
            cpu_s = await self.box.cpu_s()
            if cpu_s is not None:
                self.cpu_s = cpu_s
        return reply

    async def _exit_message(self) -> str:
        await wait_exit(self.proc, 2.0)
        if self.alive:  # its answers' pipe closed, yet still running: it broke the protocol
            return "function process closed its output"
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._drain), 1.0)
        oom = self.box.cgroup is not None and self.box.cgroup.oom_killed()
        return describe_exit(self.proc.returncode, self.tail, oom=oom)

    async def stop(self) -> None:
        """Kills the instance and reaps it."""
        if self._freeze_timer is not None:
            self._freeze_timer.cancel()
            self._freeze_timer = None
        await self.box.stop()
        # Log what it wrote last, unless something holds the pipe open.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._drain), 0.2)
        self._drain.cancel()
