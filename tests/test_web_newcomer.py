"""The status page as a newcomer meets it (issue #19, items 15 and 17), in headless Chromium
against the real API, worker and a local target: signing in with ``taskorch dev``'s token, the
schedules table at common widths, the page when the API goes away and comes back, a bad token
in a person's words, times with their date, and a function's code and the schedules that call it.
Screenshots land in artifacts/screenshots/.
"""

from __future__ import annotations

import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import jwt
import pytest
from playwright.async_api import Page, expect

from taskorch.settings import Settings
from tests import test_web
from tests.conftest import Target, WorkerProcs, free_port, until
from tests.live import serving, start_serve, stop_serve
from tests.test_web import (
    USER,
    Web,
    _add_user,
    _browser,
    api_get,
    api_task,
    error_at,
    expired_token,
    schedule_row,
    shot,
    sign_in,
    task_row,
)

pytestmark = pytest.mark.browser

# test_web's fixtures, under their own names: a browser on the running API (``web``), and on a
# server whose trigger URLs the page can call (``web_public``).
web = test_web.web
web_public = test_web.web_public


async def _schedule(web: Web, body: dict[str, Any]) -> dict[str, Any]:
    async with web.http() as http:
        r = await http.post("/v1/schedules", json=body)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


async def _inside(page: Page, box_selector: str, item: Any) -> None:
    """``item`` lies wholly inside the element at ``box_selector``, with nothing hidden by a
    scroll bar, and is the element a click at its centre reaches."""
    await item.scroll_into_view_if_needed()
    box = await page.locator(box_selector).bounding_box()
    got = await item.bounding_box()
    assert box and got, (box, got)
    assert (
        box["x"] - 0.5 <= got["x"] and got["x"] + got["width"] <= box["x"] + box["width"] + 0.5
    ), (
        box,
        got,
    )
    hit = await item.evaluate(
        """(el) => {
            const r = el.getBoundingClientRect();
            const at = document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2);
            return el === at || el.contains(at);
        }"""
    )
    assert hit, f"{await item.text_content()!r} is covered at its centre"
    lines = await item.evaluate(
        """(el) => {
            const range = document.createRange();
            range.selectNodeContents(el);
            return new Set([...range.getClientRects()].map((r) => Math.round(r.top))).size;
        }"""
    )
    assert lines == 1, f"{await item.text_content()!r} is broken over {lines} lines"


# -- item 15b: the schedules table fits its box --------------------------------------------------


async def test_the_schedules_table_keeps_its_buttons_inside_its_box(
    web: Web, target: Target
) -> None:
    long_url = target.url("/reports/" + "daily-summary-" * 4 + "?team=operations&format=json")
    await _schedule(
        web,
        {
            "name": "morning report for the operations team",
            "cron": "30 9 * * 1-5",
            "timezone": "America/New_York",
            "task": {"url": long_url},
        },
    )
    await _schedule(web, {"name": "heartbeat", "every": 3600, "task": {"url": target.url("/b")}})
    page = await web.page(width=1280, locale="en-GB", timezone_id="Europe/Berlin")
    await sign_in(page, web.base)
    await page.get_by_role("link", name="Schedules").click()
    rows = page.locator("table.schedules tbody tr")
    await expect(rows).to_have_count(2)
    for width in (1280, 1024, 390):
        await page.set_viewport_size({"width": width, "height": 900})
        row = schedule_row(page, "morning report")
        await row.get_by_text("4 more").click()  # the widest a row gets: every run shown
        # Nothing in the table's box is out of sight behind a horizontal scroll bar.
        wide, seen = await page.locator(".scroll").evaluate(
            "(el) => [el.scrollWidth, el.clientWidth]"
        )
        assert wide <= seen, f"at {width} px the table is {wide} px wide in a {seen} px box"
        assert await page.evaluate("document.documentElement.scrollWidth") <= width
        for i in range(2):
            for button in await rows.nth(i).locator(".actions button").all():
                await _inside(page, ".scroll", button)
        # A half-done delete is the widest the actions get.
        await row.get_by_role("button", name="Delete").click()
        for name in ("Yes, delete", "Keep it"):
            await _inside(page, ".scroll", row.get_by_role("button", name=name))
        await shot(page, f"schedules-{width}px")
        await row.get_by_role("button", name="Keep it").click()
        await row.get_by_text("4 more").click()
    # And they work where they are: pause, then resume.
    row = schedule_row(page, "morning report")
    await row.get_by_role("button", name="Pause").click()
    await expect(row.locator(".badge")).to_have_text("paused")
    await row.get_by_role("button", name="Resume").click()
    await expect(row.locator(".badge")).to_have_text("active")


