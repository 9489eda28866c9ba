"""The sandbox around every function process and build step: bubblewrap, seccomp, a uid, cgroups.

A process is started as

    sh -c <join the instance's cgroups>  prlimit <rlimits>  setpriv <the function's uid>
        bwrap <namespaces, mounts, seccomp>  <runtime> <bootstrap>

- `sh` (root, our own fixed script) writes its pid into the instance's `cgroup.procs` files
  before anything else runs, so the function and all its descendants are counted and killable;
- `prlimit`: no core files, bounded file size and open files, CPU seconds per process (and,
  without cgroups, address space and process count as the fallback);
- `setpriv`: the function's own uid and gid (when the service is root), no supplementary
  groups, no capabilities, no_new_privs;
- `bwrap` (bubblewrap): new user, PID, IPC, UTS, network, mount and cgroup namespaces; a root
  made of read-only binds of the runtime only (`/usr`, a few files of `/etc`, the interpreter's
  prefix) plus the function's code at `/var/task` (read-only except while building), a fresh
  size-limited tmpfs on `/tmp` and `/dev/shm`, its own `/proc` (its global counters of the
  host's activity covered by neutral stand-ins, HIDDEN_PROC) and a minimal `/dev`; no nested
  user namespaces; `--die-with-parent` and `--new-session`; and a seccomp filter (built with
  libseccomp) that refuses what a function never needs, socket families included.

`Jail.probe()` checks all of this once at start and raises SandboxUnavailable saying why.
"""

from __future__ import annotations

import errno
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from taskorch.functions.cgroups import Cgroups, InstanceCgroup
from taskorch.functions.errors import SandboxUnavailable

log = structlog.get_logger(__name__)

