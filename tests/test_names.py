"""GET /v1/tasks?name=: a prefix filter on task names (issue #12), paged newest first."""

from __future__ import annotations

import pytest

from taskorch import constants as c
from tests.conftest import Api, until


async def _pages(api: Api, query: str) -> list[list[str]]:
    """Every page of ``GET /v1/tasks?<query>``, as lists of names, following next_cursor."""
    pages, cursor = [], ""
    while True:
        r = await api.http.get(f"/v1/tasks?{query}&cursor={cursor}", headers=api.auth())
        assert r.status_code == 200, r.text
        body = r.json()
        pages.append([t["name"] for t in body["items"]])
        cursor = body["next_cursor"]
        if not cursor:
            return pages


@pytest.fixture
def two_partitions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two partitions (set before the API first reads the layout): each then holds many of the
    owner's tasks, so that a small scan limit stops them at different places."""
    monkeypatch.setenv("TASKORCH_PARTITIONS", "2")


async def test_name_prefix_filter_pages_newest_first(
    two_partitions: None, api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = ["report-1", "rep", "other", None, "report-2", "Report-3", "report-4", None]
    for name in names * 3:
        await api.create({"url": "https://example.com/x", "delay": 3600, "name": name})
    await api.create({"url": "https://example.com/x", "delay": 3600, "name": "report-bob"}, "bob")
    want = ["report-4", "report-2", "report-1"] * 3
    pages = await _pages(api, "name=report&limit=500")
    assert pages == [want]
    pages = await _pages(api, "name=report&limit=4")
    assert [n for p in pages for n in p] == want and all(len(p) <= 4 for p in pages)
    assert await _pages(api, "name=rep&status=failed") == [[]]
    assert [n for p in await _pages(api, "name=rep&status=scheduled") for n in p] == (
        ["report-4", "report-2", "rep", "report-1"] * 3
    )
    # A scan limit far below the owner's tasks: pages come short (even empty) with a cursor,
    # and going on finds every match once, in order.
    monkeypatch.setattr(c, "LIST_SCAN_BUDGET", 4)  # 2 per partition
    pages = await _pages(api, "name=report-&limit=2")
    assert [n for p in pages for n in p] == want
    assert len(pages) > len(want) / 2
    r = await api.http.get("/v1/tasks?name=" + "x" * 201, headers=api.auth())
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "name"


async def test_filters_given_together_all_apply(api: Api) -> None:
    """queue= with name=, and schedule_id= with queue= or name=: every filter narrows the list
    (each list walks one index; none of the others may be dropped silently)."""
    for queue, name in [("mail", "a-1"), ("mail", "b-1"), ("mail", "a-2"), ("default", "a-3")]:
        await api.create(
            {"url": "https://example.com/x", "delay": 3600, "name": name, "queue": queue}
        )
    assert await _pages(api, "queue=mail&name=a") == [["a-2", "a-1"]]
    assert await _pages(api, "queue=default&name=a") == [["a-3"]]
    assert await _pages(api, "queue=mail&name=c") == [[]]
    body = {"every": 3600, "task": {"url": "https://example.com/s", "name": "sched-made"}}
    r = await api.http.post("/v1/schedules", json=body, headers=api.auth())
    assert r.status_code == 201, r.text
    sid = r.json()["id"]

    async def made_once() -> list[list[str]] | None:  # the first occurrence is made at once
        pages = await _pages(api, f"schedule_id={sid}")
        return pages if pages == [["sched-made"]] else None

    made = await until(made_once)
    assert await _pages(api, f"schedule_id={sid}&name=sched") == made
    assert await _pages(api, f"schedule_id={sid}&name=a") == [[]]
    assert await _pages(api, f"schedule_id={sid}&queue=mail") == [[]]
