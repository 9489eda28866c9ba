"""The partitioned layout (issue #10): every per-task key in its partition, lean records, lists and
stats merged over the partitions."""

from __future__ import annotations

import re
from typing import Any

import pytest
import redis

from taskorch import constants as c
from taskorch import partitions
from taskorch.models import TaskCreate, TaskStatus
from taskorch.store import BatchItem, Store, connect, now_ms
from tests.conftest import ON_CLUSTER, Api, Target, WorkerProcs

# Keys that are not per task and existed before the partitioned layout (or record it).
GLOBAL_KEYS = {c.PARTITIONS_KEY, c.WORKERS_KEY}
_TAGGED = re.compile(r"^taskorch:\{([^}]+)\}:(.*)$")
_ID = re.compile(r"(?:tsk|orc)_[0-9a-f]{24}")


def test_tags_land_in_their_slice_of_the_slot_space() -> None:
    for n in (1, 3, 16, 64):
        for p in range(n):
            slot = partitions.key_slot(partitions.tag(p, n))
            assert p * 16384 // n <= slot < (p + 1) * 16384 // n
    # CRC16 as Redis computes it (the spec's reference value for "123456789")
    assert partitions.key_slot("123456789") == 0x31C3 % 16384


def test_ids_name_their_partition_and_keep_their_form() -> None:
    from taskorch.store import is_id

    for n in (1, 7, 16, 1024):
        for p in {0, n // 2, n - 1}:
            for _ in range(50):
                tid = partitions.new_id("tsk", p, n)
                assert is_id(tid, "tsk") and partitions.partition_of(tid, n) == p
                assert partitions.partition_of(tid + ".3", n) == p  # its jobs too


def test_queue_and_owner_partitions_are_fixed_by_their_names() -> None:
    # The agreed formulas (issue #12): every process, and every helper's code, finds the same.
    layout = partitions.Layout(16)
    assert layout.queue_partition("alice", "emails") == 6  # crc32("alice\0q\0emails") % 16
    assert layout.queue_partition("bob", "emails") == 4  # per owner
    assert layout.owner_partition("alice") == 13  # crc32("alice\0o") % 16
    assert partitions.Layout(64).queue_partition("alice", "emails") == 22


async def test_the_recorded_partition_count_wins(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TASKORCH_PARTITIONS", "4")
    first = connect(redis_url)
    assert (await partitions.load(first)).n == 4
    monkeypatch.setenv("TASKORCH_PARTITIONS", "32")
    later = connect(redis_url)
    assert (await partitions.load(later)).n == 4  # recorded at first start
    store = Store(later)
    task, _ = await store.create_task("alice", TaskCreate(url="http://example.com/"))
    assert (await store.get_task("alice", task.id)).id == task.id
    await first.aclose()
    await later.aclose()


async def test_every_key_written_for_tasks_and_orchestrations_is_in_its_partition(
    api: Api, target: Target, workers: WorkerProcs
) -> None:
    workers.start()
    ok = await api.create({"url": target.url("/ok"), "payload": {"a": 1}})
    retried = await api.create({"url": target.url("/fail-then-ok/1"), "retry_delay": 0.2})
    failed = await api.create({"url": target.url("/status/500"), "retries": 0})
    cancelled = await api.create({"url": target.url("/never"), "delay": 60})
    pending = await api.create({"url": target.url("/later"), "delay": 600})
    r = await api.http.post(f"/v1/tasks/{cancelled['id']}/cancel", headers=api.auth())
    assert r.status_code == 200
    r = await api.http.patch(
        f"/v1/tasks/{pending['id']}", json={"payload": {"v": 2}}, headers=api.auth()
    )
    assert r.status_code == 200
    idem = await api.http.post(
        "/v1/tasks",
        json={"url": target.url("/idem"), "delay": 600},
        headers={**api.auth(), "Idempotency-Key": "k-1"},
    )
    assert idem.status_code == 201
    r = await api.http.post(
        "/v1/orchestrations",
        json={
            "steps": [{"url": target.url(f"/s{i}")} for i in range(3)],
            "condition": {"url": target.url("/fail-then-ok/1"), "retry_delay": 0.2, "retries": 2},
            "fallback": {"url": target.url("/fb")},
        },
        headers=api.auth(),
    )
    assert r.status_code == 201
    orc = r.json()
    await api.wait_status(ok["id"], "succeeded")
    await api.wait_status(retried["id"], "succeeded")
    await api.wait_status(failed["id"], "failed")
    done = await api.wait_status(orc["id"], "succeeded", kind="orchestrations", timeout_s=30)
    steps = [s["task_id"] for s in done["steps"]]

    client: Any = api.http._transport.app.state["redis"]  # type: ignore[attr-defined]
    layout = await partitions.load(client)
    tags = {partitions.tag(p, layout.n) for p in range(layout.n)}
    keys = [k async for k in client.scan_iter("*", count=1000)]
    stray, misplaced = [], []
    for key in keys:
        m = _TAGGED.match(key)
        if m is None:
            if key not in GLOBAL_KEYS:
                stray.append(key)
            continue
        assert m.group(1) in tags, key
        for rid in _ID.findall(m.group(2)):
            if layout.prefix_of(rid) != f"taskorch:{{{m.group(1)}}}:":
                misplaced.append(key)
    assert stray == [], f"keys outside every partition: {stray}"
    assert misplaced == [], f"keys outside their record's partition: {misplaced}"
    # the records are there, each in its own partition, steps with their orchestration
    for tid in [ok["id"], retried["id"], failed["id"], cancelled["id"], pending["id"], *steps]:
        assert layout.prefix_of(tid) + c.TASK + tid in keys
    assert {layout.partition_of(t) for t in steps} == {layout.partition_of(orc["id"])}
    # no job definition for a task's job
    assert not [k for k in keys if f":{c.JOB}tsk_" in k]


async def test_lists_merge_partitions_newest_first_with_stable_cursors(redis_url: str) -> None:
    store = Store(connect(redis_url))
    layout = await store.layout()
    got = await store.create_tasks(
        "alice",
        [BatchItem(TaskCreate(url=f"http://example.com/{i}", delay=600)) for i in range(60)],
    )
    ids = [r[0].id for r in got if isinstance(r, tuple)]
    assert len(ids) == 60 and len({layout.partition_of(i) for i in ids}) > 1
    newest_first = sorted(ids, reverse=True)
    page = await store.list_tasks("alice", status=None, limit=25, cursor=None)
    seen = [t.id for t in page.items]
    # tasks change status between pages: a later page neither repeats nor skips any
    for tid in newest_first[:10] + newest_first[40:45]:
        await store.cancel_task("alice", tid)
    while page.next_cursor:
        page = await store.list_tasks("alice", status=None, limit=25, cursor=page.next_cursor)
        seen += [t.id for t in page.items]
    assert seen == newest_first
    cancelled = await store.list_tasks("alice", status=TaskStatus.cancelled, limit=100, cursor=None)
    assert [t.id for t in cancelled.items] == newest_first[:10] + newest_first[40:45]
    assert (await store.list_tasks("bob", status=None, limit=10, cursor=None)).items == []
    await store.redis.aclose()


async def test_stats_and_metrics_sum_the_partitions(api: Api) -> None:
    for i in range(20):
        await api.create({"url": f"http://example.com/{i}", "delay": 600})
    stats = (await api.http.get("/v1/stats", headers=api.auth())).json()
    assert stats["tasks"]["scheduled"] == 20
    text = (await api.http.get("/metrics")).text
    assert 'taskorch_tasks{status="scheduled"} 20.0' in text
    assert "taskorch_queue_jobs 20.0" in text


async def test_create_tasks_answers_per_item_and_dedupes_keys(redis_url: str) -> None:
    store = Store(connect(redis_url))
    first, _ = await store.create_task(
        "alice", TaskCreate(url="http://example.com/a"), idempotency_key="same"
    )
    items = [
        BatchItem(TaskCreate(url="http://example.com/a"), "same"),  # a repeat: the first task
        BatchItem(TaskCreate(url="http://example.com/b", delay=60), "new"),
        BatchItem(TaskCreate(url="http://example.com/c", delay=60), "new"),  # repeat in batch
        BatchItem(TaskCreate(url="http://example.com/d", delay=60)),
    ]
    got = await store.create_tasks("alice", items)
    assert all(isinstance(r, tuple) for r in got)
    (a, a_new), (b, b_new), (c2, c_new), (d, d_new) = got  # type: ignore[misc]
    assert a.id == first.id and not a_new
    assert b_new and not c_new and c2.id == b.id and b.url == "http://example.com/b"
    assert d_new and d.url == "http://example.com/d" and d.status == TaskStatus.scheduled
    # past its deadline a partition's script writes nothing and says so per item
    late = await store.create_tasks(
        "alice", [BatchItem(TaskCreate(url="http://example.com/e"))], deadline_ms=1
    )
    assert [type(r).__name__ for r in late] == ["Unavailable"]
    page = await store.list_tasks("alice", status=None, limit=100, cursor=None)
    assert len(page.items) == 3
    await store.redis.aclose()


@pytest.mark.skipif(ON_CLUSTER, reason="INFO memory of one redis-server: run on a single Redis")
async def test_a_pending_task_costs_at_most_500_bytes_of_redis(redis_url: str) -> None:
    """The bench task (a URL, a small JSON payload, defaults), 20,000 pending, by INFO memory."""
    n = 20_000
    sync = redis.Redis.from_url(redis_url)
    store = Store(connect(redis_url))
    await store.layout()
    await store.create_task("bench", TaskCreate(url="http://127.0.0.1:8080/hit", delay=3600))

    def used() -> int:  # the data's memory: connections' buffers come and go with clients
        info = sync.info("memory")
        return int(info["used_memory"]) - int(info["mem_clients_normal"])

    before = used()
    for i in range(0, n, 1000):
        got = await store.create_tasks(
            "bench",
            [
                BatchItem(TaskCreate(url="http://127.0.0.1:8080/hit", payload={"n": j}, delay=3600))
                for j in range(i, i + 1000)
            ],
        )
        assert all(isinstance(r, tuple) for r in got)
    await store.redis.aclose()
    after = used()
    per_task = (after - before) / n
    print(f"Redis per pending task: {per_task:.0f} B")
    assert per_task <= 500, f"{per_task:.0f} B per pending task"
    sync.close()


async def test_a_claim_takes_at_most_its_limit_over_all_partitions(redis_url: str) -> None:
    """A worker asks for what it has room for; the partitions share that, so it never holds
    more than it can start while another worker idles."""
    store = Store(connect(redis_url))
    layout = await store.layout()
    got = await store.create_tasks(
        "alice", [BatchItem(TaskCreate(url=f"http://example.com/{i}")) for i in range(200)]
    )
    assert len({layout.partition_of(r[0].id) for r in got if isinstance(r, tuple)}) > 1
    taken: list[str] = []
    for limit in (10, 3, 50):
        claimed = await store.claim(
            worker="w", horizon_ms=now_ms() + 5_000, lease_ms=60_000, limit=limit
        )
        # below 16 the partitions are asked in turn until the room is taken; above, each is
        # asked its share (one with fewer due answers fewer)
        assert len(claimed) == limit if limit < layout.n else 0 < len(claimed) <= limit
        taken += [cl.arg for cl in claimed]
    assert store.more_due  # the rest is still waiting, and the worker comes back at once
    while claimed := await store.claim(
        worker="w", horizon_ms=now_ms() + 5_000, lease_ms=60_000, limit=1000
    ):
        taken += [cl.arg for cl in claimed]
    assert sorted(taken) == sorted(r[0].id for r in got if isinstance(r, tuple))
    assert not store.more_due
    await store.redis.aclose()
