"""``taskorch orchestrations create|get|list|cancel|retry|send-event`` and the client's
``retry_orchestration`` and ``send_event``: create, get, list and cancel against the real service
and a real worker (tests/test_cli.py's ``as_user``); retry and send-event, whose routes the live
API does not have yet, against a real HTTP server that answers them as the contract says
(tests/orchestration_api.py), checking what goes over the wire and what comes back."""

from __future__ import annotations

import asyncio
import io
import json
import re
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from taskorch import cli, errors
from taskorch.client import AsyncClient, Client
from taskorch.models import Orchestration
from tests.client_live import Service, service
from tests.helpers import wait_for
from tests.orchestration_api import (
    FAILED,
    SUCCEEDED,
    OrchestrationApi,
    orchestration_api,
    orchestration_server,
)
from tests.test_cli import as_user

__all__ = ["as_user", "orchestration_api", "orchestration_server", "service"]  # the fixtures

HOUR = 3600
UNKNOWN = "orc_000000000000000000000000"


def _id(out: str) -> str:
    return re.search(r"^id:\s+(orc_\w+)$", out, re.M).group(1)  # type: ignore[union-attr]


def _raw(service: Service, client: Client, orc_id: str) -> dict[str, Any]:
    """The API's own JSON of an orchestration."""
    headers = {"Authorization": f"Bearer {client.token}"}
    answer: dict[str, Any] = httpx.get(
        f"{service.url}/v1/orchestrations/{orc_id}", headers=headers
    ).json()
    return answer


def _a_real_orchestration(service: Service, client: Client) -> dict[str, Any]:
    """The JSON of an orchestration as the live API answers it, for the test server's retry."""
    orc = client.create_orchestration(steps=[{"url": f"{service.url}/healthz"}], delay=HOUR)
    client.cancel_orchestration(orc.id)
    return {**_raw(service, client, orc.id), "status": "running", "finished_at": None}


# -- the client's retry_orchestration and send_event, on the wire -----------------------------


def test_client_retry_and_send_event_on_the_wire(
    service: Service, as_user: Any, orchestration_api: OrchestrationApi
) -> None:
    api = orchestration_api
    api.answer = _a_real_orchestration(service, as_user.client)
    with Client(api.url, token="tok-1") as client:
        orc = client.retry_orchestration(FAILED)
        assert orc == msgspec.json.decode(json.dumps(api.answer), type=Orchestration)
        (seen,) = api.seen
        assert (seen.method, seen.path, seen.body) == (
            "POST",
            f"/v1/orchestrations/{FAILED}/retry",
            b"",
        )
        assert seen.headers["authorization"] == "Bearer tok-1"

        event = {"tracking": "1Z9", "items": [1, 2.5, None], "note": "ünï"}
        assert client.send_event(FAILED, name="shipped", body=event) is None  # 202
        seen = api.seen[-1]
        assert (seen.method, seen.path) == ("POST", f"/v1/orchestrations/{FAILED}/events/shipped")
        assert seen.headers["content-type"] == "application/json"
        assert seen.headers["authorization"] == "Bearer tok-1"
        assert "idempotency-key" not in seen.headers
        assert json.loads(seen.body) == event
        client.send_event(FAILED, name="empty")
        assert json.loads(api.seen[-1].body) is None  # no body given: JSON null

        sent = len(api.seen)
        with pytest.raises(errors.Conflict) as conflict:
            client.send_event(FAILED, name="shipped", body={"again": True})
        assert conflict.value.status_code == 409 and "already sent" in conflict.value.message
        assert len(api.seen) == sent + 1  # a refused event is not sent again
        with pytest.raises(errors.Conflict, match="succeeded"):
            client.retry_orchestration(SUCCEEDED)
        with pytest.raises(errors.NotFound):
            client.retry_orchestration(UNKNOWN)
        with pytest.raises(errors.NotFound):
            client.send_event(UNKNOWN, name="shipped", body={})
        with pytest.raises(ValueError, match="event name"):
            client.send_event(FAILED, name="", body={})

    async def awaited() -> None:
        async with AsyncClient(api.url, token="tok-2") as client:
            assert (await client.retry_orchestration(FAILED)).id == api.answer["id"]
            assert await client.send_event(SUCCEEDED, name="paid", body=[1, 2]) is None
            assert json.loads(api.seen[-1].body) == [1, 2]
            assert api.seen[-1].headers["authorization"] == "Bearer tok-2"
            with pytest.raises(errors.Conflict):
                await client.send_event(SUCCEEDED, name="paid", body=[3])

    asyncio.run(awaited())


