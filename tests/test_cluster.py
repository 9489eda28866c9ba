"""Redis Cluster, for real: 3 masters with a replica each (tests/cluster.py), reached through
``redis+cluster://``. Scripts run on the master of their first key, a node that lacks a script
gets it, subscribers hear every master and survive their node's death, the client follows a
failover; tasks spread over every master fire through the real worker and API, a master killed
mid-run loses no task and fires no attempt twice, and a wake-up reaches the worker on a cluster.

``TASKORCH_CLUSTER_FULL=1`` runs the failover test with more tasks over a longer span.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from taskorch import partitions
from taskorch.api import create_app
from taskorch.cluster import ClusterClient, connect_cluster, parse_seeds, run_many, run_script
from taskorch.errors import ConfigError, TooManyRequests
from taskorch.models import fmt_ms
from taskorch.store import Store, connect
from taskorch.worker import Worker
from tests.cluster import RedisClusterServers
from tests.conftest import Api, RedisServer, Target, WorkerProcs, make_settings, until

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
            await asyncio.to_thread(cluster.wait_failover, cluster.kill_master(dead))
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
    # The event loop runs meanwhile (as in a server), so the client's sockets see the kill.
    await asyncio.to_thread(cluster.wait_failover, cluster.kill_master(cluster.node(port)))
    # The pooled connection to the dead master is found broken before anything is sent, so the
    # call is not "lost" (a create would answer 503 "may have been stored"): it goes to the
    # promoted replica.
    assert await run_script(client, script, [key], [], lost=Lost) == 2
    assert await client.get(key) == "2"
    assert await run_many(client, script, [([key], [])]) == [3]


async def test_many_calls_run_each_on_its_master_in_one_round_trip_per_node(
    cluster: RedisClusterServers, client: ClusterClient
) -> None:
    """What a claim over every partition does: redis-py's cluster pipeline refuses EVALSHA."""
    script = client.register_script(INCR + " -- many")
    keys = [f"{{k{i}}}:n" for i in range(24)]
    flushed = next(iter(keys_on_every_master(cluster)))
    with node_client(flushed) as node:  # one master lacks the script: EVAL there only
        node.script_flush()
    assert await run_many(client, script, [([k], []) for k in keys]) == [1] * len(keys)
    assert await run_many(client, script, [([k], []) for k in keys]) == [2] * len(keys)
    for key in keys:
        with node_client(cluster.master_of(key).port) as node:
            assert node.get(key) == "2"
    with pytest.raises(redis.ResponseError, match="boom"):
        await run_many(
            client,
            client.register_script("if ARGV[1] == 'x' then error('boom') end return 1"),
            [([k], ["x" if k == keys[3] else "y"]) for k in keys],
        )


async def test_many_calls_on_one_redis_share_the_code_path(redis_server: RedisServer) -> None:
    plain = connect(redis_server.url)
    try:
        script = plain.register_script(INCR + " -- plain")
        await plain.script_flush()
        calls = [([f"{{k{i}}}:p"], []) for i in range(5)]
        await plain.delete(*(keys[0] for keys, _ in calls))
        assert await run_many(plain, script, calls) == [1] * 5
        await plain.script_flush()
        assert await run_script(plain, script, calls[0][0], []) == 2
    finally:
        await plain.aclose()


class Lost(Exception):
    pass


async def test_a_script_whose_master_dies_while_it_runs_is_reported_lost(
    cluster: RedisClusterServers, client: ClusterClient
) -> None:
    """Sent, then the connection broke: the script may have run, and the caller is told so
    (a create answers "may have been stored") rather than the script being sent again."""
    # Seconds of work (TIME stands still inside a script, so count instead).
    busy = client.register_script("local n = 0 for i = 1, 3e8 do n = n + 1 end return n")
    port, key = next(iter(keys_on_every_master(cluster).items()))
    await run_script(client, client.register_script("return 1"), [key], [])  # connected
    running = asyncio.create_task(run_script(client, busy, [key], [], lost=Lost))
    # A node running a script answers nobody else: once a PING goes unanswered, it runs.
    with redis.Redis(port=port, socket_timeout=0.2, retry=Retry(NoBackoff(), 0)) as node:
        for _ in range(500):
            try:
                await asyncio.to_thread(node.ping)
            except (redis.TimeoutError, redis.ResponseError):  # ResponseError: BUSY
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the script never ran")
    replica = cluster.kill_master(cluster.node(port))
    with pytest.raises(Lost):
        await running
    # Settled before the next test: a failover still under way could move slots in the middle
    # of it.
    await asyncio.to_thread(cluster.wait_failover, replica)


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


