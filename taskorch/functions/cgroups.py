"""Control groups that bound a whole function instance: memory (with tmpfs and children), pids, CPU.

Each warm process and each build step of a function gets a cgroup of its own, made before the
process starts and joined by it before it runs anything else, so every descendant is counted
and can be found again: killing an instance kills everything in its cgroup (frozen first where
a v2 cgroup is at hand; under v1 alone the kill goes round until none is left, which `pids.max`
keeps short), then the cgroup is removed.

cgroup v2 is used where this process may delegate from its own cgroup; otherwise cgroup v1 with
the memory, pids and cpu controllers. On a hybrid host (v1 controllers plus a cgroup2 mount at
`/sys/fs/cgroup/unified`, as systemd and Docker set up) each instance also gets a directory in
that v2 hierarchy: no controller is needed there for what it gives, the freezer
(`cgroup.freeze`, `cgroup.events`), `cgroup.kill` and the CPU the instance used
(`cpu.stat` `usage_usec`, every process of it counted, children included). The runtime freezes
an instance between calls and counts its CPU from there (see `process.py`). Under v1 alone there
is no freezer (the v1 freezer is not used: joining one more v1 hierarchy costs a cold start
about 10 ms), and an instance's CPU is read from its main process.

`Cgroups.detect()` returns None with the reason when neither is usable; the runtime then says
so at start and falls back to rlimits (see docs/functions.md).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

_ROOT = Path("/sys/fs/cgroup")
_V1_REQUIRED = ("memory", "pids", "cpu")
_V2_CONTROLLERS = ("memory", "pids", "cpu")
# The kernel's scheduling period for CPU quotas; the quota is `cpus` times this.
_CPU_PERIOD_US = 100_000
_PARENT_NAME = "taskorch"


@dataclass
class InstanceCgroup:
    """The cgroup(s) of one instance: one directory per v1 hierarchy, or one under v2."""

    dirs: list[Path]
    # The instance's v2 directory (cgroup.freeze, cgroup.kill, cpu.stat): the one directory
    # under v2, the one in the hybrid host's unified hierarchy under v1, else None.
    freezer: Path | None
    v2: bool
    _removed: bool = field(default=False, repr=False)

    @property
    def procs_files(self) -> list[str]:
        """The `cgroup.procs` files a process writes its pid to, to join the instance."""
        return [str(d / "cgroup.procs") for d in self.dirs]

    def pids(self) -> list[int]:
        """Every process in the instance."""
        found: set[int] = set()
        for d in self.dirs:
            with contextlib.suppress(OSError, ValueError):
                found.update(int(p) for p in (d / "cgroup.procs").read_text().split())
        return sorted(found)

    def oom_killed(self) -> bool:
        """Whether the kernel killed a process of the instance for memory."""
        for d in self.dirs:
            for name in ("memory.events", "memory.oom_control"):
                with contextlib.suppress(OSError):
                    for line in (d / name).read_text().splitlines():
                        key, _, value = line.partition(" ")
                        if key == "oom_kill" and value.strip() not in ("", "0"):
                            return True
        return False

    def cpu_usage_us(self) -> int | None:
        """CPU microseconds every process of the instance used so far, or None (no v2 dir)."""
        if self.freezer is None:
            return None
        try:
            for line in (self.freezer / "cpu.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "usage_usec":
                    return int(value)
        except (OSError, ValueError):
            pass
        return None

    def freeze(self) -> None:
        """Stops every process of the instance where it stands (no CPU, no progress).

        The kernel freezes asynchronously: `frozen()` says when it is done. A frozen process
        still dies of SIGKILL; `thaw()` lets the others run on.
        """
        self._freeze(True)

    def thaw(self) -> None:
        self._freeze(False)

    def frozen(self) -> bool:
        """Whether every process of the instance is frozen now (`cgroup.events`)."""
        if self.freezer is None:
            return False
        with contextlib.suppress(OSError):
            for line in (self.freezer / "cgroup.events").read_text().splitlines():
                if line.strip() == "frozen 1":
                    return True
        return False

    def kill(self, *, timeout_s: float = 2.0) -> bool:
        """SIGKILLs every process in the instance; returns whether none is left."""
        if self.freezer is not None and (self.freezer / "cgroup.kill").exists():
            with contextlib.suppress(OSError):
                (self.freezer / "cgroup.kill").write_text("1")
        # Frozen, no process can fork while the kill goes round; a killed process dies only
        # once thawed.
        self._freeze(True)
        try:
            self._kill_all()
        finally:
            self._freeze(False)
        deadline = time.monotonic() + timeout_s
        while self.pids():
            if time.monotonic() > deadline:
                return False
            self._kill_all()
            time.sleep(0.002)
        return True

    def _kill_all(self) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def remove(self) -> None:
        """Kills what is left and deletes the directories (an empty cgroup only)."""
        if self._removed:
            return
        self.kill()
        for d in self.dirs:
            for _ in range(100):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        log.warning("function.cgroup.remove_failed", path=str(d), error=str(exc))
                        break
                    time.sleep(0.01)  # the last process is still being reaped
        self._removed = True

    def _freeze(self, frozen: bool) -> None:
        if self.freezer is None:
            return
        with contextlib.suppress(OSError):
            (self.freezer / "cgroup.freeze").write_text("1" if frozen else "0")


@dataclass
class Cgroups:
    """Makes instance cgroups under this process's own cgroup (v2) or hierarchies (v1)."""

    version: int
    parents: dict[str, Path]  # controller (or "unified") -> the parent directory we made

    @classmethod
    def detect(cls) -> tuple[Cgroups | None, str]:
        """The usable cgroups of this host, or None and why not."""
        if os.geteuid() != 0:
            return None, "the service does not run as root, so it cannot make cgroups"
        own = _own_cgroups()
        found, reason = _try_v2(own)
        if found is None:
            found, reason_v1 = _try_v1(own)
            reason = reason_v1 if found is None else ""
        if found is not None:
            found._clean_stale()
        return found, reason

    def create(self, name: str, *, memory_mb: int, max_pids: int, cpus: float) -> InstanceCgroup:
        """A new cgroup for one instance with its limits set (raises OSError when it fails)."""
        if self.version == 2:
            d = self.parents["unified"] / name
            d.mkdir()
            _write(d / "memory.max", str(memory_mb * 1024 * 1024))
            with contextlib.suppress(OSError):
                _write(d / "memory.swap.max", "0")
            _write(d / "pids.max", str(max_pids))
            _write(d / "cpu.max", f"{int(cpus * _CPU_PERIOD_US)} {_CPU_PERIOD_US}")
            return InstanceCgroup([d], d, v2=True)
        dirs: list[Path] = []
        unified = None
        try:
            for controller, parent in self.parents.items():
                d = parent / name
                d.mkdir()
                dirs.append(d)
                if controller == "unified":  # the hybrid host's v2 hierarchy: no limits there
                    unified = d
                elif controller == "memory":
                    limit = str(memory_mb * 1024 * 1024)
                    _write(d / "memory.limit_in_bytes", limit)
                    if (d / "memory.memsw.limit_in_bytes").exists():  # no escape into swap
                        _write(d / "memory.memsw.limit_in_bytes", limit)
                elif controller == "pids":
                    _write(d / "pids.max", str(max_pids))
                elif controller == "cpu":
                    _write(d / "cpu.cfs_period_us", str(_CPU_PERIOD_US))
                    _write(d / "cpu.cfs_quota_us", str(int(cpus * _CPU_PERIOD_US)))
        except OSError:
            InstanceCgroup(dirs, unified, v2=False).remove()
            raise
        return InstanceCgroup(dirs, unified, v2=False)

    def close(self) -> None:
        """Removes the instance cgroups left and this process's parent cgroups."""
        self._clean(self.parents.values())

    def _clean_stale(self) -> None:
        """Removes what an earlier run of this service that died left behind, and our own."""
        stale = []
        for parent in self.parents.values():
            for entry in parent.parent.glob(f"{_PARENT_NAME}-*"):
                pid = entry.name.rpartition("-")[2]
                if entry == parent or (pid.isdigit() and not Path(f"/proc/{pid}").exists()):
                    stale.append(entry)
        self._clean(stale, keep=set(self.parents.values()))

    def _clean(
        self, parents: Iterable[Path], *, keep: set[Path] | frozenset[Path] = frozenset()
    ) -> None:
        for parent in parents:
            v2_dir = self.version == 2 or parent.parent == self._unified_base()
            with contextlib.suppress(OSError):
                for entry in parent.iterdir():
                    if entry.is_dir():
                        # A v2 directory may hold frozen processes: thawed or killed on remove.
                        InstanceCgroup([entry], entry if v2_dir else None, v2=v2_dir).remove()
                if parent not in keep:
                    parent.rmdir()

    def _unified_base(self) -> Path | None:
        parent = self.parents.get("unified")
        return None if parent is None else parent.parent


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _own_cgroups() -> dict[str, str]:
    """Controller name (or "" for v2) -> this process's cgroup path, from /proc/self/cgroup."""
    own: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                own[controller] = path
    return own


