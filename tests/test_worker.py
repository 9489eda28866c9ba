"""The real worker process against a real Redis and a real local target."""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import time
from typing import Any

import msgspec
import pytest

from taskorch import constants as c
from taskorch import partitions
from taskorch.models import TaskCreate, TaskStatus
from taskorch.store import Store, connect, encode_attempt, now_ms
from tests.conftest import Api, RedisServer, Target, WorkerProcs, free_port, until
from tests.waits import barrier


def _ts(s: str) -> float:
    return dt.datetime.fromisoformat(s).timestamp()


def _ms(s: str) -> int:
    """An API time as whole epoch ms (the API's precision), free of float rounding."""
    return round(dt.datetime.fromisoformat(s).timestamp() * 1000)


async def test_fires_on_time_with_lateness_and_contract_headers(
    api: Api, target: Target, workers: WorkerProcs
) -> None:
    workers.start()
    # up first: on a loaded machine the interpreter alone can take longer than the delay
    await until(lambda: "worker.started" in workers.logs(), timeout_s=60)
    task = await api.create(
        {
            "url": target.url("/hook"),
            "delay": 1.5,
            "payload": {"hello": "world"},
            "headers": {"X-Custom": "yes"},
        }
    )
    done = await api.wait_status(task["id"], "succeeded")
    [call] = target.calls_to("/hook")
    due = _ts(task["run_at"])
    assert call.at >= due - 0.001, "fired before its time"
    assert call.at - due < 0.1, f"fired {1000 * (call.at - due):.1f} ms late"
    assert msgspec.json.decode(call.body) == {"hello": "world"}
    h = call.headers
    assert h["X-Custom"] == "yes" and h["Content-Type"] == "application/json"
    assert h["Idempotency-Key"] == task["id"] == h["X-Taskorch-Task-Id"]
    assert h["X-Taskorch-Attempt"] == "1"
    assert h["X-Taskorch-Scheduled-For"] == task["run_at"]
    [attempt] = done["attempts"]
    assert attempt["number"] == 1 and attempt["status_code"] == 200 and attempt["error"] is None
    assert 0 <= attempt["lateness_ms"] < 100
    assert attempt["scheduled_for"] == task["run_at"]
    assert msgspec.json.decode(attempt["response_body"])["path"] == "/hook"
    assert done["finished_at"] is not None
    assert "lateness_ms" in workers.logs() and task["id"] in workers.logs()


async def test_get_sends_no_body(api: Api, target: Target, workers: WorkerProcs) -> None:
    workers.start()
    task = await api.create({"url": target.url("/get"), "method": "GET", "payload": {"x": 1}})
    await api.wait_status(task["id"], "succeeded")
    [call] = target.calls_to("/get")
    assert call.method == "GET" and call.body == b""


async def test_retries_with_backoff_after_500(
    api: Api, target: Target, workers: WorkerProcs
) -> None:
    workers.start()
    task = await api.create(
        {"url": target.url("/fail-then-ok/2"), "retry_delay": 0.3, "backoff": 2}
    )
    done = await api.wait_status(task["id"], "succeeded")
    a = done["attempts"]
    assert [x["status_code"] for x in a] == [500, 500, 200]
    assert [x["number"] for x in a] == [1, 2, 3]
    gap1 = _ms(a[1]["started_at"]) - _ms(a[0]["finished_at"])
    gap2 = _ms(a[2]["started_at"]) - _ms(a[1]["finished_at"])
    assert 300 <= gap1 < 300 * 1.1 + 50, gap1  # retry_delay, plus at most 10 % jitter
    assert 600 <= gap2 < 600 * 1.1 + 50, gap2  # times backoff
    assert [c.headers["X-Taskorch-Attempt"] for c in target.calls] == ["1", "2", "3"]


async def test_429_retry_after_replaces_the_backoff(
    api: Api, target: Target, workers: WorkerProcs
) -> None:
    workers.start()
    task = await api.create({"url": target.url("/throttle/2"), "retry_delay": 0.1})
    done = await api.wait_status(task["id"], "succeeded")
    a = done["attempts"]
    assert [x["status_code"] for x in a] == [429, 200]
    gap = _ms(a[1]["started_at"]) - _ms(a[0]["finished_at"])
    assert 2000 <= gap < 2200, gap


