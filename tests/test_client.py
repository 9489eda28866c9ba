"""taskorch.client against the real service (``taskorch serve`` and a real worker): every route,
blocking and async, the errors as a user catches them, pagination over 1,000+ tasks, and the
retry rules on a real HTTP server that answers 503 first."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from taskorch import constants, errors
from taskorch.client import AsyncClient, Client, Event
from taskorch.models import TaskStatus
from tests.client_live import Service, new_owner, service
from tests.conftest import ROOT
from tests.helpers import until, wait_for

__all__ = ["service"]  # the module's fixture

HOUR = 3600


@pytest.fixture
def client(service: Service) -> Iterator[Client]:
    with Client(service.url, token=service.token()) as c:
        yield c


# -- tasks ---------------------------------------------------------------------------------------


def test_tasks_every_route(service: Service, client: Client) -> None:
    ok, missing = f"{service.url}/healthz", f"{service.url}/no-such-page"
    task = client.create_task(
        url=ok,
        method="GET",
        headers={"X-Test": "1"},
        delay=dt.timedelta(hours=1),
        retries=2,
        retry_delay=0.5,
        timeout=5,
        name="report-nightly",
        queue="reports",
    )
    assert task.id.startswith("tsk_") and task.status is TaskStatus.scheduled
    assert (task.method, task.headers, task.retries, task.queue) == (
        "GET",
        {"X-Test": "1"},
        2,
        "reports",
    )
    assert client.get_task(task.id) == task

    changed = client.modify_task(task.id, name="report-weekly", retries=5, payload={"a": 1})
    assert (changed.name, changed.retries, changed.payload) == ("report-weekly", 5, {"a": 1})

    other = client.create_task(url=ok, run_at=dt.datetime.now(dt.UTC) + dt.timedelta(hours=2))
    assert client.cancel_task(other.id).status is TaskStatus.cancelled

    # A task whose target answers 404 fails at once; retry runs it again with fresh retries.
    failing = client.create_task(url=missing, method="GET", retries=0, name="doomed")
    failed = wait_for(lambda: (t := client.get_task(failing.id)).status == "failed" and t)
    assert failed.attempts[0].status_code == 404
    again = client.retry_task(failing.id)
    assert again.status in (TaskStatus.scheduled, TaskStatus.running, TaskStatus.failed)
    done = wait_for(lambda: len((t := client.get_task(failing.id)).attempts) == 2 and t)
    assert [a.number for a in done.attempts] == [1, 2]

    assert [t.id for t in client.list_tasks(status="cancelled").items] == [other.id]
    assert [t.id for t in client.list_tasks(queue="reports").items] == [task.id]
    assert [t.id for t in client.list_tasks(name="report-").items] == [task.id]
    page = client.list_tasks(limit=2)
    assert [t.id for t in page.items] == [failing.id, other.id] and page.next_cursor
    assert [t.id for t in client.list_tasks(cursor=page.next_cursor).items] == [task.id]


def test_errors_carry_code_message_details_and_status(service: Service, client: Client) -> None:
    with pytest.raises(errors.NotFound) as nf:
        client.get_task("tsk_000000000000000000000000")
    assert (nf.value.status_code, nf.value.code) == (404, "not_found")

    task = client.create_task(url=f"{service.url}/healthz", delay=HOUR)
    client.cancel_task(task.id)
    with pytest.raises(errors.Conflict) as conflict:
        client.cancel_task(task.id)
    assert conflict.value.status_code == 409 and "cancelled" in conflict.value.message

    with pytest.raises(errors.ValidationFailed) as invalid:
        client.create_task(url="ftp://x", retries=-1)
    assert invalid.value.status_code == 422 and invalid.value.code == "validation_failed"
    assert {d["field"] for d in invalid.value.details} == {"url", "retries"}

    with Client(service.url, token="not-a-jwt") as bad:
        with pytest.raises(errors.Unauthorized) as unauthorized:
            bad.list_tasks()
    assert unauthorized.value.status_code == 401
    assert unauthorized.value.headers["WWW-Authenticate"] == "Bearer"

    with Client(service.url, token=service.token(scope="read")) as reader:
        assert reader.list_tasks().items == []
        with pytest.raises(errors.Forbidden) as forbidden:
            reader.create_task(url=f"{service.url}/healthz")
    assert forbidden.value.status_code == 403
    # One tree: every answer error is an ApiError and a TaskorchError.
    assert isinstance(forbidden.value, errors.ApiError)
    assert isinstance(forbidden.value, errors.TaskorchError)


def test_pagination_over_1000_tasks_made_by_the_batch_route(client: Client) -> None:
    bodies = [
        {"url": "https://example.com/hook", "delay": HOUR, "name": f"bulk-{i:04d}"}
        for i in range(1050)
    ]
    bodies[7] = {"url": "not a url"}  # one bad item fails alone, in its place
    outcomes = client.create_tasks(bodies)  # 1,050: sent as batches of 1,000 and 50
    assert len(outcomes) == 1050
    assert outcomes[7].task is None and outcomes[7].error is not None
    assert outcomes[7].error.details[0].field == "url"
    made = [o.task.id for o in outcomes if o.task is not None]
    assert len(made) == 1049

    seen = [t.id for t in client.iter_tasks(page_size=300)]
    assert len(seen) == len(set(seen)) == 1049
    assert seen == sorted(made, reverse=True)  # newest first, nothing twice, nothing left out
    assert sum(1 for _ in client.iter_tasks(name="bulk-10")) == 50


def test_batch_with_keys_is_idempotent(client: Client) -> None:
    body = {"url": "https://example.com/hook", "delay": HOUR, "idempotency_key": "k-1"}
    first = client.create_tasks([body])[0].task
    again = client.create_tasks([body])[0].task
    assert first is not None and again is not None and first.id == again.id
    key_first = client.create_task(url="https://example.com/x", idempotency_key="k-2", delay=HOUR)
    key_again = client.create_task(url="https://example.com/x", idempotency_key="k-2", delay=HOUR)
    assert key_first.id == key_again.id


# -- orchestrations, functions, schedules, queues, keys ---------------------------------------------


def test_orchestrations_every_route(service: Service, client: Client) -> None:
    step = {"url": f"{service.url}/healthz", "method": "GET"}
    orc = client.create_orchestration(steps=[step, step], delay=HOUR, name="nightly")
    assert orc.id.startswith("orc_") and orc.status == "scheduled" and len(orc.steps) == 2
    assert client.get_orchestration(orc.id) == orc
    changed = client.modify_orchestration(orc.id, name="weekly", steps=[step])
    assert changed.name == "weekly" and len(changed.steps) == 1
    assert [o.id for o in client.list_orchestrations(status="scheduled").items] == [orc.id]
    assert [o.id for o in client.iter_orchestrations()] == [orc.id]
    assert client.cancel_orchestration(orc.id).status == "cancelled"
    with pytest.raises(errors.Conflict):
        client.modify_orchestration(orc.id, name="again")

    runs = client.create_orchestration(steps=[step, step])
    finished = wait_for(
        lambda: (o := client.get_orchestration(runs.id)).status == "succeeded" and o
    )
    assert [s.status for s in finished.steps] == ["succeeded", "succeeded"]


def test_functions_every_route_json_and_upload(client: Client, tmp_path: Any) -> None:
    code = "def handler(event, context):\n    return {'echo': event}\n"
    fn = client.create_function(name="echo", runtime="python", code=code)
    assert fn.id.startswith("fn_") and fn.status in ("building", "ready")
    source = tmp_path / "up.py"
    source.write_text(code)
    uploaded = client.create_function(name="uploaded", runtime="python", code_file=source)
    assert uploaded.name == "uploaded"
    ready = wait_for(lambda: (f := client.get_function(fn.id)).status != "building" and f, 90)
    assert ready.status == "ready" and ready.url, ready.error
    assert {f.id for f in client.list_functions().items} == {fn.id, uploaded.id}
    assert {f.id for f in client.iter_functions(page_size=1)} == {fn.id, uploaded.id}
    wait_for(lambda: client.get_function(uploaded.id).status != "building", 90)
    client.delete_function(uploaded.id)
    with pytest.raises(errors.NotFound):
        client.get_function(uploaded.id)
    client.delete_function(fn.id)


def test_schedules_every_route(service: Service, client: Client) -> None:
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(hours=1)
    sch = client.create_schedule(
        task={"url": f"{service.url}/healthz", "method": "GET"},
        every=dt.timedelta(minutes=5),
        start_at=start,
        name="five-minutely",
    )
    assert sch.id.startswith("sch_") and sch.status == "active" and sch.every == 300
    assert len(sch.next_runs) == 5
    assert client.get_schedule(sch.id).id == sch.id
    changed = client.modify_schedule(sch.id, cron="0 3 * * *", timezone="Europe/Berlin")
    assert (changed.cron, changed.every, changed.timezone) == ("0 3 * * *", None, "Europe/Berlin")
    assert client.pause_schedule(sch.id).status == "paused"
    assert [s.id for s in client.list_schedules(status="paused").items] == [sch.id]
    assert client.resume_schedule(sch.id).status == "active"
    assert [s.id for s in client.iter_schedules()] == [sch.id]
    assert client.list_tasks(schedule_id=sch.id).items == []  # its first run is an hour away
    client.delete_schedule(sch.id)
    with pytest.raises(errors.NotFound):
        client.get_schedule(sch.id)

    every_second = client.create_schedule(task={"url": f"{service.url}/healthz"}, every=1)
    made = wait_for(lambda: client.list_tasks(schedule_id=every_second.id).items)
    assert made[0].schedule_id == every_second.id
    client.delete_schedule(every_second.id)


def test_queues_every_route(client: Client) -> None:
    q = client.put_queue("emails", rate=5, max_concurrent=2)
    assert (q.name, q.rate, q.max_concurrent, q.paused) == ("emails", 5, 2, False)
    assert client.pause_queue("emails").paused is True
    assert client.resume_queue("emails").paused is False
    assert client.put_queue("emails", rate=None).rate is None  # None lifts a limit
    client.create_task(url="https://example.com/x", delay=HOUR, queue="emails")
    got = client.get_queue("emails")
    assert got.max_concurrent == 2 and got.counts["scheduled"] == 1
    assert [q.name for q in client.list_queues()] == ["default", "emails"]
    with pytest.raises(errors.ValidationFailed) as invalid:
        client.put_queue("default", paused=True)
    assert invalid.value.status_code == 422


def test_signing_keys_sign_in_events_and_operations(service: Service, client: Client) -> None:
    keys = client.signing_keys()
    assert len(keys.keys) == 1 and keys.keys[0].secret.startswith("whsec_")
    rotated = client.rotate_signing_keys()
    assert rotated.keys[1].secret == keys.keys[0].secret and rotated.keys[1].used_until

    user = new_owner()
    subprocess.run(
        [sys.executable, "-m", "taskorch", "user", "add", user],
        input="a long password\n",
        text=True,
        check=True,
        capture_output=True,
        env={**service.workers.env},
        cwd=ROOT,
    )
    with Client(service.url) as anonymous:
        with pytest.raises(errors.Unauthorized) as wrong:
            anonymous.sign_in(username=user, password="wrong password")
        assert wrong.value.code == "invalid_credentials"
        token = anonymous.sign_in(username=user, password="a long password")
        assert token.token_type == "bearer" and anonymous.token == token.access_token
        assert anonymous.list_tasks().items == []

    # Events: a change of one's own task arrives on the stream.
    made: list[str] = []
    stop = threading.Event()

    def create_until_seen() -> None:
        while not stop.is_set():
            made.append(client.create_task(url="https://example.com/x", delay=HOUR).id)
            stop.wait(0.2)

    with Client(service.url, token=client.token) as listener:
        stream = listener.events()
        maker = threading.Thread(target=create_until_seen)
        maker.start()
        try:
            event = next(stream)
        finally:
            stop.set()
            maker.join()
            stream.close()
    assert isinstance(event, Event) and event.type == "task" and event.id in made

    assert client.health().ok and client.ready().ok and client.ready().redis == "ok"
    assert "taskorch_" in client.metrics()
    assert client.openapi()["paths"]["/v1/tasks"]
    assert client.stats().tasks["scheduled"] == len(made)


# -- the async client ----------------------------------------------------------------------------


async def test_async_client_every_route(service: Service, tmp_path: Any) -> None:
    ok = f"{service.url}/healthz"
    async with AsyncClient(service.url, token=service.token()) as c:
        t = await c.create_task(url=ok, delay=HOUR, name="a-1", queue="aq")
        assert (await c.get_task(t.id)).id == t.id
        assert (await c.modify_task(t.id, name="a-2")).name == "a-2"
        assert (await c.list_tasks(name="a-2", queue="aq")).items[0].id == t.id
        assert (await c.cancel_task(t.id)).status == "cancelled"
        with pytest.raises(errors.Conflict):
            await c.cancel_task(t.id)
        failing = await c.create_task(url=f"{service.url}/nope", method="GET", retries=0)
        await until(lambda: _status_is(c, failing.id, "failed"))
        assert (await c.retry_task(failing.id)).id == failing.id

        outcomes = await c.create_tasks([{"url": ok, "delay": HOUR}] * 1000)
        assert all(o.task for o in outcomes)
        ids = [x.id async for x in c.iter_tasks(status="scheduled")]
        assert len(ids) == len(set(ids)) == 1000

        orc = await c.create_orchestration(steps=[{"url": ok}], delay=HOUR)
        assert (await c.get_orchestration(orc.id)).id == orc.id
        assert (await c.modify_orchestration(orc.id, name="o")).name == "o"
        assert [o.id async for o in c.iter_orchestrations()] == [orc.id]
        assert (await c.list_orchestrations()).items[0].id == orc.id
        assert (await c.cancel_orchestration(orc.id)).status == "cancelled"

        source = tmp_path / "f.py"
        source.write_text("def handler(event, context):\n    return 1\n")
        with source.open("rb") as f:
            fn = await c.create_function(name="up", runtime="python", code_file=f)
        assert (await c.get_function(fn.id)).name == "up"
        assert [x.id async for x in c.iter_functions()] == [fn.id]
        assert (await c.list_functions()).items[0].id == fn.id
        await until(lambda: _built(c, fn.id), 90)
        await c.delete_function(fn.id)

        sch = await c.create_schedule(task={"url": ok}, cron="0 4 * * *", timezone="UTC")
        assert (await c.get_schedule(sch.id)).cron == "0 4 * * *"
        assert (await c.modify_schedule(sch.id, name="s")).name == "s"
        assert (await c.pause_schedule(sch.id)).status == "paused"
        assert (await c.resume_schedule(sch.id)).status == "active"
        assert [s.id async for s in c.iter_schedules()] == [sch.id]
        assert (await c.list_schedules()).items[0].id == sch.id
        assert (await c.list_tasks(schedule_id=sch.id)).items == []
        await c.delete_schedule(sch.id)
        with pytest.raises(errors.NotFound):
            await c.delete_schedule(sch.id)

        assert (await c.put_queue("aq", max_concurrent=3)).max_concurrent == 3
        assert (await c.pause_queue("aq")).paused
        assert not (await c.resume_queue("aq")).paused
        assert (await c.get_queue("aq")).counts["cancelled"] == 1
        assert [q.name for q in await c.list_queues()] == ["default", "aq"]

        keys = await c.signing_keys()
        assert (await c.rotate_signing_keys()).keys[1].secret == keys.keys[0].secret

        events = c.events()
        first = asyncio.ensure_future(anext(events))
        while not first.done():
            await c.create_task(url=ok, delay=HOUR)
            await asyncio.wait([first], timeout=0.2)
        assert first.result().type == "task"
        await events.aclose()  # type: ignore[attr-defined]

        assert (await c.health()).ok and (await c.ready()).ok
        assert "taskorch_" in await c.metrics()
        assert "paths" in await c.openapi()
        assert (await c.stats()).orchestrations["cancelled"] == 1
        with pytest.raises(errors.ValidationFailed) as invalid:
            await c.create_task(url="")
        assert invalid.value.details[0]["field"] == "url"

    async with AsyncClient(service.url, token="x") as bad:
        with pytest.raises(errors.Unauthorized):
            await bad.get_task(t.id)
    async with AsyncClient(service.url, token=service.token(scope="read")) as reader:
        with pytest.raises(errors.Forbidden):
            await reader.put_queue("aq", paused=True)


async def _status_is(c: AsyncClient, task_id: str, status: str) -> bool:
    return (await c.get_task(task_id)).status == status


async def _built(c: AsyncClient, fn_id: str) -> bool:
    return (await c.get_function(fn_id)).status != "building"


# -- retries: a real HTTP server that answers 503 first --------------------------------------------

_TASK = {
    "id": "tsk_0000000000000000000000aa",
    "name": None,
    "status": "scheduled",
    "url": "https://example.com/",
    "method": "POST",
    "headers": {},
    "payload": None,
    "retries": 3,
    "retry_delay": 1.0,
    "backoff": 2.0,
    "max_retry_delay": 300.0,
    "timeout": 30.0,
    "run_at": "2026-11-30T12:00:00.000Z",
    "created_at": "2026-11-30T12:00:00.000Z",
    "updated_at": "2026-11-30T12:00:00.000Z",
    "finished_at": None,
    "orchestration_id": None,
    "attempts": [],
}


class Scripted:
    """A real HTTP server on 127.0.0.1 that answers each request with the next scripted answer
    and records what it was sent."""

    def __init__(self, answers: list[tuple[int, dict[str, str], Any]]) -> None:
        self.answers = answers
        self.seen: list[tuple[str, str, dict[str, str], float]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                outer.seen.append((self.command, self.path, dict(self.headers), time.monotonic()))
                status, headers, body = outer.answers.pop(0)
                data = json.dumps(body).encode()
                self.send_response(status)
                for k, v in {**headers, "Content-Type": "application/json"}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _unavailable(outcome: str | None = None) -> tuple[int, dict[str, str], Any]:
    details = [{"outcome": outcome, "message": "..."}] if outcome else []
    body = {
        "error": {"code": "unavailable", "message": "Redis is unreachable.", "details": details}
    }
    return 503, {"Retry-After": "1"}, body


@pytest.fixture
def scripted() -> Iterator[Any]:
    made: list[Scripted] = []

    def make(*answers: tuple[int, dict[str, str], Any]) -> Scripted:
        made.append(Scripted(list(answers)))
        return made[-1]

    yield make
    for s in made:
        s.close()


def test_a_create_answered_503_unknown_is_sent_again_with_the_same_key(scripted: Any) -> None:
    server = scripted(_unavailable("unknown"), (201, {}, _TASK))
    with Client(server.url, token="t") as c:
        task = c.create_task(url="https://example.com/")
    assert task.id == _TASK["id"]
    (_, _, first, t0), (_, _, second, t1) = server.seen
    assert first["Idempotency-Key"] == second["Idempotency-Key"]
    assert first["Idempotency-Key"].startswith("client-")
    assert t1 - t0 >= 0.95  # Retry-After: 1 waited out


def test_without_a_key_an_unknown_create_is_not_sent_again(scripted: Any) -> None:
    server = scripted(_unavailable("unknown"), (201, {}, _TASK))
    with Client(server.url, token="t", idempotency_keys=False) as c:
        with pytest.raises(errors.CreateOutcomeUnknown) as unknown:
            c.create_task(url="https://example.com/")
    assert len(server.seen) == 1 and "Idempotency-Key" not in server.seen[0][2]
    assert unknown.value.status_code == 503 and unknown.value.retry_after_s == 1
    assert unknown.value.details[0]["outcome"] == "unknown"


def test_not_stored_is_sent_again_even_without_a_key(scripted: Any) -> None:
    server = scripted(_unavailable("not_stored"), (201, {}, _TASK))
    with Client(server.url, token="t", idempotency_keys=False) as c:
        assert c.create_task(url="https://example.com/").id == _TASK["id"]
    assert len(server.seen) == 2


def test_retries_are_bounded_and_actions_are_not_repeated(scripted: Any) -> None:
    server = scripted(*[_unavailable()] * 4, (429, {"Retry-After": "600"}, {}))
    with Client(server.url, token="t", retries=2) as c:
        with pytest.raises(errors.Unavailable):
            c.get_task(_TASK["id"])  # sent 3 times: once and 2 retries
        assert len(server.seen) == 3
        with pytest.raises(errors.Unavailable):
            c.cancel_task(_TASK["id"])  # a cancel may have happened: raised, not repeated
        assert len(server.seen) == 4
        with pytest.raises(errors.TooManyRequests) as throttled:
            c.list_tasks()  # a wait longer than max_retry_wait_s is not waited out
        assert throttled.value.retry_after_s == 600 and len(server.seen) == 5


async def test_async_client_waits_out_a_503_too(scripted: Any) -> None:
    server = scripted(_unavailable(), (200, {}, {"items": [_TASK], "next_cursor": None}))
    async with AsyncClient(server.url, token="t") as c:
        page = await c.list_tasks()
    assert [t.id for t in page.items] == [_TASK["id"]] and len(server.seen) == 2


def test_an_api_out_of_reach_is_one_error_naming_the_address() -> None:
    from tests.conftest import free_port

    url = f"http://127.0.0.1:{free_port()}"
    with Client(url, token="t", retries=1) as c:
        with pytest.raises(errors.ApiUnreachable) as unreachable:
            c.list_tasks()
    assert url in str(unreachable.value) and "TASKORCH_API_URL" in str(unreachable.value)


# -- docs/client.md ------------------------------------------------------------------------------


def _doc_examples() -> list[str]:
    text = (ROOT / "docs" / "client.md").read_text()
    return [block.split("```", 1)[0] for block in text.split("```python\n")[1:]]


@pytest.mark.parametrize("n", range(len(_doc_examples())))
def test_docs_examples_run_as_written(service: Service, n: int) -> None:
    """Each example of docs/client.md, as a user runs it: a fresh process with
    TASKORCH_API_URL and TASKORCH_TOKEN set, for an owner of its own."""
    done = subprocess.run(
        [sys.executable, "-c", _doc_examples()[n]],
        env=service.env(TASKORCH_TOKEN=service.token()),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip(), "each example prints what it found"


# -- a real outage: Redis frozen under the real API ----------------------------------------------


def _met_503(log: str) -> bool:
    return '"status": 503' in log or "api.redis_unavailable" in log


def test_a_create_during_a_redis_freeze_is_stored_once_after_it(tmp_path: Any) -> None:
    """Redis stopped (SIGSTOP) under ``taskorch serve``: the create is answered 503 with
    Retry-After, the client sends it again with the same Idempotency-Key until Redis is back,
    and exactly one task is stored; reads wait it out too."""
    from taskorch.auth import mint_token
    from tests.conftest import make_settings
    from tests.live import frozen, own_redis_server, serving

    with (
        own_redis_server(tmp_path) as redis_server,
        serving(redis_server.url, tmp_path / "serve.log") as serve,
    ):
        token = mint_token(make_settings(redis_server.url), "frozen-owner")
        with Client(serve.url, token=token, retries=6) as c:
            results: list[Any] = []
            maker = threading.Thread(
                target=lambda: results.append(c.create_task(url="https://example.com/", delay=HOUR))
            )
            started = time.monotonic()
            with frozen(redis_server):
                maker.start()
                # Redis stays stopped until the create has met a 503
                wait_for(lambda: _met_503(serve.log()), timeout_s=30, what="a 503 answered")
            maker.join(30)
            took_s = time.monotonic() - started
            assert results and results[0].status == "scheduled"
            assert (
                took_s >= constants.UNAVAILABLE_RETRY_AFTER_S
            )  # it waited, as Retry-After asked, and sent again
            assert [t.id for t in c.iter_tasks()] == [results[0].id]
    assert _met_503(serve.log())


def test_an_id_is_one_path_segment(client: Client) -> None:
    """An id or queue name from elsewhere cannot reach another route: it is sent as one
    segment, and names nothing."""
    with pytest.raises(errors.NotFound):
        client.get_task("../queues")
    with pytest.raises(errors.NotFound):
        client.get_task("x?status=failed")
    with pytest.raises(errors.NotFound):
        client.put_queue("a/b", paused=True)
    assert [q.name for q in client.list_queues()] == ["default"]


def test_both_clients_have_the_same_documented_methods() -> None:
    import inspect

    def public(cls: type) -> dict[str, Any]:
        return {n: f for n, f in inspect.getmembers(cls, inspect.isfunction) if n[0] != "_"}

    sync, asynchronous = public(Client), public(AsyncClient)
    assert set(sync) - {"close"} == set(asynchronous) - {"aclose"}
    assert [n for n, f in {**sync, **asynchronous}.items() if not f.__doc__] == []
    for name, f in sync.items():  # every option is keyword-only: only ids go by position
        params = list(inspect.signature(f).parameters.values())[1:]
        positional = [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
        assert len(positional) <= 1, (name, positional)
