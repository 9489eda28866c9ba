"""Callbacks and redrive (issue #12), with the real worker and real targets: the final Task is
POSTed once per outcome, signed, retried as the task is, and survives a killed worker; a failed
task redriven runs again with a fresh retry budget and its attempts numbered on."""

from __future__ import annotations

import asyncio
import re
import signal
from typing import Any

import msgspec
import pytest
from standardwebhooks.webhooks import Webhook

from taskorch import constants as c
from taskorch import partitions
from taskorch.models import Callback, Task, TaskCreate
from taskorch.store import Claimed, Store, connect, encode_attempt, now_ms
from tests.conftest import Api, Target, WorkerProcs, until


async def _delivered(api: Api, task_id: str, n: int, timeout_s: float = 20) -> dict[str, Any]:
    """The task once ``n`` callback deliveries are recorded on it."""

    async def check() -> dict[str, Any] | None:
        task = await api.get(task_id)
        return task if len(task["callback_attempts"]) >= n else None

    return await until(check, timeout_s=timeout_s)  # type: ignore[no-any-return]


async def _callback_barrier(api: Api, target: Target) -> None:
    """A task with a callback, made now, whose callback delivery is recorded: a delivery due
    before it, had one been due, would have come first."""
    task = await api.create(
        {"url": target.url("/barrier"), "callback": {"url": target.url("/cb/barrier")}}
    )
    await _delivered(api, task["id"], 1)


async def test_callback_fires_once_on_success_with_the_final_task_signed(
    api: Api, target: Target, workers: WorkerProcs
) -> None:
    workers.start()
    secret = (await api.http.get("/v1/signing-keys", headers=api.auth())).json()["keys"][0]
    task = await api.create(
        {
            "url": target.url("/ok"),
            "payload": {"order": 1},
            "callback": {"url": target.url("/cb/done"), "headers": {"X-Cb": "yes"}},
            "failure_callback": {"url": target.url("/cb/failed")},
        }
    )
    assert task["callback"] == {"url": target.url("/cb/done"), "headers": {"X-Cb": "yes"}}
    assert task["failure_callback"] == {"url": target.url("/cb/failed"), "headers": {}}
    assert task["callback_attempts"] == []
    done = await _delivered(api, task["id"], 1, timeout_s=60)
    await _callback_barrier(api, target)  # a second delivery would come first
    [call] = target.calls_to("/cb/done")
    assert target.calls_to("/cb/failed") == []
    # The final Task, as GET answered it when the delivery was made (before it was recorded).
    sent = msgspec.json.decode(call.body)
    final = await api.get(task["id"])
    assert sent == {**final, "callback_attempts": []}
    assert sent["status"] == "succeeded" and sent["attempts"][0]["status_code"] == 200
    h = call.headers
    assert call.method == "POST" and h["X-Cb"] == "yes"
    assert h["X-Taskorch-Callback"] == "callback" and h["X-Taskorch-Task-Id"] == task["id"]
    assert (
        h["webhook-id"].startswith(task["id"] + ".cb") and h["Idempotency-Key"] == h["webhook-id"]
    )
    assert Webhook(secret["secret"]).verify(call.body, h)["id"] == task["id"]
    [delivery] = done["callback_attempts"]
    assert delivery["callback"] == "callback" and delivery["number"] == 1
    assert delivery["status_code"] == 200 and delivery["error"] is None


async def test_failure_callback_after_exhausted_retries_retried_until_delivered(
    api: Api, target: Target, workers: WorkerProcs
) -> None:
    """Only after the last retry failed, and only the failure callback; its target fails the
    first delivery, which is retried as the task's own calls are."""
    workers.start()
    task = await api.create(
        {
            "url": target.url("/status/500"),
            "retries": 2,
            "retry_delay": 0.1,
            "callback": {"url": target.url("/cb/succeeded")},
            "failure_callback": {"url": target.url("/fail-then-ok/1")},
        }
    )
    done = await _delivered(api, task["id"], 2, timeout_s=60)
    await _callback_barrier(api, target)  # a success callback or a third delivery: first
    assert target.calls_to("/cb/succeeded") == []
    deliveries = target.calls_to("/fail-then-ok/1")
    assert len(deliveries) == 2
    assert len(target.calls_to("/status/500")) == 3
    assert all(d.at > target.calls_to("/status/500")[-1].at for d in deliveries)
    first, second = (msgspec.json.decode(d.body) for d in deliveries)
    assert first["status"] == second["status"] == "failed"
    assert [a["number"] for a in second["attempts"]] == [1, 2, 3]
    assert [d.headers["X-Taskorch-Attempt"] for d in deliveries] == ["1", "2"]
    assert deliveries[0].headers["webhook-id"] == deliveries[1].headers["webhook-id"]
    assert [(a["callback"], a["number"], a["status_code"]) for a in done["callback_attempts"]] == [
        ("failure_callback", 1, 500),
        ("failure_callback", 2, 200),
    ]