async def test_timeout_and_refused_connection_are_retried_then_fail_with_every_attempt(
    api: Api, target: Target, workers: WorkerProcs
) -> None:
    workers.start()
    slow = await api.create(
        {"url": target.url("/slow/5"), "timeout": 1, "retries": 1, "retry_delay": 0.1}
    )
    refused = await api.create(
        {"url": f"http://127.0.0.1:{free_port()}/x", "retries": 2, "retry_delay": 0.1}
    )
    done = await api.wait_status(refused["id"], "failed")
    assert len(done["attempts"]) == 3
    assert all(
        "connection failed" in a["error"] and a["status_code"] is None for a in done["attempts"]
    )
    done = await api.wait_status(slow["id"], "failed")
    assert [a["error"] for a in done["attempts"]] == ["timed out after 1 s"] * 2
    assert all(0.95 < a["duration_ms"] / 1000 < 1.5 for a in done["attempts"])
    assert done["finished_at"] is not None


async def test_redirect_is_a_failure_not_followed(
    api: Api, target: Target, workers: WorkerProcs
) -> None:
    workers.start()
    task = await api.create({"url": target.url("/redirect"), "retries": 0})
    done = await api.wait_status(task["id"], "failed")
    assert done["attempts"][0]["status_code"] == 302
    assert target.calls_to("/ok") == []


async def test_private_targets_are_blocked_unless_allowed(
    api: Api, target: Target, workers: WorkerProcs
) -> None:
    workers.start(TASKORCH_ALLOW_PRIVATE_TARGETS="0")
    task = await api.create({"url": target.url("/private"), "retries": 0})
    done = await api.wait_status(task["id"], "failed")
    assert "private" in done["attempts"][0]["error"]
    assert target.calls == []
    task = await api.create({"url": f"http://localhost:{target.server.port}/private", "retries": 0})
    done = await api.wait_status(task["id"], "failed")
    assert "private" in done["attempts"][0]["error"] and target.calls == []


async def test_modify_and_cancel_before_firing_then_409_after(
    api: Api, target: Target, workers: WorkerProcs
) -> None:
    workers.start()
    moved = await api.create({"url": target.url("/old"), "delay": 0.8, "payload": {"v": 1}})
    cancelled = await api.create({"url": target.url("/cancelled"), "delay": 0.8})
    r = await api.http.patch(
        f"/v1/tasks/{moved['id']}",
        json={"url": target.url("/new"), "delay": 1.5, "payload": {"v": 2}},
        headers=api.auth(),
    )
    assert r.status_code == 200
    r = await api.http.post(f"/v1/tasks/{cancelled['id']}/cancel", headers=api.auth())
    assert r.status_code == 200
    done = await api.wait_status(moved["id"], "succeeded")
    [call] = target.calls
    assert call.path == "/new" and msgspec.json.decode(call.body) == {"v": 2}
    assert call.at >= _ts(r.json()["updated_at"]) + 1.4
    # the moved task is the barrier: due 0.7 s after the old time of both, it came first
    assert target.calls_to("/cancelled") == [] and target.calls_to("/old") == []
    for method, path, body in [
        ("PATCH", f"/v1/tasks/{done['id']}", {"delay": 1}),
        ("POST", f"/v1/tasks/{done['id']}/cancel", None),
    ]:
        r = await api.http.request(method, path, json=body, headers=api.auth())
        assert r.status_code == 409 and "succeeded" in r.json()["error"]["message"]


async def test_100_cancels_racing_the_due_time_never_both(
    api: Api, target: Target, workers: WorkerProcs
) -> None:
    workers.start()
    await until(lambda: "worker.started" in workers.logs(), timeout_s=60)
    run_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)
    tasks = [
        await api.create({"url": target.url("/race"), "run_at": run_at.isoformat(), "retries": 0})
        for _ in range(100)
    ]
    # Cancel each within a few ms either side of its due time: this sleep is the race itself.
    await asyncio.sleep(max(0.0, run_at.timestamp() - time.time() - 0.01))
    results = await asyncio.gather(
        *[api.http.post(f"/v1/tasks/{t['id']}/cancel", headers=api.auth()) for t in tasks]
    )
    codes = [r.status_code for r in results]
    assert set(codes) <= {200, 409}
    await barrier(api, target.url("/barrier"))  # due after them all: any of theirs came first
    fired = target.by_task()
    both = 0
    for t, r in zip(tasks, results, strict=True):
        final = await api.get(t["id"])
        if r.status_code == 200:
            assert final["status"] == "cancelled" and final["attempts"] == []
            both += fired.get(t["id"], 0)
        else:
            assert final["status"] == "succeeded" and fired[t["id"]] == 1
    assert both == 0
    assert len(target.calls_to("/race")) == codes.count(409)
    print(f"race: {codes.count(200)} cancelled, {codes.count(409)} fired first")


