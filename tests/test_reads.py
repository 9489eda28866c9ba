"""Lists and searches cost Redis a bounded amount per request, and one owner's reads cannot take
Redis from another (issue #19 item 7): a filter no index narrows reads at most LIST_SCAN_BUDGET
records per request and answers a short page with a next_cursor, and an owner may have at most
MAX_LISTS_PER_OWNER lists in progress per API process (429 with Retry-After beyond)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from taskorch import constants as c
from taskorch.auth import mint_token
from tests.conftest import ON_CLUSTER, Api, make_settings, until
from tests.live import serving

STORED = 10_000  # owner A's tasks, none of which a measured request matches
# The most Redis time (INFO commandstats usecs) one list or search may cost with STORED tasks.
# Before the fix a name= search of them cost 28 ms here (98 ms in the issue's, with more tasks).
MAX_REQUEST_REDIS_MS = 5.0
SLOTS = getattr(c, "MAX_LISTS_PER_OWNER", 4)  # (getattr: the test runs on the code before too)
# The requests measured: each filter that reads records to decide (no index narrows it), over
# tasks none of which match, so that nothing cuts the scan short but the budget.
SEARCHES = [
    "name=zzz&limit=500",
    "name=zzz&status=scheduled&limit=500",
    "queue=default&name=zzz&limit=500",
    "queue=bulk&name=zzz&limit=500",  # it read and dropped a page of 500 tasks
]


def _redis_usec(r: redis.Redis) -> int:
    return sum(int(v["usec"]) for v in r.info("commandstats").values())


async def _store_tasks(http: httpx.AsyncClient, token: str, n: int) -> None:
    """``n`` tasks due in an hour, named t<i>, half of them in the queue ``bulk`` (its tasks all
    live in one partition) and half spread over every partition."""
    for start in range(0, n, 1000):
        tasks = [
            {"url": "https://example.com/x", "delay": 3600, "name": f"t{i}"}
            | ({"queue": "bulk"} if i % 2 else {})
            for i in range(start, min(n, start + 1000))
        ]
        r = await http.post(
            "/v1/tasks/batch",
            json={"tasks": tasks},
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        assert all("task" in item for item in r.json()["items"])


async def test_searches_cost_redis_little_and_one_owners_loops_leave_redis_to_others(
    redis_url: str, tmp_path: Path
) -> None:
    settings = make_settings(redis_url)
    writer_a = mint_token(settings, "alice")
    reader_a = mint_token(settings, "alice", scope="read")
    token_b = mint_token(settings, "bob")
    sync = None if ON_CLUSTER else redis.Redis.from_url(redis_url)
    with serving(redis_url, tmp_path / "serve.log") as serve:
        async with httpx.AsyncClient(base_url=serve.url, timeout=30) as http:
            await _store_tasks(http, writer_a, STORED)
            # Redis's time per request, the least of five tries (the host is shared: one try
            # can be slowed by others' processes, never made cheaper than it is). On a cluster
            # one node's INFO would see a part of it: measured on a single Redis.
            cost_ms: dict[str, float] = {}
            for query in SEARCHES if sync is not None else []:
                tries = []
                assert sync is not None
                for _ in range(5):
                    before = _redis_usec(sync)
                    r = await http.get(
                        f"/v1/tasks?{query}", headers={"Authorization": f"Bearer {reader_a}"}
                    )
                    tries.append((_redis_usec(sync) - before) / 1000)
                    assert r.status_code == 200, r.text
                    assert r.json()["items"] == [] and r.json()["next_cursor"], query
                cost_ms[query] = min(tries)
            assert max(cost_ms.values(), default=0) < MAX_REQUEST_REDIS_MS, cost_ms

            # Eight keep-alive loops of the search from A's read-only token, ignoring
            # Retry-After, while B creates and lists: B's answers are all 2xx.
            stop = asyncio.Event()
            seen: dict[int, int] = {}
            started = [asyncio.Event() for _ in range(8)]

            async def hammer(i: int) -> None:
                async with httpx.AsyncClient(base_url=serve.url, timeout=30) as own:
                    while not stop.is_set():
                        r = await own.get(
                            "/v1/tasks?name=zzz&limit=500",
                            headers={"Authorization": f"Bearer {reader_a}"},
                        )
                        seen[r.status_code] = seen.get(r.status_code, 0) + 1
                        if r.status_code == 429:
                            assert int(r.headers["retry-after"]) >= 1
                        started[i].set()

            loops = [asyncio.create_task(hammer(i)) for i in range(8)]
            try:
                await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 30)
                b_auth = {"Authorization": f"Bearer {token_b}"}
                answers: list[tuple[str, int, str]] = []
                for _ in range(15):
                    r = await http.post(
                        "/v1/tasks",
                        json={"url": "https://example.com/b", "delay": 3600},
                        headers=b_auth,
                    )
                    answers.append(("create", r.status_code, r.text[:200]))
                    r = await http.get("/v1/tasks?limit=50", headers=b_auth)
                    answers.append(("list", r.status_code, r.text[:200]))
                    r = await http.get("/v1/tasks?name=b&limit=50", headers=b_auth)
                    answers.append(("search", r.status_code, r.text[:200]))
            finally:
                stop.set()
                await asyncio.gather(*loops)
            assert [a for a in answers if not 200 <= a[1] < 300] == [], (answers, seen)
            # A's loops were answered (200, or 429 past its MAX_LISTS_PER_OWNER), nothing else.
            assert set(seen) <= {200, 429} and seen.get(200), seen
            assert seen.get(429), seen  # 8 loops > MAX_LISTS_PER_OWNER in progress at once


async def _pages(api: Api, query: str) -> list[list[Any]]:
    pages, cursor = [], ""
    while True:
        r = await api.http.get(f"/v1/tasks?{query}&cursor={cursor}", headers=api.auth())
        assert r.status_code == 200, r.text
        pages.append([t["name"] for t in r.json()["items"]])
        cursor = r.json()["next_cursor"]
        if not cursor:
            return pages


async def test_queue_default_is_a_bounded_scan_that_pages_on(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``queue=default`` reads at most LIST_SCAN_BUDGET records a request (it used to read on
    until the page was full, however many tasks of named queues lay between): pages come short,
    even empty, with a cursor, and following it finds every default-queue task once, in order."""
    want = []
    for i in range(12):
        body: dict[str, Any] = {"url": "https://example.com/x", "delay": 3600, "name": f"d{i}"}
        if i % 3:
            body["queue"] = "mail"
        else:
            want.append(f"d{i}")
        await api.create(body)
    want.reverse()
    assert await _pages(api, "queue=default&limit=500") == [want]
    # One record per partition per request:
    monkeypatch.setattr(c, "LIST_SCAN_BUDGET", 1, raising=False)
    pages = await _pages(api, "queue=default&limit=500")
    assert [n for p in pages for n in p] == want
    assert len(pages) > 1 and [] in pages