async def test_redrive_runs_a_failed_task_again_with_a_fresh_budget_and_calls_back_again(
    api: Api, target: Target, workers: WorkerProcs
) -> None:
    workers.start()
    task = await api.create(
        {
            "url": target.url("/status/500"),
            "retries": 1,
            "retry_delay": 0.1,
            "failure_callback": {"url": target.url("/cb/failed")},
        }
    )
    failed = await _delivered(api, task["id"], 1, timeout_s=60)
    assert failed["status"] == "failed" and len(failed["attempts"]) == 2

    r = await api.http.post(f"/v1/tasks/{task['id']}/retry", headers=api.auth("bob"))
    assert r.status_code == 404, "another owner's task"
    r = await api.http.post(f"/v1/tasks/{task['id']}/retry", headers=api.auth())
    assert r.status_code == 200, r.text
    again = r.json()
    assert again["status"] == "scheduled" and again["finished_at"] is None
    assert [a["number"] for a in again["attempts"]] == [1, 2], "earlier attempts are kept"
    r = await api.http.post(f"/v1/tasks/{task['id']}/retry", headers=api.auth())
    assert r.status_code == 409, "only a failed task"
    assert re.match(r"The task is (scheduled|running|retrying):", r.json()["error"]["message"])

    final = await _delivered(api, task["id"], 2, timeout_s=30)
    assert final["status"] == "failed"
    # A fresh budget: the one retry again (not failed at once), numbering going on.
    assert [a["number"] for a in final["attempts"]] == [1, 2, 3, 4]
    assert [c.headers["X-Taskorch-Attempt"] for c in target.calls_to("/status/500")] == [
        "1",
        "2",
        "3",
        "4",
    ]
    first, second = target.calls_to("/cb/failed")
    assert first.headers["webhook-id"] != second.headers["webhook-id"], "a new outcome"
    assert len(msgspec.json.decode(second.body)["attempts"]) == 4

    ok = await api.create({"url": target.url("/ok")})
    await api.wait_status(ok["id"], "succeeded")
    r = await api.http.post(f"/v1/tasks/{ok['id']}/retry", headers=api.auth())
    assert r.status_code == 409
    assert r.json()["error"]["message"].startswith("The task is succeeded")


async def test_a_redriven_task_succeeds_and_is_not_purged_as_finished(
    api: Api, target: Target, workers: WorkerProcs
) -> None:
    """While it runs again, a redriven task is not in its partition's finished set, which the
    retention janitor deletes from."""
    workers.start()
    task = await api.create(
        {"url": target.url("/fail-then-ok/2"), "retries": 1, "retry_delay": 0.1}
    )
    await api.wait_status(task["id"], "failed")
    client = connect(api.settings.redis_url)
    try:
        layout = await partitions.load(client)
        finished = layout.prefix_of(task["id"]) + c.FINISHED
        assert await client.zscore(finished, "t:" + task["id"]) is not None
        workers.stop_all()  # so that the run it is redriven to cannot finish meanwhile
        r = await api.http.post(f"/v1/tasks/{task['id']}/retry", headers=api.auth())
        assert r.status_code == 200
        assert await client.zscore(finished, "t:" + task["id"]) is None
        workers.start()
    finally:
        partitions.forget(client)
        await client.aclose()
    done = await api.wait_status(task["id"], "succeeded")
    assert [(a["number"], a["status_code"]) for a in done["attempts"]] == [
        (1, 500),
        (2, 500),
        (3, 200),
    ]


async def test_a_killed_worker_neither_loses_nor_doubles_a_callback(
    api: Api, target: Target, workers: WorkerProcs
) -> None:
    """SIGKILL a worker while one task's call is in flight (before its final outcome) and while
    another task's callback waits for its retry (after it): another worker finishes both, and
    each callback target hears exactly what it should, once."""
    first = workers.start()
    await until(lambda: "worker.started" in workers.logs(), timeout_s=60)
    in_flight = await api.create(
        {"url": target.url("/slow-once/30"), "callback": {"url": target.url("/cb/a")}}
    )
    waiting = await api.create(
        {
            "url": target.url("/ok"),
            "retry_delay": 2,
            "callback": {"url": target.url("/fail-then-ok/1")},
        }
    )
    await _delivered(api, waiting["id"], 1, timeout_s=30)  # its first delivery failed
    await until(lambda: target.calls_to("/slow-once/30"))
    first.send_signal(signal.SIGKILL)
    first.wait()
    workers.start()
    a = await _delivered(api, in_flight["id"], 1, timeout_s=30)
    b = await _delivered(api, waiting["id"], 2, timeout_s=30)
    # the dead worker's claims were taken back before either was delivered: a doubled delivery
    # is due by now, and would come before the barrier's
    await _callback_barrier(api, target)
    assert a["status"] == "succeeded"
    assert "worker lost" in a["attempts"][0]["error"]
    assert len(target.calls_to("/cb/a")) == 1
    assert len(target.calls_to("/fail-then-ok/1")) == 2
    assert [x["status_code"] for x in b["callback_attempts"]] == [500, 200]
    assert len((await api.get(in_flight["id"]))["callback_attempts"]) == 1