async def test_worker_killed_mid_call_is_retried_within_the_lease(
    api: Api, target: Target, workers: WorkerProcs
) -> None:
    first = workers.start()
    task = await api.create({"url": target.url("/slow-once/30"), "retries": 0})
    await until(lambda: target.calls)  # the call is in flight
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed_at = time.time()
    workers.start()
    done = await api.wait_status(task["id"], "succeeded", timeout_s=20)
    recovered_after = _ts(done["attempts"][-1]["started_at"]) - killed_at
    # TASKORCH_LEASE_S=3, plus the replacement worker's start-up (here nobody else is running;
    # test_a_dead_workers_task_goes_out_again_within_the_lease measures the bound itself)
    assert recovered_after <= 3 + 2, recovered_after
    lost, ok = done["attempts"]
    assert "worker lost" in lost["error"] and ok["status_code"] == 200
    assert [c.headers["Idempotency-Key"] for c in target.calls] == [task["id"]] * 2


async def test_two_workers_share_2000_tasks_none_twice(
    api: Api, target: Target, workers: WorkerProcs, settings
) -> None:  # type: ignore[no-untyped-def]
    store = Store(connect(settings.redis_url))
    start = time.time() + 4
    ids = []
    for i in range(2000):
        body = TaskCreate(
            url=target.url("/shared"),
            retries=0,
            run_at=dt.datetime.fromtimestamp(start + (i % 100) * 0.01, dt.UTC),
        )
        task, _ = await store.create_task("alice", body)
        ids.append(task.id)
    # the barrier: due after all 2000, it comes after a repeat of any of them would have
    last = TaskCreate(
        url=target.url("/barrier"), retries=0, run_at=dt.datetime.fromtimestamp(start + 1.5, dt.UTC)
    )
    barrier_task, _ = await store.create_task("alice", last)
    workers.start()
    workers.start()
    await until(lambda: len(target.calls) >= 2000, timeout_s=30)
    await until(lambda: target.calls_to("/barrier"), timeout_s=30, what="the barrier")
    counts = target.by_task()
    del counts[barrier_task.id]
    assert len(target.calls) == 2001
    assert sorted(counts) == sorted(ids) and set(counts.values()) == {1}

    async def all_succeeded() -> bool:
        page = await store.list_tasks("alice", status=TaskStatus.succeeded, limit=500, cursor=None)
        n = len(page.items)
        while page.next_cursor:
            page = await store.list_tasks(
                "alice", status=TaskStatus.succeeded, limit=500, cursor=page.next_cursor
            )
            n += len(page.items)
        return n == 2001

    try:
        await until(all_succeeded, timeout_s=10)
    except AssertionError:
        stats = [await store.redis.hgetall(p + c.STATS) for p in (await store.layout()).prefixes]
        raise AssertionError(f"not all succeeded: {stats}\n{workers.logs()[-3000:]}") from None
    logs = workers.logs()
    assert logs.count("worker.started") == 2
    await store.redis.aclose()


async def test_worker_survives_a_redis_restart(
    api: Api, target: Target, workers: WorkerProcs, redis_server: RedisServer
) -> None:
    proc = workers.start()
    before = await api.create({"url": target.url("/before"), "delay": 0.2})
    await api.wait_status(before["id"], "succeeded")
    redis_server.stop()
    await until(lambda: "worker.redis_unavailable" in workers.logs(), what="the worker noticing")
    redis_server.start()  # same port and append-only file: the data comes back
    after = await api.create({"url": target.url("/after"), "delay": 0.2})
    await api.wait_status(after["id"], "succeeded", timeout_s=20)
    assert proc.poll() is None, "the worker exited when Redis went away"
    assert "worker.redis_unavailable" in workers.logs()


async def test_a_slow_target_never_delays_other_due_tasks(
    api: Api, target: Target, workers: WorkerProcs
) -> None:
    workers.start()
    slow = [
        await api.create({"url": target.url("/slow/20"), "timeout": 60, "retries": 0})
        for _ in range(50)
    ]
    await until(lambda: len(target.calls_to("/slow/20")) == 50)
    quick = await api.create({"url": target.url("/quick"), "delay": 0.5})
    done = await api.wait_status(quick["id"], "succeeded", timeout_s=5)
    assert done["attempts"][0]["lateness_ms"] < 50
    statuses = [(await api.get(t["id"]))["status"] for t in slow]
    assert statuses == ["running"] * 50  # still in flight, and they held nothing up


