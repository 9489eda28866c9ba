"""Starting and stopping sandboxed processes, and the line protocol of a warm instance.

Every process gets a cgroup of its own (when the host offers cgroups). Stopping one SIGKILLs our
direct child, which takes bwrap's child with it (`--die-with-parent`), and with it the PID
namespace and everything in it; then every process left in the cgroup is killed and the cgroup
removed. No step needs to change uid, so stopping works the same on any event loop (uvloop
refuses the `user`/`group` arguments of asyncio subprocesses).
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
_names = itertools.count(1)


class Gone(Exception):
    """The child process died or broke the protocol; it cannot serve another call."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class Sandboxed:
    """A started process and the cgroup it lives in."""

    proc: asyncio.subprocess.Process
    cgroup: InstanceCgroup | None
    unsafe: bool

    async def stop(self) -> None:
        """Kills the process and everything it started, and reaps it."""
        if self.proc.returncode is None:
            if self.unsafe:  # no PID namespace: the process group is the best we have
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
            else:
                # Kill the namespace's PID 1 (bwrap's child) and let bwrap reap it: the kernel
                # then kills the whole namespace and bwrap exits. Were bwrap killed first, its
                # child would be left to the host's init, which in a container may never reap.
                for child in await asyncio.to_thread(_children_of, self.proc.pid):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(child, signal.SIGKILL)
                await wait_exit(self.proc, 1.0)
                if self.proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        self.proc.kill()
        if self.cgroup is not None:
            await asyncio.to_thread(self.cgroup.remove)
        await wait_exit(self.proc, 5.0)


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
) -> Sandboxed:
    """Starts `argv` in the sandbox (or, with no jail, as a plain process: the unsafe mode)."""
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
            stderr=asyncio.subprocess.PIPE,
            cwd=fn_dir,
            env=env if jail is None else {"PATH": "/usr/bin:/bin"},
            start_new_session=True,
            pass_fds=fds,
            limit=MAX_FRAME_BYTES,
        )
    except BaseException:
        if cgroup is not None:
            await asyncio.to_thread(cgroup.remove)
        raise
    finally:
        for fd in fds:
            os.close(fd)
    return Sandboxed(proc, cgroup, unsafe=jail is None)


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
        log.debug("function.output", function_id=self.function_id, line=line)

    async def read_frame(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        try:
            line = await self.proc.stdout.readuntil(b"\n")
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
            raise Gone(await self._exit_message()) from None
        reply = await self.read_frame()
        if reply.get("id") != self._seq:
            raise Gone("function process answered out of turn")
        cpu_s = reply.get("cpu_s")
        if isinstance(cpu_s, int | float):
            self.cpu_s = float(cpu_s)
        return reply

    async def _exit_message(self) -> str:
        await wait_exit(self.proc, 2.0)
        if self.alive:  # stdout closed, yet still running: it broke the protocol
            return "function process closed its output"
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._drain), 1.0)
        oom = self.box.cgroup is not None and self.box.cgroup.oom_killed()
        return describe_exit(self.proc.returncode, self.tail, oom=oom)

    async def stop(self) -> None:
        """Kills the instance and reaps it."""
        await self.box.stop()
        # Log what it wrote last, unless something holds the pipe open.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._drain), 0.2)
        self._drain.cancel()
