"""Orchestrations end to end: the API, Redis, the real worker process and local targets."""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
from typing import Any

import msgspec

from tests.conftest import Api, Target, WorkerProcs, until
from tests.test_outbound import pieces_server
from tests.waits import barrier


def _ts(s: str) -> float:
    return dt.datetime.fromisoformat(s).timestamp()


async def create(api: Api, body: dict[str, Any], sub: str = "alice") -> dict[str, Any]:
    r = await api.http.post("/v1/orchestrations", json=body, headers=api.auth(sub))
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"/v1/orchestrations/{r.json()['id']}"
    return r.json()  # type: ignore[no-any-return]


async def wait(api: Api, oid: str, status: str | set[str], timeout_s: float = 20) -> dict[str, Any]:
    return await api.wait_status(oid, status, timeout_s=timeout_s, kind="orchestrations")


async def test_three_steps_with_passing_checks(
    api: Api, target: Target, workers: WorkerProcs
) -> None:
    workers.start()
    orc = await create(
        api,
        {
            "name": "pipeline",
            "steps": [{"url": target.url(f"/s{i}"), "payload": {"i": i}} for i in range(3)],
            "condition": {"url": target.url("/check")},
        },
    )
    assert orc["id"].startswith("orc_") and orc["status"] == "scheduled"
    assert [s["status"] for s in orc["steps"]] == ["pending"] * 3
    assert orc["steps"][0]["condition"] == {"status": "pending", "attempts": []}
    assert orc["steps"][2]["condition"] is None  # no check after the last step
    done = await wait(api, orc["id"], "succeeded")
    assert [c.path for c in target.calls] == ["/s0", "/check", "/s1", "/check", "/s2"]
    assert done["current_step"] == 2 and done["finished_at"] and done["fallback"] is None
    for i, step in enumerate(done["steps"]):
        assert step["status"] == "succeeded"
        task = await api.get(step["task_id"])
        assert task["orchestration_id"] == orc["id"] and task["status"] == "succeeded"
        assert task["url"] == target.url(f"/s{i}")
    assert [s["condition"]["status"] for s in done["steps"][:2]] == ["passed", "passed"]
    assert done["steps"][0]["condition"]["attempts"][0]["status_code"] == 200
    envelope = msgspec.json.decode(target.calls_to("/check")[1].body)
    assert envelope == {
        "orchestration_id": orc["id"],
        "step": 1,
        "task_id": done["steps"][1]["task_id"],
        "response": {"status_code": 200, "body": {"ok": True, "path": "/s1"}},
    }
    assert target.calls_to("/check")[0].method == "POST"
    # a step task belongs to its orchestration: it is steered there, not through /v1/tasks
    r = await api.http.post(f"/v1/tasks/{done['steps'][0]['task_id']}/cancel", headers=api.auth())
    assert r.status_code == 409 and orc["id"] in r.json()["error"]["message"]


async def test_check_fails_twice_then_passes(
    api: Api, target: Target, workers: WorkerProcs
) -> None:
    workers.start()
    orc = await create(
        api,
        {
            "steps": [{"url": target.url("/a")}, {"url": target.url("/b")}],
            "condition": {
                "url": target.url("/fail-then-ok/2"),
                "delay": 0.3,
                "retries": 2,
                "retry_delay": 0.4,
            },
        },
    )
    done = await wait(api, orc["id"], "succeeded")
    cond = done["steps"][0]["condition"]
    assert cond["status"] == "passed"
    assert [(a["number"], a["status_code"], a["passed"]) for a in cond["attempts"]] == [
        (1, 500, False),
        (2, 500, False),
        (3, 200, True),
    ]
    a_done = target.calls_to("/a")[0].at
    checks = [c.at for c in target.calls_to("/fail-then-ok/2")]
    assert checks[0] - a_done >= 0.3  # the check's delay
    assert checks[1] - checks[0] >= 0.4 and checks[2] - checks[1] >= 0.4  # retry_delay
    assert len(target.calls_to("/b")) == 1


