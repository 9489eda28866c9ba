"""The tasks API in process against a real Redis: shapes, errors, owner isolation, idempotency."""

from __future__ import annotations

import datetime as dt
import time

import jwt
import pytest

from tests.conftest import SECRET, Api


def _future(seconds: float) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)).isoformat()


async def test_create_answers_201_with_location_and_defaults(api: Api) -> None:
    r = await api.http.post(
        "/v1/tasks", json={"url": "https://example.com/hook", "delay": 60}, headers=api.auth()
    )
    assert r.status_code == 201
    task = r.json()
    assert r.headers["location"] == f"/v1/tasks/{task['id']}"
    assert task["id"].startswith("tsk_")
    assert task["status"] == "scheduled"
    assert (task["method"], task["retries"], task["retry_delay"], task["backoff"]) == (
        "POST",
        3,
        1.0,
        2.0,
    )
    assert (task["max_retry_delay"], task["timeout"], task["headers"], task["payload"]) == (
        300.0,
        30.0,
        {},
        None,
    )
    assert (
        task["attempts"] == [] and task["orchestration_id"] is None and task["finished_at"] is None
    )
    run_at = dt.datetime.fromisoformat(task["run_at"])
    assert task["run_at"].endswith("Z") and len(task["run_at"]) == len("2026-11-26T18:31:06.123Z")
    assert 59 < (run_at - dt.datetime.now(dt.UTC)).total_seconds() <= 60


async def test_run_at_in_the_past_means_now(api: Api) -> None:
    task = await api.create({"url": "https://example.com", "run_at": "2001-01-01T00:00:00Z"})
    assert abs(dt.datetime.fromisoformat(task["run_at"]).timestamp() - time.time()) < 5


async def test_get_list_newest_first_with_cursor_and_status_filter(api: Api) -> None:
    ids = [
        (await api.create({"url": f"https://example.com/{i}", "delay": 100}))["id"]
        for i in range(5)
    ]
    await api.http.post(f"/v1/tasks/{ids[1]}/cancel", headers=api.auth())
    r = await api.http.get("/v1/tasks?limit=2", headers=api.auth())
    page = r.json()
    assert [t["id"] for t in page["items"]] == ids[::-1][:2]
    seen = [t["id"] for t in page["items"]]
    while page["next_cursor"]:
        page = (
            await api.http.get(
                f"/v1/tasks?limit=2&cursor={page['next_cursor']}", headers=api.auth()
            )
        ).json()
        seen += [t["id"] for t in page["items"]]
    assert seen == ids[::-1]
    cancelled = (await api.http.get("/v1/tasks?status=cancelled", headers=api.auth())).json()
    assert [t["id"] for t in cancelled["items"]] == [ids[1]]
    scheduled = (await api.http.get("/v1/tasks?status=scheduled", headers=api.auth())).json()
    assert len(scheduled["items"]) == 4 and scheduled["next_cursor"] is None


async def test_idempotency_key_returns_first_task_per_owner(api: Api) -> None:
    body = {"url": "https://example.com", "delay": 50}
    h = {**api.auth("alice"), "Idempotency-Key": "order-42"}
    first = await api.http.post("/v1/tasks", json=body, headers=h)
    again = await api.http.post("/v1/tasks", json={**body, "delay": 99}, headers=h)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    other = await api.http.post(
        "/v1/tasks", json=body, headers={**api.auth("bob"), "Idempotency-Key": "order-42"}
    )
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"]
    listed = (await api.http.get("/v1/tasks", headers=api.auth("alice"))).json()["items"]
    assert len(listed) == 1


async def test_modify_before_firing_changes_time_url_and_payload(api: Api) -> None:
    task = await api.create({"url": "https://example.com/a", "delay": 100, "payload": {"v": 1}})
    when = _future(300)
    r = await api.http.patch(
        f"/v1/tasks/{task['id']}",
        json={
            "url": "https://example.com/b",
            "run_at": when,
            "payload": {"v": 2},
            "name": "renamed",
        },
        headers=api.auth(),
    )
    assert r.status_code == 200, r.text
    got = await api.get(task["id"])
    assert (got["url"], got["payload"], got["name"], got["status"]) == (
        "https://example.com/b",
        {"v": 2},
        "renamed",
        "scheduled",
    )
    assert (
        abs(
            dt.datetime.fromisoformat(got["run_at"]).timestamp()
            - dt.datetime.fromisoformat(when).timestamp()
        )
        < 0.002
    )
    assert got["retries"] == 3  # untouched fields stay


async def test_cancel_then_409_on_cancel_and_modify(api: Api) -> None:
    task = await api.create({"url": "https://example.com", "delay": 100})
    r = await api.http.post(f"/v1/tasks/{task['id']}/cancel", headers=api.auth())
    assert r.status_code == 200 and r.json()["status"] == "cancelled" and r.json()["finished_at"]
    again = await api.http.post(f"/v1/tasks/{task['id']}/cancel", headers=api.auth())
    assert again.status_code == 409
    assert (
        again.json()["error"]["code"] == "conflict"
        and "cancelled" in again.json()["error"]["message"]
    )
    patch = await api.http.patch(f"/v1/tasks/{task['id']}", json={"delay": 5}, headers=api.auth())
    assert patch.status_code == 409 and "cancelled" in patch.json()["error"]["message"]


