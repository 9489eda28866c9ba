"""Hunting for 500s: the API fuzzed from its own OpenAPI document, then hand-written nasty requests.

The contract: nothing a client sends may produce a 500, and every error answer has the body
``{"error": {"code", "message", "details": [...]}}``.

The fuzzing half runs schemathesis in process (``from_asgi``) against a real Redis, with a fixed
seed and a bounded number of examples per operation, so a run is repeatable and takes seconds:
12 per operation by default (CI), ``TASKORCH_FUZZ_EXAMPLES=30`` or more for a longer hunt
(``scripts/faults`` runs 30).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import schemathesis
import structlog.testing
from hypothesis import strategies as st
from schemathesis.config import SchemathesisConfig
from schemathesis.python.asgi import shutdown_lifespans

from taskorch.api import create_app
from taskorch.auth import mint_token
from taskorch.functions import Functions
from taskorch.settings import Settings
from tests.conftest import LiveServer, _WithState

# A target no task here ever calls (no worker runs in this module); loopback is allowed in tests.
TARGET = "http://127.0.0.1:9/fuzz"
FAR = 10**9  # seconds: seeded resources stay scheduled for the whole run


def assert_error_shape(r: httpx.Response | Any, what: str = "") -> None:
    """The contract's error body: exactly ``{"error": {"code", "message", "details": [...]}}``."""
    try:
        body = r.json()
    except ValueError:
        raise AssertionError(
            f"{what}: {r.status_code} with a non-JSON body {r.text[:300]!r}"
        ) from None
    assert isinstance(body, dict) and set(body) == {"error"}, f"{what}: {r.status_code} {body!r}"
    err = body["error"]
    assert isinstance(err, dict) and set(err) == {"code", "message", "details"}, f"{what}: {body!r}"
    assert isinstance(err["code"], str) and err["code"], f"{what}: {body!r}"
    assert isinstance(err["message"], str) and err["message"], f"{what}: {body!r}"
    assert isinstance(err["details"], list), f"{what}: {body!r}"
    for d in err["details"]:
        assert isinstance(d, dict) and set(d) == {"field", "message"}, f"{what}: {body!r}"


def assert_no_500(r: httpx.Response | Any, what: str = "") -> None:
    assert r.status_code < 500, f"{what}: {r.status_code} {r.text[:500]}"
    if r.status_code >= 400:
        assert_error_shape(r, what)


# -- schemathesis ------------------------------------------------------------------------------

EXAMPLES = int(os.environ.get("TASKORCH_FUZZ_EXAMPLES", "12"))
FUZZ_CONFIG = {
    "seed": 20261126,
    "generation": {
        "mode": "all",  # valid and invalid inputs
        "max-examples": EXAMPLES,  # per operation, fuzzing phase
        "deterministic": True,
        "database": "none",
        # The bearer token is ours, always valid; auth failures are tested by hand elsewhere.
        "with-security-parameters": False,
    },
    # examples + coverage (boundary values) + fuzzing; the stateful phase would need links.
    "phases": {"stateful": {"enabled": False}},
}
# /v1/events is a stream that never ends; /fn/{id}/{key} needs a built function.
NOT_FUZZED = r"^/(v1/events|fn/)"