async def test_checks_exhausted_stop_and_run_the_fallback_once(
    api: Api, target: Target, workers: WorkerProcs
) -> None:
    workers.start()
    orc = await create(
        api,
        {
            "steps": [
                {"url": target.url("/one")},
                {"url": target.url("/two")},
                {"url": target.url("/three")},
            ],
            "condition": {"url": target.url("/json-false"), "retries": 1, "retry_delay": 0.1},
            "fallback": {"url": target.url("/fallback"), "payload": {"why": "stopped"}},
        },
    )
    done = await wait(api, orc["id"], "stopped")
    assert done["fallback"]["task_id"]

    async def fallback_outcome() -> str | None:
        r = await api.http.get(f"/v1/orchestrations/{orc['id']}", headers=api.auth())
        return (
            r.json()["fallback"]["status"]
            if r.json()["fallback"]["status"] == "succeeded"
            else None
        )

    assert await until(fallback_outcome) == "succeeded"
    await barrier(api, target.url("/barrier"))  # a next step or check would come first
    assert len(target.calls_to("/fallback")) == 1
    assert target.calls_to("/two") == [] and target.calls_to("/three") == []
    assert len(target.calls_to("/json-false")) == 2
    assert done["steps"][0]["condition"]["status"] == "failed"
    assert [s["status"] for s in done["steps"]] == ["succeeded", "pending", "pending"]


async def test_step_failing_after_retries_fails_and_runs_the_fallback(
    api: Api, target: Target, workers: WorkerProcs
) -> None:
    workers.start()
    orc = await create(
        api,
        {
            "steps": [
                {"url": target.url("/status/500"), "retries": 1, "retry_delay": 0.1},
                {"url": target.url("/never")},
            ],
            "fallback": {"url": target.url("/fallback")},
        },
    )
    done = await wait(api, orc["id"], "failed")
    await until(lambda: target.calls_to("/fallback"))
    assert len(target.calls_to("/status/500")) == 2
    assert done["steps"][0]["status"] == "failed"
    step_task = await api.get(done["steps"][0]["task_id"])
    assert [a["status_code"] for a in step_task["attempts"]] == [500, 500]
    await barrier(api, target.url("/barrier"))  # a next step or second fallback would come first
    assert target.calls_to("/never") == [] and len(target.calls_to("/fallback")) == 1


async def test_a_steps_own_condition_overrides_the_shared_one(
    api: Api, target: Target, workers: WorkerProcs
) -> None:
    workers.start()
    orc = await create(
        api,
        {
            "steps": [
                {"url": target.url("/p0"), "condition": {"url": target.url("/own-check")}},
                {"url": target.url("/p1")},
                {"url": target.url("/p2")},
            ],
            "condition": {"url": target.url("/json-false")},
        },
    )
    done = await wait(api, orc["id"], "stopped")
    assert [c.path for c in target.calls] == ["/p0", "/own-check", "/p1", "/json-false"]
    assert [s["status"] for s in done["steps"]] == ["succeeded", "succeeded", "pending"]


async def test_cancel_before_start_and_mid_run(
    api: Api, target: Target, workers: WorkerProcs
) -> None:
    workers.start()
    early = await create(api, {"steps": [{"url": target.url("/early")}], "delay": 0.5})
    r = await api.http.post(f"/v1/orchestrations/{early['id']}/cancel", headers=api.auth())
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    mid = await create(
        api,
        {
            "steps": [{"url": target.url("/slow/1")}, {"url": target.url("/after")}],
            "condition": {"url": target.url("/check")},
            "fallback": {"url": target.url("/fallback")},
        },
    )
    await until(lambda: target.calls_to("/slow/1"))
    r = await api.http.post(f"/v1/orchestrations/{mid['id']}/cancel", headers=api.auth())
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    step = await api.wait_status(
        r.json()["steps"][0]["task_id"], "succeeded"
    )  # in flight: finishes
    assert step["attempts"][0]["status_code"] == 200

    def handled() -> bool:  # the worker has taken the step's end in: nothing follows it
        return any(
            "orchestration.step_done" in line and step["id"] in line
            for line in workers.logs().splitlines()
        )

    await until(handled, what="the step's end handled")
    await barrier(api, target.url("/barrier"))  # a check, next step or fallback would come first
    assert [c.path for c in target.calls] == ["/slow/1", "/barrier"]  # none of them came
    again = await api.http.post(f"/v1/orchestrations/{mid['id']}/cancel", headers=api.auth())
    assert again.status_code == 409 and "cancelled" in again.json()["error"]["message"]