async def test_finished_records_are_purged_after_the_retention(
    api: Api, target: Target, workers: WorkerProcs
) -> None:
    workers.start(TASKORCH_RETENTION_S="1")
    done = await api.create({"url": target.url("/ok")})
    cancelled = await api.create({"url": target.url("/never"), "delay": 60})
    waiting = await api.create({"url": target.url("/later"), "delay": 60})
    r = await api.http.post(
        "/v1/orchestrations",
        headers=api.auth(),
        json={
            "steps": [{"url": target.url("/s0")}, {"url": target.url("/s1")}],
            "condition": {"url": target.url("/check")},
        },
    )
    orc = r.json()
    await api.http.post(f"/v1/tasks/{cancelled['id']}/cancel", headers=api.auth())
    await api.wait_status(done["id"], "succeeded")
    finished = await api.wait_status(orc["id"], "succeeded", kind="orchestrations")

    async def gone(path: str) -> bool:
        return (await api.http.get(path, headers=api.auth())).status_code == 404

    for path in (
        f"/v1/tasks/{done['id']}",
        f"/v1/tasks/{cancelled['id']}",
        f"/v1/orchestrations/{orc['id']}",
        f"/v1/tasks/{finished['steps'][0]['task_id']}",
    ):
        await until(lambda path=path: gone(path), timeout_s=10)
    listed = (await api.http.get("/v1/tasks", headers=api.auth())).json()["items"]
    assert [t["id"] for t in listed] == [waiting["id"]]  # unfinished work is never purged
    stats = (await api.http.get("/v1/stats", headers=api.auth())).json()
    assert stats["tasks"]["scheduled"] == 1 and stats["tasks"]["succeeded"] == 0
    assert stats["orchestrations"]["succeeded"] == 0
    redis = api.http._transport.app.state["redis"]  # type: ignore[attr-defined]
    pre = (await partitions.load(redis)).prefix_of(orc["id"])
    leftovers = [k async for k in redis.scan_iter(f"{pre}{c.ORCH}{orc['id']}*")]
    assert leftovers == []


async def _outage(redis_server: RedisServer, how: str, seconds: float) -> None:
    """Take Redis away for ``seconds``: killed then restarted on the same data, or frozen."""
    assert redis_server.proc is not None
    if how == "kill":
        redis_server.stop(signal.SIGKILL)
        await asyncio.sleep(seconds)
        redis_server.start()
    else:
        redis_server.proc.send_signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(seconds)
        finally:
            redis_server.proc.send_signal(signal.SIGCONT)


@pytest.mark.parametrize("how", ["kill", "freeze"])
async def test_an_outage_of_twice_the_lease_loses_nothing_and_repeats_nothing(
    api: Api, target: Target, workers: WorkerProcs, redis_server: RedisServer, how: str
) -> None:
    """Redis away for 2x TASKORCH_LEASE_S (3 s): calls in flight when it went complete during
    the outage and are recorded, not made again; tasks claimed before it and due during it
    fire once it is back; nothing gets a made-up "worker lost" attempt."""
    workers.start()
    await until(lambda: "worker.started" in workers.logs(), timeout_s=60)
    lease_s = 3.0
    t0 = time.time() + 2.0  # time to create the tasks on a loaded machine
    in_flight = [
        await api.create({"url": target.url("/slow/1.5"), "run_at": _at(t0), "retries": 0})
        for _ in range(10)
    ]
    # claimed (1 s ahead) before the outage and due during it, then due later in the outage
    due_during = [
        await api.create({"url": target.url("/during"), "run_at": _at(t0 + 1.2 + i * 0.3)})
        for i in range(10)
    ]
    await until(lambda: len(target.calls_to("/slow/1.5")) == 10)  # all ten in flight
    await asyncio.sleep(max(0.0, t0 + 0.6 - time.time()))  # the outage's start: the scenario
    assert time.time() < t0 + 1.1 and target.calls_to("/during") == [], "started too late"
    await _outage(redis_server, how, 2 * lease_s)
    after = await api.create({"url": target.url("/after"), "delay": 0.2})
    everything = [*in_flight, *due_during, after]
    for task in everything:
        await api.wait_status(task["id"], {"succeeded", "failed"}, timeout_s=30)
    await barrier(api, target.url("/barrier"), delay_s=0.5)  # a repeat would come first
    counts = target.by_task()
    assert {t["id"]: counts[t["id"]] for t in everything} == {t["id"]: 1 for t in everything}
    for task in everything:
        done = await api.get(task["id"])
        assert done["status"] == "succeeded", done
        assert [(a["number"], a["status_code"], a["error"]) for a in done["attempts"]] == [
            (1, 200, None)
        ], done["attempts"]
    for task in due_during:  # fired after the outage, not lost and not early
        [call] = [c for c in target.calls if c.headers["X-Taskorch-Task-Id"] == task["id"]]
        assert call.at >= _ts(task["run_at"])
        assert call.headers["X-Taskorch-Attempt"] == "1"


