"""The API while Redis is frozen, killed or drops a reply: bounded waits, 503 with Retry-After,
recovery on its own, and creates whose answer never contradicts what was stored."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from taskorch.api import create_app
from taskorch.auth import mint_token
from taskorch.settings import Settings
from tests.conftest import RedisServer, _WithState, free_port, make_settings
from tests.live import frozen, own_redis_server, serving

# While Redis is out every answer must come within this (the bar), with the default
# TASKORCH_REDIS_TIMEOUT_S; it is a ceiling for a hang, not a latency figure.
OUTAGE_ANSWER_S = 2.0


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    with own_redis_server(tmp_path) as server:
        yield server


@contextlib.asynccontextmanager
async def app_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app in process with the Redis client its own lifespan makes (the production one)."""
    app = create_app(settings)
    async with app.router.lifespan_context(app) as state:
        transport = httpx.ASGITransport(app=_WithState(app, state))  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://taskorch") as http:
            http.headers["Authorization"] = f"Bearer {mint_token(settings, 'alice')}"
            yield http


async def _timed(call: Any) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    r = await asyncio.wait_for(call, 30)  # a hang fails here instead of at the test timeout
    return r, time.monotonic() - started


def _assert_unavailable(r: httpx.Response, took_s: float, what: str) -> None:
    assert r.status_code == 503, f"{what}: {r.status_code} {r.text}"
    assert r.json()["error"]["code"] == "unavailable", what
    assert int(r.headers["retry-after"]) >= 1, what
    assert took_s < OUTAGE_ANSWER_S, f"{what} took {took_s:.2f} s while Redis was frozen"


async def test_frozen_redis_answers_503_quickly_then_recovers(own_redis: RedisServer) -> None:
    settings = make_settings(own_redis.url)
    async with app_client(settings) as http:
        task = (
            await http.post("/v1/tasks", json={"url": "http://127.0.0.1:9/", "delay": 60})
        ).json()
        with frozen(own_redis):
            for what, call in [
                ("create", http.post("/v1/tasks", json={"url": "http://127.0.0.1:9/"})),
                ("get", http.get(f"/v1/tasks/{task['id']}")),
                ("list", http.get("/v1/tasks")),
                ("cancel", http.post(f"/v1/tasks/{task['id']}/cancel")),
                (
                    "orchestration",
                    http.post(
                        "/v1/orchestrations", json={"steps": [{"url": "http://127.0.0.1:9/"}]}
                    ),
                ),
                ("sign-in", http.post("/v1/auth/token", json={"username": "u", "password": "p"})),
            ]:
                r, took = await _timed(call)
                _assert_unavailable(r, took, what)
        # Back without a restart of the API.
        r = await http.get(f"/v1/tasks/{task['id']}")
        assert r.status_code == 200 and r.json()["status"] == "scheduled", r.text
        r = await http.post("/v1/tasks", json={"url": "http://127.0.0.1:9/", "delay": 60})
        assert r.status_code == 201, r.text


async def test_killed_redis_answers_503_quickly(own_redis: RedisServer) -> None:
    settings = make_settings(own_redis.url)
    async with app_client(settings) as http:
        assert (await http.get("/v1/tasks")).status_code == 200
        own_redis.stop(9)
        for what, call in [
            ("create", http.post("/v1/tasks", json={"url": "http://127.0.0.1:9/"})),
            ("list", http.get("/v1/tasks")),
        ]:
            r, took = await _timed(call)
            _assert_unavailable(r, took, what)
        own_redis.start()
        assert (await http.get("/v1/tasks")).status_code == 200


