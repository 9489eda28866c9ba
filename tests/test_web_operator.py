"""The status page answers an operator's questions (issue #13), in headless Chromium against the
real API, worker and a local target: what is late (the hour's lateness from the server), what
failed and why, acting on many tasks at once, finding a task by name, orchestrations' steps
named and numbered as the API numbers them, and 10,000 tasks without the page bogging down.
Screenshots land in artifacts/screenshots/.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from playwright.async_api import Request, expect

from tests.conftest import LiveServer, Target, WorkerProcs, until
from tests.test_web import (
    KB,
    SHOTS,
    Web,
    _add_user,
    _browser,
    api_get,
    hold_first,
    shot,
    sign_in,
    task_row,
)

pytestmark = pytest.mark.browser


@pytest.fixture(name="web")
async def _web(live_server: LiveServer, redis_url: str) -> AsyncIterator[Web]:
    """As test_web's ``web``: a browser on the running API, failing the test if the page threw."""
    await _add_user(redis_url)
    async with _browser() as browser:
        w = Web(live_server.url, live_server.settings, browser)
        yield w
    assert not w.errors, f"the page threw: {w.errors}"


async def _batch(web: Web, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    async with web.http() as http:
        r = await http.post("/v1/tasks/batch", json={"tasks": bodies}, timeout=60)
    assert r.status_code == 200, r.text
    return [item["task"] for item in r.json()["items"]]


async def _orchestration(web: Web, body: dict[str, Any]) -> dict[str, Any]:
    async with web.http() as http:
        r = await http.post("/v1/orchestrations", json=body)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


async def test_failures_bulk_actions_search_and_the_hour_s_lateness(
    web: Web, target: Target, workers: WorkerProcs
) -> None:
    workers.start()
    # Three fail at their first call (500) and succeed when retried; three wait an hour.
    failing = await _batch(
        web,
        [
            {"url": target.url("/fail-then-ok/1"), "retries": 0, "name": f"job {i}"}
            for i in range(3)
        ],
    )
    waiting = await _batch(
        web, [{"url": target.url("/ok"), "delay": 3600, "name": f"later {i}"} for i in range(3)]
    )
    for t in failing:
        await until(lambda t=t: _status_is(web, t["id"], "failed"))
    page = await web.page()
    await sign_in(page, web.base)

    # The last error on each failed row.
    for t in failing:
        await expect(task_row(page, t["id"]).locator(".last-error")).to_have_text(
            "HTTP 500: not yet"
        )
    await expect(task_row(page, waiting[0]["id"]).locator(".last-error")).to_have_count(0)
    # The chart's figures come from the server: the 3 attempts, whatever the list shows.
    late = await api_get(web, "/v1/stats/lateness?minutes=60")
    assert late["total"]["count"] == 3
    caption = page.locator(".chart figcaption")
    await expect(caption).to_contain_text("Last hour: 3 attempts; lateness p50")
    await expect(page.locator(".chart rect.bar")).to_have_count(60)
    counts = await page.locator(".chart rect.bar").evaluate_all(
        "(bars) => bars.map((b) => Number(b.dataset.count))"
    )
    assert counts == [m["count"] for m in late["items"]], counts
    await shot(page, "tasks-last-error-and-lateness-chart")

    # Search by name, debounced: typing "later" letter by letter asks the API once or twice.
    asked: list[str] = []
    page.on("request", lambda r: "name=" in r.url and asked.append(r.url))
    await page.get_by_label("Search by name").press_sequentially("later", delay=40)
    rows = page.locator("table.tasks tbody tr")
    await expect(rows).to_have_count(3)
    for t in waiting:
        await expect(task_row(page, t["id"])).to_be_visible()
    assert 1 <= len(asked) <= 2 and asked[-1].endswith("name=later&limit=50"), asked
    await expect(caption).to_contain_text("Last hour: 3 attempts")  # not only what is shown
    await shot(page, "tasks-search")
    await page.get_by_label("Search by name").fill("")
    await expect(rows).to_have_count(6)

    # Bulk: tick everything; cancel applies to the waiting ones, retry to the failed ones.
    await page.get_by_label("Select every task shown").check()
    cancel = page.get_by_role("button", name="Cancel selected (3)")
    await expect(cancel).to_be_visible()
    await expect(page.get_by_role("button", name="Retry selected (3)")).to_be_visible()
    # Hold the first cancel; meanwhile it is cancelled elsewhere, so the page's is refused.
    held = await hold_first(page, "**/v1/tasks/*/cancel")
    await cancel.click()
    await asyncio.wait_for(held.sent.wait(), 10)
    await expect(page.locator(".bulk-out progress")).to_have_attribute("value", "2")
    await expect(page.locator(".bulk-out")).to_contain_text("Cancelling 2 of 3…")
    await shot(page, "tasks-bulk-progress")
    async with web.http() as http:
        assert (await http.post(f"/v1/tasks/{held.task_id}/cancel")).status_code == 200
    held.release.set()
    out = page.locator(".bulk-out")
    await expect(out).to_contain_text("Cancelled 2 of 3. 1 refused:")
    await expect(out.locator("li")).to_contain_text(f"{held.task_id}: ")
    await expect(out.locator("li")).to_contain_text("cancelled")
    await shot(page, "tasks-bulk-cancel-refusal")
    for t in waiting:
        assert (await api_get(web, f"/v1/tasks/{t['id']}"))["status"] == "cancelled"
        await expect(task_row(page, t["id"]).locator(".badge")).to_have_text("cancelled")

    # Retry the failed ones (ticked one by one this time): they succeed on their second call.
    await expect(page.locator(".bulk")).to_be_hidden()
    for t in failing:
        await task_row(page, t["id"]).locator("input.pick").check()
    await page.get_by_role("button", name="Retry selected (3)").click()
    await expect(out).to_have_text("Retried 3 of 3.")
    for t in failing:
        await expect(task_row(page, t["id"]).locator(".badge")).to_have_text(
            "succeeded", timeout=10_000
        )
    await expect(caption).to_contain_text("Last hour: 6 attempts", timeout=10_000)
    await shot(page, "tasks-bulk-retried")


async def _status_is(web: Web, task_id: str, status: str) -> bool:
    return (await api_get(web, f"/v1/tasks/{task_id}"))["status"] == status


async def test_orchestrations_name_their_steps_say_why_a_check_failed_and_can_be_modified(
    web: Web, target: Target, workers: WorkerProcs
) -> None:
    workers.start()
    # A check that answers JSON false stops "halts" after step 0; "fine" succeeds and never
    # needs its fallback; "later" waits and is modified in the page.
    step = {"url": target.url("/ok"), "retries": 0}
    halts = await _orchestration(
        web,
        {
            "name": "halts",
            "steps": [step, step],
            "condition": {"url": target.url("/json-false"), "retries": 1, "retry_delay": 0.1},
        },
    )
    fine = await _orchestration(
        web, {"name": "fine", "steps": [step, step], "fallback": {"url": target.url("/ok")}}
    )
    later = await _orchestration(web, {"name": "later", "delay": 3600, "steps": [step]})
    for o in (halts, fine):
        await until(lambda o=o: _orc_ended(web, o["id"]))
    halted = await api_get(web, f"/v1/orchestrations/{halts['id']}")
    assert halted["status"] == "stopped", halted
    finished = await api_get(web, f"/v1/orchestrations/{fine['id']}")
    assert finished["status"] == "succeeded" and finished["fallback"]["task_id"] is None

    page = await web.page()
    await sign_in(page, web.base)
    # Step tasks carry their orchestration's name and the API's 0-based step index.
    step0 = halted["steps"][0]["task_id"]
    await expect(task_row(page, step0).locator(".orc")).to_have_text("step 0 of halts")
    step1 = finished["steps"][1]["task_id"]
    await expect(task_row(page, step1).locator(".orc")).to_have_text("step 1 of fine")
    await shot(page, "tasks-step-of-orchestration")
    await task_row(page, step1).locator("td.task > a").click()
    await expect(page.locator(".facts .orc")).to_have_text("step 1 of fine")

    # The stopped one: steps numbered from 0 as the API's index; the check's two calls and why.
    await page.goto(f"{web.base}/#/orchestrations/{halts['id']}")
    items = page.locator("ol.steps li.step")
    await expect(items).to_have_count(2)
    await expect(items.nth(0).locator(".step-head strong")).to_have_text("Step 0")
    await expect(items.nth(1).locator(".step-head strong")).to_have_text("Step 1")
    assert [s["index"] for s in halted["steps"]] == [0, 1]
    reasons = items.nth(0).locator(".check-reason")
    await expect(reasons).to_have_count(2)
    await expect(reasons.nth(0)).to_have_text(
        "Check 1: HTTP 200: false (the check said not to go on)"
    )
    await expect(items.nth(1).locator(".step-head .badge")).to_have_text("not run")  # never will
    await shot(page, "orchestration-check-failed-reason")

    # The succeeded one's unused fallback: not run, not pending.
    await page.goto(f"{web.base}/#/orchestrations/{fine['id']}")
    await expect(page.locator(".fallback .badge")).to_have_text("not run")
    await expect(page.locator(".fallback")).not_to_contain_text("pending")
    await shot(page, "orchestration-fallback-not-run")

    # Modify a scheduled one: a new name and its steps replaced by two others.
    await page.goto(f"{web.base}/#/orchestrations/{later['id']}")
    await page.get_by_role("link", name="Modify").click()
    await expect(page.get_by_label("Name", exact=True)).to_have_value("later")
    await page.get_by_label("Name", exact=True).fill("later, changed")
    await page.get_by_label("Replace its steps and the check between them").check()
    await page.get_by_role("button", name="Add step").click()
    editors = page.locator("fieldset.step-editor")
    await expect(editors.nth(0).locator("legend")).to_have_text("Step 0")
    await expect(editors.nth(1).locator("legend")).to_have_text("Step 1")
    await editors.nth(0).get_by_label("URL", exact=True).fill(target.url("/a"))
    await editors.nth(1).get_by_label("URL", exact=True).fill("ftp://example.com/b")
    await page.get_by_role("button", name="Save changes").click()
    await expect(editors.nth(1).locator('.field[data-rel="url"] > .error').first).to_have_text(
        "must be an http or https URL"
    )
    await shot(page, "orchestration-modify-form")
    await editors.nth(1).get_by_label("URL", exact=True).fill(target.url("/b"))
    await page.get_by_role("button", name="Save changes").click()
    await expect(page.get_by_role("heading", name="later, changed")).to_be_visible()
    await expect(page.locator("ol.steps li.step")).to_have_count(2)
    changed = await api_get(web, f"/v1/orchestrations/{later['id']}")
    assert changed["name"] == "later, changed" and len(changed["steps"]) == 2
    assert changed["status"] == "scheduled" and changed["run_at"] == later["run_at"]
    # Once it is not scheduled any more, the page says why it cannot be modified.
    async with web.http() as http:
        assert (await http.post(f"/v1/orchestrations/{later['id']}/cancel")).status_code == 200
    await page.goto(f"{web.base}/#/orchestrations/{later['id']}/edit")
    await expect(page.get_by_text("The orchestration is cancelled")).to_be_visible()


async def _orc_ended(web: Web, orc_id: str) -> bool:
    o = await api_get(web, f"/v1/orchestrations/{orc_id}")
    return o["status"] not in ("scheduled", "running")


async def test_the_function_form_sends_a_schedule(web: Web) -> None:
    page = await web.page()
    await sign_in(page, web.base)
    sent: list[Request] = []
    page.on(
        "request",
        lambda r: r.method == "POST" and r.url.endswith("/v1/functions") and sent.append(r),
    )
    await page.goto(f"{web.base}/#/functions/new")
    await page.get_by_label("Name", exact=True).fill("nightly")
    await page.get_by_label("Code").fill("def handler(event, context):\n    return event\n")
    schedule = page.get_by_label("Schedule a call (JSON, optional)")
    await schedule.fill('{"delay": 3600')
    await page.get_by_role("button", name="Create function").click()
    await expect(page.locator('.field[data-rel="schedule"] > .error')).to_contain_text(
        "is not valid JSON"
    )
    assert sent == []
    await schedule.fill('{"delay": 3600, "payload": {"name": "cron"}}')
    await shot(page, "function-form-schedule")
    await page.get_by_role("button", name="Create function").click()
    await expect(page.locator(".status-line .badge")).to_be_visible()
    assert json.loads(sent[0].post_data or "")["schedule"] == {
        "delay": 3600,
        "payload": {"name": "cron"},
    }


# -- size and 10,000 tasks -----------------------------------------------------------------------

VIEWS = ("tasks", "orchestrations", "functions", "schedules", "queues")


async def test_the_page_transfers_under_100_kb_with_every_view_opened(web: Web) -> None:
    """What a browser transfers (compressed bodies and headers): the first load, then every view
    and its form opened once."""
    page = await web.page()
    seen: list[Request] = []
    page.on("requestfinished", lambda r: seen.append(r))
    await sign_in(page, web.base)
    for view in VIEWS:
        await page.goto(f"{web.base}/#/{view}")
        await expect(page.locator("#view h1")).to_be_visible()
        if view != "queues":
            await page.goto(f"{web.base}/#/{view}/new")
            await expect(page.locator("#view form")).to_be_visible()
    await page.wait_for_load_state("networkidle")
    total, lines = 0, []
    for r in seen:
        if "/v1/events" in r.url:
            continue
        sizes = await r.sizes()
        n = sizes["responseBodySize"] + sizes["responseHeadersSize"]
        total += n
        lines.append(f"{n:7d} {r.url}")
    report = "\n".join([*lines, f"{total:7d} total"])
    print(report)
    (SHOTS.parent / "every-view-transfer.txt").write_text(report + "\n")
    statics = [r for r in seen if "/static/" in r.url]
    for r in statics:
        response = await r.response()
        assert response and response.headers.get("content-encoding") == "gzip", r.url
    assert total < 100 * KB, report


async def test_ten_thousand_tasks_keep_the_page_responsive(web: Web, target: Target) -> None:
    n = 10_000  # 10 batches of 1,000: a few seconds, so the default run has the full count
    t0 = time.monotonic()
    for chunk in range(n // 1000):
        await _batch(
            web,
            [
                {"url": target.url("/ok"), "delay": 3600, "name": f"bulk {chunk * 1000 + i}"}
                for i in range(1000)
            ],
        )
    made_s = time.monotonic() - t0
    page = await web.page(token=web.token())
    t0 = time.monotonic()
    await page.goto(web.base + "/")
    rows = page.locator("table.tasks tbody tr")
    await expect(rows).to_have_count(50, timeout=30_000)
    await expect(page.locator('.chip[data-status="all"] .count')).to_have_text(
        str(n), timeout=30_000
    )
    first_s = time.monotonic() - t0
    await shot(page, "tasks-10000")

    t0 = time.monotonic()
    await page.get_by_label("Search by name").press_sequentially("bulk 999")
    await expect(rows).to_have_count(11 if n == 10_000 else 1, timeout=30_000)  # 999, 9990..9999
    search_s = time.monotonic() - t0
    await shot(page, "tasks-10000-search")

    switches = []
    for view in (*VIEWS[1:], "tasks"):
        t0 = time.monotonic()
        await page.get_by_role("link", name=view.capitalize(), exact=True).click()
        await expect(page.locator("#view h1")).to_have_text(view.capitalize(), timeout=30_000)
        switches.append(f"{view} {time.monotonic() - t0:.2f} s")
    await expect(rows).to_have_count(11 if n == 10_000 else 1, timeout=30_000)  # search kept
    print(
        f"{n} tasks made in {made_s:.1f} s; first view {first_s:.2f} s; "
        f"search {search_s:.2f} s; views: {', '.join(switches)}"
    )