# Where the function's code is inside the sandbox (as on AWS Lambda).
TASK_DIR = "/var/task"
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
_MIB = 1024 * 1024
# Function uids: above the usual range of real accounts; no /etc/passwd entry is needed.
UID_BASE = 100_000
UID_COUNT = 65_000
# Files of /etc the runtimes read: the loader cache, `alternatives` (java, node symlinks), the
# JDK's configuration, certificates for outbound TLS, the time zone. Nothing else of /etc.
_ETC = (
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "ssl",
    "ca-certificates",
    "localtime",
    "java-17-openjdk",
    "java-21-openjdk",
    "nsswitch.conf",
)
# Global files of /proc that show the whole host's activity whatever the namespaces: CPU time,
# load, context switches and forks (stat, loadavg, schedstat, the idle time in uptime),
# interrupts, disk and memory traffic, open files and ptys, and the kernel's command line. Each
# is covered by a neutral stand-in of the same layout with every counter at 0, so what parses
# them still works: glibc counts the CPUs in /proc/stat when /sys is absent (the JVM's and
# Python's CPU count), Node's os.cpus() reads it too, the JVM reads Hugepagesize and Node
# os.totalmem() MemTotal from /proc/meminfo. Kept as they are: btime, MemTotal, Hugepagesize
# (the host's configuration, not its activity); MemFree and MemAvailable read as MemTotal.
HIDDEN_PROC = (
    "stat loadavg cmdline uptime meminfo swaps interrupts softirqs diskstats vmstat schedstat "
    "zoneinfo buddyinfo sys/fs/file-nr sys/fs/inode-nr sys/fs/inode-state sys/fs/dentry-state "
    "sys/fs/aio-nr sys/kernel/pty/nr"
).split()
# Folders of /proc with more of the same, covered by an empty read-only folder: pressure stall
# information (the host's CPU, memory and I/O waits) and the file systems' global statistics
# (/proc/fs/ext4/<disk>/mb_groups shows its free blocks, /proc/fs/xfs/stat its I/O).
HIDDEN_PROC_DIRS = ("pressure", "fs")
_KEPT = re.compile(r"^(btime|MemTotal|Hugepagesize)\b")
_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.(\d+))?(?![\w.])")
# The host's /etc/hosts names its networks: the sandbox has only its loopback.
_HOSTS = b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
_JOIN_SCRIPT = (
    'while [ "$1" != "--" ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'
)
# Syscalls a function never needs. Refused with EPERM (a clear error), not a kill, so runtimes
# that probe for features (the JVM, glibc, libuv's io_uring) carry on. Besides the privileged
# calls: io_uring (its own large kernel surface, and it bypasses this filter's view of syscalls),
# modify_ldt, inotify and fanotify (watches on the shared read-only /usr and runtime prefix show
# what another tenant's function opens; cachestat likewise shows what of them is in the page
# cache), and the mount API and mount inspection.
_DENIED = (
    "mount umount2 pivot_root chroot move_mount open_tree open_tree_attr fsopen fsconfig fsmount "
    "fspick mount_setattr statmount listmount setns unshare ptrace process_vm_readv "
    "process_vm_writev kcmp keyctl add_key request_key bpf perf_event_open userfaultfd kexec_load "
    "kexec_file_load init_module finit_module delete_module reboot swapon swapoff acct quotactl "
    "syslog iopl ioperm open_by_handle_at name_to_handle_at lookup_dcookie vhangup settimeofday "
    "clock_settime clock_adjtime adjtimex personality io_uring_setup io_uring_enter "
    "io_uring_register modify_ldt inotify_init inotify_init1 inotify_add_watch inotify_rm_watch "
    "fanotify_init fanotify_mark cachestat"
).split()
# Calls newer than some libseccomp releases (2.5 knows neither statmount nor listmount): by
# number where the number is known. Since Linux 5.1 new calls have one number on every
# architecture but alpha, mips and ia64, so these hold for x86_64 and aarch64.
_NEWER = {"cachestat": 451, "statmount": 457, "listmount": 458, "open_tree_attr": 467}
# preadv2's RWF_NOWAIT reads only what is already in the page cache: tried on the shared /usr,
# it tells which files another tenant's function has just loaded. Refused as unsupported.
_RWF_NOWAIT = 0x8
_NEWER_ARCHES = ("x86_64", "aarch64")
# Socket families a function may open: AF_UNIX, AF_INET and AF_INET6 (its own loopback), and
# AF_NETLINK for NETLINK_ROUTE only, which sees the sandbox's network namespace (a function's
# has only its loopback) and without capabilities can only read: glibc's getifaddrs, if_nameindex and
# getaddrinfo(AI_ADDRCONFIG) and Node's os.networkInterfaces() ask it. All others answer
# EAFNOSUPPORT, as if the kernel lacked them: AF_VSOCK (not namespaced: the host's and the
# hypervisor's vsock ports), the other netlink protocols (uevents, audit, genetlink, ...),
# AF_PACKET, AF_ALG, ...
_AF_UNIX, _AF_INET, _AF_INET6, _AF_NETLINK = 1, 2, 10, 16
_FAMILIES = (_AF_UNIX, _AF_INET, _AF_INET6, _AF_NETLINK)
_NETLINK_ROUTE = 0
_CLONE_NEW_FLAGS = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
    0x00000080,  # CLONE_NEWTIME
)