def test_taskorch_serve_answers_503_while_redis_is_frozen(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    """The real server (uvloop, its own Redis client from settings): frozen Redis, 503 within
    the bound, and the same process serves again once Redis resumes."""
    with serving(own_redis.url, tmp_path / "serve.log") as srv:
        h = {"Authorization": f"Bearer {mint_token(make_settings(own_redis.url), 'alice')}"}
        body = {"url": "http://127.0.0.1:9/", "delay": 60}
        with httpx.Client(base_url=srv.url, headers=h, timeout=30) as http:
            assert http.post("/v1/tasks", json=body).status_code == 201
            key = {"Idempotency-Key": "made-while-frozen"}
            with frozen(own_redis):
                for what, method, path in [
                    ("create", "POST", "/v1/tasks"),
                    ("list", "GET", "/v1/tasks"),
                    ("readyz", "GET", "/readyz"),
                ]:
                    started = time.monotonic()
                    r = http.request(
                        method, path, json=body if method == "POST" else None, headers=key
                    )
                    took = time.monotonic() - started
                    assert r.status_code == 503, (what, r.text)
                    assert took < OUTAGE_ANSWER_S, f"{what} took {took:.2f} s"
                    if path != "/readyz":
                        _assert_unavailable(r, took, what)
            # The frozen Redis may still run the command it had received when it resumes (a
            # 503 means "not known to be stored"): repeating with the same key makes it once.
            r = http.post("/v1/tasks", json=body, headers=key)
            assert r.status_code in (200, 201), r.text
            assert http.post("/v1/tasks", json=body, headers=key).json()["id"] == r.json()["id"]
            assert len(http.get("/v1/tasks").json()["items"]) == 2


async def test_a_full_redis_answers_503_not_500(own_redis: RedisServer) -> None:
    """Redis runs with noeviction: at maxmemory it refuses writes, which is an outage too."""
    settings = make_settings(own_redis.url)
    async with app_client(settings) as http:
        assert (await http.get("/v1/tasks")).status_code == 200
        admin = redis.Redis(port=own_redis.port)
        admin.config_set("maxmemory", 1)
        try:
            r = await http.post("/v1/tasks", json={"url": "http://127.0.0.1:9/"})
            assert r.status_code == 503, r.text
            assert "full" in r.json()["error"]["message"] and r.headers["retry-after"]
            assert (await http.get("/v1/tasks")).status_code == 200  # reads still work
        finally:
            admin.config_set("maxmemory", 0)
        r = await http.post("/v1/tasks", json={"url": "http://127.0.0.1:9/", "delay": 60})
        assert r.status_code == 201, r.text


# -- a reply lost after the script ran ----------------------------------------------------------


class CutAfterScript:
    """A TCP proxy to Redis that forwards everything until a script (EVALSHA) has run and its
    reply reached the client, then drops every connection and refuses new ones: the moment a
    create is stored and its connection dies, as when Redis is killed just then."""

    def __init__(self, redis_port: int) -> None:
        self.redis_port = redis_port
        self.port = free_port()
        self.cut = False
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> CutAfterScript:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self._close_all()

    def _close_all(self) -> None:
        for w in self._writers:
            w.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.redis_port)
        self._writers += [writer, up_writer]
        script_sent = False

        async def upstream() -> None:
            nonlocal script_sent
            while data := await reader.read(65536):
                if b"EVAL" in data.upper():  # EVALSHA, or EVAL after a NOSCRIPT
                    script_sent = True
                up_writer.write(data)
                await up_writer.drain()

        async def downstream() -> None:
            nonlocal script_sent
            while data := await up_reader.read(65536):
                writer.write(data)
                await writer.drain()
                if script_sent:
                    if data.startswith(b"-NOSCRIPT"):
                        script_sent = False  # not run: redis-py loads it and sends it again
                        continue
                    self.cut = True
                    self._close_all()
                    return

        with contextlib.suppress(Exception):
            await asyncio.gather(upstream(), downstream())
        writer.close()
        up_writer.close()


@pytest.mark.parametrize(
    ("path", "body", "key_prefix"),
    [
        ("/v1/tasks", {"url": "http://127.0.0.1:9/", "delay": 60}, "t:"),
        (
            "/v1/orchestrations",
            {"steps": [{"url": "http://127.0.0.1:9/"}], "delay": 60},
            "o:",
        ),
    ],
    ids=["task", "orchestration"],
)
async def test_a_create_that_redis_stored_is_never_answered_503(
    redis_url: str, redis_server: RedisServer, path: str, body: dict[str, Any], key_prefix: str
) -> None:
    async with CutAfterScript(redis_server.port) as proxy:
        settings = make_settings(f"redis://127.0.0.1:{proxy.port}/0")
        async with app_client(settings) as http:
            r = await http.post(path, json=body)
            assert proxy.cut, "the proxy never saw the create's script"
    stored = _records(redis_server.port, key_prefix)
    assert len(stored) == 1, stored
    assert r.status_code == 201, f"stored {stored[0]} but answered {r.status_code}: {r.text}"
    assert stored[0].endswith(":" + key_prefix + r.json()["id"])