def _at(epoch_s: float) -> str:
    return dt.datetime.fromtimestamp(epoch_s, dt.UTC).isoformat()


# -- the worker's scripts, one step at a time against the real Redis ----------------------------


async def _claimed(store: Store, worker: str, url: str) -> tuple[str, str]:
    task, _ = await store.create_task("alice", TaskCreate(url=url, retries=2))
    [cl] = await store.claim(worker=worker, horizon_ms=now_ms() + 5_000, lease_ms=60_000, limit=10)
    assert cl.arg == task.id
    return task.id, cl.job


async def _key(redis: Any, record_id: str, suffix: str) -> str:
    """A key of the partition ``record_id`` (a task id or job) lives in."""
    return (await partitions.load(redis)).prefix_of(record_id) + suffix


def _outcome_row(task_id: str, job: str, attempt: int) -> list[object]:
    t = now_ms()
    return [
        task_id,
        job,
        "succeeded",
        encode_attempt(
            number=attempt,
            scheduled_for_ms=t - 10,
            started_ms=t - 10,
            finished_ms=t,
            status_code=200,
            error=None,
            body="ok",
        ),
        0,
        t,
        c.CLAIM_AHEAD_MS,
        "attempts_total:succeeded",
    ]


async def test_a_repeated_start_answers_the_same_attempt_to_its_worker_only(
    redis_url: str,
) -> None:
    store = Store(connect(redis_url))
    task_id, job = await _claimed(store, "w1", "http://example.com/x")
    assert await store.start([(task_id, job)], worker="w1", lease_ms=60_000) == [1]
    # the reply was lost; the same worker asks again: same attempt, still running, nothing added
    assert await store.start([(task_id, job)], worker="w1", lease_ms=60_000) == [1]
    assert await store.start([(task_id, job)], worker="w2", lease_ms=60_000) == [0]
    task = await store.get_task("alice", task_id)
    assert task.status == TaskStatus.running and [a.number for a in task.attempts] == [1]
    assert await store.redis.hget(await _key(store.redis, job, c.LEASE_OWNER), job) == "w1"
    await store.redis.aclose()


async def test_a_claim_whose_reply_was_lost_is_adopted_by_the_next_claim(
    redis_url: str,
) -> None:
    """Issue #19: the jobs a claim took (a task, a callback job) come back in the next claim that
    names it; a claim named before it ran claims nothing when it runs; a claim sent twice answers
    its first result again; another worker's claim cannot adopt them."""
    store = Store(connect(redis_url))
    try:
        horizon = now_ms() + 5_000
        task, _ = await store.create_task("alice", TaskCreate(url="http://example.com/x"))
        layout = await store.layout()
        p = layout.partition_of(task.id)
        event = "orc_x.step.done"  # a non-task job, as a callback or an orchestration event has
        await store.redis.set(layout.prefixes[p] + c.JOB + event, '{"f": "cb", "a": ["x"]}')
        await store.redis.zadd(layout.queue(p), {event: now_ms()})
        kw: dict[str, Any] = {"horizon_ms": horizon, "lease_ms": 60_000, "limit": 100}
        lost = await store.claim(worker="w1", claim_id="w1:1", **kw)  # its reply never came
        assert sorted(cl.job for cl in lost) == sorted([f"{task.id}.1", event])
        assert await store.claim(worker="w2", claim_id="w2:1", lost=["w1:1"], **kw) == []
        again = await store.claim(worker="w1", claim_id="w1:1", **kw)  # sent twice
        assert sorted(cl.job for cl in again) == sorted(cl.job for cl in lost)
        adopted = await store.claim(worker="w1", claim_id="w1:2", lost=["w1:1"], **kw)
        by_job = {cl.job: cl for cl in adopted}
        assert sorted(by_job) == sorted(cl.job for cl in lost)
        t = by_job[f"{task.id}.1"]
        [first] = [cl for cl in lost if cl.job == t.job]
        assert (t.arg, t.function, t.owner, t.spec) == (task.id, "fire_task", "alice", first.spec)
        assert by_job[event].function == "cb" and by_job[event].arg == "x"
        # A claim named by a later one before it ran (Redis runs them in any order): nothing.
        await store.create_task("alice", TaskCreate(url="http://example.com/y"))
        assert await store.claim(worker="w1", claim_id="w1:3", lost=["w1:4"], **kw) != []
        assert await store.claim(worker="w1", claim_id="w1:4", **kw) == []
        # The record of a claim whose reply came goes with the next claim.
        record = layout.prefixes[p] + c.CLAIM_RECORD + "w1:2"
        assert await store.redis.exists(record)
        await store.claim(worker="w1", claim_id="w1:5", answered="w1:2", **kw)
        assert not await store.redis.exists(record)
    finally:
        await store.redis.aclose()


