"""The status page as a newcomer meets it (issue #19, items 15 and 17), in headless Chromium
against the real API, worker and a local target: signing in with ``taskorch dev``'s token, the
schedules table at common widths, the page when the API goes away and comes back, a bad token
in a person's words, times with their date, and a function's code and the schedules that call it.
Screenshots land in artifacts/screenshots/.
"""

from __future__ import annotations

from typing import Any

import pytest
from playwright.async_api import Page, expect

from tests import test_web
from tests.conftest import Target
from tests.test_web import (
    Web,
    schedule_row,
    shot,
    sign_in,
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