def _try_v2(own: dict[str, str]) -> tuple[Cgroups | None, str]:
    if not (_ROOT / "cgroup.controllers").exists() or "" not in own:
        return None, "no cgroup v2 hierarchy at /sys/fs/cgroup"
    base = _ROOT / own[""].lstrip("/")
    available = set((base / "cgroup.controllers").read_text().split())
    missing = [c for c in _V2_CONTROLLERS if c not in available]
    if missing:
        return None, f"cgroup v2 lacks the {', '.join(missing)} controller(s) here"
    parent = base / f"{_PARENT_NAME}-{os.getpid()}"
    enable = " ".join(f"+{c}" for c in _V2_CONTROLLERS)
    try:
        try:
            _write(base / "cgroup.subtree_control", enable)
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
            # "No internal processes": move this process into a leaf of its own, then delegate.
            leaf = base / "service"
            leaf.mkdir(exist_ok=True)
            _write(leaf / "cgroup.procs", str(os.getpid()))
            _write(base / "cgroup.subtree_control", enable)
        parent.mkdir(exist_ok=True)
        _write(parent / "cgroup.subtree_control", enable)
    except OSError as exc:
        return None, f"cannot delegate cgroup v2 controllers under {base}: {exc.strerror}"
    return Cgroups(2, {"unified": parent}), ""