# -- items 15a and 15d: the token sign-in, and tokens refused in a person's words -----------------


async def test_the_token_sign_in_is_in_sight_and_refusals_read_as_sentences(web: Web) -> None:
    page = await web.page()
    await page.goto(web.base + "/")
    box = page.get_by_label("Access token (JWT)")
    await expect(box).to_be_visible()  # nothing to open first
    hint = page.locator("#token-hint")
    await expect(hint).to_contain_text("Printed by taskorch dev")
    await expect(hint).to_contain_text("taskorch token --sub NAME")
    await expect(box).to_have_attribute("aria-describedby", re.compile("token-hint"))
    await shot(page, "sign-in-with-a-token")

    other_secret = jwt.encode(
        {"sub": USER, "iat": int(time.time()), "exp": int(time.time()) + 600},
        "another-service-s-secret-of-32-bytes-or-more",
        algorithm="HS256",
    )
    refused = {
        "not-a-token": "it is not a whole token",  # what the tester pasted
        "abc.def.ghi": "it is not a whole token",  # three parts, but not a token: the API says so
        other_secret: "signed with another secret",
        expired_token(web.settings): "That token has expired",
    }
    use = page.get_by_role("button", name="Use this token")
    for token, words in refused.items():
        await box.fill(token)
        await use.click()
        shown = error_at(page, "token")
        await expect(shown).to_contain_text(words)
        await expect(shown).to_contain_text(
            re.compile(r"^That token (is not valid \(|has expired)")
        )
        text = await page.locator("#token-form").inner_text()
        for jargon in ("segments", "padding", "Signature verification", "Invalid"):
            assert jargon not in text, text
    await shot(page, "sign-in-token-refused")

    # The token as a terminal prints it: after "Bearer ", broken over two lines.
    token = web.token()
    await box.fill(f"Bearer {token[:40]}\n{token[40:]}\n")
    await use.click()
    await expect(page.locator("#who")).to_have_text(f"Signed in as {USER}")


# -- item 15f: times show their date --------------------------------------------------------------


async def test_every_time_shows_its_date_in_the_browser_s_language(
    web: Web, target: Target
) -> None:
    task = await api_task(web, {"url": target.url("/ok"), "delay": 600, "name": "soon"})
    page = await web.page(locale="en-GB", timezone_id="Asia/Tokyo")
    await sign_in(page, web.base)

    def as_shown(iso: str) -> str:  # en-GB's medium date and time, in the browser's zone
        d = datetime.fromisoformat(iso).astimezone(ZoneInfo("Asia/Tokyo"))
        return f"{d.day} {d:%b} {d.year}, {d:%H:%M:%S}"

    due = task_row(page, task["id"]).locator("time")
    await expect(due).to_contain_text(as_shown(task["run_at"]))  # today's or not
    await task_row(page, task["id"]).get_by_role("link", name="soon").click()
    created = page.locator("dl.facts dt:text-is('Created') + dd time")
    await expect(created).to_contain_text(as_shown(task["created_at"]))
    await shot(page, "task-times-with-dates")


# -- item 15c: the page when the API goes away, and when it is back -------------------------------