# -- idempotency keys: one namespace per kind, and only as long as the record lives --------------


async def test_an_idempotency_key_is_per_kind(redis_url: str) -> None:
    settings = make_settings(redis_url)
    async with app_client(settings) as http:
        h = {"Idempotency-Key": "orc:k1"}
        task = await http.post(
            "/v1/tasks", json={"url": "http://127.0.0.1:9/", "delay": 60}, headers=h
        )
        orc = await http.post(
            "/v1/orchestrations",
            json={"steps": [{"url": "http://127.0.0.1:9/"}], "delay": 60},
            headers={"Idempotency-Key": "k1"},
        )
        assert (task.status_code, orc.status_code) == (201, 201), (task.text, orc.text)
        assert orc.json()["id"].startswith("orc_")
        same = await http.post(
            "/v1/tasks",
            json={"url": "http://127.0.0.1:9/", "delay": 60},
            headers={"Idempotency-Key": "k2"},
        )
        other = await http.post(
            "/v1/orchestrations",
            json={"steps": [{"url": "http://127.0.0.1:9/"}], "delay": 60},
            headers={"Idempotency-Key": "k2"},
        )
        assert (same.status_code, other.status_code) == (201, 201), (same.text, other.text)
        assert other.json()["id"].startswith("orc_") and same.json()["id"].startswith("tsk_")


async def test_a_repeat_after_retention_deleted_the_record_creates_afresh(redis_url: str) -> None:
    from taskorch.store import Store, connect

    settings = make_settings(redis_url)
    async with app_client(settings) as http:
        h = {"Idempotency-Key": "nightly-1"}
        first = await http.post("/v1/tasks", json={"url": "http://127.0.0.1:9/"}, headers=h)
        assert first.status_code == 201
        tid = first.json()["id"]
        assert (await http.post(f"/v1/tasks/{tid}/cancel")).status_code == 200
        client = connect(redis_url)
        try:  # the retention janitor, with everything finished counted as old
            assert await Store(client).purge(older_than_ms=int(time.time() * 1000) + 1000) == 1
        finally:
            await client.aclose()
        assert (await http.get(f"/v1/tasks/{tid}")).status_code == 404
        again = await http.post("/v1/tasks", json={"url": "http://127.0.0.1:9/"}, headers=h)
        assert again.status_code == 201, again.text
        assert again.json()["id"] != tid and again.json()["status"] == "scheduled"
        repeat = await http.post("/v1/tasks", json={"url": "http://127.0.0.1:9/"}, headers=h)
        assert repeat.status_code == 200 and repeat.json()["id"] == again.json()["id"]


# -- many requests at once while Redis is frozen ------------------------------------------------

PROBES_PER_ROUTE = 3  # 12 concurrent requests: enough to queue behind one pool-wide lock


def _probes(task_id: str) -> list[tuple[str, str, str, dict[str, Any] | None]]:
    one = [
        ("create", "POST", "/v1/tasks", {"url": "http://127.0.0.1:9/"}),
        ("get", "GET", f"/v1/tasks/{task_id}", None),
        ("list", "GET", "/v1/tasks?limit=5", None),
        ("readyz", "GET", "/readyz", None),
    ]
    return one * PROBES_PER_ROUTE


async def _probe_all(
    http: httpx.AsyncClient, probes: list[tuple[str, str, str, dict[str, Any] | None]]
) -> list[tuple[str, httpx.Response, float]]:
    async def one(
        what: str, method: str, path: str, body: Any
    ) -> tuple[str, httpx.Response, float]:
        r, took = await _timed(http.request(method, path, json=body))
        return what, r, took

    return await asyncio.gather(*(one(*p) for p in probes))


def _assert_all_unavailable(results: list[tuple[str, httpx.Response, float]]) -> None:
    slow = [
        (w, r.status_code, round(t, 2))
        for w, r, t in results
        if r.status_code != 503 or t >= OUTAGE_ANSWER_S
    ]
    assert not slow, f"not 503 within {OUTAGE_ANSWER_S} s while Redis was frozen: {slow}"
    for what, r, took in results:
        assert int(r.headers["retry-after"]) >= 1, what
        if what != "readyz":
            _assert_unavailable(r, took, what)


