"""Side channels and kernel surface: what a function can learn of others, what it can open.

A function must see nothing of the host's or another tenant's activity (inotify on the shared
runtime files, the global counters of /proc) and reach only the socket families and syscalls a
function needs (no vsock, netlink beyond NETLINK_ROUTE, io_uring, modify_ldt, fanotify, the
mount API and mount inspection).
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import pytest

from taskorch.functions import LocalRuntime
from tests.hostile.conftest import build, ipc_objects, needs_root
from tests.hostile.test_python import assert_healthy

pytestmark = [
    needs_root,
    pytest.mark.skipif(platform.machine() != "x86_64", reason="syscall numbers of x86_64"),
]

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

def handler(event, context):
    params = ctypes.create_string_buffer(120)  # struct io_uring_params, all zero
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
    }
"""

ALLOWED = {"unix", "inet", "inet6", "unix_pair", "netlink_route"}
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
    families = {name: result[name] for name in REFUSED_FAMILIES}
    assert families == dict.fromkeys(REFUSED_FAMILIES, "EAFNOSUPPORT"), families
    calls = {name: value for name, value in result.items() if name not in ALLOWED | families.keys()}
    assert calls == dict.fromkeys(calls, "EPERM"), calls
    await assert_healthy(rt, base_dir, "fn_kernel", ipc_before, redis_server.port)
