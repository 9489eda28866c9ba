"""Side channels and kernel surface: what a function can learn of others, what it can open.

A function must see nothing of the host's or another tenant's activity (inotify on the shared
runtime files, the global counters of /proc) and reach only the socket families and syscalls a
function needs (no vsock, netlink beyond NETLINK_ROUTE, io_uring, modify_ldt, fanotify, the
mount API and mount inspection).
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path
from typing import Any

import pytest

from taskorch.functions import LocalRuntime
from tests.hostile.conftest import build, ipc_objects, needs_java, needs_node, needs_root
from tests.hostile.test_python import assert_healthy

pytestmark = [
    needs_root,
    pytest.mark.skipif(platform.machine() != "x86_64", reason="syscall numbers of x86_64"),
]
# Global /proc files that change with the host's activity: each must read as a neutral stand-in.
PROC_FILES = (
    "stat loadavg cmdline uptime meminfo swaps interrupts softirqs diskstats vmstat schedstat "
    "zoneinfo buddyinfo sys/fs/file-nr sys/fs/inode-nr sys/fs/inode-state sys/fs/dentry-state "
    "sys/fs/aio-nr sys/kernel/pty/nr"
).split()

# Imported by the victim only: the spy must not learn that it was.
VICTIM = """
import xml.dom.minidom

def handler(event, context):
    return "imported"
"""

SPY = r"""
import ctypes, os, struct, xml

libc = ctypes.CDLL(None, use_errno=True)
IN_OPEN, IN_ACCESS = 0x20, 0x1
WATCHED = [os.path.dirname(os.__file__), os.path.join(os.path.dirname(xml.__file__), "dom")]
WATCHED += [os.path.join(path, "__pycache__") for path in WATCHED]
state = {}

def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError as exc:
        return type(exc).__name__

def ls(path):
    return sorted(os.listdir(path)) if os.path.isdir(path) else []

def watch():
    fd = libc.inotify_init1(os.O_NONBLOCK)
    if fd < 0:
        return os.strerror(ctypes.get_errno())
    for path in WATCHED:
        libc.inotify_add_watch(fd, path.encode(), IN_OPEN | IN_ACCESS)
    state["fd"] = fd
    return "watching"

def seen():
    names = set()
    fd = state.get("fd")
    while fd is not None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            break
        while data:
            _, _, _, size = struct.unpack_from("iIII", data)
            names.add(data[16 : 16 + size].rstrip(b"\0").decode())
            data = data[16 + size :]
    return sorted(names)

def handler(event, context):
    if event["phase"] == "watch":
        return {"inotify": watch(), "proc": {name: read(f"/proc/{name}") for name in event["files"]}}
    return {
        "seen": seen(),
        "proc": {name: read(f"/proc/{name}") for name in event["files"]},
        "dirs": {name: ls(f"/proc/{name}") for name in ("pressure", "fs")},
        "cpus": os.cpu_count(),
    }
"""

# Numbers that are configuration, not activity: kept as the host has them.
KEPT = re.compile(r"^(btime|MemTotal|MemFree|MemAvailable|Hugepagesize)\b")


def counters(text: str) -> list[str]:
    """Every number of a /proc file's text, but those on KEPT lines."""
    lines = [line for line in text.splitlines() if not KEPT.match(line)]
    return re.findall(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])", "\n".join(lines))


async def test_a_function_sees_nothing_of_the_host_or_other_tenants(
    rt: LocalRuntime, base_dir: Path, redis_server: Any
) -> None:
    files = [name for name in PROC_FILES if Path("/proc", name).exists()]
    assert {"stat", "loadavg", "cmdline", "uptime", "meminfo"} <= set(files)
    ipc_before = ipc_objects()
    await build(rt, "fn_spy", "python", SPY)
    watching = await rt.invoke("fn_spy", {"phase": "watch", "files": files})
    await build(rt, "fn_victim", "python", VICTIM)  # another uid's cold start, while spied on
    assert await rt.invoke("fn_victim", None) == "imported"
    # The host busy meanwhile: CPU time, context switches, disk, memory, forks.
    for _ in range(3):
        Path(base_dir, "busy").write_bytes(os.urandom(1 << 20))
        os.sync()
    result = await rt.invoke("fn_spy", {"phase": "read", "files": files})

    assert isinstance(watching, dict) and isinstance(result, dict)
    assert not [name for name in result["seen"] if "minidom" in name], result["seen"]
    host_cmdline = Path("/proc/cmdline").read_text().strip()
    for name in files:
        before, after = watching["proc"][name], result["proc"][name]
        assert before == after, f"/proc/{name} changed with the host's activity"
        assert host_cmdline not in after or not host_cmdline
        zero = [n for n in counters(after) if float(n) != 0]
        if name == "uptime":  # when the instance started; the host's idle time hidden
            assert counters(after)[1:] == ["0.00"], after
        else:
            assert zero == [], f"/proc/{name} shows the host's counters: {after[:300]!r}"
    assert result["proc"]["cmdline"].strip() == ""
    assert watching["inotify"] == "Operation not permitted", watching["inotify"]
    assert result["dirs"] == {"pressure": [], "fs": []}
    # Runtimes still count the host's CPUs (glibc reads them from /proc/stat without /sys).
    assert result["cpus"] == os.cpu_count()
    await rt.remove("fn_victim")
    await assert_healthy(rt, base_dir, "fn_spy", ipc_before, redis_server.port)