async def test_patch_before_start_and_409_after(
    api: Api, target: Target, workers: WorkerProcs
) -> None:
    orc = await create(api, {"steps": [{"url": target.url("/old")}], "delay": 60, "name": "a"})
    r = await api.http.patch(
        f"/v1/orchestrations/{orc['id']}",
        headers=api.auth(),
        json={
            "name": "b",
            "delay": 0.3,
            "steps": [{"url": target.url("/new0")}, {"url": target.url("/new1")}],
            "condition": {"url": target.url("/check")},
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "b" and len(r.json()["steps"]) == 2
    workers.start()
    done = await wait(api, orc["id"], "succeeded")
    assert [c.path for c in target.calls] == ["/new0", "/check", "/new1"]
    r = await api.http.patch(
        f"/v1/orchestrations/{done['id']}", json={"name": "c"}, headers=api.auth()
    )
    assert r.status_code == 409 and "succeeded" in r.json()["error"]["message"]


async def test_owner_isolation_and_listing(api: Api, target: Target) -> None:
    a = await create(api, {"steps": [{"url": target.url("/x")}], "delay": 60}, sub="alice")
    b = await create(api, {"steps": [{"url": target.url("/x")}], "delay": 60}, sub="bob")
    for method, path, body in [
        ("GET", f"/v1/orchestrations/{a['id']}", None),
        ("PATCH", f"/v1/orchestrations/{a['id']}", {"name": "mine"}),
        ("POST", f"/v1/orchestrations/{a['id']}/cancel", None),
    ]:
        r = await api.http.request(method, path, json=body, headers=api.auth("bob"))
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (method, path)
    listed = (await api.http.get("/v1/orchestrations", headers=api.auth("bob"))).json()
    assert [o["id"] for o in listed["items"]] == [b["id"]] and listed["next_cursor"] is None
    await api.http.post(f"/v1/orchestrations/{b['id']}/cancel", headers=api.auth("bob"))
    c = await create(api, {"steps": [{"url": target.url("/x")}], "delay": 60}, sub="bob")
    page = (await api.http.get("/v1/orchestrations?limit=1", headers=api.auth("bob"))).json()
    assert [o["id"] for o in page["items"]] == [c["id"]]
    page = (
        await api.http.get(
            f"/v1/orchestrations?limit=1&cursor={page['next_cursor']}", headers=api.auth("bob")
        )
    ).json()
    assert [o["id"] for o in page["items"]] == [b["id"]]
    cancelled = (
        await api.http.get("/v1/orchestrations?status=cancelled", headers=api.auth("bob"))
    ).json()
    assert [o["id"] for o in cancelled["items"]] == [b["id"]]


async def test_validation_errors_carry_step_paths(api: Api) -> None:
    steps = [{"url": "https://example.com"} for _ in range(5)]
    steps[3] = {"url": "not a url"}
    steps[1] = {
        "url": "https://example.com",
        "retries": -1,
        "condition": {"url": "https://e.com", "delay": "soon"},
    }
    r = await api.http.post(
        "/v1/orchestrations",
        headers=api.auth(),
        json={"steps": steps, "fallback": {"url": 3}, "condition": {"method": "GET"}},
    )
    assert r.status_code == 422
    fields = {d["field"] for d in r.json()["error"]["details"]}
    assert {
        "steps[3].url",
        "steps[1].retries",
        "steps[1].condition.delay",
        "fallback.url",
        "condition.url",
    } <= fields
    for body, field in [
        ({"steps": []}, "steps"),
        ({}, "steps"),
        (
            {"steps": [{"url": "https://e.com", "run_at": "2030-01-01T00:00:00Z"}]},
            "steps[0].run_at",
        ),
    ]:
        r = await api.http.post("/v1/orchestrations", json=body, headers=api.auth())
        assert r.status_code == 422 and field in {
            d["field"] for d in r.json()["error"]["details"]
        }, r.text


async def test_ten_thousand_steps_are_accepted(api: Api) -> None:
    steps = [{"url": f"https://example.com/{i}"} for i in range(10_000)]
    r = await api.http.post(
        "/v1/orchestrations", json={"steps": steps, "delay": 3600}, headers=api.auth()
    )
    assert r.status_code == 201, r.text[:300]
    body = r.json()
    assert len(body["steps"]) == 10_000 and body["steps"][9_999]["index"] == 9_999
    too_many = await api.http.post(
        "/v1/orchestrations", json={"steps": [*steps, {"url": "https://e.com"}]}, headers=api.auth()
    )
    assert (
        too_many.status_code == 422 and too_many.json()["error"]["details"][0]["field"] == "steps"
    )


async def test_worker_killed_at_every_step_boundary_still_succeeds(
    api: Api, target: Target, workers: WorkerProcs
) -> None:
    """SIGKILL the worker once per step (mid-call, right after a call, during a check's delay),
    restart it, and show the orchestration completes with no completed step run again."""
    proc = workers.start()
    orc = await create(
        api,
        {
            "steps": [{"url": target.url(f"/slow/0.3?step={i}")} for i in range(5)],
            "condition": {"url": target.url("/check"), "delay": 0.4},
        },
    )
    offsets = [
        0.1,
        0.35,
        0.5,
        0.8,
        0.2,
    ]  # after step k's call arrived: mid-call .. in the check delay
    for k, offset in enumerate(offsets):
        await until(lambda k=k: any(_step_of(c) == k for c in target.calls), timeout_s=30)
        await asyncio.sleep(offset)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc = workers.start()
    done = await wait(api, orc["id"], "succeeded", timeout_s=60)
    per_step: dict[int, list[str]] = {}
    for c in target.calls:
        if c.path == "/slow/0.3":
            per_step.setdefault(_step_of(c), []).append(c.headers["Idempotency-Key"])
    assert sorted(per_step) == [0, 1, 2, 3, 4]
    for k, keys in per_step.items():
        assert len(keys) <= 2, f"step {k} ran {len(keys)} times"
        assert len(set(keys)) == 1, "a repeated step carries the same Idempotency-Key"
        assert keys[0] == done["steps"][k]["task_id"]
    print("calls per step:", {k: len(v) for k, v in per_step.items()})


def _step_of(call: Any) -> int:
    return int(call.query.get("step", -1))


async def test_a_check_answering_stop_in_two_pieces_stops(
    api: Api, target: Target, workers: WorkerProcs
) -> None:
    async with pieces_server({"/check": b'{"continue": false}'}, pieces=2) as check:
        workers.start()
        orc = await create(
            api,
            {
                "steps": [{"url": target.url("/first")}, {"url": target.url("/second")}],
                "condition": {"url": check.url("/check")},
            },
        )
        done = await wait(api, orc["id"], "stopped")
    assert target.calls_to("/second") == []
    [attempt] = done["steps"][0]["condition"]["attempts"]
    assert attempt["passed"] is False and attempt["response_body"] == '{"continue": false}'


async def test_a_check_sent_again_after_a_lost_worker_carries_the_same_key(
    api: Api, target: Target, workers: WorkerProcs
) -> None:
    proc = workers.start()
    orc = await create(
        api,
        {
            "steps": [{"url": target.url("/step0")}, {"url": target.url("/step1")}],
            "condition": {"url": target.url("/slow-once/60"), "timeout": 120},
        },
    )
    await until(lambda: target.calls_to("/slow-once/60"))  # the check is in flight
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    workers.start()
    await wait(api, orc["id"], "succeeded")
    first, again = target.calls_to("/slow-once/60")
    ids = (
        "Idempotency-Key",
        "X-Taskorch-Orchestration-Id",
        "X-Taskorch-Step",
        "X-Taskorch-Attempt",
    )
    assert [first.headers[h] for h in ids] == [f"{orc['id']}.check.0.1", orc["id"], "0", "1"]
    assert [again.headers[h] for h in ids] == [first.headers[h] for h in ids]