def _with_target_urls(value: Any) -> Any:
    """``value`` with every ``url`` string replaced by a valid target, at any depth."""
    if isinstance(value, dict):
        return {
            k: TARGET if k == "url" and isinstance(v, str) else _with_target_urls(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_with_target_urls(v) for v in value]
    return value


@pytest.fixture
def fuzz_auth(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(settings, 'alice')}"}


@pytest.fixture
def fuzz_schema(
    settings: Settings, fuzz_auth: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    # A function create starts a build (compilers, pip) in the background; only the API is
    # fuzzed here, so created functions simply stay "building".
    monkeypatch.setattr(Functions, "_spawn_build", lambda self, fid: None)
    app = create_app(settings)
    schema = schemathesis.openapi.from_asgi(
        "/openapi.json", app, config=SchemathesisConfig.from_dict(FUZZ_CONFIG)
    )
    try:
        real = _seed_resources(schema, fuzz_auth)

        # A generated url is almost never http(s), so without help every create is a 422 and the
        # code behind validation is never reached: most bodies get a valid target instead.
        @schema.hook
        def flatmap_body(context: Any, body: Any) -> Any:
            fixed = _with_target_urls(body)
            return st.sampled_from([fixed, body]) if fixed != body else st.just(body)

        # Likewise a generated id never exists: half the cases address a real resource.
        @schema.hook
        def flatmap_path_parameters(context: Any, params: dict[str, Any] | None) -> Any:
            options = []
            for name in ("task_id", "orc_id", "fn_id"):
                if params and name in params:
                    options.append({**params, name: real[name]})
            return st.sampled_from([*options, params])

        yield schema
    finally:
        shutdown_lifespans()


def _seed_resources(schema: Any, auth: dict[str, str]) -> dict[str, str]:
    """A scheduled task, orchestration and function of alice's, for cases to address."""

    def create(path: str, body: dict[str, Any]) -> str:
        r = schema[path]["POST"].Case(body=body, media_type="application/json").call(headers=auth)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    return {
        "task_id": create("/v1/tasks", {"url": TARGET, "delay": FAR}),
        "orc_id": create("/v1/orchestrations", {"steps": [{"url": TARGET}], "delay": FAR}),
        "fn_id": create(
            "/v1/functions",
            {"name": "f", "runtime": "python", "code": "def handler(e, c):\n    return e\n"},
        ),
    }


fuzzed = schemathesis.pytest.from_fixture("fuzz_schema").exclude(path_regex=NOT_FUZZED)


# One test runs every operation: since the document's schemas say which URLs, headers and times
# are valid, far more cases get past validation and do real work.
@pytest.mark.timeout(300)
@fuzzed.parametrize()
def test_fuzzed_requests_never_answer_500_and_errors_have_the_contract_shape(
    case: Any, fuzz_auth: dict[str, str]
) -> None:
    what = case.as_curl_command(headers=fuzz_auth)
    try:
        r = case.call(headers=fuzz_auth)
    except Exception as exc:  # Starlette re-raises what it answered 500 for
        raise AssertionError(f"the app raised {exc!r} for:\n{what}") from exc
    assert_no_500(r, what)


# -- hand-written nasty requests ---------------------------------------------------------------


@pytest.fixture
async def http(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app in process, as the ``api`` fixture builds it, but a 500 comes back as a response
    (its traceback is logged as ``api.unexpected_error``) instead of being raised here."""
    from taskorch.store import connect

    client = connect(settings.redis_url)
    app = create_app(settings, redis_client=client)
    async with app.router.lifespan_context(app) as state:
        transport = httpx.ASGITransport(app=_WithState(app, state), raise_app_exceptions=False)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://taskorch") as c:
            c.headers["Authorization"] = f"Bearer {mint_token(settings, 'alice')}"
            yield c
    await client.aclose()


# Ids of the form the service hands out (so the body is what is judged), naming nothing.
NO_TASK, NO_ORC = "tsk_" + "0" * 24, "orc_" + "0" * 24
JSON_ROUTES = [
    ("POST", "/v1/tasks"),
    ("PATCH", f"/v1/tasks/{NO_TASK}"),
    ("POST", "/v1/orchestrations"),
    ("PATCH", f"/v1/orchestrations/{NO_ORC}"),
    ("POST", "/v1/functions"),
    ("POST", "/v1/auth/token"),
]
JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize(
    "body",
    [b"\xff\xfe\x00\x80", b'{"url": "\xff\xfe"}', b'{"\xc3\x28": 1}'],
    ids=["bytes", "in-a-string", "in-a-key"],
)
@pytest.mark.parametrize(("method", "path"), JSON_ROUTES)
async def test_non_utf8_body(http: httpx.AsyncClient, method: str, path: str, body: bytes) -> None:
    r = await http.request(method, path, content=body, headers=JSON)
    assert_no_500(r, f"{method} {path} {body!r}")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json", r.text


@pytest.mark.parametrize(
    "body",
    [
        b"1e400",
        b"-1e400",
        b"123456789012345678901234567890",
        b'{"url": "http://127.0.0.1:9/", "retries": 123456789012345678901234567890}',
        b'{"url": "http://127.0.0.1:9/", "timeout": 1e400}',
        b'{"url": "http://127.0.0.1:9/", "delay": 1e400}',
        b'{"url": "http://127.0.0.1:9/", "delay": 123456789012345678901234567890}',
        b'{"url": "http://127.0.0.1:9/", "backoff": 1e308, "delay": 60}',
        b'{"url": "http://127.0.0.1:9/", "payload": 123456789012345678901234567890, "delay": 60}',
        b'{"url": "http://127.0.0.1:9/", "payload": [1e400]}',
    ],
    ids=[
        "1e400",
        "-1e400",
        "bigint",
        "bigint-retries",
        "inf-timeout",
        "inf-delay",
        "bigint-delay",
        "1e308-backoff",
        "bigint-payload",
        "inf-in-payload",
    ],
)
async def test_huge_numbers(http: httpx.AsyncClient, body: bytes) -> None:
    r = await http.post("/v1/tasks", content=body, headers=JSON)
    assert_no_500(r, body.decode())
    if r.status_code == 201:  # what was stored must read back
        assert_no_500(await http.get(f"/v1/tasks/{r.json()['id']}"), "read back")
        assert_no_500(await http.get("/v1/tasks"), "list")


@pytest.mark.parametrize(
    "run_at", ["9999-12-31T23:59:59.999-23:59", "9999-12-31T23:59:59Z", "0001-01-01T00:00:00+23:59"]
)
async def test_extreme_run_at(http: httpx.AsyncClient, run_at: str) -> None:
    r = await http.post("/v1/tasks", json={"url": TARGET, "run_at": run_at})
    assert_no_500(r, f"create with run_at {run_at}")
    r = await http.post("/v1/orchestrations", json={"steps": [{"url": TARGET}], "run_at": run_at})
    assert_no_500(r, f"orchestration with run_at {run_at}")
    task = (await http.post("/v1/tasks", json={"url": TARGET, "delay": 60})).json()
    r = await http.patch(f"/v1/tasks/{task['id']}", json={"run_at": run_at})
    assert_no_500(r, f"modify to run_at {run_at}")


DEPTH = 100_000


@pytest.mark.parametrize(
    "body",
    [
        b"[" * DEPTH + b"]" * DEPTH,
        b'{"a":' * DEPTH + b"1" + b"}" * DEPTH,
        b'{"url": "http://127.0.0.1:9/", "payload": ' + b"[" * DEPTH + b"]" * DEPTH + b"}",
        # Deep, but within what the parser takes: the stored payload must still read back.
        b'{"url": "http://127.0.0.1:9/", "delay": 60, "payload": ' + b"[" * 200 + b"]" * 200 + b"}",
    ],
    ids=["arrays", "objects", "in-payload", "200-deep-payload"],
)
@pytest.mark.parametrize(("method", "path"), JSON_ROUTES)
async def test_deeply_nested_json(
    http: httpx.AsyncClient, method: str, path: str, body: bytes
) -> None:
    r = await http.request(method, path, content=body, headers=JSON)
    assert_no_500(r, f"{method} {path} nested JSON")
    if r.status_code == 201 and path == "/v1/tasks":
        assert_no_500(await http.get(f"/v1/tasks/{r.json()['id']}"), "read back")


@pytest.mark.parametrize(
    "raw_id",
    [
        "tsk_%00",
        "%00",
        "tsk_%F0%9F%92%A5",
        "%E2%80%AE%E5%90%8D",
        "%ED%A0%80",
        "%FF%FE",
        "%25",
        "x" * 5000,
    ],
)
async def test_odd_path_ids(http: httpx.AsyncClient, raw_id: str) -> None:
    for method, path in [
        ("GET", f"/v1/tasks/{raw_id}"),
        ("PATCH", f"/v1/tasks/{raw_id}"),
        ("POST", f"/v1/tasks/{raw_id}/cancel"),
        ("GET", f"/v1/orchestrations/{raw_id}"),
        ("PATCH", f"/v1/orchestrations/{raw_id}"),
        ("POST", f"/v1/orchestrations/{raw_id}/cancel"),
        ("GET", f"/v1/functions/{raw_id}"),
        ("DELETE", f"/v1/functions/{raw_id}"),
    ]:
        r = await http.request(method, path, json={} if method == "PATCH" else None)
        assert_no_500(r, f"{method} {path}")
        assert r.status_code in (404, 422), f"{method} {path}: {r.status_code} {r.text}"


@pytest.mark.parametrize("path", ["/v1/tasks", "/v1/orchestrations"])
async def test_idempotency_key_of_300_chars(http: httpx.AsyncClient, path: str) -> None:
    body = {"url": TARGET} if path == "/v1/tasks" else {"steps": [{"url": TARGET}]}
    r = await http.post(path, json=body, headers={"Idempotency-Key": "k" * 300})
    assert_no_500(r, f"POST {path} with a 300-char Idempotency-Key")
    assert r.status_code == 400, r.text
    latin1 = ("é" * 255).encode("latin-1")  # header bytes are latin-1; 255 characters is allowed
    r = await http.post(path, json=body, headers={"Idempotency-Key": latin1})  # type: ignore[dict-item]
    assert_no_500(r, f"POST {path} with a latin-1 Idempotency-Key")
    assert r.status_code == 201, r.text


CURSORS = ["(", "[", "-", "+", "(+", "[-", "\x00", "\u00ff", "\U0001f4a5", "a" * 10_000]


@pytest.mark.parametrize(
    ("path", "prefix"),
    [("/v1/tasks", "tsk_"), ("/v1/orchestrations", "orc_"), ("/v1/functions", "fn_")],
)
async def test_cursor_with_redis_lex_range_markers(
    http: httpx.AsyncClient, path: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Functions, "_spawn_build", lambda self, fid: None)
    for _ in range(3):  # something to page through
        await http.post("/v1/tasks", json={"url": TARGET, "delay": FAR})
        await http.post("/v1/orchestrations", json={"steps": [{"url": TARGET}], "delay": FAR})
        await http.post("/v1/functions", json={"name": "f", "runtime": "python", "code": "x = 1\n"})
    values = [*CURSORS, *(prefix + m for m in CURSORS), *(m + prefix for m in CURSORS)]
    for cursor in values:
        r = await http.get(path, params={"cursor": cursor, "limit": "2"})
        assert_no_500(r, f"GET {path}?cursor={cursor[:20]!r}")
        if r.status_code == 200:
            assert all(i["id"].startswith(prefix) for i in r.json()["items"]), r.text


@pytest.mark.parametrize(
    "limit",
    ["99999999999999999999", "0", "-1", "1e3", " 5", "", "\u00b2", "\u0661\u0660", "\U0001d7d9"],
    ids=[
        "huge",
        "zero",
        "negative",
        "float",
        "space",
        "empty",
        "superscript-2",
        "arabic-10",
        "math-1",
    ],
)
@pytest.mark.parametrize("path", ["/v1/tasks", "/v1/orchestrations", "/v1/functions"])
async def test_odd_limit(http: httpx.AsyncClient, path: str, limit: str) -> None:
    r = await http.get(path, params={"limit": limit})
    assert_no_500(r, f"GET {path}?limit={limit!r}")


@pytest.mark.parametrize(
    "sub",
    ["s" * 10_000, "ålice-名前-\U0001f4a5", "a\x00b", "\u202e", " ", "\ud800"],
    ids=["10k", "unicode", "nul", "rtl-override", "space", "lone-surrogate"],
)
async def test_token_sub_long_or_unicode(
    http: httpx.AsyncClient, settings: Settings, sub: str
) -> None:
    h = {"Authorization": f"Bearer {mint_token(settings, sub)}"}
    r = await http.post("/v1/tasks", json={"url": TARGET, "delay": 60}, headers=h)
    assert_no_500(r, f"create as sub {sub[:20]!r}")
    for path in ["/v1/tasks", "/v1/orchestrations", "/v1/functions", "/v1/stats"]:
        assert_no_500(await http.get(path, headers=h), f"GET {path} as sub {sub[:20]!r}")
    if r.status_code == 201:
        task_id = r.json()["id"]
        assert_no_500(await http.get(f"/v1/tasks/{task_id}", headers=h), "read back")
        # Owners stay apart: alice does not see it.
        assert (await http.get(f"/v1/tasks/{task_id}")).status_code == 404


@pytest.mark.parametrize(
    ("declared", "body"),
    [
        (b"1000", b'{"url": "http://127.0.0.1:9/"}'),  # more than is sent
        (b"3", b'{"url": "http://127.0.0.1:9/"}'),  # less than is sent
        (b"abc", b'{"url": "http://127.0.0.1:9/"}'),
        (b"-5", b'{"url": "http://127.0.0.1:9/"}'),
        (b"99999999999999999999999", b'{"url": "http://127.0.0.1:9/"}'),
        (b"\xb2", b'{"url": "http://127.0.0.1:9/"}'),  # latin-1 superscript two: isdigit() is True
    ],
    ids=["more", "less", "letters", "negative", "huge", "superscript-2"],
)
async def test_content_length_that_lies_in_process(
    http: httpx.AsyncClient, declared: bytes, body: bytes
) -> None:
    headers = {"Content-Type": "application/json", "Content-Length": declared}
    r = await http.post("/v1/tasks", content=body, headers=headers)  # type: ignore[arg-type]
    assert_no_500(r, f"Content-Length {declared!r}")


async def _raw_exchange(url: str, request: bytes, *, half_close: bool) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        if half_close:
            writer.write_eof()
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(reader.read(), 1)
        return b""  # the server still waits for the rest of the body; we hang up
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


@pytest.mark.parametrize(
    ("declared", "half_close"),
    [(1000, True), (1000, False), (3, False)],
    ids=["more-then-eof", "more-then-hang-up", "less"],
)
async def test_content_length_that_lies_on_a_socket(
    live_server: LiveServer, declared: int, half_close: bool
) -> None:
    """Through uvicorn: a body shorter than declared ends in a disconnect mid-read. Whatever is
    answered must not be a 500, and the server must not log it as an internal error either (the
    500 it would answer is only unseen because the client is gone)."""
    token = mint_token(live_server.settings, "alice")
    body = b'{"url": "http://127.0.0.1:9/", "delay": 60}'
    head = (
        f"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
    ).encode()
    with structlog.testing.capture_logs() as logs:
        answer = await _raw_exchange(live_server.url, head + body, half_close=half_close)
        await asyncio.sleep(0.2)  # let the server finish with the request
    statuses = [
        int(line.split()[1]) for line in answer.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")
    ]
    assert all(s < 500 for s in statuses), answer[:500]
    unexpected = [e for e in logs if e.get("event") == "api.unexpected_error"]
    assert not unexpected, (
        f"the server answered 500 (internal_error) to a lying Content-Length: {unexpected}"
    )


@pytest.mark.parametrize(
    "body",
    [b"[" * DEPTH + b"]" * DEPTH, b'"\xff"', b'{"\xc3\x28": 1}', b"\xff\xfe", b"1e400"],
    ids=["nested", "non-utf8-string", "non-utf8-key", "non-utf8-bytes", "1e400"],
)
async def test_trigger_url_with_nasty_body(http: httpx.AsyncClient, body: bytes) -> None:
    """The trigger URL needs no token and reads the body before it checks the id and key, so
    these reach the parser from anyone; a wrong id must still be a 400 or a 404."""
    r = await http.post("/fn/fn_0/key", content=body, headers=JSON)
    assert_no_500(r, f"POST /fn/fn_0/key {body[:20]!r}")


@pytest.mark.parametrize(
    ("data", "files"),
    [
        (
            {"name": "f", "runtime": "python", "schedule": "[" * DEPTH + "]" * DEPTH},
            {"code": b"x=1"},
        ),
        ({"name": "f", "runtime": "python", "schedule": "{"}, {"code": b"x=1"}),
        ({"name": "f", "runtime": "python"}, {"code": b"\xff\xfe"}),
        ({"name": "f", "runtime": "python", "unknown": "1"}, {"code": b"x=1"}),
        ({"name": "f", "runtime": "python"}, {"code": b"x=1", "requirements": b"y"}),
    ],
    ids=["nested-schedule", "bad-schedule", "non-utf8-code", "unknown-field", "two-files"],
)
async def test_multipart_function_create_with_nasty_parts(
    http: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
    data: dict[str, str],
    files: dict[str, bytes],
) -> None:
    monkeypatch.setattr(Functions, "_spawn_build", lambda self, fid: None)
    r = await http.post("/v1/functions", data=data, files=files)
    assert_no_500(r, f"multipart {list(data)} {list(files)}")
    assert 400 <= r.status_code < 500, r.text


async def test_multipart_without_boundary(http: httpx.AsyncClient) -> None:
    headers = {"Content-Type": "multipart/form-data"}
    r = await http.post("/v1/functions", content=b"--x\r\n\r\n", headers=headers)
    assert_no_500(r, "multipart without a boundary")