FAMILIES = r"""
import ctypes, errno, os, socket

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
NULL = ctypes.c_void_p(0)

def outcome(result):
    return "ok" if result >= 0 else errno.errorcode[ctypes.get_errno()]

def sock(family, kind):
    try:
        socket.socket(family, kind).close()
        return "ok"
    except OSError as exc:
        return errno.errorcode[exc.errno]

def syscall(number, *args):
    return outcome(libc.syscall(ctypes.c_long(number), *[ctypes.c_long(a) for a in args]))

def nowait_read(path):
    # RWF_NOWAIT: answers from the page cache only, EAGAIN when the file is not cached.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.preadv(fd, [bytearray(16)], 0, os.RWF_NOWAIT)
        return "ok"
    except OSError as exc:
        return errno.errorcode[exc.errno]
    finally:
        os.close(fd)

def handler(event, context):
    params = ctypes.create_string_buffer(120)  # struct io_uring_params, all zero
    usr = os.open("/usr/bin/env", os.O_RDONLY)
    cstat = ctypes.create_string_buffer(64)  # struct cachestat_range and cachestat
    ldt = ctypes.create_string_buffer(64)
    pair = (ctypes.c_int * 2)()
    return {
        "unix": sock(socket.AF_UNIX, socket.SOCK_STREAM),
        "inet": sock(socket.AF_INET, socket.SOCK_STREAM),
        "inet6": sock(socket.AF_INET6, socket.SOCK_DGRAM),
        "unix_pair": outcome(libc.socketpair(1, 1, 0, pair)),
        "vsock": sock(40, socket.SOCK_STREAM),
        "vsock_dgram": sock(40, socket.SOCK_DGRAM),
        "vsock_pair": outcome(libc.socketpair(40, 1, 0, pair)),
        "netlink_route": sock(16, socket.SOCK_RAW),  # its own namespace's loopback
        "interfaces": [name for _, name in socket.if_nameindex()],
        "netlink_uevent": syscall(41, 16, 3, 15),  # NETLINK_KOBJECT_UEVENT
        "netlink_audit": syscall(41, 16, 3, 9),
        "netlink_route_high_bits": syscall(41, 16, 3, 1 << 32),  # int(protocol) is 0
        "netlink_high_bits": syscall(41, (1 << 32) | 16, 3, 0),
        "packet": sock(17, socket.SOCK_DGRAM),
        "alg": sock(38, socket.SOCK_SEQPACKET),
        "unspec": syscall(41, 0, 1, 0),
        "vsock_high_bits": syscall(41, (1 << 32) | 40, 1, 0),  # int(domain) is 40
        "io_uring_setup": syscall(425, 1, ctypes.addressof(params)),
        "io_uring_enter": syscall(426, -1, 0, 0, 0, 0, 0),
        "io_uring_register": syscall(427, -1, 0, 0, 0),
        "modify_ldt": syscall(154, 0, ctypes.addressof(ldt), 64),
        "inotify_init": syscall(253),
        "inotify_init1": syscall(294, 0),
        "inotify_add_watch": syscall(254, -1, 0, 1),
        "fanotify_init": syscall(300, 0x200, 0),  # FAN_REPORT_FID: allowed unprivileged
        "fanotify_mark": syscall(301, -1, 1, 1, -100, 0),
        "open_tree": syscall(428, -100, 0, 0),
        "move_mount": syscall(429, -1, 0, -1, 0, 0),
        "fsopen": syscall(430, 0, 0),
        "fsconfig": syscall(431, -1, 0, 0, 0, 0),
        "fsmount": syscall(432, -1, 0, 0),
        "fspick": syscall(433, -100, 0, 0),
        "mount_setattr": syscall(442, -100, 0, 0, 0, 0),
        "statmount": syscall(457, 0, 0, 0, 0),
        "listmount": syscall(458, 0, 0, 0, 0),
        "cachestat": syscall(451, usr, ctypes.addressof(cstat), ctypes.addressof(cstat) + 16, 0),
        "preadv2_nowait": nowait_read(os.__file__),
        "preadv2": outcome(os.preadv(usr, [bytearray(16)], 0, 0)),  # without flags: reads
    }
"""

ALLOWED = {"unix", "inet", "inet6", "unix_pair", "netlink_route", "preadv2"}
REFUSED_FAMILIES = {"vsock", "vsock_dgram", "vsock_pair", "packet", "alg", "unspec"}
REFUSED_FAMILIES |= {"netlink_uevent", "netlink_audit", "netlink_route_high_bits"}
REFUSED_FAMILIES |= {"vsock_high_bits", "netlink_high_bits"}


