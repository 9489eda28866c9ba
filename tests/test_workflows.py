"""Orchestrations as workflows (issue #21) against the real worker: data between steps
(references, kept outputs), a check's goto with max_steps_run, retry from the failed step,
durable sleeps, and the kinds refused at create because they do not run yet."""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import Api, WorkerProcs


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: Any
    query: dict[str, str]
    at: float


@dataclass
class Flow:
    """A target whose answers each test scripts by path: ``/json`` answers what ``answers``
    holds for the path, ``/fail-once`` a 500 on its first call, ``/goto/<name>`` a check's goto,
    ``/big/<n>`` n bytes of text."""

    server: TestServer
    seen: list[Seen] = field(default_factory=list)
    answers: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    def to(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path == path]


@pytest.fixture
async def flow() -> AsyncIterator[Flow]:
    f: Flow

    async def handle(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = msgspec.json.decode(raw) if raw else None
        f.seen.append(
            Seen(request.path, dict(request.headers), body, dict(request.query), time.time())
        )
        f.counts[request.path] += 1
        parts = request.path.strip("/").split("/")
        if request.path in f.answers:
            return web.json_response(f.answers[request.path])
        if parts[0] == "fail-once" and f.counts[request.path] == 1:
            return web.Response(status=500, text="not yet")
        if parts[0] == "goto":
            return web.json_response({"goto": parts[1]})
        if parts[0] == "big":
            return web.Response(text="x" * int(parts[1]), content_type="text/plain")
        return web.json_response({"ok": True, "path": request.path, "n": f.counts[request.path]})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    f = Flow(server)
    try:
        yield f
    finally:
        await server.close()


async def create(api: Api, body: dict[str, Any]) -> dict[str, Any]:
    r = await api.http.post("/v1/orchestrations", json=body, headers=api.auth())
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


async def wait(api: Api, oid: str, status: str, timeout_s: float = 20) -> dict[str, Any]:
    return await api.wait_status(oid, status, timeout_s=timeout_s, kind="orchestrations")


async def test_references_carry_input_and_earlier_outputs(
    api: Api, flow: Flow, workers: WorkerProcs
) -> None:
    workers.start()
    flow.answers["/charge"] = {"id": "ch_1", "amount": 42, "lines": [{"sku": "a"}]}
    orc = await create(
        api,
        {
            "input": {"customer": {"id": 7, "email": "a@example.com"}, "items": [1, 2]},
            "steps": [
                {"name": "charge", "url": flow.url("/charge"), "payload": "{{ input.items }}"},
                {
                    "name": "ship",
                    "url": flow.url("/ship") + "?charge={{ steps.charge.output.id }}",
                    "headers": {"X-Customer": "c-{{ input.customer.id }}"},
                    "payload": {
                        "amount": "{{ steps.charge.output.amount }}",
                        "code": "{{ steps.0.status_code }}",
                        "sku": "{{ steps.charge.output.lines[0].sku }}",
                        "line": "{{ steps.0.output.lines[0] }}",
                        "note": "charged {{ steps.charge.output.amount }} to {{ input.customer }}",
                        "who": "{{ orchestration_id }}",
                        "mustache": "{{ name }} stays as it is",
                    },
                },
            ],
        },
    )
    assert orc["input"] == {"customer": {"id": 7, "email": "a@example.com"}, "items": [1, 2]}
    assert [(s["name"], s["kind"], s["output"]) for s in orc["steps"]] == [
        ("charge", "task", None),
        ("ship", "task", None),
    ]
    done = await wait(api, orc["id"], "succeeded")
    assert flow.to("/charge")[0].body == [1, 2]  # a whole reference keeps its JSON type
    ship = flow.to("/ship")[0]
    assert ship.query == {"charge": "ch_1"}
    assert ship.headers["X-Customer"] == "c-7"
    assert ship.body == {
        "amount": 42,  # a number stays a number
        "code": 200,
        "sku": "a",
        "line": {"sku": "a"},
        "note": 'charged 42 to {"id":7,"email":"a@example.com"}',
        "who": orc["id"],
        "mustache": "{{ name }} stays as it is",
    }
    charge, shipped = done["steps"]
    assert charge["output"] == {"id": "ch_1", "amount": 42, "lines": [{"sku": "a"}]}
    assert charge["output_truncated"] is False
    assert shipped["output"] == {"ok": True, "path": "/ship", "n": 1}
    for s in done["steps"]:
        assert s["started_at"] <= s["finished_at"] and s["error"] is None
    # what /v1/tasks shows is what was sent
    task = await api.get(shipped["task_id"])
    assert task["url"] == flow.url("/ship?charge=ch_1") and task["payload"]["amount"] == 42


async def test_a_missing_reference_fails_the_step_with_no_call(
    api: Api, flow: Flow, workers: WorkerProcs
) -> None:
    workers.start()
    orc = await create(
        api,
        {
            "input": {"order": 1},
            "steps": [
                {"name": "charge", "url": flow.url("/charge")},
                {"url": flow.url("/ship"), "payload": {"id": "{{ steps.charge.output.nope }}"}},
                {"url": flow.url("/never")},
            ],
            "fallback": {"url": flow.url("/fallback"), "payload": "{{ input }}"},
        },
    )
    done = await wait(api, orc["id"], "failed")
    assert flow.to("/ship") == [] and flow.to("/never") == []
    assert done["error"]["code"] == "reference_missing"
    step = done["steps"][1]
    assert step["status"] == "failed" and step["task_id"] is None
    assert step["error"]["field"] == "payload.id"
    assert step["error"]["path"] == "steps.charge.output.nope"
    assert "has no .nope" in step["error"]["message"]
    assert done["steps"][2]["status"] == "pending"
    fb = await api.wait_status(done["fallback"]["task_id"], "succeeded")
    assert fb["payload"] == {"order": 1}  # the fallback's references resolved too
    assert [s.body for s in flow.to("/fallback")] == [{"order": 1}]


async def test_a_long_answer_is_kept_truncated_and_text_stays_text(
    api: Api, flow: Flow, workers: WorkerProcs
) -> None:
    workers.start()
    orc = await create(
        api,
        {"steps": [{"url": flow.url("/big/70000")}, {"url": flow.url("/big/5")}]},
    )
    done = await wait(api, orc["id"], "succeeded")
    big, small = done["steps"]
    assert big["output_truncated"] is True and big["output"] == "x" * 64 * 1024
    assert small["output"] == "xxxxx" and small["output_truncated"] is False


async def test_create_checks_references_and_refuses_kinds_not_built(api: Api) -> None:
    steps = [
        {"name": "a", "url": "https://example.com"},
        {"url": "https://example.com", "payload": {"x": ["{{ steps.nope.output }}"]}},
        {"url": "https://example.com", "headers": {"X-A": "{{ input.[ }}"}},
        {"name": "a", "url": "https://example.com"},
    ]
    r = await api.http.post("/v1/orchestrations", json={"steps": steps}, headers=api.auth())
    assert r.status_code == 422, r.text
    fields = {d["field"] for d in r.json()["error"]["details"]}
    assert {"steps[1].payload.x[0]", "steps[2].headers.X-A", "steps[3].name"} <= fields
    for kind in (
        {"parallel": [{"url": "https://e.com"}, {"url": "https://e.com"}]},
        {"map": {"items": [1], "task": {"url": "https://e.com"}}},
        {"wait_for_event": "shipped"},
    ):
        body = {"steps": [{"url": "https://e.com"}, kind]}
        r = await api.http.post("/v1/orchestrations", json=body, headers=api.auth())
        assert r.status_code == 422, r.text
        [detail] = r.json()["error"]["details"]
        assert detail["field"] == "steps[1]"
        assert "not available yet" in detail["message"] and next(iter(kind)) in detail["message"]
    bad = {"steps": [{"url": "https://e.com"}], "max_steps_run": 0}
    r = await api.http.post("/v1/orchestrations", json=bad, headers=api.auth())
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "max_steps_run"


async def test_goto_loops_until_max_steps_run(api: Api, flow: Flow, workers: WorkerProcs) -> None:
    workers.start()
    orc = await create(
        api,
        {
            "steps": [
                {"name": "a", "url": flow.url("/a")},
                {"name": "b", "url": flow.url("/b")},
                {"name": "c", "url": flow.url("/c"), "condition": {"url": flow.url("/goto/a")}},
                {"name": "d", "url": flow.url("/d")},
            ],
            "condition": {"url": flow.url("/check")},
            "max_steps_run": 7,
            "fallback": {"url": flow.url("/fallback")},
        },
    )
    done = await wait(api, orc["id"], "failed")
    calls = [s.path for s in flow.seen if s.path in ("/a", "/b", "/c", "/d")]
    assert calls == ["/a", "/b", "/c", "/a", "/b", "/c", "/a"]  # exactly 7 step calls
    assert done["error"]["code"] == "step_limit" and done["current_step"] == 1
    assert done["steps"][1]["status"] == "failed" and done["steps"][1]["error"]["code"] == (
        "step_limit"
    )
    await api.wait_status(done["fallback"]["task_id"], "succeeded")
    assert len(flow.to("/fallback")) == 1


async def test_goto_to_an_unknown_step_fails_the_check(
    api: Api, flow: Flow, workers: WorkerProcs
) -> None:
    workers.start()
    orc = await create(
        api,
        {
            "steps": [{"url": flow.url("/a")}, {"url": flow.url("/b")}],
            "condition": {"url": flow.url("/goto/nowhere")},
        },
    )
    done = await wait(api, orc["id"], "stopped")
    [attempt] = done["steps"][0]["condition"]["attempts"]
    assert attempt["passed"] is False and "names no step" in attempt["error"]
    assert flow.to("/b") == []


async def test_retry_runs_again_from_the_failed_step(
    api: Api, flow: Flow, workers: WorkerProcs
) -> None:
    workers.start()
    flow.answers["/a"] = {"token": "t-1"}
    orc = await create(
        api,
        {
            "steps": [
                {"name": "a", "url": flow.url("/a")},
                {
                    "name": "b",
                    "url": flow.url("/fail-once/b"),
                    "retries": 0,
                    "payload": {"t": "{{ steps.a.output.token }}"},
                },
                {"url": flow.url("/c"), "payload": "{{ steps.b.output.n }}"},
            ],
            "fallback": {"url": flow.url("/fallback")},
        },
    )
    failed = await wait(api, orc["id"], "failed")
    assert failed["steps"][1]["status"] == "failed" and failed["current_step"] == 1
    r = await api.http.post(f"/v1/orchestrations/{orc['id']}/retry", headers=api.auth())
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "running" and r.json()["finished_at"] is None
    done = await wait(api, orc["id"], "succeeded")
    assert len(flow.to("/a")) == 1  # the step before the failed one is not called again
    assert [s.body for s in flow.to("/fail-once/b")] == [{"t": "t-1"}, {"t": "t-1"}]
    assert [s.body for s in flow.to("/c")] == [2]
    assert done["steps"][0]["output"] == {"token": "t-1"}  # earlier outputs kept
    assert done["fallback"]["task_id"] is None or done["fallback"]["status"] != "pending"
    r = await api.http.post(f"/v1/orchestrations/{orc['id']}/retry", headers=api.auth())
    assert r.status_code == 409 and "succeeded" in r.json()["error"]["message"]
    r = await api.http.post("/v1/orchestrations/orc_nope/retry", headers=api.auth())
    assert r.status_code == 404


async def test_retry_of_a_stopped_run_checks_again(
    api: Api, flow: Flow, workers: WorkerProcs
) -> None:
    workers.start()
    orc = await create(
        api,
        {
            "steps": [{"url": flow.url("/a")}, {"url": flow.url("/b")}],
            "condition": {"url": flow.url("/fail-once/check")},
        },
    )
    await wait(api, orc["id"], "stopped")
    r = await api.http.post(f"/v1/orchestrations/{orc['id']}/retry", headers=api.auth())
    assert r.status_code == 200, r.text
    await wait(api, orc["id"], "succeeded")
    assert len(flow.to("/a")) == 1 and len(flow.to("/b")) == 1
    assert len(flow.to("/fail-once/check")) == 2


def _ms(ts: str) -> float:
    return dt.datetime.fromisoformat(ts).timestamp() * 1000


async def until_status(api: Api, oid: str, status: str) -> dict[str, Any]:
    """The orchestration as soon as it is ``status`` (polled fast: a sleep is short)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        r = await api.http.get(f"/v1/orchestrations/{oid}", headers=api.auth())
        if r.json()["status"] == status:
            return r.json()  # type: ignore[no-any-return]
        await asyncio.sleep(0.02)
    raise AssertionError(f"{oid} never became {status}: {r.json()['status']}")


async def test_a_sleep_waits_its_length(api: Api, flow: Flow, workers: WorkerProcs) -> None:
    workers.start()
    until = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2.5)).isoformat()
    orc = await create(
        api,
        {
            "steps": [
                {"url": flow.url("/a")},
                {"name": "nap", "sleep": 1.0},
                {"url": flow.url("/b"), "payload": "{{ steps.nap.output }}"},
                {"sleep_until": until},
                {"url": flow.url("/c")},
            ],
        },
    )
    assert [s["kind"] for s in orc["steps"]] == ["task", "sleep", "task", "sleep", "task"]
    waiting = await until_status(api, orc["id"], "waiting")
    assert waiting["current_step"] == 1 and flow.to("/b") == []
    done = await wait(api, orc["id"], "succeeded")
    nap = done["steps"][1]
    assert nap["status"] == "succeeded" and nap["task_id"] is None and nap["output"] is None
    assert 1000 <= _ms(nap["finished_at"]) - _ms(nap["started_at"]) <= 1050
    assert _ms(done["steps"][3]["finished_at"]) >= _ms(until) - 1
    assert flow.to("/b")[0].at - flow.to("/a")[0].at >= 1.0
    assert flow.to("/b")[0].body is None and len(flow.to("/c")) == 1


async def test_a_sleep_survives_a_worker_sigkill(
    api: Api, flow: Flow, workers: WorkerProcs
) -> None:
    first = workers.start()
    orc = await create(
        api, {"steps": [{"url": flow.url("/a")}, {"sleep": 3}, {"url": flow.url("/b")}]}
    )
    await until_status(api, orc["id"], "waiting")
    first.send_signal(signal.SIGKILL)
    first.wait()
    workers.start()
    done = await wait(api, orc["id"], "succeeded")
    nap = done["steps"][1]
    assert _ms(nap["finished_at"]) - _ms(nap["started_at"]) >= 3000  # not shortened
    assert len(flow.to("/a")) == 1 and len(flow.to("/b")) == 1


async def test_a_waiting_orchestration_can_be_cancelled(
    api: Api, flow: Flow, workers: WorkerProcs
) -> None:
    workers.start()
    orc = await create(api, {"steps": [{"sleep": 1}, {"url": flow.url("/b")}]})
    await until_status(api, orc["id"], "waiting")
    r = await api.http.post(f"/v1/orchestrations/{orc['id']}/cancel", headers=api.auth())
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    await asyncio.sleep(1.5)
    assert flow.to("/b") == []
    r = await api.http.get("/v1/orchestrations?status=waiting", headers=api.auth())
    assert r.status_code == 200 and r.json()["items"] == []


async def test_a_check_after_a_sleep_gets_no_answer(
    api: Api, flow: Flow, workers: WorkerProcs
) -> None:
    workers.start()
    orc = await create(
        api,
        {
            "steps": [{"sleep": 0.2}, {"url": flow.url("/a")}],
            "condition": {"url": flow.url("/check")},
        },
    )
    await wait(api, orc["id"], "succeeded")
    [check] = flow.to("/check")
    assert check.body == {
        "orchestration_id": orc["id"],
        "step": 0,
        "task_id": None,
        "response": {"status_code": None, "body": None},
    }