def _try_v1(own: dict[str, str]) -> tuple[Cgroups | None, str]:
    parents: dict[str, Path] = {}
    for controller in _V1_REQUIRED:
        mount = _ROOT / controller
        if controller not in own or not (mount / "cgroup.procs").exists():
            return None, f"no cgroup v1 {controller} controller at {mount}"
        parent = mount / own[controller].lstrip("/") / f"{_PARENT_NAME}-{os.getpid()}"
        try:
            parent.mkdir(exist_ok=True)
        except OSError as exc:
            return None, f"cannot make a cgroup under {parent.parent}: {exc.strerror}"
        parents[controller] = parent
    unified = _hybrid_unified(own)
    if unified is not None:
        parents["unified"] = unified
    return Cgroups(1, parents), ""


def _hybrid_unified(own: dict[str, str]) -> Path | None:
    """Our parent in a hybrid host's cgroup2 hierarchy (the freezer and CPU count), or None."""
    mount = _ROOT / "unified"
    if "" not in own or not (mount / "cgroup.procs").exists():
        return None
    parent = mount / own[""].lstrip("/") / f"{_PARENT_NAME}-{os.getpid()}"
    try:
        parent.mkdir(exist_ok=True)
        probe = parent / "probe"
        probe.mkdir(exist_ok=True)
        usable = all((probe / f).exists() for f in ("cgroup.freeze", "cgroup.events", "cpu.stat"))
        probe.rmdir()
    except OSError as exc:
        log.info("function.cgroup.no_unified", path=str(parent), error=exc.strerror)
        return None
    if not usable:  # a kernel before 5.2 has no v2 freezer
        with contextlib.suppress(OSError):
            parent.rmdir()
        return None
    return parent