async def test_another_owners_task_is_404_on_every_route(api: Api) -> None:
    task = await api.create({"url": "https://example.com", "delay": 100}, sub="alice")
    bob = api.auth("bob")
    tid = task["id"]
    for method, path, body in [
        ("GET", f"/v1/tasks/{tid}", None),
        ("PATCH", f"/v1/tasks/{tid}", {"delay": 1}),
        ("POST", f"/v1/tasks/{tid}/cancel", None),
    ]:
        r = await api.http.request(method, path, json=body, headers=bob)
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["error"]["code"] == "not_found"
    assert (await api.http.get("/v1/tasks", headers=bob)).json()["items"] == []
    assert (await api.get(tid))["status"] == "scheduled"  # untouched by bob's attempts


async def test_validation_errors_name_every_field(api: Api) -> None:
    r = await api.http.post(
        "/v1/tasks",
        json={
            "url": 5,
            "retries": 101,
            "timeout": 0,
            "backoff": 0.5,
            "method": "TRACE",
            "extra": 1,
        },
        headers=api.auth(),
    )
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "validation_failed"
    fields = {d["field"] for d in err["details"]}
    assert fields == {"url", "retries", "timeout", "backoff", "method", "extra"}
    r = await api.http.post(
        "/v1/tasks",
        json={
            "url": "ftp://x",
            "delay": 1,
            "run_at": "2030-01-01T00:00:00",
            "headers": {"bad name": "v"},
        },
        headers=api.auth(),
    )
    fields = {d["field"] for d in r.json()["error"]["details"]}
    assert r.status_code == 422 and {"url", "delay", "run_at", "headers.bad name"} <= fields
    missing = await api.http.post("/v1/tasks", json={}, headers=api.auth())
    assert missing.json()["error"]["details"] == [{"field": "url", "message": "is required"}]


