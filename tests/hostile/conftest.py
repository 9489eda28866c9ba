"""The hostile-function suite: functions written as an attacker would, against the real sandbox.

Every test here runs on uvloop, the loop `taskorch serve` runs. Counts are small by default;
TASKORCH_HOSTILE_FULL=1 runs the full counts (see docs/functions.md).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import uvloop

from taskorch.functions import LocalRuntime, SandboxLimits

FULL = os.environ.get("TASKORCH_HOSTILE_FULL") == "1"
SECRET = "hostile-secret-0123456789abcdef0123456789abcdef"
LIMITS = SandboxLimits(
    timeout_s=3.0,
    memory_mb=192,
    disk_mb=16,
    max_processes=48,
    cpus=0.5,
    cpu_s=30,
    file_size_mb=8,
    idle_s=60.0,
    max_instances=2,
)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the full sandbox needs root")
needs_node = pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
needs_java = pytest.mark.skipif(shutil.which("javac") is None, reason="a JDK is not installed")


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
def base_dir() -> Iterator[Path]:
    # Not tmp_path: pytest keeps /tmp/pytest-of-root at 0700, which function uids cannot pass.
    path = Path(tempfile.mkdtemp(prefix="taskorch-hostile-", dir="/tmp"))
    yield path
    subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], check=False)


@pytest.fixture
async def rt(base_dir: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[LocalRuntime]:
    # Secrets in the service's environment, for the functions to go looking for.
    monkeypatch.setenv("TASKORCH_JWT_SECRET", SECRET)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    runtime = LocalRuntime(base_dir, limits=LIMITS)
    yield runtime
    await runtime.close()


def processes_of(uid: int) -> list[str]:
    """`ps` lines of every process of `uid` (zombies included)."""
    out = subprocess.run(
        ["ps", "-eo", "uid=,pid=,stat=,args="], capture_output=True, text=True, check=True
    ).stdout
    return [line for line in out.splitlines() if line.split()[:1] == [str(uid)]]


def ipc_objects() -> dict[str, int]:
    """How many SysV shared memory segments, semaphores and queues the host holds (`ipcs`)."""
    counts = {}
    for flag in ("-m", "-s", "-q"):
        out = subprocess.run(["ipcs", flag], capture_output=True, text=True, check=True).stdout
        counts[flag] = sum(1 for line in out.splitlines() if line[:2] == "0x")
    return counts


async def nothing_left(uid: int, wait_s: float = 5.0) -> list[str]:
    deadline = time.monotonic() + wait_s
    while (left := processes_of(uid)) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return left


def uid_of(base_dir: Path, function_id: str) -> int:
    return (base_dir / function_id).stat().st_uid


async def build(rt: LocalRuntime, function_id: str, runtime: str, code: str, **kw: Any) -> None:
    handler = kw.pop("handler", "Attack::handle" if runtime == "java" else "handler")
    await rt.build(function_id, runtime=runtime, code=code, handler=handler, **kw)


def cpu_of(uid: int) -> float:
    """CPU seconds (user + system) the processes of `uid` that run now have used, from /proc."""
    total = 0
    for line in processes_of(uid):
        pid = line.split()[1]
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rfind(b")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def v2_cgroup_of(uid: int) -> Path | None:
    """The cgroup v2 directory a process of `uid` is in (the hybrid host's unified one too)."""
    for line in processes_of(uid):
        pid = line.split()[1]
        try:
            entries = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        except OSError:
            continue
        for entry in entries:
            if entry.startswith("0::"):
                path = entry[3:].lstrip("/")
                unified = Path("/sys/fs/cgroup/unified")
                mount = unified if (unified / "cgroup.procs").exists() else Path("/sys/fs/cgroup")
                return mount / path
    return None


async def frozen(cgroup: Path | None, wait_s: float = 3.0) -> bool:
    """Waits until `cgroup.events` says every process of the cgroup is frozen (or `wait_s`)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            if cgroup is not None and "frozen 1" in (cgroup / "cgroup.events").read_text():
                return True
        except OSError:
            pass
        await asyncio.sleep(0.01)
    return False