async def test_an_owners_lists_in_progress_are_capped_per_process(api: Api) -> None:
    """Past MAX_LISTS_PER_OWNER lists in progress an owner's next list answers 429 with
    Retry-After at once; another owner's list is not held back, and the slots come back."""
    hold = asyncio.Event()
    entered = asyncio.Event()
    from taskorch.store import Store

    real = Store.list_tasks
    busy = 0

    async def slow(self: Store, owner: str, **kw: Any) -> Any:
        nonlocal busy
        if owner == "alice":
            busy += 1
            if busy == SLOTS:
                entered.set()
            await hold.wait()
        return await real(self, owner, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Store, "list_tasks", slow)
        held = [
            asyncio.create_task(api.http.get("/v1/tasks", headers=api.auth())) for _ in range(SLOTS)
        ]
        try:
            await asyncio.wait_for(entered.wait(), 10)
            for path in ["/v1/schedules", "/v1/queues", "/v1/functions", "/v1/tasks?name=x"]:
                r = await asyncio.wait_for(api.http.get(path, headers=api.auth()), 10)
                assert r.status_code == 429, (path, r.text)
                assert r.json()["error"]["code"] == "too_many_requests"
                assert int(r.headers["retry-after"]) >= 1
            r = await api.http.get("/v1/orchestrations", headers=api.auth("bob"))
            assert r.status_code == 200, r.text
        finally:
            hold.set()
            answered = await asyncio.gather(*held)
        assert [r.status_code for r in answered] == [200] * len(held)
    r = await api.http.get("/v1/schedules", headers=api.auth())
    assert r.status_code == 200, r.text


async def test_a_search_over_one_partition_gets_the_whole_budget(api: Api) -> None:
    """An owner whose tasks are all in one named queue has them in one partition: the budget
    the other partitions leave unread goes to it (in LIST_SCAN_ROUNDS rounds), so a search pages
    through them LIST_SCAN_BUDGET at a time, not LIST_SCAN_BUDGET / partitions."""
    n = 3 * c.LIST_SCAN_BUDGET
    tasks = [
        {"url": "https://example.com/x", "delay": 3600, "name": f"t{i}", "queue": "bulk"}
        for i in range(n)
    ]
    tasks[0]["name"] = "zzz-oldest"
    r = await api.http.post("/v1/tasks/batch", json={"tasks": tasks}, headers=api.auth())
    assert r.status_code == 200, r.text
    pages = await _pages(api, "name=zzz&limit=500")
    assert [name for p in pages for name in p] == ["zzz-oldest"]
    assert len(pages) <= 4, len(pages)  # 3 * the budget, read a budget a page


async def test_a_schedules_tasks_by_status_are_a_bounded_scan(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``schedule_id=`` with ``status=`` reads at most LIST_SCAN_BUDGET of the schedule's tasks a
    request (it read up to 10,000): pages come short with a cursor, and following it finds every
    match once, latest first."""
    body = {"every": 1, "task": {"url": "https://example.com/s"}}
    r = await api.http.post("/v1/schedules", json=body, headers=api.auth())
    assert r.status_code == 201, r.text
    sid = r.json()["id"]

    async def made() -> list[str] | None:  # the first occurrences are made beside the create
        got = await _ids(api, f"schedule_id={sid}&status=scheduled")
        return got if len(got) >= 5 else None

    want = await until(made)
    assert want == sorted(want, reverse=True)
    monkeypatch.setattr(c, "LIST_SCAN_BUDGET", 2, raising=False)
    pages = await _id_pages(api, f"schedule_id={sid}&status=scheduled&limit=500")
    assert [i for p in pages for i in p][: len(want)] == want
    assert len(pages) >= len(want) // 2 and all(len(p) <= 2 for p in pages)
    assert await _ids(api, f"schedule_id={sid}&status=failed&limit=500") == []
    pages = await _id_pages(api, f"schedule_id={sid}&name=zzz&limit=500")
    assert len(pages) >= len(want) // 2 and all(p == [] for p in pages)  # read 2 at a time


async def _id_pages(api: Api, query: str) -> list[list[str]]:
    pages, cursor = [], ""
    while True:
        r = await api.http.get(f"/v1/tasks?{query}&cursor={cursor}", headers=api.auth())
        assert r.status_code == 200, r.text
        pages.append([t["id"] for t in r.json()["items"]])
        cursor = r.json()["next_cursor"]
        if not cursor:
            return pages


async def _ids(api: Api, query: str) -> list[str]:
    return [i for p in await _id_pages(api, query) for i in p]
