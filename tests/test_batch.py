"""POST /v1/tasks/batch: many creates in one request, each answered in its place."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from taskorch import constants as c
from taskorch.api import create_app
from taskorch.auth import mint_token
from tests.conftest import (
    Api,
    RedisServer,
    Target,
    WorkerProcs,
    _WithState,
    make_settings,
    until,
)
from tests.helpers import wait_for
from tests.live import frozen, own_redis_server, serving

FAR = 3600  # seconds: tasks that must stay scheduled for the whole test


def _batch(tasks: list[Any]) -> dict[str, Any]:
    return {"tasks": tasks}


async def test_a_batch_is_stored_in_order_and_the_worker_fires_it(
    redis_url: str, tmp_path: Path, target: Target, workers: WorkerProcs
) -> None:
    """Over a real socket (taskorch serve, uvloop) with the real worker: every valid task is
    stored and answered in its place, the due ones fire exactly once, one bad task stops
    nothing, and a key repeated within the batch answers the first task."""
    tasks: list[Any] = [{"url": target.url(f"/ok/{i}"), "payload": {"i": i}} for i in range(12)]
    tasks += [{"url": target.url("/later"), "delay": FAR, "name": f"later-{i}"} for i in range(5)]
    tasks.insert(3, {"url": "ftp://example.com/x", "retries": 500})  # two problems
    tasks.insert(7, "not an object")
    tasks += [
        {"url": target.url("/keyed"), "delay": FAR, "idempotency_key": "k-1"},
        {"url": target.url("/keyed"), "delay": FAR, "idempotency_key": "k-1"},
    ]
    workers.start()
    token = mint_token(make_settings(redis_url), "alice")
    with serving(redis_url, tmp_path / "serve.log") as serve:
        async with httpx.AsyncClient(
            base_url=serve.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as http:
            r = await http.post("/v1/tasks/batch", json=_batch(tasks))
            assert r.status_code == 200, r.text
            items = r.json()["items"]
            assert len(items) == len(tasks)
            assert set(items[3]) == {"error"} and set(items[7]) == {"error"}
            bad = items[3]["error"]
            assert bad["code"] == "validation_failed"
            assert {d["field"] for d in bad["details"]} == {"url", "retries"}
            assert items[7]["error"]["details"] == [
                {"field": "", "message": "must be a JSON object"}
            ]
            good = [(t, it["task"]) for t, it in zip(tasks, items, strict=True) if "task" in it]
            assert len(good) == len(tasks) - 2
            for sent, task in good:  # each answer is the task sent in that place
                assert task["url"] == sent["url"] and task["payload"] == sent.get("payload")
                assert task["name"] == sent.get("name")
            assert items[-1]["task"]["id"] == items[-2]["task"]["id"]
            ids = {task["id"] for _, task in good}
            assert len(ids) == len(good) - 1

            due = [task["id"] for sent, task in good if "/ok/" in sent["url"]]
            await until(lambda: all(target.by_task().get(i) for i in due), timeout_s=30)
            for task_id in due:
                got = (await http.get(f"/v1/tasks/{task_id}")).json()
                assert got["status"] == "succeeded" and len(got["attempts"]) == 1
            later = [task["id"] for sent, task in good if "/ok/" not in sent["url"]]
            for task_id in later:
                assert (await http.get(f"/v1/tasks/{task_id}")).json()["status"] == "scheduled"
            # a barrier, due after them: a second call of any would come first
            r = await http.post("/v1/tasks", json={"url": target.url("/barrier"), "retries": 0})
            assert r.status_code == 201, r.text
            await until(lambda: target.calls_to("/barrier"), timeout_s=30, what="the barrier")
    assert all(target.by_task()[i] == 1 for i in due)
    assert not target.calls_to("/later") and not target.calls_to("/keyed")


async def test_the_envelope_must_be_right_or_the_whole_request_fails(api: Api) -> None:
    url = "http://127.0.0.1:9/x"
    cases: list[tuple[bytes, int, str]] = [
        (b"{", 400, "invalid_json"),
        (b"[]", 422, "validation_failed"),
        (b'{"tasks": []}', 422, "validation_failed"),
        (b'{"tasks": {}}', 422, "validation_failed"),
        (b'{"task": [{"url": "http://127.0.0.1:9/x"}]}', 422, "validation_failed"),
        (json.dumps(_batch([{"url": url}] * (c.MAX_BATCH_TASKS + 1))).encode(), 422, ""),
    ]
    for raw, status, code in cases:
        r = await api.http.post("/v1/tasks/batch", content=raw, headers=api.auth())
        assert r.status_code == status, (raw[:60], r.text)
        assert r.json()["error"]["code"] == (code or "validation_failed")


async def test_a_full_batch_is_stored(redis_url: str) -> None:
    # A generous Redis budget: the test asserts that 1,000 fit, not how fast on a shared machine.
    settings = make_settings(redis_url, redis_timeout_s=10.0)
    app = create_app(settings)
    async with app.router.lifespan_context(app) as state:
        transport = httpx.ASGITransport(app=_WithState(app, state))  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://taskorch") as http:
            tasks = [{"url": "http://127.0.0.1:9/x", "delay": FAR}] * c.MAX_BATCH_TASKS
            headers = {"Authorization": f"Bearer {mint_token(settings, 'alice')}"}
            r = await http.post("/v1/tasks/batch", json=_batch(tasks), headers=headers)
            assert r.status_code == 200 and len(r.json()["items"]) == c.MAX_BATCH_TASKS
            ids = {item["task"]["id"] for item in r.json()["items"]}
            assert len(ids) == c.MAX_BATCH_TASKS
            r = await http.get("/v1/tasks", params={"limit": 500}, headers=headers)
            assert len(r.json()["items"]) == 500 and r.json()["next_cursor"]


async def test_auth_and_scope_as_for_a_single_create(api: Api) -> None:
    body = _batch([{"url": "http://127.0.0.1:9/x"}])
    r = await api.http.post("/v1/tasks/batch", json=body)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = await api.http.post("/v1/tasks/batch", json=body, headers=api.auth(scope="read"))
    assert r.status_code == 403
    r = await api.http.get("/v1/tasks", headers=api.auth())
    assert r.json()["items"] == []


async def test_sizes_a_task_too_large_fails_alone_a_body_too_large_is_413(api: Api) -> None:
    url = "http://127.0.0.1:9/x"
    big = {"url": url, "payload": "x" * c.MAX_BODY_BYTES}
    r = await api.http.post(
        "/v1/tasks/batch", json=_batch([{"url": url}, big, {"url": url}]), headers=api.auth()
    )
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert "task" in items[0] and "task" in items[2]
    assert items[1]["error"]["code"] == "payload_too_large"
    # 1,000 tasks of 16 KiB fit; more than MAX_BATCH_BODY_BYTES does not.
    r = await api.http.post(
        "/v1/tasks/batch",
        content=b'{"tasks": ["' + b"x" * c.MAX_BATCH_BODY_BYTES + b'"]}',
        headers=api.auth(),
    )
    assert r.status_code == 413


async def test_idempotency_keys_are_those_of_single_creates_and_per_owner(api: Api) -> None:
    url = "http://127.0.0.1:9/x"
    r = await api.http.post(
        "/v1/tasks",
        json={"url": url, "delay": FAR},
        headers={**api.auth(), "Idempotency-Key": "same"},
    )
    first = r.json()
    body = _batch([{"url": url, "delay": FAR, "idempotency_key": "same"}])
    r = await api.http.post("/v1/tasks/batch", json=body, headers=api.auth())
    assert r.json()["items"][0]["task"]["id"] == first["id"]
    r = await api.http.post("/v1/tasks/batch", json=body, headers=api.auth("bob"))
    other = r.json()["items"][0]["task"]
    assert other["id"] != first["id"]
    assert (await api.get(other["id"], sub="bob"))["id"] == other["id"]
    r = await api.http.get(f"/v1/tasks/{other['id']}", headers=api.auth())
    assert r.status_code == 404  # another owner's task
    bad_key = _batch([{"url": url, "idempotency_key": "k" * 256}])
    r = await api.http.post("/v1/tasks/batch", json=bad_key, headers=api.auth())
    assert r.json()["items"][0]["error"]["details"][0]["field"] == "idempotency_key"


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    with own_redis_server(tmp_path) as server:
        yield server


def test_a_batch_while_redis_is_frozen_is_503_not_stored_and_stays_unstored(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    """As for a single create: nothing stored answers 503 with outcome not_stored, and the
    batch does not take effect when Redis resumes."""
    token = mint_token(make_settings(own_redis.url), "alice")
    tasks = [
        {"url": "http://127.0.0.1:9/x", "delay": FAR, "idempotency_key": f"f-{i}"}
        for i in range(40)
    ]
    with serving(own_redis.url, tmp_path / "serve.log") as serve:
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=serve.url, headers=headers, timeout=30) as http:
            assert http.get("/v1/tasks").status_code == 200  # connections made while up
            with frozen(own_redis):
                r = http.post("/v1/tasks/batch", json=_batch(tasks))
                assert r.status_code == 503, r.text
                assert r.headers["retry-after"]
                assert r.json()["error"]["details"][0]["outcome"] == "not_stored"
            r = http.get("/v1/tasks", params={"limit": 100})
            assert r.status_code == 200 and r.json()["items"] == [], r.text
            r = http.post("/v1/tasks/batch", json=_batch(tasks))
            assert r.status_code == 200
            assert all("task" in item for item in r.json()["items"])


def test_each_create_logs_one_line_with_what_it_made(redis_url: str, tmp_path: Path) -> None:
    """The access log line of a create names the task (one line per request, not two)."""
    token = mint_token(make_settings(redis_url), "alice")
    url = "http://127.0.0.1:9/x"
    with serving(redis_url, tmp_path / "serve.log") as serve:
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=serve.url, headers=headers, timeout=30) as http:
            task = http.post("/v1/tasks", json={"url": url, "delay": FAR}).json()
            body = _batch([{"url": url, "delay": FAR}, {"url": "ftp://x"}])
            assert http.post("/v1/tasks/batch", json=body).status_code == 200

        def posts_logged() -> list[dict[str, Any]]:  # each line is written once it is answered
            lines = [json.loads(x) for x in serve.log().splitlines() if x.startswith("{")]
            posts = [e for e in lines if e.get("event") == "http.request" and e["method"] == "POST"]
            return posts if len(posts) >= 2 else []

        posts = wait_for(posts_logged, what="both creates logged", ignore=(ValueError,))
        lines = [json.loads(x) for x in serve.log().splitlines() if x.startswith("{")]
    single = next(e for e in posts if e["path"] == "/v1/tasks")
    assert single["status"] == 201 and single["task_id"] == task["id"]
    assert single["owner"] == "alice" and single["run_at"] == task["run_at"]
    batch = next(e for e in posts if e["path"] == "/v1/tasks/batch")
    assert (batch["created"], batch["refused"], batch["owner"]) == (1, 1, "alice")
    assert not [e for e in lines if str(e.get("event", "")).startswith("task")]


async def test_a_create_answers_what_reading_the_task_back_answers(api: Api) -> None:
    """A create builds its answer from the body it stored rather than reading the record back
    (the largest cost of a batch): the two must agree field for field, defaults and all."""
    bodies: list[dict[str, Any]] = [
        {"url": "http://127.0.0.1:9/plain"},
        {
            "url": "http://127.0.0.1:9/full",
            "method": "PUT",
            "headers": {"X-A": "1", "x-b": "two"},
            "payload": {"f": 0.1, "big": 2**53 + 1, "nested": [1.5e300, None, "é"]},
            "retries": 0,
            "retry_delay": 0.25,
            "backoff": 1.5,
            "max_retry_delay": 7,
            "timeout": 900,
            "name": "report 7",
            "run_at": "2099-01-02T03:04:05.678+02:00",
            "queue": "reports",
            "callback": {"url": "http://127.0.0.1:9/done", "headers": {"X-C": "1"}},
            "failure_callback": {"url": "http://127.0.0.1:9/failed"},
        },
        {"url": "http://127.0.0.1:9/delay", "delay": 12.3456, "payload": "text", "name": ""},
        {"url": "http://127.0.0.1:9/get", "method": "GET", "payload": None, "run_at": None},
    ]
    r = await api.http.post("/v1/tasks/batch", json=_batch(bodies), headers=api.auth())
    assert r.status_code == 200, r.text
    answered = [item["task"] for item in r.json()["items"]]
    answered.append(await api.create(bodies[1]))
    for task in answered:
        assert task == await api.get(task["id"])