async def test_only_the_socket_families_and_syscalls_a_function_needs(
    rt: LocalRuntime, base_dir: Path, redis_server: Any
) -> None:
    ipc_before = ipc_objects()
    await build(rt, "fn_kernel", "python", FAMILIES)
    result = await rt.invoke("fn_kernel", None)

    assert isinstance(result, dict)
    assert {name: result[name] for name in ALLOWED} == dict.fromkeys(ALLOWED, "ok"), result
    assert result.pop("interfaces") == ["lo"]
    assert result.pop("preadv2_nowait") == "ENOTSUP"  # EOPNOTSUPP, the same number
    families = {name: result[name] for name in REFUSED_FAMILIES}
    assert families == dict.fromkeys(REFUSED_FAMILIES, "EAFNOSUPPORT"), families
    calls = {name: value for name, value in result.items() if name not in ALLOWED | families.keys()}
    assert calls == dict.fromkeys(calls, "EPERM"), calls
    await assert_healthy(rt, base_dir, "fn_kernel", ipc_before, redis_server.port)


# Node and Java: they start, serve and call HTTP on their own loopback by name (the neutral
# /etc/hosts; glibc's getaddrinfo with AI_ADDRCONFIG, Node's default, asks NETLINK_ROUTE), list
# their interfaces (Node's os.networkInterfaces() through netlink, Java's through ioctl and
# /proc/net), count the CPUs, see the neutral /proc/loadavg; their file watchers are refused.
NODE = r"""
const fs = require('fs');
const http = require('http');
const os = require('os');

exports.handler = async () => {
  const server = http.createServer((req, res) => res.end('pong'));
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = server.address().port;
  const body = await new Promise((resolve) => {
    http.get({ host: 'localhost', port, family: 0 }, (res) => {
      let text = '';
      res.on('data', (chunk) => { text += chunk; });
      res.on('end', () => resolve(text));
    }).on('error', (err) => resolve(err.code));
  });
  server.close();
  let watch;
  try { fs.watch('/usr').close(); watch = 'watching'; } catch (err) { watch = err.code; }
  return {
    http: body,
    watch,
    interfaces: Object.keys(os.networkInterfaces()),
    cpus: os.cpus().length,
    loadavg: fs.readFileSync('/proc/loadavg', 'utf8'),
  };
};
"""

JAVA = r"""
import com.sun.net.httpserver.HttpServer;
import java.io.*;
import java.net.*;
import java.nio.file.*;
import java.util.*;

public class Attack {
    public Object handle(Map<String, Object> event) throws Exception {
        HttpServer server = HttpServer.create(new InetSocketAddress(InetAddress.getLoopbackAddress(), 0), 0);
        server.createContext("/", exchange -> {
            byte[] pong = "pong".getBytes();
            exchange.sendResponseHeaders(200, pong.length);
            exchange.getResponseBody().write(pong);
            exchange.close();
        });
        server.start();
        Map<String, Object> out = new HashMap<>();
        try {
            URL url = new URL("http://localhost:" + server.getAddress().getPort() + "/");
            try (InputStream in = url.openStream()) { out.put("http", new String(in.readAllBytes())); }
        } catch (IOException e) {
            out.put("http", e.toString());
        } finally {
            server.stop(0);
        }
        try (WatchService watcher = FileSystems.getDefault().newWatchService()) {
            Paths.get("/usr").register(watcher, StandardWatchEventKinds.ENTRY_CREATE);
            out.put("watch", "watching");
        } catch (IOException e) {
            out.put("watch", e.getClass().getSimpleName());
        }
        List<String> interfaces = new ArrayList<>();
        for (NetworkInterface nif : Collections.list(NetworkInterface.getNetworkInterfaces())) {
            interfaces.add(nif.getName());
        }
        out.put("interfaces", interfaces);
        out.put("cpus", Runtime.getRuntime().availableProcessors());
        out.put("loadavg", new String(Files.readAllBytes(Paths.get("/proc/loadavg"))));
        return out;
    }
}
"""


@pytest.mark.parametrize(
    ("runtime", "code", "refused"),
    [
        pytest.param("node", NODE, "EPERM", marks=needs_node, id="node"),
        pytest.param("java", JAVA, "IOException", marks=needs_java, id="java"),
    ],
)
async def test_node_and_java_run_with_the_narrower_kernel(
    runtime: str, code: str, refused: str, rt: LocalRuntime, base_dir: Path, redis_server: Any
) -> None:
    ipc_before = ipc_objects()
    await build(rt, f"fn_{runtime}", runtime, code)
    result = await rt.invoke(f"fn_{runtime}", {})

    assert isinstance(result, dict)
    assert result["watch"] == refused, result
    assert counters(result["loadavg"]) and set(map(float, counters(result["loadavg"]))) == {0}
    assert result["http"] == "pong", result
    assert result["interfaces"] == ["lo"], result
    assert result["cpus"] == min(os.cpu_count() or 1, len(os.sched_getaffinity(0))), result
    await assert_healthy(rt, base_dir, f"fn_{runtime}", ipc_before, redis_server.port)