async def test_the_page_says_offline_when_its_server_stops_and_recovers(
    settings: Settings, redis_url: str, target: Target, tmp_path: Path
) -> None:
    port = free_port()  # the same address after the restart, as a restarted server has
    await _add_user(redis_url)
    first = start_serve(redis_url, tmp_path / "first.log", port=port)
    try:
        async with _browser() as browser:
            web = Web(first.url, settings, browser)
            made = await _schedule(
                web, {"name": "nightly", "cron": "0 3 * * *", "task": {"url": target.url("/n")}}
            )
            page = await web.page()
            await sign_in(page, web.base)
            await page.get_by_role("link", name="Schedules").click()
            row = schedule_row(page, "nightly")
            await expect(row.locator(".badge")).to_have_text("active")

            # Requests lost on the way while the stream stays open (a stream can outlive its
            # server's listener): the failed click says so, and so does the badge, until the
            # service answers again.
            live = page.locator("#live")
            await page.route("**/v1/schedules/*/pause", lambda route: route.abort())
            await row.get_by_role("button", name="Pause").click()
            await expect(page.get_by_role("alert")).to_contain_text("cannot be reached")
            await expect(live).to_have_text("Offline, reconnecting…")
            await page.unroute("**/v1/schedules/*/pause")
            await expect(live).to_have_text("Live")
            await expect(row.locator(".badge")).to_have_text("active")

            # The server stops (taskorch dev's Ctrl-C): the badge says so, not in green.
            stop_serve(first.proc)
            await expect(live).to_have_text("Offline, reconnecting…")
            dot = await live.evaluate("(el) => getComputedStyle(el, '::before').color")
            assert dot not in ("rgb(110, 231, 135)",), dot  # the green of "Live"
            await shot(page, "offline-badge")
            # A click that cannot reach the service says why, where the user looks.
            await row.get_by_role("button", name="Pause").click()
            await expect(page.get_by_role("alert")).to_contain_text("cannot be reached")
            await page.get_by_role("link", name="Tasks").click()
            await expect(page.get_by_role("alert")).to_contain_text("cannot be reached")
            await page.get_by_role("link", name="Schedules").click()
            await expect(page.get_by_role("alert")).to_contain_text("cannot be reached")
            await shot(page, "offline-click")

            # Meanwhile another server pauses the schedule; the page was away and missed it.
            with serving(redis_url, tmp_path / "other.log") as other:
                async with httpx.AsyncClient(base_url=other.url) as http:
                    r = await http.post(
                        f"/v1/schedules/{made['id']}/pause",
                        headers={"Authorization": f"Bearer {web.token()}"},
                    )
                    assert r.status_code == 200, r.text

            # Back on its address: live again, and the view shows what happened meanwhile.
            second = start_serve(redis_url, tmp_path / "second.log", port=port)
            try:
                await expect(live).to_have_text("Live", timeout=15_000)
                await expect(row.locator(".badge")).to_have_text("paused")
                await expect(page.get_by_role("alert")).to_be_hidden()
                await row.get_by_role("button", name="Resume").click()
                await expect(row.locator(".badge")).to_have_text("active")
                await shot(page, "offline-recovered")
            finally:
                stop_serve(second.proc)
        assert not web.errors, web.errors
    finally:
        stop_serve(first.proc)


# -- item 17: a function's code, and what calls it ------------------------------------------------

SOURCE = """def handler(event, context):
    # greets whoever the schedule names
    return {"hello": event.get("name", "world")}
"""


async def test_the_function_page_shows_its_code_and_the_schedules_that_call_it(
    web_public: Web, workers: WorkerProcs
) -> None:
    web = web_public
    workers.start(TASKORCH_PUBLIC_URL=web.base)
    async with web.http() as http:
        r = await http.post(
            "/v1/functions",
            json={
                "name": "greet",
                "runtime": "python",
                "code": SOURCE,
                "schedule": {"delay": 3600},
            },
        )
        assert r.status_code == 201, r.text
        fid = r.json()["id"]
    fn = await until(lambda: _ready(web, fid), timeout_s=90)
    # A schedule that calls it every second, and one that calls something else.
    calls = await _schedule(
        web,
        {
            "name": "greet the team",
            "every": 1,
            "task": {"url": fn["url"], "payload": {"name": "team"}},
        },
    )
    await _schedule(
        web, {"name": "unrelated", "every": 3600, "task": {"url": web.base + "/healthz"}}
    )

    page = await web.page()
    await sign_in(page, web.base)
    await page.goto(f"{web.base}/#/functions/{fid}")
    await expect(page.get_by_role("heading", name="greet", exact=True)).to_be_visible()
    code = page.get_by_label("The function's code")
    await expect(code).to_have_text(SOURCE)
    callers = page.locator("ul.callers li")
    await expect(callers).to_have_count(2)
    await expect(callers.nth(0).get_by_role("link")).to_have_text(fn["task_id"])
    link = callers.nth(1).get_by_role("link", name="greet the team")
    await expect(callers.nth(1)).to_contain_text("every 1 s")
    await expect(page.get_by_text("unrelated")).to_have_count(0)
    await shot(page, "function-code-and-callers")

    # The link leads to that schedule, picked out in the list; its tasks call the function.
    await link.click()
    row = page.locator(f'table.schedules tr[data-id="{calls["id"]}"]')
    await expect(row).to_have_class(re.compile(r"\bpicked\b"))
    await expect(row).to_be_in_viewport()
    last = row.locator("td").nth(4).get_by_role("link")
    await expect(last).to_have_text(re.compile(r"^tsk_"), timeout=15_000)
    await last.click()
    await expect(page.locator(".status-line .badge")).to_have_text("succeeded", timeout=15_000)
    await expect(page.locator(".attempts, table")).to_contain_text("200")
    # And the task's schedule link leads back to the schedule, picked out.
    await page.locator("dl.facts").get_by_role("link", name=calls["id"]).click()
    await expect(row).to_have_class(re.compile(r"\bpicked\b"))
    await shot(page, "schedule-picked-out")


async def _ready(web: Web, fid: str) -> dict[str, Any] | None:
    fn = await api_get(web, f"/v1/functions/{fid}")
    assert fn["status"] != "failed", fn
    return fn if fn["status"] == "ready" else None
