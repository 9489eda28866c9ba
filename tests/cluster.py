"""A real Redis Cluster for the tests: 3 masters with a replica each on 127.0.0.1.

Each node is conftest's :class:`RedisServer` started with ``--cluster-enabled yes`` (append-only
with ``appendfsync always``, so a master killed with -9 loses nothing it acknowledged to its
replica's... and its own file); ``redis-cli --cluster create`` splits the slots evenly, as the
partition hash tags expect. A test kills a master by its exact pid and waits for its replica to
take over.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from tests.conftest import RedisServer

# A failed master is noticed after this long (then its replica is elected within about a second):
# small so a failover test stays short, large enough that a busy 2-core machine does not see
# false failures.
NODE_TIMEOUT_MS = 2000


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def _client(port: int) -> redis.Redis:
    return redis.Redis(port=port, decode_responses=True, socket_timeout=5)


@dataclass
class RedisClusterServers:
    """Six redis-server processes forming one cluster; started and stopped by exact pid."""

    folder: Path
    masters: int = 3
    nodes: list[RedisServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The ``redis+cluster://`` URL, every live node a seed."""
        seeds = ",".join(f"127.0.0.1:{n.port}" for n in self.alive())
        return f"redis+cluster://{seeds}"

    def alive(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def start(self) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            pytest.exit("redis-cli is not installed: run scripts/test, which installs it", 3)
        for i in range(self.masters * 2):
            port = free_cluster_port()
            folder = self.folder / f"node-{i}"
            folder.mkdir(parents=True, exist_ok=True)
            node = RedisServer(
                port=port,
                folder=folder,
                fsync="always",
                args=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(folder / "nodes.conf"),
                    "--cluster-node-timeout",
                    str(NODE_TIMEOUT_MS),
                    # A replica that lost touch for a while may still take over (the default
                    # factor 10 x node timeout is meant for long outages, not a test's).
                    "--cluster-replica-validity-factor",
                    "0",
                    # A (re)joining replica syncs at once (Redis waits 5 s for more by default).
                    "--repl-diskless-sync-delay",
                    "0",
                ],
            )
            self.nodes.append(node)
            node.start()
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in self.nodes),
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.wait_ok()

    def wait_ok(self, timeout_s: float = 30) -> None:
        """Until every live node says ``cluster_state:ok`` and sees the same masters."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if self._all_ok():
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not settle within {timeout_s} s")
            time.sleep(0.1)

    def _all_ok(self) -> bool:
        views = set()
        for n in self.alive():
            c = _client(n.port)
            try:
                if c.cluster("info").get("cluster_state") != "ok":
                    return False
                views.add(tuple(sorted(self._master_ports(c))))
            finally:
                c.close()
        if len(views) != 1 or len(masters := next(iter(views))) != self.masters:
            return False
        for port in masters:  # and each master's replica is in sync (a restarted node syncs)
            c = _client(port)
            try:
                info = c.info("replication")
            finally:
                c.close()
            if len(self.alive()) == 2 * self.masters and info.get("slave0", {}).get("state") != (
                "online"
            ):
                return False
        return True

    @staticmethod
    def _master_ports(c: redis.Redis) -> list[int]:
        out = []
        for line in c.execute_command("CLUSTER", "NODES").splitlines():
            parts = line.split()
            flags = parts[2].split(",")
            if "master" in flags and "fail" not in flags and "fail?" not in flags and parts[8:]:
                out.append(int(parts[1].split("@")[0].rsplit(":", 1)[1]))
        return out

    def node(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def master_ports(self) -> list[int]:
        """The ports of the masters that serve slots now."""
        c = _client(self.alive()[0].port)
        try:
            return sorted(self._master_ports(c))
        finally:
            c.close()

    def master_of(self, key: str) -> RedisServer:
        """The node serving ``key``'s slot now."""
        for n in self.alive():
            c = _client(n.port)
            try:
                slot = c.cluster("keyslot", key)
                for start, end, master, *_ in c.cluster("slots"):
                    if start <= slot <= end:
                        return self.node(int(master[1]))
            except redis.RedisError:
                continue
            finally:
                c.close()
        raise RuntimeError(f"no live node knows who serves {key!r}")

    def replica_of(self, master: RedisServer) -> RedisServer:
        """The node replicating ``master`` now (asked of the other nodes: ``master`` may be
        busy, running a script)."""
        for node in self.alive():
            if node is master:
                continue
            c = _client(node.port)
            try:
                rows = [line.split() for line in c.execute_command("CLUSTER", "NODES").splitlines()]
            except redis.RedisError:
                continue
            finally:
                c.close()
            port_of = {r[0]: int(r[1].split("@")[0].rsplit(":", 1)[1]) for r in rows}
            ids = [i for i, p in port_of.items() if p == master.port]
            for r in rows:
                if ids and r[3] == ids[0] and "fail" not in r[2]:
                    return self.node(port_of[r[0]])
        raise RuntimeError(f"{master.port} has no replica")

    def kill_master(self, master: RedisServer) -> RedisServer:
        """``kill -9`` one master by its own pid; returns the replica that will take over."""
        replica = self.replica_of(master)
        assert master.proc is not None and master.proc.poll() is None
        master.proc.send_signal(signal.SIGKILL)
        master.proc.wait(10)
        return replica

    def wait_failover(self, replica: RedisServer, timeout_s: float = 30) -> None:
        """Until ``replica`` serves its old master's slots and every live node says ok."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                if replica.port in self.master_ports():
                    self.wait_ok(max(1.0, deadline - time.monotonic()))
                    return
            time.sleep(0.05)
        raise RuntimeError(f"{replica.port} did not take over within {timeout_s} s")

    def heal(self) -> None:
        """Start again any node a test killed (it rejoins as a replica) and wait until ok."""
        dead = [n for n in self.nodes if n.proc is not None and n.proc.poll() is not None]
        for n in dead:
            n.start()
        if dead:
            self.wait_ok()

    def flush(self) -> None:
        """FLUSHALL on every master (replicas follow)."""
        for port in self.master_ports():
            c = _client(port)
            try:
                c.flushall()
            finally:
                c.close()

    def stop(self) -> None:
        for n in self.nodes:
            n.stop(signal.SIGKILL)
