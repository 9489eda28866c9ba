"""A deleted schedule (issue #19): it makes nothing more from its DELETE on, and its finished
occurrences are not kept for the whole retention (an every-second schedule with a 512 KiB payload
grew Redis 1.7 MiB/s and kept all of it 7 days after its DELETE): the janitor keeps only the
newest DELETED_SCHEDULE_KEEP at once, and none DELETED_SCHEDULE_KEEP_S after the DELETE."""

from __future__ import annotations

import time

import pytest

from taskorch import constants as c
from taskorch.store import Store, connect, now_ms
from tests.conftest import Api, Target, WorkerProcs, until

WEEK_MS = 7 * 24 * 3600 * 1000


async def test_a_deleted_schedule_stops_at_once_and_its_occurrences_are_not_kept(
    api: Api, target: Target, workers: WorkerProcs, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    workers.start()
    body = {"every": 1, "task": {"url": target.url("/del"), "payload": {"pad": "x" * 4096}}}
    r = await api.http.post("/v1/schedules", json=body, headers=api.auth())
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    await until(lambda: len(target.calls_to("/del")) >= 3)
    r = await api.http.delete(f"/v1/schedules/{sid}", headers=api.auth())
    assert r.status_code == 204, r.text
    deleted_at = time.time()
    # A task due 2.5 s after the DELETE: once it has been called, the worker has had 2 s of
    # chances to make and call more of the schedule's occurrences.
    marker = await api.create({"url": target.url("/marker"), "delay": 2.5})
    await api.wait_status(marker["id"], "succeeded")
    late = [call.at - deleted_at for call in target.calls_to("/del") if call.at > deleted_at]
    assert len(late) <= 1 and all(t < 1.0 for t in late), late  # one may have been under way

    made = []
    cursor = ""
    while True:
        r = await api.http.get(
            f"/v1/tasks?schedule_id={sid}&limit=500&cursor={cursor}", headers=api.auth()
        )
        assert r.status_code == 200, r.text
        made += [t["id"] for t in r.json()["items"]]
        if not (cursor := r.json()["next_cursor"]):
            break
    finished = [t for t in made if (await api.get(t))["status"] != "running"]
    assert len(finished) >= 3

    async def status(task_id: str) -> int:
        r = await api.http.get(f"/v1/tasks/{task_id}", headers=api.auth())
        return r.status_code

    store = Store(connect(redis_url))
    try:
        # At the janitor's next round (the retention, 7 days, has not come for any of them)
        # the oldest beyond the newest DELETED_SCHEDULE_KEEP go; then the rest, once
        # DELETED_SCHEDULE_KEEP_S have passed since the DELETE.
        monkeypatch.setattr(c, "DELETED_SCHEDULE_KEEP", 1, raising=False)
        await store.purge(older_than_ms=now_ms() - WEEK_MS)
        assert [await status(t) for t in finished] == [200] + [404] * (len(finished) - 1)
        monkeypatch.setattr(c, "DELETED_SCHEDULE_KEEP_S", 0.0, raising=False)
        await store.purge(older_than_ms=now_ms() - WEEK_MS)
        assert [await status(t) for t in finished] == [404] * len(finished)
        assert await status(marker["id"]) == 200  # other tasks keep their retention
        prefix = (await store.layout()).prefix_of(sid)  # the schedule's partition
        assert await store.redis.exists(f"{prefix}{c.SCHEDULE_TASKS}alice:{sid}") == 0
        for key in [c.SCHEDULES_DELETED, c.SCHEDULES_DELETED_TRIM]:
            assert await store.redis.zcard(prefix + key) == 0
        assert await store.purge(older_than_ms=now_ms() - WEEK_MS) == 0
    finally:
        await store.redis.aclose()
