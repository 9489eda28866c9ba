"""The status page in headless Chromium, against the real API on a socket, real worker processes
and a real local target. Screenshots land in artifacts/screenshots/.

The orchestration and function tests skip themselves while their routes have not landed (an
unauthenticated GET answers 404 instead of 401) and run as soon as they have.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gzip
import json
import re
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import jwt
import pytest
from playwright.async_api import Browser, Page, Response, Route, async_playwright, expect

from taskorch import auth
from taskorch.models import TaskCreate
from taskorch.settings import Settings
from taskorch.store import Store, connect
from tests.conftest import ROOT, LiveServer, Target, WorkerProcs
from tests.helpers import free_port, live_api, until

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SHOTS = ROOT / "artifacts" / "screenshots"
WEB_FILES = ROOT / "taskorch" / "web"
USER, PASSWORD = "alice", "password123"
KB = 1000


@dataclasses.dataclass
class Web:
    """A browser pointed at one running API; collects uncaught page errors."""

    base: str
    settings: Settings
    browser: Browser
    errors: list[str] = dataclasses.field(default_factory=list)

    async def page(
        self, width: int = 1280, height: int = 900, token: str | None = None, **context_args: Any
    ) -> Page:
        context = await self.browser.new_context(
            viewport={"width": width, "height": height}, **context_args
        )
        if token:
            await context.add_init_script(
                f"sessionStorage.setItem('taskorch.token', {json.dumps(token)})"
            )
        page = await context.new_page()
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        return page

    def token(self, sub: str = USER) -> str:
        return auth.mint_token(self.settings, sub)

    def http(self) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.token()}"}
        return httpx.AsyncClient(base_url=self.base, headers=headers)


def _chromium() -> str:
    if not CHROMIUM.exists():
        pytest.fail("Chromium is missing: scripts/test installs it (apt-get install chromium)")
    return str(CHROMIUM)


@contextlib.asynccontextmanager
async def _browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def _add_user(redis_url: str) -> None:
    client = connect(redis_url)
    try:
        await auth.add_user(client, USER, PASSWORD)
    finally:
        await client.aclose()


@pytest.fixture
async def web(live_server: LiveServer, redis_url: str) -> AsyncIterator[Web]:
    await _add_user(redis_url)
    async with _browser() as browser:  # closed before live_server stops, so no stream lingers
        w = Web(live_server.url, live_server.settings, browser)
        yield w
    assert not w.errors, f"the page threw: {w.errors}"


@pytest.fixture
async def web_public(settings: Settings, redis_url: str) -> AsyncIterator[Web]:
    """Like ``web``, on a server whose TASKORCH_PUBLIC_URL is its own address, so that trigger
    URLs it hands out can be called from the page."""
    port = free_port()
    settings = dataclasses.replace(settings, public_url=f"http://127.0.0.1:{port}")
    async with live_api(settings, port):
        await _add_user(redis_url)
        async with _browser() as browser:
            w = Web(settings.public_url, settings, browser)
            yield w
        assert not w.errors, f"the page threw: {w.errors}"


async def skip_unless_route(base: str, path: str) -> None:
    """Skip while ``path`` is not served yet: unauthenticated, a route answers 401, none 404."""
    async with httpx.AsyncClient(base_url=base) as http:
        r = await http.get(path)
    if r.status_code == 404 and r.json()["error"]["code"] == "not_found":
        pytest.skip(f"{path} has not landed yet (GET without a token answers 404, not 401)")
    assert r.status_code == 401, r.text


@dataclasses.dataclass
class Held:
    """The first request a page sent to a route, held until released (see hold_first)."""

    task_id: str = ""
    sent: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    release: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)


async def hold_first(page: Page, pattern: str) -> Held:
    """Hold the page's first request to ``pattern`` (``**/v1/tasks/*/retry``) until
    ``release`` is set, noting its task id, so a test can change that task meanwhile; later
    requests go through."""
    held = Held()

    async def hold(route: Route) -> None:
        if not held.task_id:
            held.task_id = route.request.url.split("/")[-2]
            held.sent.set()
            await held.release.wait()
        await route.continue_()

    await page.route(pattern, hold)
    return held


async def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


async def sign_in(page: Page, base: str) -> None:
    await page.goto(base + "/")
    await page.get_by_label("Username").fill(USER)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#who")).to_have_text(f"Signed in as {USER}")
    await expect(page.locator("#live")).to_have_text("Live")


def expired_token(settings: Settings, sub: str = USER) -> str:
    """A token signed as ours whose time was up a minute ago (rather than one that lives a
    second, and a test that sleeps it out)."""
    assert settings.jwt_secret
    now = int(time.time())
    claims = {"sub": sub, "iat": now - 120, "exp": now - 60}
    return jwt.encode(claims, settings.jwt_secret, algorithm="HS256")


def error_at(page: Page, rel: str) -> Any:
    """The error shown next to the field whose path is ``rel``."""
    return page.locator(f'.field[data-rel="{rel}"] > .error')


def chip_count(page: Page, status: str) -> Any:
    return page.locator(f'.chip[data-status="{status}"] .count')


def task_row(page: Page, task_id: str) -> Any:
    return page.locator(f'table.tasks tr[data-id="{task_id}"]')


async def api_task(web: Web, body: dict[str, Any]) -> dict[str, Any]:
    async with web.http() as http:
        r = await http.post("/v1/tasks", json=body)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


async def api_get(web: Web, path: str) -> dict[str, Any]:
    async with web.http() as http:
        r = await http.get(path)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


# -- signing in ----------------------------------------------------------------------------------


async def test_sign_in_keeps_only_the_token_and_signs_out(web: Web) -> None:
    page = await web.page()
    await page.goto(web.base + "/")
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await page.get_by_label("Username").fill(USER)
    await page.get_by_label("Password").fill("wrong password")
    await page.get_by_role("button", name="Sign in").click()
    await expect(error_at(page, "password")).to_have_text("Wrong username or password.")
    await expect(page.get_by_label("Password")).to_have_attribute("aria-invalid", "true")

    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator("#who")).to_have_text("Signed in as alice")
    await expect(page.get_by_text("No tasks yet")).to_be_visible()
    stored = await page.evaluate("JSON.stringify([{...sessionStorage}, {...localStorage}])")
    session, local = json.loads(stored)
    assert set(session) == {"taskorch.token"} and session["taskorch.token"].count(".") == 2
    assert PASSWORD not in stored and local == {}
    await shot(page, "signed-in-empty")

    await page.reload()  # the tab keeps its session
    await expect(page.locator("#who")).to_have_text("Signed in as alice")

    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await expect(page.locator("#signin-note")).to_have_text("You are signed out.")
    assert await page.evaluate("sessionStorage.length") == 0
    await expect(page.locator("#nav")).to_be_hidden()

    # A pasted token works too; a bad one is refused beside the field.
    await page.get_by_label("Access token (JWT)").fill("not-a-token")
    await page.get_by_role("button", name="Use this token").click()
    await expect(error_at(page, "token")).to_contain_text("token")
    await page.get_by_label("Access token (JWT)").fill(web.token())
    await page.get_by_role("button", name="Use this token").click()
    await expect(page.locator("#who")).to_have_text("Signed in as alice")


async def test_an_expired_session_returns_to_sign_in(web: Web) -> None:
    page = await web.page(token=expired_token(web.settings))
    await page.goto(web.base + "/")
    await expect(page.locator("#signin-note")).to_have_text(
        "Your session has ended; sign in again."
    )
    await expect(page.get_by_label("Username")).to_be_focused()
    assert await page.evaluate("sessionStorage.length") == 0


# -- tasks ---------------------------------------------------------------------------------------


async def test_a_task_created_in_the_page_turns_succeeded_without_a_reload(
    web: Web, target: Target, workers: WorkerProcs
) -> None:
    workers.start()
    page = await web.page()
    await sign_in(page, web.base)
    await page.evaluate("window.notReloaded = true")

    await page.get_by_role("link", name="New task").click()
    await page.get_by_label("URL", exact=True).fill(target.url("/ok"))
    await page.get_by_label("When").select_option("delay")
    await page.get_by_label("Delay (s)").fill("2")
    await page.get_by_label("Payload (JSON)").fill('{"hello": "world"}')
    await page.get_by_role("button", name="Create task").click()

    await expect(page.locator(".status-line .badge")).to_have_text("scheduled")
    task_id = (await page.locator(".status-line code").text_content()) or ""
    assert task_id.startswith("tsk_")
    await expect(page.locator(".facts .rel").first).to_contain_text("in")  # due "in 2 sec."

    await page.get_by_role("link", name="← All tasks").click()
    row = task_row(page, task_id)
    await expect(row.locator(".badge")).to_have_text("scheduled")
    await shot(page, "task-scheduled")
    await expect(row.locator(".badge")).to_have_text("succeeded", timeout=10_000)
    assert await page.evaluate("window.notReloaded") is True
    await expect(row.locator("td").nth(4)).to_have_text("1 / 4")
    await expect(row.locator("td").nth(5)).to_contain_text("ms")
    await expect(chip_count(page, "succeeded")).to_have_text("1")
    await expect(page.locator(".chart figcaption")).to_contain_text("Last hour: 1 attempt;")
    await shot(page, "task-succeeded-list")

    # A task made elsewhere (here straight through the API) appears on top, live.
    later = await api_task(web, {"url": target.url("/ok"), "delay": 3600, "name": "from curl"})
    await expect(page.locator("table.tasks tbody tr").first).to_have_attribute(
        "data-id", later["id"]
    )
    await expect(chip_count(page, "scheduled")).to_have_text("1")
    assert await page.evaluate("window.notReloaded") is True

    await row.get_by_role("link").click()
    attempt = page.locator("table.attempts tbody tr")
    await expect(attempt).to_have_count(1)
    await expect(attempt.locator(".code")).to_have_text("200")
    await attempt.get_by_text("Response").click()
    await expect(attempt.locator("pre")).to_contain_text('"ok": true')
    await expect(page.get_by_role("button", name="Cancel task")).to_have_count(0)
    await expect(page.get_by_role("link", name="Modify")).to_have_count(0)
    await shot(page, "task-succeeded-detail")
    [call] = target.calls_to("/ok")
    assert json.loads(call.body) == {"hello": "world"}


async def test_modify_and_cancel_are_offered_only_while_allowed(web: Web, target: Target) -> None:
    markup = '<img src=x onerror="window.injected=1"><b>first</b>'
    first = await api_task(web, {"url": target.url("/ok"), "delay": 3600, "name": markup})
    second = await api_task(web, {"url": target.url("/ok"), "delay": 3600, "name": "second"})
    page = await web.page()
    await sign_in(page, web.base)
    await expect(page.locator("table.tasks tbody tr")).to_have_count(2)
    await expect(task_row(page, first["id"]).get_by_role("link")).to_have_text(markup)
    assert await page.evaluate("window.injected") is None  # shown as text, never as markup

    # Modify the first: a new name, URL and due time.
    await task_row(page, first["id"]).get_by_role("link").click()
    await page.get_by_role("link", name="Modify").click()
    await expect(page.get_by_label("URL", exact=True)).to_have_value(target.url("/ok"))
    await page.get_by_label("Name", exact=True).fill("renamed")
    await page.get_by_label("URL", exact=True).fill(target.url("/changed"))
    await page.get_by_label("When").select_option("delay")
    await page.get_by_label("Delay (s)").fill("7200")
    await shot(page, "task-modify-form")
    await page.get_by_role("button", name="Save changes").click()
    await expect(page.get_by_role("heading", name="renamed")).to_be_visible()
    await expect(page.locator(".facts")).to_contain_text(target.url("/changed"))
    modified = await api_get(web, f"/v1/tasks/{first['id']}")
    assert modified["name"] == "renamed" and modified["url"] == target.url("/changed")
    assert modified["run_at"] > first["run_at"]

    # Cancel the second, in two steps; afterwards neither action is offered.
    await page.get_by_role("link", name="← All tasks").click()
    await task_row(page, second["id"]).get_by_role("link").click()
    await page.get_by_role("button", name="Cancel task").click()
    await page.get_by_role("button", name="Yes, cancel task").click()
    await expect(page.locator(".status-line .badge")).to_have_text("cancelled")
    await expect(page.get_by_role("button", name="Cancel task")).to_have_count(0)
    await expect(page.get_by_role("link", name="Modify")).to_have_count(0)
    assert (await api_get(web, f"/v1/tasks/{second['id']}"))["status"] == "cancelled"
    await shot(page, "task-cancelled")

    # Asking for the edit form of a cancelled task says why not.
    await page.goto(f"{web.base}/#/tasks/{second['id']}/edit")
    await expect(page.get_by_text("The task is cancelled")).to_be_visible()

    # The list's filter shows only the cancelled one.
    await page.get_by_role("link", name="Tasks").click()
    await page.locator('.chip[data-status="cancelled"]').click()
    await expect(page.locator("table.tasks tbody tr")).to_have_count(1)
    await expect(task_row(page, second["id"])).to_be_visible()


async def test_errors_are_shown_next_to_their_fields(web: Web, target: Target) -> None:
    page = await web.page()
    await sign_in(page, web.base)
    posts: list[str] = []
    page.on("request", lambda r: r.method == "POST" and posts.append(r.url))
    await page.get_by_role("link", name="New task").click()
    await page.get_by_label("URL", exact=True).fill(target.url("/ok"))
    await page.get_by_label("Payload (JSON)").fill('{"broken": 1,')
    await page.get_by_role("button", name="Create task").click()

    payload_error = error_at(page, "payload")
    await expect(payload_error).to_contain_text("is not valid JSON")
    await expect(page.get_by_label("Payload (JSON)")).to_be_focused()
    await expect(page.get_by_label("Payload (JSON)")).to_have_attribute("aria-invalid", "true")
    await shot(page, "error-broken-payload")
    assert posts == [], "a broken payload must be caught before sending"

    # Errors only the API finds land beside their fields as well (422, one detail per field).
    await page.get_by_label("Payload (JSON)").fill('{"fixed": true}')
    await page.get_by_label("URL", exact=True).fill("ftp://example.com/file")
    await page.get_by_role("button", name="Create task").click()
    await expect(error_at(page, "url")).to_have_text("must be an http or https URL")
    await expect(payload_error).to_be_hidden()
    await expect(page.locator("#view form > .form-error")).to_contain_text("1 invalid field")
    await shot(page, "error-api-url")

    # One inside the folded retry policy unfolds it.
    await page.get_by_label("URL", exact=True).fill(target.url("/ok"))
    policy = page.get_by_text("Retry policy and timeout")
    await policy.click()
    await page.get_by_label("Retries").fill("1000")
    await policy.click()
    await expect(page.get_by_label("Retries")).to_be_hidden()
    await page.get_by_role("button", name="Create task").click()
    await expect(error_at(page, "retries")).to_contain_text("100")
    await expect(page.get_by_label("Retries")).to_be_visible()
    await expect(page.get_by_label("Retries")).to_be_focused()
    await expect(error_at(page, "url")).to_be_hidden()
    assert len(posts) == 2

    await page.get_by_label("URL", exact=True).fill(target.url("/ok"))
    await page.get_by_label("Retries").fill("2")
    await page.get_by_role("button", name="Create task").click()
    await expect(page.locator(".status-line .badge")).to_have_text("scheduled")


async def _transferred(page: Page, responses: list[Response]) -> tuple[int, list[str]]:
    total, lines = 0, []
    for r in responses:
        url = r.url.split("?access_token=")[0]  # no token in the report
        if "text/event-stream" in (r.headers.get("content-type") or ""):
            lines.append(f"{'-':>7} {url} (event stream, not counted)")
            continue
        # What went over the wire: the compressed body and the headers, as a browser counts.
        sizes = await r.request.sizes()
        size = sizes["responseBodySize"] + sizes["responseHeadersSize"]
        total += size
        lines.append(f"{size:7d} {url}")
    return total, lines


async def test_first_load_transfers_under_100_kb(web: Web) -> None:
    report = []
    # Signed out: the page and what it needs to show the sign-in form.
    page = await web.page()
    responses: list[Response] = []
    page.on("response", lambda r: responses.append(r))
    await page.goto(web.base + "/", wait_until="networkidle")
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    signed_out, lines = await _transferred(page, responses)
    report += ["signed out:", *lines, f"{signed_out:7d} total", ""]
    # Then signing in, up to the empty task list.
    before = len(responses)
    await page.get_by_label("Username").fill(USER)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_text("No tasks yet")).to_be_visible()
    await page.wait_for_timeout(300)
    signing_in, lines = await _transferred(page, responses[before:])
    report += ["signing in:", *lines, f"{signing_in:7d} total", ""]
    # A fresh tab that already holds a token: everything for the empty list in one load.
    page = await web.page(token=web.token())
    responses = []
    page.on("response", lambda r: responses.append(r))
    await page.goto(web.base + "/")
    await expect(page.get_by_text("No tasks yet")).to_be_visible()
    await page.wait_for_timeout(300)
    signed_in, lines = await _transferred(page, responses)
    report += ["signed in, empty list:", *lines, f"{signed_in:7d} total"]
    SHOTS.parent.mkdir(parents=True, exist_ok=True)
    (SHOTS.parent / "first-load.txt").write_text("\n".join(report) + "\n")
    assert signed_out + signing_in < 100 * KB, "\n".join(report)
    assert signed_in < 100 * KB, "\n".join(report)


def test_the_whole_page_is_under_100_kb() -> None:
    """Every file of the page, sections fetched only when opened included: under 100 KB as
    served (gzip, which the static files are sent with), and a reasonable size as written."""
    sizes = {str(p.relative_to(WEB_FILES)): p.stat().st_size for p in WEB_FILES.rglob("*.*")}
    gzipped = {name: len(gzip.compress((WEB_FILES / name).read_bytes())) for name in sizes}
    report = sorted(sizes.items(), key=lambda kv: -kv[1]), sum(gzipped.values())
    assert sum(gzipped.values()) < 100 * KB, report
    assert sum(sizes.values()) < 130 * KB, report


async def test_a_thousand_tasks_are_paged_and_filtering_stays_fast(
    web: Web, redis_url: str, target: Target
) -> None:
    client = connect(redis_url)
    store = Store(client)
    try:
        ids = []
        for chunk in range(10):
            made = await asyncio.gather(
                *(
                    store.create_task(
                        USER,
                        TaskCreate(
                            url=target.url("/ok"), delay=3600, name=f"bulk {chunk * 100 + i}"
                        ),
                    )
                    for i in range(100)
                )
            )
            ids += [task.id for task, _ in made]
        for task_id in ids[::100]:
            await store.cancel_task(USER, task_id)
    finally:
        await client.aclose()

    page = await web.page()
    await sign_in(page, web.base)
    rows = page.locator("table.tasks tbody tr")
    await expect(rows).to_have_count(50)
    await expect(page.locator(".pager")).to_contain_text("Showing 50 tasks.")
    # The counts are exact at once (GET /v1/stats), long before the list is read to the end.
    expected = {"all": "1000", "scheduled": "990", "cancelled": "10", "succeeded": "0"}
    for status, n in expected.items():
        await expect(chip_count(page, status)).to_have_text(n)

    async def click_until(selector: str, done: str) -> float:
        """Click ``selector`` in the page and time until ``done(rows)`` holds, in the page."""
        js = f"""async (selector) => {{
            const t0 = performance.now();
            document.querySelector(selector).click();
            const done = {done};
            while (!done(document.querySelectorAll("table.tasks tbody tr"))) {{
                await new Promise((resolve) => setTimeout(resolve, 5));
            }}
            return performance.now() - t0;
        }}"""
        return float(await page.evaluate(js, selector))

    more_ms = await click_until(".pager button", "(r) => r.length === 100")
    cancelled_ms = await click_until(
        '.chip[data-status="cancelled"]',
        "(r) => r.length === 10 && [...r].every((x) => x.dataset.status === 'cancelled')",
    )
    await expect(page.locator(".pager button")).to_be_hidden()
    await shot(page, "tasks-1000-cancelled")
    all_ms = await click_until('.chip[data-status="all"]', "(r) => r.length === 50")
    await shot(page, "tasks-1000")
    timings = f"load more {more_ms:.0f} ms, filter {cancelled_ms:.0f} ms, all {all_ms:.0f} ms"
    assert max(more_ms, cancelled_ms, all_ms) < 500, timings

    # Keep paging to the end: still one click per page, and the list says when it is complete.
    t0 = time.monotonic()
    for shown in range(100, 1001, 50):
        await page.locator(".pager button").click()
        await expect(rows).to_have_count(shown)
    await expect(page.locator(".pager")).to_contain_text("Showing 1000 tasks, all there are.")
    assert time.monotonic() - t0 < 20
    for status, n in expected.items():  # paging never changed them
        await expect(chip_count(page, status)).to_have_text(n)
    relative = await click_until('.chip[data-status="scheduled"]', "(r) => r.length === 50")
    assert relative < 500, relative

    # A change made elsewhere moves the counts live, without a reload.
    async with web.http() as http:
        r = await http.post(f"/v1/tasks/{ids[1]}/cancel")
    assert r.status_code == 200, r.text
    await expect(chip_count(page, "cancelled")).to_have_text("11")
    await expect(chip_count(page, "scheduled")).to_have_text("989")
    await expect(chip_count(page, "all")).to_have_text("1000")


async def test_phone_width_and_keyboard_only(web: Web, target: Target) -> None:
    await api_task(web, {"url": target.url("/a/rather/long/path/" + "x" * 60), "delay": 600})
    page = await web.page(width=390, height=844)
    await page.goto(web.base + "/")
    await expect(page.get_by_label("Username")).to_be_focused()
    await page.keyboard.type(USER)
    await page.keyboard.press("Tab")
    await page.keyboard.type(PASSWORD)
    await page.keyboard.press("Enter")
    await expect(page.locator("#who")).to_have_text("Signed in as alice")
    await expect(page.locator("table.tasks tbody tr")).to_have_count(1)
    await shot(page, "phone-tasks")
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390

    # Tab to "New task": the focused element is outlined, and Enter follows the link.
    for _ in range(30):
        await page.keyboard.press("Tab")
        if await page.evaluate("document.activeElement.textContent") == "New task":
            break
    else:
        raise AssertionError("Tab never reached New task")
    outline = await page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("none", ""), outline
    await page.keyboard.press("Enter")
    await expect(page.get_by_label("URL", exact=True)).to_be_focused()
    await page.keyboard.type(target.url("/ok"))
    await page.keyboard.press("Enter")  # submits the form
    await expect(page.locator(".status-line .badge")).to_be_visible()
    await shot(page, "phone-task-detail")
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390


# -- orchestrations --------------------------------------------------------------------------------


async def test_a_three_step_orchestration_advances_live(
    web: Web, target: Target, workers: WorkerProcs
) -> None:
    await skip_unless_route(web.base, "/v1/orchestrations")
    workers.start()
    page = await web.page()
    await sign_in(page, web.base)
    await page.get_by_role("link", name="Orchestrations").click()
    await page.get_by_role("link", name="New orchestration").click()
    await page.get_by_label("Name", exact=True).fill("three steps")
    await page.get_by_role("button", name="Add step").click()
    await page.get_by_role("button", name="Add step").click()
    steps = page.locator("fieldset.step-editor")
    await expect(steps).to_have_count(3)
    for i in range(3):
        await steps.nth(i).get_by_label("URL", exact=True).fill(target.url(f"/slow/0.8?step={i}"))
    # A bad step is refused by the API and the message lands in that step's URL field.
    second_url = steps.nth(1).get_by_label("URL", exact=True)
    await second_url.fill("ftp://example.com/step")
    await page.get_by_role("button", name="Create orchestration").click()
    await expect(steps.nth(1).locator('.field[data-rel="url"] > .error').first).to_have_text(
        "must be an http or https URL"
    )
    await expect(second_url).to_be_focused()
    await expect(steps.nth(0).locator('.field[data-rel="url"] > .error').first).to_be_hidden()
    await second_url.fill(target.url("/slow/0.8?step=1"))
    await page.get_by_label("Check a condition between steps").check()
    shared = page.locator(".optional").filter(has_text="Check a condition between steps")
    await shared.get_by_label("Check URL").fill(target.url("/ok"))
    await shot(page, "orchestration-form")
    await page.get_by_role("button", name="Create orchestration").click()

    await expect(page.get_by_role("heading", name="three steps")).to_be_visible()
    seen: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = await page.locator(".status-line > .badge").text_content()
        done = await page.locator(".status-line progress").get_attribute("value")
        if not seen or seen[-1] != f"{status} {done}":
            seen.append(f"{status} {done}")
            if status == "running" and done == "1":
                await shot(page, "orchestration-running")
        if status in ("succeeded", "failed", "stopped"):
            break
        await asyncio.sleep(0.05)
    assert seen[-1] == "succeeded 3", seen
    assert {"running 1", "running 2"} <= set(seen), f"never saw it move step by step: {seen}"
    items = page.locator("ol.steps li.step")
    await expect(items).to_have_count(3)
    for i in range(3):
        await expect(items.nth(i).locator(".step-head .badge")).to_have_text("succeeded")
    await expect(items.nth(0).locator(".step-check")).to_contain_text("1 attempt")
    await shot(page, "orchestration-succeeded")

    # The list's status filter carries exact counts.
    await page.get_by_role("link", name="← All orchestrations").click()
    status = page.get_by_label("Status")
    await expect(status.locator('option[value="succeeded"]')).to_have_text("succeeded (1)")
    await expect(status.locator('option[value=""]')).to_have_text("All (1)")


# -- functions -----------------------------------------------------------------------------------


async def test_a_python_function_is_built_and_invoked(
    web_public: Web, workers: WorkerProcs, tmp_path: Path
) -> None:
    web = web_public
    await skip_unless_route(web.base, "/v1/functions")
    workers.start(TASKORCH_PUBLIC_URL=web.base)
    source = tmp_path / "greet.py"
    source.write_text("def handler(event, context):\n    return {'hello': event['name']}\n")
    page = await web.page()
    await sign_in(page, web.base)
    await page.get_by_role("link", name="Functions").click()
    await page.get_by_role("link", name="New function").click()
    await page.get_by_label("Upload a file").set_input_files(str(source))
    await expect(page.get_by_label("Code")).to_have_value(source.read_text())
    await expect(page.get_by_label("Name", exact=True)).to_have_value("greet")
    await expect(page.get_by_label("Runtime")).to_have_value("python")
    await page.get_by_role("button", name="Create function").click()

    await expect(page.get_by_role("heading", name="greet")).to_be_visible()
    await expect(page.locator(".status-line .badge")).to_have_text("ready", timeout=60_000)
    url_box = page.get_by_label("Trigger URL")
    url = await url_box.input_value()
    assert url.startswith(web.base), url
    await page.get_by_role("button", name="Copy URL").click()
    await expect(page.get_by_text("Copied.")).to_be_visible()

    await page.get_by_label("Event (JSON)").fill('{"name": "web"')
    await page.get_by_role("button", name="Invoke").click()
    await expect(error_at(page, "event")).to_contain_text("is not valid JSON")
    await page.get_by_label("Event (JSON)").fill('{"name": "web"}')
    await page.get_by_role("button", name="Invoke").click()
    await expect(page.locator(".answer .code")).to_have_text("200")
    await expect(page.locator(".answer pre")).to_contain_text('"hello": "web"')
    await shot(page, "function-invoked")


# -- schedules -----------------------------------------------------------------------------------


def schedule_row(page: Page, name: str) -> Any:
    return page.locator("table.schedules tbody tr").filter(has_text=name)


async def test_a_schedule_made_in_the_page_shows_its_next_runs_and_pauses(
    web: Web, target: Target
) -> None:
    await skip_unless_route(web.base, "/v1/schedules")
    # The browser in Berlin, the schedule in New York: the page shows the runs in Berlin time.
    page = await web.page(timezone_id="Europe/Berlin", locale="en-GB")
    await sign_in(page, web.base)
    await page.get_by_role("link", name="Schedules").click()
    await expect(page.get_by_text("No schedules yet")).to_be_visible()
    await page.get_by_role("link", name="New schedule").click()
    await page.get_by_label("Name", exact=True).fill("morning report")
    await page.get_by_label("Cron").fill("30 25 * * 1-5")  # no hour 25: the API says so
    await page.get_by_label("Time zone").fill("America/New_York")
    await page.get_by_label("URL", exact=True).fill(target.url("/report"))
    await page.get_by_label("Payload (JSON)").fill('{"kind": "daily"}')
    await page.get_by_role("button", name="Create schedule").click()
    await expect(error_at(page, "cron")).to_be_visible()
    await expect(page.get_by_label("Cron")).to_be_focused()
    await shot(page, "schedule-form-error")
    await page.get_by_label("Cron").fill("30 9 * * 1-5")
    await page.get_by_role("button", name="Create schedule").click()

    row = schedule_row(page, "morning report")
    await expect(row.locator(".badge")).to_have_text("active")
    await expect(row).to_contain_text("30 9 * * 1-5")
    await expect(row).to_contain_text("America/New_York")
    [made] = (await api_get(web, "/v1/schedules"))["items"]
    assert made["name"] == "morning report" and made["timezone"] == "America/New_York"
    assert made["task"]["url"] == target.url("/report")
    assert made["task"]["payload"] == {"kind": "daily"}
    runs = made["next_runs"]
    assert len(runs) == 5
    first = row.locator("td.runs time").first
    await expect(first).to_have_attribute("datetime", runs[0])
    local = datetime.fromisoformat(runs[0]).astimezone(ZoneInfo("Europe/Berlin"))
    await expect(first).to_contain_text(local.strftime("%H:%M:%S"))
    await expect(first.locator(".rel")).to_have_text(re.compile(r"^\((in |tomorrow)"))  # ahead
    await row.get_by_text("4 more").click()
    shown = row.locator("td.runs time")
    await expect(shown).to_have_count(5)
    for i, run in enumerate(runs):
        await expect(shown.nth(i)).to_have_attribute("datetime", run)
    await expect(shown.nth(4)).to_be_visible()
    await shot(page, "schedules-list")

    # Pause and resume in the page; the API confirms each.
    await row.get_by_role("button", name="Pause").click()
    await expect(row.locator(".badge")).to_have_text("paused")
    assert (await api_get(web, f"/v1/schedules/{made['id']}"))["status"] == "paused"
    await expect(row.get_by_role("button", name="Resume")).to_be_focused()
    await shot(page, "schedule-paused")
    await row.get_by_role("button", name="Resume").click()
    await expect(row.locator(".badge")).to_have_text("active")
    assert (await api_get(web, f"/v1/schedules/{made['id']}"))["status"] == "active"

    # Delete, in two steps.
    await row.get_by_role("button", name="Delete").click()
    await row.get_by_role("button", name="Yes, delete").click()
    await expect(row).to_have_count(0)
    await expect(page.get_by_text("No schedules yet")).to_be_visible()
    async with web.http() as http:
        assert (await http.get(f"/v1/schedules/{made['id']}")).status_code == 404


async def test_an_every_schedule_s_tasks_show_up_live(
    web: Web, target: Target, workers: WorkerProcs
) -> None:
    await skip_unless_route(web.base, "/v1/schedules")
    workers.start()
    page = await web.page()
    await sign_in(page, web.base)
    await page.goto(web.base + "/#/schedules/new")
    await page.evaluate("window.notReloaded = true")
    await page.get_by_label("Name", exact=True).fill("heartbeat")
    await page.get_by_label("Repeat").select_option("every")
    await page.get_by_label("Every (s)").fill("1")
    await page.get_by_label("URL", exact=True).fill(target.url("/beat"))
    await page.get_by_role("button", name="Create schedule").click()

    row = schedule_row(page, "heartbeat")
    await expect(row).to_contain_text("every 1 s")
    [made] = (await api_get(web, "/v1/schedules"))["items"]
    assert made["every"] == 1 and made["task"]["url"] == target.url("/beat")
    last = row.locator("td").nth(4).get_by_role("link")
    await expect(last).to_have_text(re.compile(r"^tsk_"), timeout=10_000)
    seen = await last.text_content()
    await expect(last).not_to_have_text(seen or "", timeout=10_000)  # a later one, live
    assert await page.evaluate("window.notReloaded") is True
    await until(lambda: len(target.calls_to("/beat")) >= 2)
    await shot(page, "schedule-every-live")

    await last.click()
    await expect(page.locator(".facts")).to_contain_text(made["id"])
    await page.get_by_role("link", name="Schedules").click()
    await schedule_row(page, "heartbeat").get_by_role("button", name="Pause").click()
    await expect(schedule_row(page, "heartbeat").locator(".badge")).to_have_text("paused")


# -- queues --------------------------------------------------------------------------------------


def queue_row(page: Page, name: str) -> Any:
    return page.locator(f'table.queues tr[data-name="{name}"]')


def queue_count(page: Page, name: str, status: str) -> Any:
    return queue_row(page, name).locator(f'[data-status="{status}"] .count')


async def test_a_queue_is_set_up_paused_and_resumed_in_the_page(web: Web, target: Target) -> None:
    await skip_unless_route(web.base, "/v1/queues")
    page = await web.page()
    await sign_in(page, web.base)
    await page.evaluate("window.notReloaded = true")
    await page.get_by_role("link", name="Queues").click()
    await page.get_by_label("Queue name").fill("emails")
    await page.get_by_label("Rate (calls/s)").fill("5")
    await page.get_by_label("Max concurrent").fill("2")
    await page.get_by_role("button", name="Save queue").click()
    row = queue_row(page, "emails")
    await expect(row.locator("td").nth(1)).to_have_text("5/s")
    await expect(row.locator("td").nth(2)).to_have_text("2")
    settings = await api_get(web, "/v1/queues/emails")
    assert (settings["rate"], settings["max_concurrent"], settings["paused"]) == (5, 2, False)

    # Tasks put in the queue elsewhere show in its counts, live; the page's task form names it too.
    made = [
        await api_task(web, {"url": target.url("/ok"), "delay": 3600, "queue": "emails"})
        for _ in range(2)
    ]
    async with web.http() as http:
        assert (await http.post(f"/v1/tasks/{made[0]['id']}/cancel")).status_code == 200
    await expect(queue_count(page, "emails", "scheduled")).to_have_text("1")
    await expect(queue_count(page, "emails", "cancelled")).to_have_text("1")
    assert await page.evaluate("window.notReloaded") is True
    await page.get_by_role("link", name="Tasks").click()
    await page.get_by_role("link", name="New task").click()
    await page.get_by_label("Queue").fill("emails")
    await page.get_by_label("URL", exact=True).fill(target.url("/ok"))
    await page.get_by_label("When").select_option("delay")
    await page.get_by_label("Delay (s)").fill("3600")
    await page.get_by_role("button", name="Create task").click()
    await expect(page.locator(".facts")).to_contain_text("emails")
    await page.get_by_role("link", name="Queues").click()
    await expect(queue_count(page, "emails", "scheduled")).to_have_text("2")
    await shot(page, "queue-counts")

    await row.get_by_role("button", name="Pause").click()
    await expect(row.locator(".badge.s-paused")).to_have_text("paused")
    assert (await api_get(web, "/v1/queues/emails"))["paused"] is True
    await expect(row.get_by_role("button", name="Resume")).to_be_focused()
    await shot(page, "queue-paused")
    await row.get_by_role("button", name="Resume").click()
    await expect(row.locator(".badge.s-paused")).to_have_count(0)
    settings = await api_get(web, "/v1/queues/emails")
    assert (settings["rate"], settings["max_concurrent"], settings["paused"]) == (5, 2, False)

    # Edit fills the form; saving changes only what was changed.
    await row.get_by_role("button", name="Edit").click()
    await expect(page.get_by_label("Rate (calls/s)")).to_be_focused()
    await expect(page.get_by_label("Queue name")).to_have_value("emails")
    await page.get_by_label("Rate (calls/s)").fill("0.5")
    await page.get_by_role("button", name="Save queue").click()
    await expect(row.locator("td").nth(1)).to_have_text("0.5/s")
    settings = await api_get(web, "/v1/queues/emails")
    assert (settings["rate"], settings["max_concurrent"], settings["paused"]) == (0.5, 2, False)


async def test_redrive_failed_retries_every_failed_task_of_the_queue(
    web: Web, target: Target, workers: WorkerProcs
) -> None:
    await skip_unless_route(web.base, "/v1/queues")
    workers.start()
    async with web.http() as http:
        r = await http.put("/v1/queues/flaky", json={"paused": False})
        assert r.status_code == 200, r.text
    # The first call of each task answers 500; with no retries the task fails. A second is 200.
    # 30 of them: the page reads failed tasks 25 at a time, so the redrive takes two pages.
    body = {"url": target.url("/fail-then-ok/1"), "retries": 0}
    async with web.http() as http:
        r = await http.post("/v1/tasks/batch", json={"tasks": [{**body, "queue": "flaky"}] * 30})
        assert r.status_code == 200, r.text
    flaky = [item["task"]["id"] for item in r.json()["items"]]
    other, another = [(await api_task(web, {**body, "queue": "other"}))["id"] for _ in range(2)]

    async def failed(queue: str) -> int:
        return int((await api_get(web, f"/v1/queues/{queue}"))["counts"].get("failed", 0))

    async def all_failed() -> bool:
        return await failed("flaky") == 30 and await failed("other") == 2

    await until(all_failed, timeout_s=30)
    page = await web.page()
    await sign_in(page, web.base)
    await page.get_by_role("link", name="Queues").click()
    row = queue_row(page, "flaky")
    await expect(queue_count(page, "flaky", "failed")).to_have_text("30")

    # Hold the page's first retry; meanwhile someone else retries that task, so the page's
    # retry is refused (409) and the summary must say so. While it is held, the rest of the
    # first page goes on (progress 24 of 30) and the second page waits for it.
    held = await hold_first(page, "**/v1/tasks/*/retry")
    await row.get_by_role("button", name="Redrive failed (30)").click()
    await asyncio.wait_for(held.sent.wait(), 10)
    progress = row.locator(".redrive progress")
    await expect(row.locator(".redrive")).to_contain_text("Retried 24…")
    await expect(progress).to_have_attribute("value", "24")
    await expect(progress).to_have_attribute("max", "30")
    await shot(page, "queue-redrive-progress")
    async with web.http() as http:
        assert (await http.post(f"/v1/tasks/{held.task_id}/retry")).status_code == 200
    held.release.set()
    summary = row.locator(".redrive")
    await expect(summary).to_contain_text("Retried 29 failed tasks. 1 could not be retried")
    await expect(summary.locator(".error-text")).to_contain_text(held.task_id)
    await expect(queue_count(page, "flaky", "succeeded")).to_have_text("30", timeout=15_000)
    await expect(queue_count(page, "flaky", "failed")).to_have_count(0)
    await shot(page, "queue-redriven")
    for task_id in flaky:
        task = await api_get(web, f"/v1/tasks/{task_id}")
        assert task["status"] == "succeeded" and len(task["attempts"]) == 2, task
    for task_id in (other, another):  # another queue's
        assert (await api_get(web, f"/v1/tasks/{task_id}"))["status"] == "failed"

    # The tasks list shows each task's queue and offers retry on a failed row.
    await page.get_by_role("link", name="Tasks").click()
    other_row = task_row(page, other)
    await expect(other_row.locator("td").nth(6)).to_have_text("other")
    await expect(task_row(page, flaky[0]).locator("td").nth(6)).to_have_text("flaky")
    await expect(task_row(page, flaky[0]).get_by_role("button", name="Retry")).to_have_count(0)
    await other_row.get_by_role("button", name="Retry").click()
    await expect(other_row.locator(".badge")).to_have_text("succeeded", timeout=10_000)
    await expect(other_row.get_by_role("button", name="Retry")).to_have_count(0)
    await shot(page, "tasks-retried")

    # And in one failed task's own view.
    await task_row(page, another).get_by_role("link").click()
    await expect(page.locator(".status-line .badge")).to_have_text("failed")
    await page.get_by_role("button", name="Retry").click()
    await expect(page.locator(".status-line .badge")).to_have_text("succeeded", timeout=10_000)
    await expect(page.locator("table.attempts tbody tr")).to_have_count(2)
    await expect(page.get_by_role("button", name="Retry")).to_have_count(0)
    assert (await api_get(web, f"/v1/tasks/{another}"))["status"] == "succeeded"