# -- create, get, list, cancel against the live API and a real worker -------------------------


def _body(service: Service, **extra: Any) -> dict[str, Any]:
    step = {"url": f"{service.url}/healthz", "method": "GET"}
    return {"steps": [step, step], "name": "from-file", **extra}


def test_create_get_list_cancel(
    service: Service, as_user: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    c = as_user.client
    file = tmp_path / "orc.json"
    file.write_text(json.dumps(_body(service, delay=5)))
    code, out, err = as_user(
        "orchestrations", "create", str(file), "--delay", "1h", "--name", "order-42"
    )
    assert code == 0, err
    assert re.search(r"^status:\s+scheduled$", out, re.M) and re.search(
        r"^name:\s+order-42$", out, re.M
    )
    assert re.search(r"^due:\s+in (59 min|60 min|1 h) \(", out, re.M), out
    first = _id(out)
    assert c.get_orchestration(first).name == "order-42"  # --name and --delay replace the body's

    # `-` reads the body from stdin; --run-at replaces a delay; -q prints the id alone.
    at = "2099-01-02T03:04:05Z"
    key_body = json.dumps({**_body(service, delay=5), "idempotency_key": "k-1"})
    monkeypatch.setattr("sys.stdin", io.StringIO(key_body))
    code, out, _ = as_user("orchestrations", "create", "-", "--run-at", at, "-q")
    assert code == 0 and re.fullmatch(r"orc_\w+\n", out), out
    second = out.strip()
    got = c.get_orchestration(second)
    assert (got.run_at, got.name) == ("2099-01-02T03:04:05.000Z", "from-file")
    again = as_user("orchestrations", "create", str(file), "--idempotency-key", "k-1", "-q")
    assert again[1].strip() == second  # the body's key, as --idempotency-key: the first one

    code, out, _ = as_user("orchestrations", "get", first, "--json")
    assert code == 0 and json.loads(out) == _raw(service, c, first)  # the API's answer
    code, out, _ = as_user("orchestrations", "get", first)
    assert code == 0 and re.search(r"^step:\s+1/2$", out, re.M), out
    rows = out.split("\n\n", 1)[1].splitlines()
    assert rows[0].split() == ["STEP", "NAME", "KIND", "STATUS", "TASK", "CHECK", "OUTPUT"]
    assert [r.split()[0] for r in rows[1:]] == ["0", "1"] and "pending" in rows[1]

    code, out, _ = as_user("orchestrations", "list", "--status", "scheduled")
    assert code == 0 and [r.split()[0] for r in out.splitlines()[1:]] == [second, first]
    code, out, err = as_user("orchestrations", "list", "--limit", "1")
    assert len(out.splitlines()) == 2 and "more: taskorch orchestrations list --cursor" in err
    cursor = err.split("--cursor ")[1].strip()
    assert (
        as_user("orchestrations", "list", "--limit", "1", "--cursor", cursor)[1].count(first) == 1
    )
    listed = json.loads(as_user("orchestrations", "list", "--all", "--json")[1])
    assert [o["id"] for o in listed["items"]] == [second, first]

    code, out, _ = as_user("orchestrations", "cancel", first)
    assert code == 0 and re.search(r"^status:\s+cancelled$", out, re.M)
    code, _, err = as_user("orchestrations", "cancel", first)
    assert code == cli.EXIT_CONFLICT and "cancelled" in err
    code, _, err = as_user("orchestrations", "get", UNKNOWN)
    assert code == cli.EXIT_NOT_FOUND and "404 not_found" in err
    c.cancel_orchestration(second)


def test_get_shows_the_steps_a_worker_ran(service: Service, as_user: Any, tmp_path: Path) -> None:
    c = as_user.client
    ok = {"url": f"{service.url}/healthz", "method": "GET"}
    file = tmp_path / "run.json"
    file.write_text(json.dumps({"steps": [ok, ok]}))
    code, out, _ = as_user("orchestrations", "create", str(file), "-q")
    ran = out.strip()
    missing = {"url": f"{service.url}/missing", "method": "GET", "retries": 0}
    file.write_text(json.dumps({"steps": [ok, missing], "fallback": ok}))
    failed = as_user("orchestrations", "create", str(file), "-q")[1].strip()
    wait_for(lambda: c.get_orchestration(ran).status == "succeeded")
    wait_for(
        lambda: (
            (o := c.get_orchestration(failed)).status == "failed"
            and o.fallback.status == "succeeded"
        )
    )

    code, out, _ = as_user("orchestrations", "get", ran)
    assert code == 0 and re.search(r"^status:\s+succeeded$", out, re.M) and "finished:" in out
    steps = out.split("\n\n", 1)[1].splitlines()[1:]
    tasks = [s.task_id for s in c.get_orchestration(ran).steps]
    for row, task_id in zip(steps, tasks, strict=True):
        assert "task" in row.split() and "succeeded" in row.split() and task_id in row
    code, out, _ = as_user("orchestrations", "get", failed)
    assert re.search(r"^status:\s+failed$", out, re.M)
    assert re.search(r"^fallback:\s+succeeded tsk_\w+$", out, re.M), out
    assert out.split("\n\n", 1)[1].splitlines()[2].split()[3] == "failed"
    code, out, _ = as_user("orchestrations", "list", "--status", "failed")
    assert code == 0 and out.splitlines()[1].split()[:2] == [failed, "failed"]


def test_bad_input_is_told_clearly(service: Service, as_user: Any, tmp_path: Path) -> None:
    file = tmp_path / "bad.json"
    file.write_text("{steps: [")
    code, _, err = as_user("orchestrations", "create", str(file))
    assert code == cli.EXIT_USAGE and f"FILE: {file} is not JSON" in err
    code, _, err = as_user("orchestrations", "create", str(tmp_path / "none.json"))
    assert code == cli.EXIT_USAGE and "cannot read" in err and "No such file" in err
    file.write_text('[{"url": "https://example.com"}]')
    code, _, err = as_user("orchestrations", "create", str(file))
    assert code == cli.EXIT_USAGE and 'a list of "steps"' in err
    file.write_text(json.dumps({"steps": [{"url": "ftp://x"}]}))
    code, out, err = as_user("orchestrations", "create", str(file), "--json")
    assert code == cli.EXIT_INVALID and "steps[0].url:" in err
    assert json.loads(out)["error"]["details"][0]["field"] == "steps[0].url"
    code, _, err = as_user("orchestrations", "create", str(file), "--delay", "soon")
    assert code == cli.EXIT_USAGE and "not a duration" in err
    code, _, err = as_user("orchestrations", "list", "--status", "sleepy")
    assert code == cli.EXIT_USAGE and "invalid choice" in err


# -- retry and send-event, against the test server --------------------------------------------


def test_retry_and_send_event_verbs(
    service: Service,
    as_user: Any,
    orchestration_api: OrchestrationApi,
    tmp_path: Path,
    monkeypatch: Any,
) -> None:
    api = orchestration_api
    api.answer = _a_real_orchestration(service, as_user.client)
    monkeypatch.setenv("TASKORCH_API_URL", api.url)
    code, out, _ = as_user("orchestrations", "retry", FAILED)
    assert code == 0 and re.search(r"^status:\s+running$", out, re.M), out
    assert _id(out) == api.answer["id"] and api.seen[-1].path.endswith(f"{FAILED}/retry")
    code, out, _ = as_user("orchestrations", "retry", FAILED, "--json")
    assert json.loads(out) == api.answer
    code, out, err = as_user("orchestrations", "retry", SUCCEEDED)
    assert code == cli.EXIT_CONFLICT and "succeeded" in err and "409 conflict" in err
    assert as_user("orchestrations", "retry", UNKNOWN)[0] == cli.EXIT_NOT_FOUND

    code, out, _ = as_user("orchestrations", "send-event", FAILED, "shipped", "--data", '{"n": 1}')
    assert (code, out) == (0, f"sent event shipped to {FAILED}\n")
    seen = api.seen[-1]
    assert (seen.path, json.loads(seen.body)) == (
        f"/v1/orchestrations/{FAILED}/events/shipped",
        {"n": 1},
    )
    code, _, err = as_user("orchestrations", "send-event", FAILED, "shipped", "--data", "2")
    assert code == cli.EXIT_CONFLICT and "already sent" in err
    file = tmp_path / "event.json"
    file.write_text('{"items": [1, 2]}')
    code, out, _ = as_user(
        "orchestrations", "send-event", FAILED, "paid", "--data-file", str(file), "--json"
    )
    assert code == 0 and json.loads(out) == {"id": FAILED, "event": "paid", "sent": True}
    assert json.loads(api.seen[-1].body) == {"items": [1, 2]}
    monkeypatch.setattr("sys.stdin", io.StringIO('"from stdin"'))
    assert as_user("orchestrations", "send-event", SUCCEEDED, "note", "--data-file", "-")[0] == 0
    assert json.loads(api.seen[-1].body) == "from stdin"
    assert as_user("orchestrations", "send-event", SUCCEEDED, "bare")[0] == 0
    assert json.loads(api.seen[-1].body) is None
    assert as_user("orchestrations", "send-event", UNKNOWN, "x")[0] == cli.EXIT_NOT_FOUND

    sent = len(api.seen)
    code, _, err = as_user("orchestrations", "send-event", FAILED, "x", "--data", "{nope")
    assert code == cli.EXIT_USAGE and "--data is not JSON" in err
    file.write_text("nope")
    code, _, err = as_user("orchestrations", "send-event", FAILED, "x", "--data-file", str(file))
    assert code == cli.EXIT_USAGE and "--data-file: " in err and "is not JSON" in err
    code, _, err = as_user(
        "orchestrations", "send-event", FAILED, "x", "--data", "1", "--data-file", "-"
    )
    assert code == cli.EXIT_USAGE and "not allowed with" in err
    assert len(api.seen) == sent  # nothing sent for a bad command line


def test_a_step_row_shows_its_output_and_its_calls() -> None:
    """The step table's OUTPUT and TASK cells, for the fields the workflow kinds add."""
    from types import SimpleNamespace

    from taskorch.cli.orchestrations import _calls, _excerpt

    assert _excerpt(SimpleNamespace(output={"a": [1, 2]})) == '{"a":[1,2]}'
    assert _excerpt(SimpleNamespace(output="x" * 60, output_truncated=True)) == (
        "x" * 39 + "… (truncated)"
    )
    assert _excerpt(SimpleNamespace(output=None)) is None and _excerpt(SimpleNamespace()) is None
    counts = {"succeeded": 3, "running": 1, "failed": 0}
    assert _calls(SimpleNamespace(counts=counts)) == "3 succeeded, 1 running"
    assert _calls(SimpleNamespace()) is None


def test_help_lists_every_verb_with_an_example(capsys: Any) -> None:
    with pytest.raises(SystemExit):
        cli.main(["orchestrations", "--help"])
    text = capsys.readouterr().out
    for verb in ("create", "list", "get", "cancel", "retry", "send-event"):
        assert f"  taskorch orchestrations {verb} " in text
        with pytest.raises(SystemExit) as ended:
            cli.main(["orchestrations", verb, "--help"])
        assert ended.value.code == 0
        assert re.search(
            rf"^example:\n  taskorch orchestrations {verb} ", capsys.readouterr().out, re.M
        )
    assert "3 not found, 4 conflict, 5 service unavailable" in " ".join(text.split())