async def test_users_sign_in_and_are_revoked_on_a_cluster(client: ClusterClient) -> None:
    """A user's record, token revocation time and sign-in count lie in different slots."""
    from taskorch import auth
    from taskorch import constants as c

    signin = auth.SignIn(client)
    try:
        assert await auth.add_user(client, "dora", "correct horse") is False
        assert await signin.authenticate("dora", "correct horse")
        assert not await signin.authenticate("dora", "wrong horse")
        await auth.set_password(client, "dora", "battery staple")
        assert await signin.authenticate("dora", "battery staple")
        for _ in range(c.SIGNIN_MAX_ATTEMPTS):
            await signin.authenticate("dora", "wrong")
        with pytest.raises(TooManyRequests):
            await signin.authenticate("dora", "battery staple")
        await auth.remove_user(client, "dora")
        assert not await client.exists(c.USER_KEY_PREFIX + "dora")
    finally:
        signin.close()


async def test_the_api_reads_the_slot_map_at_start(cluster: RedisClusterServers) -> None:
    """Not in its first request, whose Redis time is bounded (TASKORCH_REDIS_TIMEOUT_S): on a
    busy machine reading the command table alone can take longer than that."""
    client = connect(cluster.url)
    app = create_app(make_settings(cluster.url), redis_client=client)
    assert client.get_nodes() == []
    async with app.router.lifespan_context(app):
        assert len(client.get_primaries()) == 3
    await client.aclose()


# -- tasks through the real worker and API ---------------------------------------------------


async def _layout(cluster: RedisClusterServers) -> Any:
    c = connect(cluster.url)
    try:
        return await partitions.load(c)
    finally:
        await c.aclose()


def master_port_of(cluster: RedisClusterServers, layout: Any, task_id: str) -> int:
    """The port of the master serving ``task_id``'s partition now."""
    return cluster.master_of(layout.queue(layout.partition_of(task_id))).port


def attempts_reached(target: Target) -> Counter[tuple[str, str]]:
    return Counter(
        (c.headers["X-Taskorch-Task-Id"], c.headers["X-Taskorch-Attempt"]) for c in target.calls
    )


async def test_tasks_on_every_master_fire_through_the_worker(
    cluster: RedisClusterServers, api: Api, target: Target, workers: WorkerProcs
) -> None:
    workers.start()
    ids: list[str] = []
    layout = None
    masters: set[int] = set()
    while len(ids) < 24 or masters != set(cluster.master_ports()):
        assert len(ids) < 200, f"200 tasks and still not on every master: {masters}"
        task = await api.create({"url": target.url(f"/ok/{len(ids)}"), "delay": 0.3})
        ids.append(task["id"])
        layout = layout or await _layout(cluster)
        masters.add(master_port_of(cluster, layout, task["id"]))
    for task_id in ids:
        await api.wait_status(task_id, "succeeded", timeout_s=30)
    reached = attempts_reached(target)
    assert {task for task, _ in reached} == set(ids)
    assert set(reached.values()) == {1}, "an attempt reached its target twice"


def wait_replicated(cluster: RedisClusterServers) -> None:
    """Until every replica has all its master wrote (what the test created is on both)."""
    for port in cluster.master_ports():
        with node_client(port) as master:
            assert master.wait(1, 5000) >= 0
            deadline = time.monotonic() + 10
            while True:
                info = master.info("replication")
                offsets = [v["offset"] for k, v in info.items() if k.startswith("slave")]
                if offsets and min(offsets) >= info["master_repl_offset"]:
                    break
                assert time.monotonic() < deadline, f"{port}'s replica did not catch up"
                time.sleep(0.02)