async def test_malformed_json_is_400_and_big_body_413(api: Api) -> None:
    r = await api.http.post(
        "/v1/tasks", content=b"{nope", headers={**api.auth(), "Content-Type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    assert r.json()["error"]["details"] == []
    big = b'{"url": "https://e.com", "payload": "' + b"x" * (1024 * 1024 + 10) + b'"}'
    r = await api.http.post("/v1/tasks", content=big, headers=api.auth())
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


async def test_auth_errors_401_with_www_authenticate_and_403_for_scope(api: Api) -> None:
    r = await api.http.get("/v1/tasks")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["code"] == "missing_token"
    bad = jwt.encode(
        {"sub": "x", "exp": int(time.time()) + 60},
        "another-secret-another-secret-xxxxxx",
        algorithm="HS256",
    )
    r = await api.http.get("/v1/tasks", headers={"Authorization": f"Bearer {bad}"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    now = int(time.time())
    expired = jwt.encode({"sub": "x", "iat": now - 70, "exp": now - 10}, SECRET, algorithm="HS256")
    r = await api.http.get("/v1/tasks", headers={"Authorization": f"Bearer {expired}"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "token_expired"
    no_sub = jwt.encode({"exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    assert (
        await api.http.get("/v1/tasks", headers={"Authorization": f"Bearer {no_sub}"})
    ).status_code == 401
    none_alg = jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, None, algorithm="none")
    assert (
        await api.http.get("/v1/tasks", headers={"Authorization": f"Bearer {none_alg}"})
    ).status_code == 401
    read_only = api.auth("alice", scope="read")
    assert (await api.http.get("/v1/tasks", headers=read_only)).status_code == 200
    r = await api.http.post("/v1/tasks", json={"url": "https://e.com"}, headers=read_only)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    write_only = api.auth("alice", scope="write")
    assert (await api.http.get("/v1/tasks", headers=write_only)).status_code == 403


async def test_password_login_issues_a_working_token(api: Api) -> None:
    from taskorch.auth import add_user

    await add_user(api.http._transport.app.state["redis"], "carol", "correct horse")  # type: ignore[attr-defined]
    r = await api.http.post(
        "/v1/auth/token", json={"username": "carol", "password": "correct horse"}
    )
    assert r.status_code == 200
    body = r.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 3600
    assert jwt.decode(body["access_token"], SECRET, algorithms=["HS256"])["sub"] == "carol"
    ok = await api.http.get(
        "/v1/tasks", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert ok.status_code == 200
    for creds in (
        {"username": "carol", "password": "wrong"},
        {"username": "nobody", "password": "x"},
    ):
        r = await api.http.post("/v1/auth/token", json=creds)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_credentials"


async def test_bad_query_params_and_unknown_routes(api: Api) -> None:
    for q in ("status=nope", "limit=0", "limit=x", "cursor=abc"):
        r = await api.http.get(f"/v1/tasks?{q}", headers=api.auth())
        assert r.status_code == 422, q
        assert r.json()["error"]["details"][0]["field"] == q.split("=")[0]
    r = await api.http.get("/v1/nothing", headers=api.auth())
    assert r.status_code == 404 and set(r.json()["error"]) == {"code", "message", "details"}
    r = await api.http.delete("/v1/tasks", headers=api.auth())
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


async def test_health_ready_metrics_openapi(api: Api) -> None:
    assert (await api.http.get("/healthz")).json() == {"status": "ok"}
    assert (await api.http.get("/readyz")).json()["redis"] == "ok"
    await api.create({"url": "https://example.com", "delay": 10})
    metrics = (await api.http.get("/metrics")).text
    assert 'taskorch_tasks{status="scheduled"} 1' in metrics
    assert "taskorch_queue_jobs 1" in metrics
    doc = (await api.http.get("/openapi.json")).json()
    schemas = doc["components"]["schemas"]
    assert {"TaskCreate", "TaskPatch", "Task", "Error"} <= set(schemas)
    assert schemas["TaskCreate"]["properties"]["retries"]["maximum"] == 100
    assert schemas["TaskCreate"]["required"] == ["url"]
    assert set(doc["paths"]) >= {
        "/v1/tasks",
        "/v1/tasks/{task_id}",
        "/v1/tasks/{task_id}/cancel",
        "/v1/auth/token",
    }


@pytest.mark.parametrize(
    "env,needle",
    [
        ({}, "TASKORCH_JWT_SECRET is not set"),
        ({"TASKORCH_JWT_SECRET": "short"}, "TASKORCH_JWT_SECRET is 5 bytes"),
        (
            {"TASKORCH_JWT_SECRET": SECRET, "TASKORCH_PORT": "http"},
            "TASKORCH_PORT must be a whole number",
        ),
        ({"TASKORCH_JWT_SECRET": SECRET, "TASKORCH_REDIS_URL": "mysql://x"}, "TASKORCH_REDIS_URL"),
        (
            {"TASKORCH_JWT_SECRET": SECRET, "TASKORCH_PARTITIONS": "sixteen"},
            "TASKORCH_PARTITIONS must be a whole number",
        ),
        (
            {"TASKORCH_JWT_SECRET": SECRET, "TASKORCH_PARTITIONS": "0"},
            "TASKORCH_PARTITIONS must be between 1 and 1024",
        ),
        (
            {"TASKORCH_JWT_SECRET": SECRET, "TASKORCH_ALLOW_PRIVATE_TARGETS": "maybe"},
            "TASKORCH_ALLOW_PRIVATE_TARGETS",
        ),
        (
            {"TASKORCH_JWT_SECRET": SECRET, "TASKORCH_REDIS_TIMEOUT_S": "0"},
            "TASKORCH_REDIS_TIMEOUT_S",
        ),
        (
            {"TASKORCH_JWT_SECRET": SECRET, "TASKORCH_READ_TIMEOUT_S": "x"},
            "TASKORCH_READ_TIMEOUT_S",
        ),
        ({"TASKORCH_JWT_SECRET": SECRET, "TASKORCH_KEEP_ALIVE_S": "0.5"}, "TASKORCH_KEEP_ALIVE_S"),
    ],
)
def test_bad_configuration_stops_with_the_variable_named(env: dict[str, str], needle: str) -> None:
    import os
    import subprocess
    import sys

    clean = {k: v for k, v in os.environ.items() if not k.startswith("TASKORCH_")}
    p = subprocess.run(
        [sys.executable, "-m", "taskorch", "serve"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], p.stderr


async def test_a_run_at_at_the_end_of_the_range_reads_back_to_the_second(api: Api) -> None:
    """Times are kept to the millisecond whatever their size: Lua's tostring() gave 14 digits,
    and a task due in 9998 answered 500 on create, get, list and modify."""
    when = "9998-12-31T23:59:59.123Z"
    r = await api.http.post(
        "/v1/tasks", json={"url": "https://example.com/hook", "run_at": when}, headers=api.auth()
    )
    assert r.status_code == 201, r.text
    task = r.json()
    assert task["run_at"] == when
    got = await api.http.get(f"/v1/tasks/{task['id']}", headers=api.auth())
    assert got.status_code == 200 and got.json()["run_at"] == when
    listed = await api.http.get("/v1/tasks", headers=api.auth())
    assert [t["run_at"] for t in listed.json()["items"] if t["id"] == task["id"]] == [when]
    r = await api.http.patch(
        f"/v1/tasks/{task['id']}", json={"run_at": "9998-06-30T00:00:00Z"}, headers=api.auth()
    )
    assert r.status_code == 200 and r.json()["run_at"] == "9998-06-30T00:00:00.000Z", r.text