async def test_a_live_workers_outcome_wins_over_a_lost_retry_not_yet_started(
    redis_url: str,
) -> None:
    store = Store(connect(redis_url))
    task_id, job = await _claimed(store, "w1", "http://example.com/x")
    await store.start([(task_id, job)], worker="w1", lease_ms=60_000)
    await store.redis.zadd(
        await _key(store.redis, job, c.LEASES), {job: 1}
    )  # w1 could not renew: its lease lapsed
    assert await store.reap(gap_ms=60_000, grace_ms=1_000) == 1
    task = await store.get_task("alice", task_id)
    assert task.status == TaskStatus.retrying and "worker lost" in (task.attempts[0].error or "")
    # w1 was alive and held the answer: it is recorded, the lost attempt and its retry undone
    assert await store.finish([_outcome_row(task_id, job, 1)]) == [1]
    task = await store.get_task("alice", task_id)
    assert task.status == TaskStatus.succeeded
    assert [(a.number, a.status_code, a.error) for a in task.attempts] == [(1, 200, None)]
    assert (
        await store.redis.zcard(await _key(store.redis, job, c.QUEUE)) == 0
    )  # no retry left to fire
    assert (
        await store.redis.hget(await _key(store.redis, job, c.METRICS), "attempts_total:lost")
        == "0"
    )

    # once the retry has started, the lost attempt stands and the late outcome is stale
    task_id, job = await _claimed(store, "w1", "http://example.com/y")
    await store.start([(task_id, job)], worker="w1", lease_ms=60_000)
    await store.redis.zadd(await _key(store.redis, job, c.LEASES), {job: 1})
    assert await store.reap(gap_ms=60_000, grace_ms=1_000) == 1
    [retry] = await store.claim(worker="w2", horizon_ms=now_ms() + 1, lease_ms=60_000, limit=10)
    assert await store.start([(task_id, retry.job)], worker="w2", lease_ms=60_000) == [2]
    assert await store.finish([_outcome_row(task_id, job, 1)]) == [0]
    task = await store.get_task("alice", task_id)
    assert task.status == TaskStatus.running and len(task.attempts) == 2
    await store.redis.aclose()


async def test_reapers_hold_back_after_a_gap_in_reaping(redis_url: str) -> None:
    store = Store(connect(redis_url))
    task_id, job = await _claimed(store, "w1", "http://example.com/x")
    await store.redis.zadd(await _key(store.redis, job, c.LEASES), {job: 1})  # lapsed
    await store.redis.hset(
        await _key(store.redis, job, c.REAPER), "last", now_ms() - 10_000
    )  # nobody reaped for 10 s
    held_from = time.monotonic()
    assert await store.reap(gap_ms=2_000, grace_ms=400) == -1
    assert await store.reap(gap_ms=2_000, grace_ms=400) == -1
    assert (
        await store.redis.zscore(await _key(store.redis, job, c.LEASES), job) == 1
    )  # left to its (live?) worker

    # reaping on (as the reapers do, every reap a recent one), it holds back for the grace only
    async def reaped() -> bool:
        return await store.reap(gap_ms=2_000, grace_ms=400) == 1

    await until(reaped, timeout_s=5, every_s=0.02, what="the reap after the grace")
    assert time.monotonic() - held_from >= 0.39, "recovered within the grace"
    assert await store.redis.zscore(await _key(store.redis, job, c.QUEUE), job) is not None
    assert (await store.get_task("alice", task_id)).status == TaskStatus.scheduled
    await store.redis.aclose()