async def test_a_master_killed_mid_run_loses_no_task_and_fires_no_attempt_twice(
    cluster: RedisClusterServers, api: Api, target: Target, workers: WorkerProcs
) -> None:
    """Tasks due before, during and after a failover: every one succeeds, each attempt reaches
    its target once (counted by X-Taskorch-Task-Id and X-Taskorch-Attempt)."""
    # The failover (node timeout, election, every node agreeing) must end well inside the span
    # after the kill at its first quarter, or no task of the victim is due after it: 8 s left
    # a bare 6 s, which a CI run once used up.
    n, span_s = (400, 30.0) if FULL else (48, 16.0)
    workers.start()
    if FULL:
        workers.start()
    # One token for the test: each minted one has a 1-in-1000 chance (iat rounded up to the ms,
    # across a second) of being refused as "not yet valid" if used within that millisecond.
    auth = api.auth()
    start = time.time() + 1.0
    due: dict[str, float] = {}
    for i in range(n):
        at = start + i * span_s / n
        body = {"url": target.url(f"/ok/{i}"), "delay": at - time.time()}
        r = await api.http.post("/v1/tasks", json=body, headers=auth)
        assert r.status_code == 201, r.text
        due[r.json()["id"]] = at
    layout = await _layout(cluster)
    victim = cluster.node(master_port_of(cluster, layout, list(due)[n // 2]))
    on_victim = {t for t in due if master_port_of(cluster, layout, t) == victim.port}
    wait_replicated(cluster)  # what was acknowledged before the kill is on the replicas
    while time.time() < start + span_s / 4:  # a quarter of the span has fired
        await asyncio.sleep(0.02)
    killed_at = time.time()
    replica = cluster.kill_master(victim)
    await asyncio.to_thread(cluster.wait_failover, replica)
    settled_at = time.time()

    statuses: dict[str, str] = {}
    deadline = time.monotonic() + span_s + 60
    while len(statuses) < n:
        assert time.monotonic() < deadline, f"{n - len(statuses)} tasks never finished"
        for task_id in due:
            if task_id in statuses:
                continue
            r = await api.http.get(f"/v1/tasks/{task_id}", headers=auth)
            if r.status_code == 503:  # a command met the dead master before the client moved
                break
            assert r.status_code == 200, r.text
            if r.json()["status"] in ("succeeded", "failed", "cancelled"):
                statuses[task_id] = r.json()["status"]
        await asyncio.sleep(0.1)

    phases = Counter(
        "before" if due[t] < killed_at else "during" if due[t] < settled_at else "after"
        for t in on_victim
    )
    assert phases["before"] and phases["during"] and phases["after"], (
        phases,
        f"failover took {settled_at - killed_at:.1f} s",
    )
    assert Counter(statuses.values()) == Counter({"succeeded": n})
    reached = attempts_reached(target)
    assert {task for task, _ in reached} == set(due), "every task reached its target"
    twice = {k: v for k, v in reached.items() if v > 1}
    assert not twice, f"attempts that reached the target twice: {twice}"


async def test_a_wake_up_reaches_an_idle_worker_on_a_cluster(
    cluster: RedisClusterServers, api: Api, target: Target
) -> None:
    """With a 30 s poll, a task due in 50 ms fires within seconds only if the create's wake-up
    (published on its partition's master) reaches the worker's subscriber on whatever node it
    is; and again once that node has died."""
    client = connect(cluster.url, socket_timeout=3, socket_connect_timeout=3)
    store = Store(client)
    async with aiohttp.ClientSession() as session:
        worker = Worker(store, session, poll_s=30.0, lease_s=3.0)
        running = asyncio.create_task(worker.run())
        try:
            # Idle: subscribed, nothing due.
            await until(client.subscriber_addresses, timeout_s=15, what="the worker subscribed")
            for round_ in range(2):
                ids = [
                    (await api.create({"url": target.url(f"/wake/{round_}/{i}"), "delay": 0.05}))[
                        "id"
                    ]
                    for i in range(6)
                ]
                for task_id in ids:
                    await api.wait_status(task_id, "succeeded", timeout_s=10)
                if round_ == 0:
                    # Kill the node the worker subscribed on (failing over a master first).
                    ((_, port),) = client.subscriber_addresses()
                    dead = cluster.node(port)
                    if dead.port in cluster.master_ports():
                        await asyncio.to_thread(cluster.wait_failover, cluster.kill_master(dead))
                    else:
                        dead.stop()
                    # The listener notices, moves and subscribes on another node.
                    await until(
                        lambda port=port: [
                            a for a in client.subscriber_addresses() if a[1] != port
                        ],
                        timeout_s=15,
                        what="the worker subscribed on another node",
                    )
        finally:
            worker.stop()
            await asyncio.wait_for(running, 30)
            await client.aclose()


async def test_a_batch_over_a_dead_master_is_answered_per_task(
    cluster: RedisClusterServers, client: ClusterClient
) -> None:
    """A batch spread over every master while one is dead: the tasks on the live masters are
    stored and answered, those on the dead one answer 503 not_stored each; the batch as a whole
    is not answered "not stored" (it was: one partition's error was raised for all)."""
    from taskorch import constants as c
    from taskorch.errors import Unavailable
    from taskorch.models import TaskCreate
    from taskorch.store import BatchItem

    one = [BatchItem(body=TaskCreate(url="https://example.com/hook", delay=3600))]
    # A client that has read the layout (its one key lives on another master) but never
    # reached the master that dies: connecting to it fails, so nothing is sent there.
    fresh = connect(cluster.url, socket_timeout=5, socket_connect_timeout=5)
    store = Store(fresh)
    await store.layout()
    holder = cluster.master_of(c.PARTITIONS_KEY).port
    port = next(p for p in cluster.master_ports() if p != holder)
    replica = cluster.kill_master(cluster.node(port))
    try:
        results = await store.create_tasks("alice", one * 64)
    finally:
        await asyncio.to_thread(cluster.wait_failover, replica)
    stored = [r[0] for r in results if isinstance(r, tuple)]
    refused = [r for r in results if isinstance(r, Unavailable)]
    assert stored and refused and len(stored) + len(refused) == 64, results
    outcomes = Counter(r.details[0]["outcome"] for r in refused)
    # Refused before sending: not stored. (A pooled connection that broke after sending says
    # "unknown", as for a single create.)
    assert outcomes["not_stored"] > 0 and set(outcomes) <= {"not_stored", "unknown"}, outcomes
    for task in stored:
        assert (await store.get_task("alice", task.id)).id == task.id
    await fresh.aclose()


async def test_schedules_on_every_master_make_and_fire_their_occurrences(
    cluster: RedisClusterServers, api: Api, target: Target, workers: WorkerProcs
) -> None:
    """A schedule's record, its partition's due set and its occurrences share one slot: every
    script of the makers and the API runs on a cluster, on whichever master holds it."""
    workers.start()
    layout = await _layout(cluster)
    # Beyond the API's own first make (SCHEDULE_AHEAD_MS): the workers' makers make them.
    start = (int(time.time()) + 13) * 1000
    body = {
        "every": 1,
        "start_at": fmt_ms(start),
        "end_at": fmt_ms(start + 1500),
        "task": {"url": target.url("/sched")},
    }
    ids: list[str] = []
    masters: set[int] = set()
    while masters != set(cluster.master_ports()):
        assert len(ids) < 40, f"40 schedules and still not on every master: {masters}"
        r = await api.http.post("/v1/schedules", json=body, headers=api.auth())
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
        masters.add(master_port_of(cluster, layout, ids[-1]))
    paused = await api.http.post(f"/v1/schedules/{ids[0]}/pause", headers=api.auth())
    assert paused.json()["status"] == "paused"
    for sid in ids[1:]:
        r = await api.http.get(f"/v1/schedules/{sid}", headers=api.auth())
        assert r.json()["next_runs"][:2] == [fmt_ms(start), fmt_ms(start + 1000)]
    await until(lambda: len(target.calls) >= 2 * (len(ids) - 1), timeout_s=40)
    for sid in ids[1:]:
        r = await api.http.get(f"/v1/tasks?schedule_id={sid}", headers=api.auth())
        tasks = r.json()["items"]
        assert sorted(t["run_at"] for t in tasks) == [fmt_ms(start), fmt_ms(start + 1000)]
    r = await api.http.get(f"/v1/tasks?schedule_id={ids[0]}&status=scheduled", headers=api.auth())
    assert r.json()["items"] == []
    reached = Counter(c.headers["X-Taskorch-Scheduled-For"] for c in target.calls)
    assert reached == {fmt_ms(start): len(ids) - 1, fmt_ms(start + 1000): len(ids) - 1}
    assert "make_schedules_failed" not in workers.logs()


async def test_a_queue_holds_its_rate_and_cap_on_a_cluster(api: Api, workers: WorkerProcs) -> None:
    """Queues (issue #12): a queue's tasks, settings and state share its partition's slot, so
    its limits hold on a cluster too, across two workers."""
    from tests.test_queues import batch, counting_server, get_queue, put_queue, start_workers

    async with counting_server() as target:
        await put_queue(api, "paced", {"rate": 10, "max_concurrent": 2})
        await start_workers(workers, 2)
        body = {"url": target.url("/slow/0.1"), "delay": 1, "queue": "paced"}
        tasks = await batch(api, [body] * 12)
        for t in tasks:
            await api.wait_status(t["id"], "succeeded", timeout_s=30)
        times = sorted(a.at for a in target.arrivals)
        gaps = sorted(b - a for a, b in itertools.pairwise(times))
        assert len(times) == 12 and target.max_in_flight <= 2
        assert 0.08 <= gaps[len(gaps) // 2] <= 0.12, gaps  # 10 calls/s, evenly spaced
        q = await get_queue(api, "paced")
        assert q["counts"]["succeeded"] == 12 and q["waiting"] == 0


async def test_signed_calls_and_a_callback_on_a_cluster(
    cluster: RedisClusterServers, api: Api, target: Target, workers: WorkerProcs
) -> None:
    """The owner's signing keys live on one master, the tasks on others: every call (and a
    callback) verifies with the standardwebhooks package before and after a rotation."""
    from standardwebhooks.webhooks import Webhook

    workers.start()
    old = (await api.http.get("/v1/signing-keys", headers=api.auth())).json()["keys"][0]["secret"]
    body = {
        "url": target.url("/signed"),
        "payload": {"n": 1},
        "callback": {"url": target.url("/cb")},
    }
    first = [(await api.create(body))["id"] for _ in range(8)]
    for task_id in first:
        await api.wait_status(task_id, "succeeded", timeout_s=60)
    r = await api.http.post("/v1/signing-keys/rotate", headers=api.auth())
    assert r.status_code == 200, r.text
    new = r.json()["keys"][0]["secret"]
    second = [(await api.create(body))["id"] for _ in range(8)]
    for task_id in second:
        await api.wait_status(task_id, "succeeded", timeout_s=60)
    layout = await _layout(cluster)
    assert len({master_port_of(cluster, layout, t) for t in first + second}) > 1
    calls = target.calls_to("/signed")
    assert len(calls) == 16
    for call in calls:
        Webhook(old).verify(call.body, call.headers)
        if call.headers["X-Taskorch-Task-Id"] in second:
            Webhook(new).verify(call.body, call.headers)
    for task_id in second:
        await until(
            lambda tid=task_id: _delivered(api, tid),  # type: ignore[misc]
            timeout_s=30,
        )
    callbacks = [c for c in target.calls_to("/cb") if c.headers["X-Taskorch-Task-Id"] in second]
    assert {c.headers["X-Taskorch-Task-Id"] for c in callbacks} == set(second)
    for call in callbacks:
        Webhook(new).verify(call.body, call.headers)


async def _delivered(api: Api, task_id: str) -> bool:
    return bool((await api.get(task_id))["callback_attempts"])