async def _started(store: Store, lease_ms: int, **callbacks: Callback) -> tuple[Task, Claimed, int]:
    """Alice's task with ``callbacks``, claimed and started by worker "w" with ``lease_ms``:
    the worker's own first steps, one script at a time. Returns the task, its claim and the
    attempt number."""
    task, _ = await store.create_task("alice", TaskCreate(url="https://example.com/x", **callbacks))
    [cl] = await store.claim(worker="w", horizon_ms=now_ms() + 5000, lease_ms=lease_ms, limit=9)
    [n] = await store.start([(task.id, cl.job)], worker="w", lease_ms=lease_ms)
    return task, cl, n


async def test_an_outcome_recorded_twice_schedules_one_callback(redis_url: str) -> None:
    """FINISH sent again (its reply lost with the connection) records nothing more: the callback
    is scheduled once, with the outcome."""
    client = connect(redis_url)
    store = Store(client)
    try:
        task, cl, n = await _started(store, 30_000, callback=Callback(url="https://example.com/cb"))
        assert cl.owner == "alice" and cl.base == 0
        now = now_ms()
        attempt = encode_attempt(
            number=n,
            scheduled_for_ms=cl.due_ms,
            started_ms=now,
            finished_ms=now,
            status_code=200,
            error=None,
            body="",
        )
        row = [task.id, cl.job, "succeeded", attempt, 0, now, 1000, "attempts_total:succeeded"]
        assert await store.finish([row]) == [1]
        assert await store.finish([row]) == [0]
        layout = await store.layout()
        queued = await client.zrange(layout.queue(layout.partition_of(task.id)), 0, -1)
        assert [j for j in queued if ".cb" in j] == [f"{task.id}.cb1.1"]
    finally:
        partitions.forget(client)
        await client.aclose()


async def test_callbacks_are_validated_like_a_task_and_can_be_changed(api: Api) -> None:
    r = await api.http.post(
        "/v1/tasks",
        json={
            "url": "https://example.com/x",
            "callback": {"url": "ftp://example.com/"},
            "failure_callback": {"url": "https://example.com/f", "headers": {"Host": "x"}},
        },
        headers=api.auth(),
    )
    assert r.status_code == 422
    fields = {d["field"] for d in r.json()["error"]["details"]}
    assert fields == {"callback.url", "failure_callback.headers.Host"}, r.json()
    r = await api.http.post(
        "/v1/tasks",
        json={"url": "https://example.com/x", "callback": {"url": "https://e.com", "x": 1}},
        headers=api.auth(),
    )
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "callback.x"
    r = await api.http.post(
        "/v1/tasks/batch",
        json={"tasks": [{"url": "https://example.com/x", "callback": {"url": "nope"}}]},
        headers=api.auth(),
    )
    assert r.json()["items"][0]["error"]["details"][0]["field"] == "callback.url"
    task = await api.create(
        {"url": "https://example.com/x", "delay": 3600, "callback": {"url": "https://e.com/a"}}
    )
    r = await api.http.patch(
        f"/v1/tasks/{task['id']}",
        json={"callback": None, "failure_callback": {"url": "https://e.com/f"}},
        headers=api.auth(),
    )
    assert r.status_code == 200, r.text
    assert r.json()["callback"] is None
    assert r.json()["failure_callback"] == {"url": "https://e.com/f", "headers": {}}
    r = await api.http.patch(f"/v1/tasks/{task['id']}", json={"delay": 10}, headers=api.auth())
    assert r.json()["failure_callback"] == {"url": "https://e.com/f", "headers": {}}
    plain = await api.create({"url": "https://example.com/x", "delay": 3600})
    assert plain["callback"] is None and plain["callback_attempts"] == []


async def test_a_task_failed_by_lost_attempts_schedules_its_failure_callback(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reaper's own final outcome (a task whose worker kept dying: out of lost attempts)
    schedules the failure callback as FINISH does."""
    monkeypatch.setattr(c, "MAX_LOST_ATTEMPTS", 0)
    client = connect(redis_url)
    store = Store(client)
    try:
        task, _, _ = await _started(
            store, 1, failure_callback=Callback(url="https://example.com/failed")
        )
        await asyncio.sleep(0.05)  # the lease lapses: the worker "died"
        assert await store.reap(gap_ms=60_000, grace_ms=0) == 1
        got = await store.task_record(task.id)
        assert got is not None
        fields, view = got
        assert view.status == "failed" and "worker lost" in (view.attempts[-1].error or "")
        layout = await store.layout()
        queued = await client.zrange(layout.queue(layout.partition_of(task.id)), 0, -1)
        assert [j for j in queued if ".cb" in j] == [fields["callback_job"]]
    finally:
        partitions.forget(client)
        await client.aclose()