async def _assert_each_gets_its_own(http: httpx.AsyncClient, ids: list[str]) -> None:
    """No connection came back to the pool with a reply still pending: every answer after the
    thaw is the answer to its own request."""
    got = await asyncio.gather(*(http.get(f"/v1/tasks/{i}") for i in ids * 3))
    assert [r.status_code for r in got] == [200] * len(got), [r.text for r in got]
    assert [r.json()["id"] for r in got] == ids * 3


async def test_concurrent_requests_each_answer_503_quickly_while_redis_is_frozen(
    own_redis: RedisServer,
) -> None:
    settings = make_settings(own_redis.url)
    async with app_client(settings) as http:
        ids = []
        for _ in range(4):
            r = await http.post("/v1/tasks", json={"url": "http://127.0.0.1:9/", "delay": 60})
            ids.append(r.json()["id"])
        with frozen(own_redis):
            results = await _probe_all(http, _probes(ids[0]))
            again = await _probe_all(http, _probes(ids[0]))  # with the pool's connections dead
        _assert_all_unavailable(results + again)
        await _assert_each_gets_its_own(http, ids)


async def test_taskorch_serve_answers_concurrent_requests_503_while_redis_is_frozen(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    settings = make_settings(own_redis.url)
    with serving(own_redis.url, tmp_path / "serve.log") as srv:
        h = {"Authorization": f"Bearer {mint_token(settings, 'alice')}"}
        async with httpx.AsyncClient(base_url=srv.url, headers=h, timeout=30) as http:
            ids = []
            for _ in range(4):
                r = await http.post("/v1/tasks", json={"url": "http://127.0.0.1:9/", "delay": 60})
                ids.append(r.json()["id"])
            with frozen(own_redis):
                results = await _probe_all(http, _probes(ids[0]))
            _assert_all_unavailable(results)
            await _assert_each_gets_its_own(http, ids)


# -- what a 503 on a create means ----------------------------------------------------------------


def _records(port: int, kind: str) -> list[str]:
    """The record keys of a kind ("t:" tasks, "o:" orchestrations) in every partition
    (``taskorch:{tag}:t:<id>``), not their :specs or :a parts."""
    keys = redis.Redis(port=port, decode_responses=True).keys(f"taskorch:{{*}}:{kind}*")
    return sorted(k for k in keys if k.count(":") == 3)


CREATES = pytest.mark.parametrize(
    ("path", "body", "key_prefix"),
    [
        ("/v1/tasks", {"url": "http://127.0.0.1:9/", "delay": 60}, "t:"),
        (
            "/v1/orchestrations",
            {"steps": [{"url": "http://127.0.0.1:9/"}], "delay": 60},
            "o:",
        ),
    ],
    ids=["task", "orchestration"],
)


@CREATES
async def test_a_create_answered_503_while_frozen_is_not_stored_when_redis_resumes(
    own_redis: RedisServer, path: str, body: dict[str, Any], key_prefix: str
) -> None:
    settings = make_settings(own_redis.url)
    async with app_client(settings) as http:
        # Redis knows the script (else the first send is NOSCRIPT, which writes nothing), and
        # the pool holds a connected connection: the next create reaches the frozen Redis.
        assert (await http.post(path, json=body)).status_code == 201
        before = _records(own_redis.port, key_prefix)
        keys = [{"Idempotency-Key": f"frozen-{i}"} for i in range(6)]
        with frozen(own_redis):
            answers = await asyncio.gather(*(http.post(path, json=body, headers=k) for k in keys))
        assert [r.status_code for r in answers] == [503] * len(keys), [r.text for r in answers]
        for r in answers:
            assert r.json()["error"]["details"][0]["outcome"] == "not_stored", r.text
        # Redis resumed and ran whatever had reached it: nothing of it took effect.
        assert (await http.get("/v1/tasks")).status_code == 200
        await asyncio.sleep(0.2)
        assert _records(own_redis.port, key_prefix) == before
        again = await http.post(path, json=body, headers=keys[0])
        assert again.status_code == 201, again.text  # the key was never claimed either


class CutBeforeReply(CutAfterScript):
    """Forwards a create's script to Redis, waits for Redis's reply (it ran), then drops the
    connection without forwarding it: Redis stored the create and the API cannot know (Redis
    killed between fsync and reply)."""

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.redis_port)
        self._writers += [writer, up_writer]
        script_sent = False

        async def upstream() -> None:
            nonlocal script_sent
            while data := await reader.read(65536):
                if b"EVAL" in data.upper():
                    script_sent = True
                up_writer.write(data)
                await up_writer.drain()

        async def downstream() -> None:
            nonlocal script_sent
            while data := await up_reader.read(65536):
                if script_sent:
                    if not data.startswith(b"-NOSCRIPT"):
                        self.cut = True
                        self._close_all()
                        return
                    script_sent = False  # not run: redis-py sends it again
                writer.write(data)
                await writer.drain()

        with contextlib.suppress(Exception):
            await asyncio.gather(upstream(), downstream())
        writer.close()
        up_writer.close()


