"""The command line, JWKS tokens, the event stream, the outbound guard and the public names."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import httpx
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric import rsa

import taskorch
from taskorch.auth import TokenVerifier
from taskorch.errors import Unauthorized
from taskorch.settings import Settings
from taskorch.worker.outbound import address_forbidden
from tests.conftest import SECRET, Api, LiveServer, until


def _cli(*args: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TASKORCH_")}
    return subprocess.run(
        [sys.executable, "-m", "taskorch", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **env},
    )


def test_exported_members_are_sorted_and_real() -> None:
    assert taskorch.__all__ == sorted(taskorch.__all__)
    for name in taskorch.__all__:
        assert getattr(taskorch, name) is not None


def test_token_command_prints_a_token_with_scope() -> None:
    p = _cli("token", "--sub", "dash", "--ttl", "60", "--scope", "read", TASKORCH_JWT_SECRET=SECRET)
    assert p.returncode == 0, p.stderr
    claims = jwt.decode(p.stdout.strip(), SECRET, algorithms=["HS256"])
    assert claims["sub"] == "dash" and claims["scope"] == "read"
    assert 55 <= claims["exp"] - time.time() <= 60


async def test_user_add_then_password_login(api: Api, redis_url: str) -> None:
    p = _cli(
        "user",
        "add",
        "dora",
        stdin="a long password\n",
        TASKORCH_JWT_SECRET=SECRET,
        TASKORCH_REDIS_URL=redis_url,
    )
    assert p.returncode == 0 and "dora" in p.stdout, p.stderr
    r = await api.http.post(
        "/v1/auth/token", json={"username": "dora", "password": "a long password"}
    )
    assert r.status_code == 200
    short = _cli(
        "user",
        "add",
        "eve",
        stdin="short\n",
        TASKORCH_JWT_SECRET=SECRET,
        TASKORCH_REDIS_URL=redis_url,
    )
    assert short.returncode == 1 and "at least 8" in short.stderr


async def test_jwks_tokens_with_issuer_and_audience() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="k1", alg="RS256", use="sig")

    async def jwks(_: web.Request) -> web.Response:
        return web.json_response({"keys": [jwk]})

    app = web.Application()
    app.router.add_get("/jwks.json", jwks)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        settings = Settings.from_env(
            {
                "TASKORCH_JWT_JWKS_URL": str(server.make_url("/jwks.json")),
                "TASKORCH_JWT_ISSUER": "https://issuer.example",
                "TASKORCH_JWT_AUDIENCE": "taskorch",
            }
        )
        verifier = TokenVerifier(settings)
        claims = {
            "sub": "rita",
            "iat": int(time.time()),
            "exp": int(time.time()) + 60,
            "iss": "https://issuer.example",
            "aud": "taskorch",
        }
        good = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"})
        assert (await verifier.verify(good)).sub == "rita"
        for bad in (
            jwt.encode({**claims, "aud": "other"}, key, algorithm="RS256", headers={"kid": "k1"}),
            jwt.encode(
                {**claims, "iss": "https://evil"}, key, algorithm="RS256", headers={"kid": "k1"}
            ),
            jwt.encode(claims, "x" * 40, algorithm="HS256", headers={"kid": "k1"}),  # alg confusion
        ):
            with pytest.raises(Unauthorized):
                await verifier.verify(bad)
    finally:
        await server.close()


@pytest.mark.parametrize(
    "ip,forbidden",
    [
        ("127.0.0.1", True),
        ("10.1.2.3", True),
        ("192.168.0.1", True),
        ("172.16.5.4", True),
        ("169.254.169.254", True),
        ("::1", True),
        ("fd00:ec2::254", True),
        ("::ffff:127.0.0.1", True),
        ("100.100.100.200", True),
        ("0.0.0.0", True),
        ("93.184.216.34", False),
        ("2606:4700::1111", False),
    ],
)
def test_address_guard(ip: str, forbidden: bool) -> None:
    assert address_forbidden(ip) is forbidden


async def _listen_sse(
    http: httpx.AsyncClient, token: str, lines: list[str], n: int
) -> asyncio.Task[None]:
    """Collect the first ``n`` ``event:`` and ``data:`` lines of the owner's event stream, in a
    task returned once the stream is open (the server subscribes before it answers)."""
    opened = asyncio.Event()

    async def listen() -> None:
        async with http.stream("GET", f"/v1/events?access_token={token}") as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            opened.set()
            async for line in r.aiter_lines():
                if line.startswith(("data:", "event:")):
                    lines.append(line)
                    if len(lines) == n:
                        return

    task = asyncio.create_task(listen())
    await until(lambda: opened.is_set() or task.done(), what="the stream open")
    return task


async def test_event_stream_sends_the_owners_changes_only(
    api: Api, live_server: LiveServer
) -> None:
    lines: list[str] = []
    http = httpx.AsyncClient(base_url=live_server.url)
    listener = await _listen_sse(http, api.token("alice"), lines, 4)
    await api.create({"url": "https://example.com", "delay": 60}, sub="bob")
    task = await api.create({"url": "https://example.com", "delay": 60}, sub="alice")
    await api.http.post(f"/v1/tasks/{task['id']}/cancel", headers=api.auth("alice"))
    await asyncio.wait_for(listener, 5)
    assert lines[::2] == ["event: task"] * 2
    events = [json.loads(line[5:]) for line in lines[1::2]]
    assert events == [
        {"type": "task", "id": task["id"], "status": "scheduled"},
        {"type": "task", "id": task["id"], "status": "cancelled"},
    ]
    r = await http.get("/v1/events?access_token=nonsense")
    assert r.status_code == 401
    await http.aclose()


async def test_event_stream_sends_one_event_per_task_of_a_batch(
    api: Api, live_server: LiveServer
) -> None:
    # A batch's script publishes its events as one message: the stream still sends each.
    lines: list[str] = []
    http = httpx.AsyncClient(base_url=live_server.url)
    listener = await _listen_sse(http, api.token("alice"), lines, 12)
    body = {"tasks": [{"url": "https://example.com", "delay": 60}] * 6}
    r = await api.http.post("/v1/tasks/batch", json=body, headers=api.auth("alice"))
    assert r.status_code == 200, r.text
    ids = {item["task"]["id"] for item in r.json()["items"]}
    await asyncio.wait_for(listener, 5)
    assert lines[::2] == ["event: task"] * 6
    events = [json.loads(line[5:]) for line in lines[1::2]]
    assert {e["id"] for e in events} == ids
    assert all(e == {"type": "task", "id": e["id"], "status": "scheduled"} for e in events)
    await http.aclose()


async def test_stats_counts_by_status_per_owner(api: Api) -> None:
    for _ in range(3):
        await api.create({"url": "https://example.com", "delay": 60})
    t = await api.create({"url": "https://example.com", "delay": 60})
    await api.http.post(f"/v1/tasks/{t['id']}/cancel", headers=api.auth())
    await api.create({"url": "https://example.com", "delay": 60}, sub="bob")
    r = await api.http.get("/v1/stats", headers=api.auth())
    assert r.status_code == 200
    body = r.json()
    assert body["tasks"] == {
        "scheduled": 3,
        "running": 0,
        "retrying": 0,
        "succeeded": 0,
        "failed": 0,
        "cancelled": 1,
    }
    assert body["orchestrations"]["scheduled"] == 0 and body["functions"] == 0


async def test_status_page_headers_and_openapi_lists_every_route(api: Api) -> None:
    r = await api.http.get("/")
    assert r.status_code == 200 and "<html" in r.text.lower()
    assert "default-src 'self'" in r.headers["content-security-policy"]
    doc = (await api.http.get("/openapi.json")).json()
    from taskorch.api import ROUTES

    documented = {(path, method.lower()) for path, ops in doc["paths"].items() for method in ops}
    for path, _, method in ROUTES:
        if path not in ("/", "/openapi.json") and method != "OPTIONS":
            assert (path, method.lower()) in documented, (path, method)


def test_worker_needs_no_token_settings(redis_url: str) -> None:
    """A worker verifies no tokens, so it starts without TASKORCH_JWT_SECRET; serve does not."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TASKORCH_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "taskorch", "worker"],
        env={**clean, "TASKORCH_REDIS_URL": redis_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert "worker.started" in proc.stdout.readline()
    finally:
        proc.terminate()
        proc.wait(30)
        if proc.stdout:
            proc.stdout.close()
    assert proc.returncode == 0