async def test_a_dead_workers_task_goes_out_again_within_the_lease(
    api: Api, target: Target, workers: WorkerProcs
) -> None:
    """SIGKILL a worker mid-call just after it renewed its lease (the worst case) and measure
    when another, running worker calls the task again: within TASKORCH_LEASE_S."""
    lease_s = 6.0
    doomed = workers.start(TASKORCH_LEASE_S=str(lease_s))
    task = await api.create({"url": target.url("/slow-once/60"), "retries": 0})
    await until(lambda: target.calls)  # in flight at the doomed worker
    workers.start(TASKORCH_LEASE_S=str(lease_s))
    await until(lambda: workers.logs().count("worker.started") == 2)
    redis = api.http._transport.app.state["redis"]  # type: ignore[attr-defined]
    job = f"{task['id']}.1"
    first = await redis.zscore(await _key(redis, job, c.LEASES), job)
    await until(lambda: _changed(redis, job, first), every_s=0.005)  # a renewal just happened
    doomed.send_signal(signal.SIGKILL)
    killed_at = time.time()
    doomed.wait()
    await until(lambda: len(target.calls) == 2, timeout_s=3 * lease_s)
    again = target.calls[1]
    print(f"called again {again.at - killed_at:.2f} s after the kill (lease {lease_s:g} s)")
    assert again.headers["Idempotency-Key"] == task["id"]
    assert again.at - killed_at <= lease_s, f"called again {again.at - killed_at:.2f} s after"
    done = await api.wait_status(task["id"], "succeeded")
    assert "worker lost" in done["attempts"][0]["error"]


async def _changed(redis: Any, job: str, score: float | None) -> bool:
    return bool(await redis.zscore(await _key(redis, job, c.LEASES), job) != score)


