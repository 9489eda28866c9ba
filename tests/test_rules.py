"""The server's checks and the published OpenAPI schema hold one table of good and bad values.

For every rule both state (target URLs, headers, ids, names, queue names, durations): each good
value passes the server's check and every schema of the document that states the rule, request
and response alike (a stored value comes back in answers); each bad value fails the server's
check, and fails the request schemas unless it is listed as server-only, with the reason the
schema cannot say it. The document is the app's own ``GET /openapi.json``.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema_rs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskorch.errors import ApiError
from taskorch.models import ScheduleCreate, TaskCreate, decode_body
from taskorch.models.rules import URL_SCHEMA, url_problem
from taskorch.store import is_id
from tests.conftest import Api

LONG_PATH = "https://example.com/" + "a" * 8000

URLS_GOOD = [
    "https://example.com/hook",
    "http://127.0.0.1:49181/x",  # a five-digit port
    "http://example.com/x?a=1&b=2",  # a query string
    "https://example.com/a#frag",
    "http://a_b.example/",  # "_" in a host name
    "http://user:pw@example.com/",
    "http://u@v@example.com/",  # the host follows the last "@"
    "http://[::1]:8080/x",
    "http://[::ffff:1.2.3.4]/",
    "http://[2001:db8:0:0:0:0:2:1]/",
    "http://[fe80::1%25eth0]/",  # with its zone
    "HTTP://EXAMPLE.COM",
    "http://example.com:65535",
    "http://example.com:0/",
    "http://example.com:/",
    " http://example.com/",  # leading spaces are dropped when parsed
    "http://café.example/",
    "http://example.com/a b",
    LONG_PATH,
]
URLS_BAD = [
    "",
    "ftp://example.com/",
    "example.com",
    "http://",
    "http:///x",
    "http://:80/",
    "http:example.com",
    "http://example.com:65536/",
    "http://example.com:99999/",
    "http://example.com:8a/",
    "http://example.com/\n",
    "http://exa\tmple.com/",
    "h\tttp://example.com/",
    "http://example\x00.com/",
    "http://[::1/",
    "http://example.com]/",
    "http://[v1.x]/",
    "http://[fe80::1%25eth0/",
    "http://[fe80::1%]/",
    "https://example.com/" + "a" * 8200,
]
# Bad values the schema accepts: what the server adds to the pattern, with the reason.
URLS_SERVER_ONLY = {
    "http://[1::2::3]/": "a bracketed host must be a real IPv6 address (ipaddress decides)",
    "http://a\uff0fb/": "the host turns into a/b under NFKC normalization",
}

HEADERS_GOOD: list[dict[str, str]] = [
    {},
    {"X-Api-Key": "k"},
    {"Authorization": "Bearer abc.def"},
    {"x-tab": "a\tb"},
    {"X-Latin1": "café"},
    {"Hostname": "x"},
    {"X-Proxy": "x"},
    {"TE-X": "x"},
    {"!#$%&'*+.^_`|~": "x"},
]
HEADERS_BAD: list[dict[str, str]] = [
    {"Host": "x"},
    {"content-length": "1"},
    {"Transfer-Encoding": "chunked"},
    {"CONNECTION": "close"},
    {"Keep-Alive": "x"},
    {"te": "trailers"},
    {"Trailer": "x"},
    {"Upgrade": "h2c"},
    {"Proxy-Authorization": "x"},
    {"PROXY-x": "x"},
    {"bad name": "x"},
    {"": "x"},
    {"X-é": "x"},
    {"X": "a\r\nb"},
    {"X": "a\nb"},
    {"X": "\x00"},
    {"X": "€"},
]

QUEUES_GOOD = ["default", "q", "q-1", "A_b", "9", "a" * 64]
QUEUES_BAD = ["", "-a", "_a", "a" * 65, "a:b", "é", "a b", "a\n"]

NAMES_GOOD = ["", "nightly report", "ü" * 200]
NAMES_BAD: list[Any] = ["a" * 201, 5, True]

DELAYS_GOOD: list[Any] = [0, 0.5, 3600, 1e10]
DELAYS_BAD: list[Any] = [-1, -0.001, 1e10 + 1, True]

HEX = "0194c3a1b2c3d4e5f6a7b8c9"


def _server_ok(body: dict[str, Any], kind: type[Any] = TaskCreate) -> bool:
    try:
        decode_body(json.dumps(body).encode(), kind)
    except ApiError:
        return False
    return True


def _task(**fields: Any) -> dict[str, Any]:
    return {"url": "https://example.com/hook", **fields}


async def _schemas(api: Api) -> dict[str, Any]:
    r = await api.http.get("/openapi.json")
    assert r.status_code == 200
    return r.json()  # type: ignore[no-any-return]


def _validator(schema: dict[str, Any]) -> jsonschema_rs.Draft202012Validator:
    return jsonschema_rs.Draft202012Validator(schema)


def _properties(doc: dict[str, Any], field: str) -> dict[str, Any]:
    """Every component of the document with a property ``field``: name to its schema."""
    return {
        name: schema["properties"][field]
        for name, schema in doc["components"]["schemas"].items()
        if field in schema.get("properties", {})
    }


# Request bodies that state each rule (the schema the fuzzer and a client follow).
URL_REQUESTS = ("TaskCreate", "TaskPatch", "Callback", "ConditionSpec", "StepSpec", "TaskSpec")


async def test_urls_are_held_to_one_table(api: Api) -> None:
    doc = await _schemas(api)
    assert doc["components"]["schemas"]["TaskCreate"]["properties"]["url"] == URL_SCHEMA
    every = {n: _validator(s) for n, s in _properties(doc, "url").items()}
    every.update(ScheduleTask=_validator(doc["components"]["schemas"]["ScheduleTask"]))
    requests = {n: every[n] for n in (*URL_REQUESTS, "ScheduleTask")}
    wrong: list[tuple[str, str, str]] = []

    def url_in(name: str, url: str) -> Any:
        return {"url": url} if name == "ScheduleTask" else url

    for url in URLS_GOOD:
        if not _server_ok(_task(url=url)):
            wrong.append(("good, refused by the server", url, "TaskCreate"))
        if not _server_ok({"every": 60, "task": {"url": url}}, ScheduleCreate):
            wrong.append(("good, refused by the server", url, "ScheduleCreate"))
        if not _server_ok(_task(callback={"url": url})):
            wrong.append(("good, refused by the server", url, "callback"))
        for name, v in every.items():
            if not v.is_valid(url_in(name, url)):
                wrong.append(("good, refused by the schema", url, name))
    for url in [*URLS_BAD, *URLS_SERVER_ONLY]:
        if _server_ok(_task(url=url)):
            wrong.append(("bad, accepted by the server", url, "TaskCreate"))
        if _server_ok(_task(callback={"url": url})):
            wrong.append(("bad, accepted by the server", url, "callback"))
        if url in URLS_SERVER_ONLY:
            continue
        for name, v in requests.items():
            if v.is_valid(url_in(name, url)):
                wrong.append(("bad, accepted by the schema", url, name))
    assert not wrong, "\n".join(map(repr, wrong))


async def test_headers_are_held_to_one_table(api: Api) -> None:
    doc = await _schemas(api)
    every = {n: _validator(s) for n, s in _properties(doc, "headers").items()}
    requests = {n: v for n, v in every.items() if n in (*URL_REQUESTS, "ScheduleTask")}
    assert len(requests) == len(URL_REQUESTS) + 1, sorted(every)
    wrong: list[tuple[str, dict[str, str], str]] = []
    for headers in HEADERS_GOOD:
        if not _server_ok(_task(headers=headers)):
            wrong.append(("good, refused by the server", headers, "TaskCreate"))
        if not _server_ok(_task(callback={"url": "http://x/", "headers": headers})):
            wrong.append(("good, refused by the server", headers, "callback"))
        for name, v in every.items():
            if not v.is_valid(headers):
                wrong.append(("good, refused by the schema", headers, name))
    for headers in HEADERS_BAD:
        if _server_ok(_task(headers=headers)):
            wrong.append(("bad, accepted by the server", headers, "TaskCreate"))
        for name, v in requests.items():
            if v.is_valid(headers):
                wrong.append(("bad, accepted by the schema", headers, name))
    assert not wrong, "\n".join(map(repr, wrong))


def _path_param(doc: dict[str, Any], path: str, name: str, method: str = "get") -> dict[str, Any]:
    for op in [doc["paths"][path][method]]:
        for param in op.get("parameters", []):
            if param["name"] == name:
                return param["schema"]  # type: ignore[no-any-return]
    raise AssertionError(f"{path} has no parameter {name}")


@pytest.mark.parametrize(
    ("prefix", "path", "param"),
    [
        ("tsk", "/v1/tasks/{task_id}", "task_id"),
        ("orc", "/v1/orchestrations/{orc_id}", "orc_id"),
        ("fn", "/v1/functions/{fn_id}", "fn_id"),
        ("sch", "/v1/schedules/{sch_id}", "sch_id"),
    ],
)
async def test_ids_are_held_to_one_table(api: Api, prefix: str, path: str, param: str) -> None:
    doc = await _schemas(api)
    schema = _validator(_path_param(doc, path, param))
    listed = "/v1/tasks" if prefix == "tsk" else path.rsplit("/", 1)[0]
    cursor = _validator(_path_param(doc, listed, "cursor"))
    good = [f"{prefix}_{HEX}", f"{prefix}_{'0' * 24}"]
    other = "orc" if prefix != "orc" else "tsk"
    bad = [
        "",
        prefix,
        f"{prefix}_",
        f"{prefix}_{HEX[:-1]}",
        f"{prefix}_{HEX}0",
        f"{prefix}_{HEX.upper()}",
        f"{prefix}-{HEX}",
        f"{other}_{HEX}",
        f"{prefix}_{HEX}\n",
        f"{prefix}_{HEX}:attempts",
    ]
    wrong = [("good", v) for v in good if not (is_id(v, prefix) and schema.is_valid(v))]
    wrong += [("good cursor", v) for v in good if not cursor.is_valid(v)]
    wrong += [("bad, server", v) for v in bad if is_id(v, prefix)]
    wrong += [("bad, schema", v) for v in bad if schema.is_valid(v)]
    wrong += [("bad cursor", v) for v in bad if v and cursor.is_valid(v)]
    assert not wrong, wrong


async def test_queue_names_are_held_to_one_table(api: Api) -> None:
    doc = await _schemas(api)
    schemas = doc["components"]["schemas"]
    fields = {n: _validator(s) for n, s in _properties(doc, "queue").items()}
    for name in ("TaskCreate", "TaskPatch", "ScheduleTask"):
        assert name in fields, sorted(fields)
    query = _validator(
        next(p for p in doc["paths"]["/v1/tasks"]["get"]["parameters"] if p["name"] == "queue")[
            "schema"
        ]
    )
    put = _validator(_path_param(doc, "/v1/queues/{queue}", "queue", "put"))
    assert "Task" in schemas
    wrong: list[tuple[str, str, str]] = []
    for q in QUEUES_GOOD:
        if not _server_ok(_task(queue=q)):
            wrong.append(("good, server", q, "TaskCreate"))
        wrong += [("good, schema", q, n) for n, v in fields.items() if not v.is_valid(q)]
        if not query.is_valid(q):
            wrong.append(("good, schema", q, "GET /v1/tasks?queue="))
        if q != "default" and not put.is_valid(q):
            wrong.append(("good, schema", q, "PUT /v1/queues/{queue}"))
    for q in QUEUES_BAD:
        if _server_ok(_task(queue=q)):
            wrong.append(("bad, server", q, "TaskCreate"))
        requests = {n: v for n, v in fields.items() if n not in ("Task", "Queue")}
        wrong += [("bad, schema", q, n) for n, v in requests.items() if v.is_valid(q)]
        if q and query.is_valid(q):
            wrong.append(("bad, schema", q, "GET /v1/tasks?queue="))
        if put.is_valid(q):
            wrong.append(("bad, schema", q, "PUT /v1/queues/{queue}"))
    assert not wrong, "\n".join(map(repr, wrong))


@pytest.mark.parametrize(
    ("field", "good", "bad"),
    [("name", NAMES_GOOD, NAMES_BAD), ("delay", DELAYS_GOOD, DELAYS_BAD)],
)
async def test_names_and_durations_are_held_to_one_table(
    api: Api, field: str, good: list[Any], bad: list[Any]
) -> None:
    doc = await _schemas(api)
    schema = _validator(doc["components"]["schemas"]["TaskCreate"]["properties"][field])
    wrong = [
        ("good", v) for v in good if not (_server_ok(_task(**{field: v})) and schema.is_valid(v))
    ]
    wrong += [("bad, server", v) for v in bad if _server_ok(_task(**{field: v}))]
    wrong += [("bad, schema", v) for v in bad if schema.is_valid(v)]
    assert not wrong, wrong


_URL_PARTS = st.sampled_from(
    [
        *("http://", "https://", "HTTP://", " ", "@", ":", "/", "?", "#", "[", "]", "%", "."),
        *("::1", "fe80::1", "1.2.3.4", "0", "65535", "65536", "99999", "a", "é", "\uff0f"),
        *("\t", "\x00", "\x7f", "\n", "v1.x", "ffff:", "example.com", "a b", "\\", "~", "_"),
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_URL_PARTS, min_size=1, max_size=12).map("".join))
def test_the_url_schema_never_refuses_what_the_server_accepts(url: str) -> None:
    """Any string the server takes as a target the published pattern takes too (the schema may
    take more: what the server adds, in its description)."""
    server = url_problem(url) is None
    assert not server or _validator(URL_SCHEMA).is_valid(url), url
