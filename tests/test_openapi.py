"""The OpenAPI document says what the API does: ``schemathesis run --checks all`` (examples,
coverage, fuzzing and the stateful phase, which follows the document's links from a create to the
GET, PATCH and cancel of what it made), authenticated, against ``taskorch serve`` on a socket.

Case counts are small by default; ``TASKORCH_OPENAPI_EXAMPLES=100 pytest tests/test_openapi.py``
runs the full count.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema_rs
import pytest

from taskorch import constants as c
from taskorch.api import ROUTES
from taskorch.auth import mint_token
from taskorch.store import connect
from tests.conftest import SECRET, Api, free_port, make_settings

EXAMPLES = int(os.environ.get("TASKORCH_OPENAPI_EXAMPLES", "4"))
# The API alone: function builds (compilers, pip) stay off, so created functions stay "building"
# and no generated `requirements` ever reaches a package index. No worker runs, so no generated
# target URL is ever called.
LAUNCH = (
    "from taskorch.functions import Functions\n"
    "Functions._spawn_build = lambda self, fid: None\n"
    "from taskorch.cli import main\n"
    "main(['serve'])\n"
)


@pytest.fixture
def served(redis_url: str, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKORCH_")}
    env.update(
        TASKORCH_REDIS_URL=redis_url,
        TASKORCH_JWT_SECRET=SECRET,
        TASKORCH_PORT=str(port),
        TASKORCH_ALLOW_PRIVATE_TARGETS="1",
        TASKORCH_FUNCTIONS_DIR=str(tmp_path / "functions"),
        TASKORCH_LOG_LEVEL="warning",
    )
    with open(tmp_path / "serve.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCH], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, (
                tmp_path / "serve.log"
            ).read_text()
            time.sleep(0.1)
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# /v1/events never ends: schemathesis reads an event stream until it has sent this many events or
# the operation's request timeout passes, whichever comes first; a producer (below) keeps events
# coming, so each read ends at its first event and the stream's events are checked against the
# document.
STREAM_CONFIG = """
[[operations]]
include-path = "/v1/events"
max-stream-events = 2
request-timeout = 5
"""


_NEVER_CALLED = "https://example.com/hook"  # no worker runs here


@contextlib.contextmanager
def changes_streamed(base: str, token: str) -> Iterator[list[int]]:
    """A thread that changes one of the owner's schedules and tasks every 0.2 s, so that every
    open ``/v1/events`` stream has real events to send (schedule and task ones); yields the
    count of changes made so far, in a list."""
    made = [0]
    stop = threading.Event()

    def produce() -> None:
        auth = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=base, headers=auth, timeout=10) as http:
            schedule = None
            while not stop.is_set():
                with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
                    if schedule is None:
                        schedule = http.post(
                            "/v1/schedules",
                            json={"every": 3600, "task": {"url": _NEVER_CALLED}},
                        ).json()["id"]
                    verb = "pause" if made[0] % 2 == 0 else "resume"
                    if http.post(f"/v1/schedules/{schedule}/{verb}").status_code == 404:
                        schedule = None  # deleted by the run: make another
                    task = http.post("/v1/tasks", json={"url": _NEVER_CALLED, "delay": 3600})
                    http.post(f"/v1/tasks/{task.json()['id']}/cancel")
                    made[0] += 1
                stop.wait(0.2)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        yield made
    finally:
        stop.set()
        thread.join(30)


@pytest.mark.timeout(900)
def test_schemathesis_finds_no_failure(served: str, redis_url: str, tmp_path: Path) -> None:
    exe = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert exe, "schemathesis is in the dev extras"
    token = mint_token(make_settings(redis_url), "fuzz")
    (tmp_path / "schemathesis.toml").write_text(STREAM_CONFIG)
    with changes_streamed(served, token) as made:
        p = subprocess.run(
            [
                exe, "--config-file", str(tmp_path / "schemathesis.toml"),
                "run", f"{served}/openapi.json",
                "--checks", "all",
                "--phases", "examples,coverage,fuzzing,stateful",
                "--header", f"Authorization: Bearer {token}",
                "--max-examples", str(EXAMPLES),
                "--seed", "20261130",
                "--generation-deterministic",
                "--request-timeout", "30",
                "--workers", "1",
                "--no-color",
                # /fn/{id}/{key} needs a built function.
                "--exclude-path-regex", "^/fn/",
            ],
            capture_output=True,
            text=True,
            timeout=900,
            cwd=tmp_path,
        )  # fmt: skip
    assert made[0] > 0, "the producer made no changes to stream"
    assert p.returncode == 0, p.stdout[-20000:] + p.stderr[-5000:]
    assert "Stateful" in p.stdout and "API Links" in p.stdout
    # Every operation but the trigger URL's, the event stream included.
    paths = httpx.get(f"{served}/openapi.json").json()["paths"]
    total = sum(len(ops) for ops in paths.values())
    fuzzed = sum(len(ops) for path, ops in paths.items() if not path.startswith("/fn/"))
    assert "/v1/events" in paths
    assert re.search(rf"Operations:\s+{fuzzed} selected / {total} total", p.stdout), p.stdout


async def test_every_route_answers_405_with_allow(served: str) -> None:
    methods: dict[str, set[str]] = {}
    for path, _, method in ROUTES:
        methods.setdefault(path, set()).add(method)
    async with httpx.AsyncClient(base_url=served) as http:
        for path, allowed in methods.items():
            concrete = path.replace("{task_id}", "tsk_1").replace("{orc_id}", "orc_1")
            concrete = concrete.replace("{fn_id}", "fn_1").replace("{key}", "k")
            concrete = concrete.replace("{sch_id}", "sch_1")
            wrong = next(m for m in ("PUT", "DELETE", "PATCH", "GET") if m not in allowed)
            r = await http.request(wrong, concrete)
            assert r.status_code == 405, (wrong, path, r.text)
            want = allowed | ({"HEAD"} if "GET" in allowed else set())
            assert set(r.headers["allow"].split(", ")) == want, (path, r.headers)
            assert r.json()["error"]["code"] == "method_not_allowed"


async def test_document_names_every_answer_a_client_can_get(served: str) -> None:
    async with httpx.AsyncClient(base_url=served) as http:
        doc = (await http.get("/openapi.json")).json()
        # 401 wherever a token is needed, /v1/events and /v1/stats included; and they do answer it.
        for path, ops in doc["paths"].items():
            for method, op in ops.items():
                if op.get("security", doc["security"]):
                    assert "401" in op["responses"], (method, path)
                    assert "503" in op["responses"], (method, path)
        for path in ("/v1/events", "/v1/stats"):
            r = await http.get(path)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        # Links take the stateful phase from what a POST made to its GET, PATCH and cancel.
        links = doc["paths"]["/v1/tasks"]["post"]["responses"]["201"]["links"]
        assert {link["operationId"] for link in links.values()} == {
            "getTask",
            "modifyTask",
            "cancelTask",
        }
        op_ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
        assert len(op_ids) == len(set(op_ids))


async def test_the_changes_the_service_publishes_are_documented_events(api: Api) -> None:
    """What ``/v1/events`` sends as each event's data, as the scripts publish it: a task's,
    an orchestration's and a schedule's changes, their deletion included, all fit the
    document's Event (schemathesis above sees the stream's schedule and task events only)."""
    doc = (await api.http.get("/openapi.json")).json()
    event = jsonschema_rs.Draft202012Validator(doc["components"]["schemas"]["Event"])
    sse = doc["paths"]["/v1/events"]["get"]["responses"]["200"]["content"]["text/event-stream"]
    assert sse["schema"]["properties"]["data"]["contentSchema"] == {
        "$ref": "#/components/schemas/Event"
    }
    listener = connect(api.settings.redis_url)
    pubsub = listener.pubsub()
    await pubsub.subscribe(c.EVENTS_CHANNEL_PREFIX + "alice")
    try:
        auth = api.auth()
        later = {"url": "https://example.com/hook", "delay": 3600}
        task = (await api.http.post("/v1/tasks", json=later, headers=auth)).json()
        await api.http.post(f"/v1/tasks/{task['id']}/cancel", headers=auth)
        steps = {"steps": [{"url": "https://example.com/hook"}], "delay": 3600}
        orc = await api.http.post("/v1/orchestrations", json=steps, headers=auth)
        await api.http.post(f"/v1/orchestrations/{orc.json()['id']}/cancel", headers=auth)
        body = {"every": 3600, "task": {"url": "https://example.com/hook"}}
        sch = (await api.http.post("/v1/schedules", json=body, headers=auth)).json()
        await api.http.post(f"/v1/schedules/{sch['id']}/pause", headers=auth)
        assert (await api.http.delete(f"/v1/schedules/{sch['id']}", headers=auth)).status_code < 300
        want = {
            ("task", "scheduled"),
            ("task", "cancelled"),
            ("orchestration", "scheduled"),
            ("orchestration", "cancelled"),
            ("schedule", "active"),
            ("schedule", "paused"),
            ("schedule", "deleted"),
        }
        seen: set[tuple[str, str]] = set()
        deadline = time.monotonic() + 15
        while not want <= seen:
            assert time.monotonic() < deadline, (want - seen, seen)
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if msg is None:
                continue
            data = json.loads(msg["data"])
            for published in data if isinstance(data, list) else [data]:
                assert event.is_valid(published), published
                seen.add((published["type"], published["status"]))
    finally:
        await pubsub.aclose()
        await listener.aclose()