@CREATES
async def test_a_create_whose_reply_was_lost_says_the_outcome_is_unknown(
    redis_server: RedisServer, path: str, body: dict[str, Any], key_prefix: str
) -> None:
    before = _records(redis_server.port, key_prefix)
    key = {"Idempotency-Key": f"lost-reply-{path}"}
    async with CutBeforeReply(redis_server.port) as proxy:
        settings = make_settings(f"redis://127.0.0.1:{proxy.port}/0")
        async with app_client(settings) as http:
            r = await http.post(path, json=body, headers=key)
    assert proxy.cut, "the proxy never saw the create's script"
    assert r.status_code == 503, r.text
    detail = r.json()["error"]["details"][0]
    assert detail["outcome"] == "unknown" and "Idempotency-Key" in detail["message"], r.text
    stored = [k for k in _records(redis_server.port, key_prefix) if k not in before]
    assert len(stored) == 1, stored
    # The repeat the answer recommends finds the stored one and makes no second.
    async with app_client(make_settings(f"redis://127.0.0.1:{redis_server.port}/0")) as http:
        again = await http.post(path, json=body, headers=key)
    assert again.status_code == 200 and stored[0].endswith(":" + key_prefix + again.json()["id"]), (
        again.text
    )


@CREATES
async def test_a_create_refused_before_it_was_sent_says_not_stored(
    own_redis: RedisServer, path: str, body: dict[str, Any], key_prefix: str
) -> None:
    settings = make_settings(own_redis.url)
    async with app_client(settings) as http:
        own_redis.stop(9)
        r = await http.post(path, json=body)
        own_redis.start()
    assert r.status_code == 503, r.text
    assert r.json()["error"]["details"][0]["outcome"] == "not_stored", r.text


async def test_the_redis_deadline_does_not_count_a_slow_upload(redis_url: str) -> None:
    """The bound is on Redis work: a client that takes longer than it to send its body (within
    the read deadlines) is answered normally."""
    settings = make_settings(redis_url)
    body = b'{"url": "http://127.0.0.1:9/", "delay": 60}'

    async def slowly() -> AsyncIterator[bytes]:
        for piece in (body[:10], body[10:]):
            yield piece
            await asyncio.sleep(settings.redis_timeout_s + 0.2)  # the slowness under test

    async with app_client(settings) as http:
        r = await http.post(
            "/v1/tasks", content=slowly(), headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 201, r.text


async def test_the_redis_deadline_holds_when_a_cancellation_is_swallowed() -> None:
    """redis-py sends each command under asyncio.wait_for, which on Python 3.11 swallows a
    cancellation that lands as the send completes; the request must still end at its deadline
    rather than wait out the next call's socket timeout (seen: 2 s answers under load)."""
    from taskorch.limits import RedisDeadline

    async def swallows_one_cancellation() -> None:
        try:
            await asyncio.Event().wait()  # a call that never answers
        except asyncio.CancelledError:
            pass  # what wait_for does when its inner future is done as the cancel arrives
        await asyncio.Event().wait()  # the next call, which never answers either

    async def bounded() -> int:
        try:
            async with RedisDeadline(0.1):
                await swallows_one_cancellation()
        except TimeoutError:
            task = asyncio.current_task()
            assert task is not None
            return task.cancelling()  # none of the deadline's cancellations left counted
        raise AssertionError("the block ended without the deadline")

    ended = asyncio.ensure_future(bounded())
    done, _ = await asyncio.wait({ended}, timeout=10)
    if not done:
        ended.cancel()
    assert done, "the request outlived its deadline by the next call's whole wait"
    assert ended.result() == 0

    # A cancellation from outside (a client gone, a shutdown) stays a cancellation.
    inner = asyncio.ensure_future(bounded())
    await asyncio.sleep(0.01)
    inner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await inner