class _ReplyCutter:
    """A TCP proxy in front of Redis that, while ``cut`` is set, lets every command through but
    closes the connection instead of passing on the reply to a script call naming one of the
    ``watched`` tasks: the script ran, its reply was lost (as when Redis dies right after)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.cut = False
        self.watched: list[bytes] = []
        self.port = 0
        self._conns: list[asyncio.StreamWriter] = []

    async def handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        sreader, swriter = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._conns += [cwriter, swriter]
        doomed = False

        async def up() -> None:
            nonlocal doomed
            while data := await creader.read(65536):
                if self.cut and b"EVALSHA" in data and any(w in data for w in self.watched):
                    doomed = True
                swriter.write(data)
                await swriter.drain()

        async def down() -> None:
            while data := await sreader.read(65536):
                if doomed:
                    break
                cwriter.write(data)
                await cwriter.drain()
            cwriter.close()
            swriter.close()

        await asyncio.gather(up(), down(), return_exceptions=True)

    def close(self) -> None:
        for w in self._conns:
            w.close()


async def test_a_start_whose_reply_was_lost_fires_once_with_no_made_up_attempt(
    api: Api, target: Target, workers: WorkerProcs, redis_server: RedisServer
) -> None:
    cutter = _ReplyCutter(redis_server.port)
    server = await asyncio.start_server(cutter.handle, "127.0.0.1", 0)
    cutter.port = server.sockets[0].getsockname()[1]
    try:
        workers.start(TASKORCH_REDIS_URL=f"redis://127.0.0.1:{cutter.port}/0")
        warm_up = await api.create({"url": target.url("/warm-up")})  # scripts get loaded
        await api.wait_status(warm_up["id"], "succeeded")
        t0 = time.time() + 2.0
        tasks = [
            await api.create({"url": target.url("/once"), "run_at": _at(t0), "retries": 0})
            for _ in range(10)
        ]
        cutter.watched = [t["id"].encode() for t in tasks]
        cutter.cut = True  # their starts run in Redis, the replies are lost

        async def all_running() -> bool:
            return {(await api.get(t["id"]))["status"] for t in tasks} == {"running"}

        await until(all_running, timeout_s=20, what="every start run")
        cutter.cut = False
        for task in tasks:
            done = await api.wait_status(task["id"], {"succeeded", "failed"}, timeout_s=20)
            assert [(a["number"], a["status_code"], a["error"]) for a in done["attempts"]] == [
                (1, 200, None)
            ], done["attempts"]
        await barrier(api, target.url("/barrier"))  # a repeat of theirs would come first
        counts = target.by_task()
        assert [counts[t["id"]] for t in tasks] == [1] * len(tasks)
    finally:
        server.close()
        cutter.close()
        await server.wait_closed()


async def test_stopping_ends_a_background_loop_that_swallowed_a_cancellation() -> None:
    """A cancellation can be swallowed (3.11's wait_for, which redis-py connects through, returns
    an inner result that completed as it was cancelled): the loop then sleeps again, and one
    cancel plus a gather kept a worker stopped just after its start from ever exiting."""
    from taskorch.worker import cancel_all

    swallowed = asyncio.Event()

    async def janitor() -> None:
        while True:
            try:
                await asyncio.Event().wait()  # the loop under test, idle until cancelled
            except asyncio.CancelledError:
                if swallowed.is_set():
                    raise
                swallowed.set()
                asyncio.current_task().uncancel()  # type: ignore[union-attr]

    task = asyncio.create_task(janitor())
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_all([task]), 5)
    assert swallowed.is_set() and task.cancelled()


class _ConnTarget(asyncio.Protocol):
    """A raw HTTP target that records when each connection was accepted and, per call, its
    task, connection and arrival (answers 200 to everything, keeping the connection open)."""

    def __init__(
        self,
        accepted: list[float],
        calls: list[tuple[str, int, float]],
        idle_close_s: float | None = None,
        pieces: int = 1,
    ) -> None:
        self.accepted, self.calls = accepted, calls
        self.idle_close_s, self.pieces = idle_close_s, pieces
        self.writers: set[asyncio.Future[None]] = set()
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.conn = len(self.accepted)
        self.accepted.append(time.time())
        if self.idle_close_s is not None:  # a server with a short keep-alive, like many
            asyncio.get_running_loop().call_later(self.idle_close_s, self._close_if_idle)

    def _close_if_idle(self) -> None:
        if not any(conn == self.conn for _, conn, _ in self.calls):
            self.transport.close()

    async def _answer_in_pieces(self, answer: bytes) -> None:
        step = -(-len(answer) // self.pieces)
        for i in range(0, len(answer), step):
            self.transport.write(answer[i : i + step])
            await asyncio.sleep(0.02)

    def data_received(self, data: bytes) -> None:
        arrived = time.time()
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            head = self.buf[:end].decode("latin-1").split("\r\n")
            fields = {
                k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])
            }
            length = int(fields.get("content-length", "0"))
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length :]
            self.calls.append((fields.get("x-taskorch-task-id", ""), self.conn, arrived))
            answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
            if self.pieces == 1:
                self.transport.write(answer)
            else:
                writer = asyncio.ensure_future(self._answer_in_pieces(answer))
                self.writers.add(writer)
                writer.add_done_callback(self.writers.discard)


@pytest.mark.parametrize("private_allowed", [True, False])
async def test_connections_for_calls_due_together_are_open_before_their_due_time(
    api: Api, target: Target, workers: WorkerProcs, private_allowed: bool
) -> None:
    # 30 calls due in one millisecond to a host the worker never called: each arrives on a
    # connection opened ahead of the due time (no handshake at the due time), none early, none
    # twice. A host the private-address guard refuses is not even connected to ahead.
    accepted: list[float] = []
    calls: list[tuple[str, int, float]] = []
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _ConnTarget(accepted, calls), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    workers.start(TASKORCH_ALLOW_PRIVATE_TARGETS="1" if private_allowed else "0")
    try:
        due = time.time() + 3.0
        ids = [
            (
                await api.create(
                    {"url": f"http://127.0.0.1:{port}/together", "run_at": _at(due), "retries": 0}
                )
            )["id"]
            for _ in range(30)
        ]
        due = round(due, 3)
        if not private_allowed:
            await api.wait_status(ids[-1], "failed", timeout_s=15)
            assert accepted == [] and calls == []
            return
        await until(lambda: len(calls) >= 30, timeout_s=15)
        await barrier(api, target.url("/barrier"))  # a second call of any would come first
        assert sorted(task for task, _, _ in calls) == sorted(ids)
        assert min(at for _, _, at in calls) >= due, "a call arrived before its due time"
        used = {conn for _, conn, _ in calls}
        late = [conn for conn in used if accepted[conn] >= due]
        assert late == [], f"{len(late)} of {len(used)} connections were opened at the due time"
        assert len(accepted) <= 30
    finally:
        server.close()


async def test_calls_due_together_succeed_when_the_host_closes_idle_connections_early(
    api: Api, workers: WorkerProcs
) -> None:
    # The connections a worker opens ahead are closed by the host after 0.3 s idle (long before
    # the due time), and answers come in 3 pieces: every call still succeeds at its first
    # attempt, once, on connections the calls open themselves.
    accepted: list[float] = []
    calls: list[tuple[str, int, float]] = []
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _ConnTarget(accepted, calls, idle_close_s=0.3, pieces=3), "127.0.0.1", 0
    )
    port = server.sockets[0].getsockname()[1]
    workers.start()
    try:
        due = time.time() + 3.0
        ids = [
            (
                await api.create(
                    {"url": f"http://127.0.0.1:{port}/closing", "run_at": _at(due), "retries": 2}
                )
            )["id"]
            for _ in range(30)
        ]
        for task_id in ids:
            done = await api.wait_status(task_id, "succeeded", timeout_s=15)
            assert [a["status_code"] for a in done["attempts"]] == [200], done["attempts"]
        assert sorted(task for task, _, _ in calls) == sorted(ids)
        warmed = [at for at in accepted if at < round(due, 3)]
        assert warmed, "no connection was opened ahead (the test would prove nothing)"
    finally:
        server.close()