def seccomp_filter() -> bytes:
    """The BPF program bwrap loads: allow by default, refuse `_DENIED` and new namespaces."""
    import pyseccomp as seccomp

    flt = seccomp.SyscallFilter(seccomp.ALLOW)
    for name in _DENIED:
        try:
            flt.add_rule(seccomp.ERRNO(errno.EPERM), name)
        except (OSError, ValueError, RuntimeError):  # unknown to this libseccomp
            number = _NEWER.get(name)
            if number is None or platform.machine() not in _NEWER_ARCHES:
                continue  # its number unknown too: skipped
            flt.add_rule(seccomp.ERRNO(errno.EPERM), number)
    # The domain and protocol are ints: the kernel drops the upper 32 bits the filter sees, so
    # anything above the highest allowed family (high bits included) is refused, below it each
    # family not allowed, and netlink with any protocol but NETLINK_ROUTE.
    refused = seccomp.ERRNO(errno.EAFNOSUPPORT)
    for call in ("socket", "socketpair"):
        flt.add_rule(refused, call, seccomp.Arg(0, seccomp.GT, max(_FAMILIES)))
        for family in range(max(_FAMILIES)):
            if family not in _FAMILIES:
                flt.add_rule(refused, call, seccomp.Arg(0, seccomp.EQ, family))
        flt.add_rule(
            refused,
            call,
            seccomp.Arg(0, seccomp.EQ, _AF_NETLINK),
            seccomp.Arg(2, seccomp.NE, _NETLINK_ROUTE),
        )
    for flag in _CLONE_NEW_FLAGS:
        flt.add_rule(
            seccomp.ERRNO(errno.EPERM), "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag)
        )
    # clone3 passes its flags in memory, where a filter cannot look: make libc fall back to
    # clone(2), which the rules above can judge.
    flt.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    flt.add_rule(
        seccomp.ERRNO(errno.EOPNOTSUPP),
        "preadv2",
        seccomp.Arg(5, seccomp.MASKED_EQ, _RWF_NOWAIT, _RWF_NOWAIT),
    )
    # TIOCSTI pushes input into a terminal; --new-session already detaches, this is belt and braces.
    flt.add_rule(
        seccomp.ERRNO(errno.EPERM), "ioctl", seccomp.Arg(1, seccomp.MASKED_EQ, 0xFFFFFFFF, 0x5412)
    )
    with tempfile.TemporaryFile() as f:
        flt.export_bpf(f)
        f.seek(0)
        return f.read()


def neutral_proc(name: str, text: str) -> str:
    """A stand-in for the host's /proc/`name`: the same layout, its counters at 0."""
    if name == "cmdline":
        return "\n"
    lines = []
    total = ""
    for line in text.splitlines(keepends=True):
        if _KEPT.match(line):
            total = line.split(":")[1] if line.startswith("MemTotal") else total
            lines.append(line)
        elif total and line.startswith(("MemFree:", "MemAvailable:")):
            lines.append(line.split(":")[0] + ":" + total)
        else:
            lines.append(_NUMBER.sub(lambda m: "0." + "0" * len(m[1]) if m[1] else "0", line))
    return "".join(lines)


def _proc_stand_ins() -> dict[str, bytes]:
    """Stand-ins for the HIDDEN_PROC files this kernel has (but uptime, made at each start)."""
    found = {}
    for name in HIDDEN_PROC:
        try:
            text = Path("/proc", name).read_text()
        except OSError:  # not in this kernel (schedstat without CONFIG_SCHEDSTATS, ...)
            continue
        found[name] = neutral_proc(name, text).encode()
    return found


def _memfd(data: bytes) -> int:
    # A memfd, not a pipe: /proc/interrupts of a large host is beyond a pipe's 64 KiB.
    fd = os.memfd_create("taskorch-jail", 0)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


@dataclass(frozen=True)
class Mount:
    """A folder of the host bound into the sandbox."""

    source: Path
    target: str
    writable: bool = False


@dataclass(frozen=True)
class Limits:
    """What one process or instance may use (see `SandboxLimits` for the meaning)."""

    memory_mb: int
    disk_mb: int
    max_processes: int
    cpus: float
    cpu_s: int
    file_size_mb: int
    address_space_mb: int  # the rlimit fallback without cgroups only


class Jail:
    """Builds the command line that runs a program inside the sandbox.

    Args:
        bwrap, setpriv, prlimit: the tools' paths.
        cgroups: per-instance cgroups, or None (then rlimits bound each process instead).
        runtime_dirs: folders outside /usr the runtimes live in (an interpreter's prefix).
    """

    def __init__(
        self,
        *,
        bwrap: str,
        setpriv: str,
        prlimit: str,
        cgroups: Cgroups | None,
        runtime_dirs: Sequence[Path] = (),
    ) -> None:
        self.bwrap = bwrap
        self.setpriv = setpriv
        self.prlimit = prlimit
        self.cgroups = cgroups
        self.root = os.geteuid() == 0
        self._runtime_dirs = [d for d in runtime_dirs if not d.is_relative_to("/usr")]
        self._seccomp = seccomp_filter()
        self._proc = _proc_stand_ins()
        self._proc_dirs = [name for name in HIDDEN_PROC_DIRS if Path("/proc", name).is_dir()]
        self._merged_usr = Path("/bin").is_symlink()

    @classmethod
    def probe(cls, *, python: str) -> Jail:
        """A working jail for this host, or SandboxUnavailable naming what is missing.

        The answer is kept for the life of the process: the host does not change under us.
        """
        found = _probed.get(python)
        if isinstance(found, SandboxUnavailable):
            raise found
        if found is not None:
            return found
        try:
            _probed[python] = cls._probe(python=python)
        except SandboxUnavailable as exc:
            _probed[python] = exc
            raise
        return cls.probe(python=python)

    @classmethod
    def _probe(cls, *, python: str) -> Jail:
        tools = {
            name: shutil.which(name, path=SAFE_PATH) for name in ("bwrap", "setpriv", "prlimit")
        }
        missing = [name for name, path in tools.items() if path is None]
        if missing:
            package = "bubblewrap" if "bwrap" in missing else "util-linux"
            raise SandboxUnavailable(
                f"{' and '.join(missing)} not found: install {package} "
                f"(apt-get install -y {package})"
            )
        try:
            import pyseccomp  # noqa: F401
        except (ImportError, OSError) as exc:
            raise SandboxUnavailable(
                f"libseccomp cannot be loaded ({exc}): install libseccomp2 and pyseccomp"
            ) from None
        cgroups, reason = Cgroups.detect()
        if cgroups is None:
            log.warning(
                "function.sandbox.no_cgroups",
                reason=reason,
                effect="each process is bounded by rlimits instead of the whole instance",
            )
        prefix = Path(os.path.realpath(python)).parent.parent
        jail = cls(
            bwrap=str(tools["bwrap"]),
            setpriv=str(tools["setpriv"]),
            prlimit=str(tools["prlimit"]),
            cgroups=cgroups,
            runtime_dirs=[prefix],
        )
        jail._check()
        log.info(
            "function.sandbox.ready",
            bwrap=jail.bwrap,
            cgroups=f"v{cgroups.version}" if cgroups else "none: rlimits per process",
            function_uids=jail.root,
        )
        return jail

    def _check(self) -> None:
        with tempfile.TemporaryDirectory(prefix="taskorch-probe-") as tmp:
            task = Path(tmp)
            if self.root:
                os.chown(task, UID_BASE, UID_BASE)
            limits = Limits(64, 1, 16, 1.0, 10, 1, 1024)
            argv, fds = self.command(
                ["/bin/sh", "-c", "echo ok"],
                task_dir=task,
                uid=UID_BASE if self.root else None,
                limits=limits,
                cgroup=None,
                env={"PATH": SAFE_PATH},
            )
            try:
                done = subprocess.run(
                    argv, capture_output=True, pass_fds=fds, timeout=30, check=False
                )
            finally:
                for fd in fds:
                    os.close(fd)
        if done.stdout.strip() != b"ok":
            reason = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["?"]
            raise SandboxUnavailable(
                f"bubblewrap cannot make the sandbox here ({reason[0]}): the host must allow "
                "user namespaces (sysctl user.max_user_namespaces > 0; in a container: "
                "seccomp and AppArmor profiles that permit unshare and mount, see "
                "docs/functions.md)"
            )

    def command(
        self,
        argv: Sequence[str],
        *,
        task_dir: Path,
        uid: int | None,
        limits: Limits,
        cgroup: InstanceCgroup | None,
        env: dict[str, str],
        writable_task: bool = False,
        network: bool = False,
        extra: Sequence[Mount] = (),
    ) -> tuple[list[str], list[int]]:
        """The full command line and the file descriptors it must inherit (the caller closes)."""
        command: list[str] = []
        if cgroup is not None:
            command += ["/bin/sh", "-c", _JOIN_SCRIPT, "sh", *cgroup.procs_files, "--"]
        command += [self.prlimit, "--core=0", "--nofile=1024"]
        command += [f"--fsize={limits.file_size_mb * _MIB}", f"--cpu={limits.cpu_s}"]
        if self.cgroups is None:
            command.append(f"--as={limits.address_space_mb * _MIB}")
            if uid is not None:  # counted per uid: only meaningful for a uid of its own
                command.append(f"--nproc={limits.max_processes}")
        command.append("--")
        if uid is not None:
            command += [self.setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
            command += ["--inh-caps=-all", "--no-new-privs", "--"]
        fds: list[int] = []
        try:
            read_fd, write_fd = os.pipe()
            fds.append(read_fd)
            try:
                os.write(write_fd, self._seccomp)
            finally:
                os.close(write_fd)
            command += [self.bwrap, *self._namespaces(network), "--seccomp", str(read_fd)]
            command += self._mounts(task_dir, limits, writable_task=writable_task)
            command += self._stand_ins(fds)
            for mount in extra:  # after the stand-ins: a caller's own /etc file wins
                command += ["--bind" if mount.writable else "--ro-bind"]
                command += [str(mount.source), mount.target]
            command += ["--remount-ro", "/"]
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        command += ["--chdir", TASK_DIR, "--clearenv"]
        for key, value in env.items():
            command += ["--setenv", key, value]
        command += ["--", *argv]
        return command, fds

    def _stand_ins(self, fds: list[int]) -> list[str]:
        """Neutral files over the host's /etc/hosts and global /proc files and folders."""
        try:
            uptime = Path("/proc/uptime").read_text().split()[0]
        except (OSError, IndexError):
            uptime = "0.00"
        files = {"/etc/hosts": _HOSTS}
        files |= {f"/proc/{name}": data for name, data in self._proc.items()}
        if "uptime" in self._proc:  # when this instance started; the host's idle time hidden
            files["/proc/uptime"] = f"{uptime} 0.00\n".encode()
        args = []
        for target, data in files.items():
            fds.append(_memfd(data))
            args += ["--perms", "0444", "--ro-bind-data", str(fds[-1]), target]
        for name in self._proc_dirs:
            args += ["--tmpfs", f"/proc/{name}", "--remount-ro", f"/proc/{name}"]
        return args

    @staticmethod
    def _namespaces(network: bool) -> list[str]:
        args = ["--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts"]
        args += ["--unshare-cgroup-try", "--disable-userns", "--hostname", "sandbox"]
        # --as-pid-1: bwrap waits for the command itself. With its own reaper as PID 1, that
        # reaper outlives bwrap for a moment and is left a zombie to the host's init.
        args += ["--die-with-parent", "--new-session", "--cap-drop", "ALL", "--as-pid-1"]
        if not network:
            args.append("--unshare-net")
        return args

    def _mounts(self, task_dir: Path, limits: Limits, *, writable_task: bool) -> list[str]:
        args = ["--ro-bind", "/usr", "/usr"]
        for name in ("bin", "sbin", "lib", "lib64", "lib32", "libx32"):
            if Path(f"/{name}").is_symlink():
                args += ["--symlink", os.readlink(f"/{name}"), f"/{name}"]
            elif Path(f"/{name}").is_dir():
                args += ["--ro-bind", f"/{name}", f"/{name}"]
        for name in _ETC:
            args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
        for folder in self._runtime_dirs:
            args += ["--ro-bind", str(folder), str(folder)]
        args += ["--proc", "/proc", "--dev", "/dev"]
        size = str(limits.disk_mb * _MIB)
        args += ["--size", size, "--perms", "1777", "--tmpfs", "/tmp"]
        args += ["--size", size, "--perms", "1777", "--tmpfs", "/dev/shm"]
        args += ["--bind" if writable_task else "--ro-bind", str(task_dir), TASK_DIR]
        return args


_probed: dict[str, Jail | SandboxUnavailable] = {}


def default_python() -> str:
    """An interpreter function uids can run: the service's own, else the system's python3."""
    for candidate in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        real = Path(os.path.realpath(candidate))
        if real.is_file() and _world_readable(real):
            return str(real)
    return sys.executable


def _world_readable(path: Path) -> bool:
    try:
        return bool(path.stat().st_mode & 0o005) and all(
            parent.stat().st_mode & 0o001 for parent in path.parents
        )
    except OSError:
        return False
