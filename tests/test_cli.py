"""The ``taskorch tasks|schedules|queues`` verbs against the real service (``taskorch serve`` and
a real worker): the README's walk-through run line by line as written, what each verb prints,
``--json``, the exit codes scripts rely on, and ``--help`` with an example for every verb."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from taskorch import cli, commands
from taskorch.client import Client
from tests.client_live import Service, new_owner, run_cli, service
from tests.conftest import ROOT

__all__ = ["service"]  # the module's fixture


def readme_cli_lines() -> list[str]:
    """The command lines of the README's command-line walk-through, as written."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## A walk-through with the command line", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [
        line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]


def test_the_readme_walk_through_runs_as_written(service: Service, tmp_path: Path) -> None:
    lines = readme_cli_lines()
    assert any(line.startswith("taskorch tasks create") or "tasks create" in line for line in lines)
    # The folder `./scripts/dev` leaves: the venv, and the token `taskorch dev` wrote.
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    (tmp_path / ".taskorch").mkdir()
    (tmp_path / ".taskorch" / "dev-token").write_text(service.token(new_owner()) + "\n")
    script = ["set -e"]
    for i, line in enumerate(lines):
        # The one address the README says may differ: the one `taskorch dev` printed.
        line = line.replace("http://127.0.0.1:3000", service.url)
        script += [f"echo '@@@ {i}'", line]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKORCH_")}
    env["PATH"] = "/usr/bin:/bin"  # `taskorch` comes from the venv the walk-through activates
    done = subprocess.run(
        ["bash", "-c", "\n".join(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    parts = re.split(r"^@@@ (\d+)\n", done.stdout, flags=re.M)[1:]
    out = {
        lines[int(n)].split("#")[0].strip(): text
        for n, text in zip(parts[::2], parts[1::2], strict=True)
    }

    task = out["taskorch tasks get $TASK"]
    assert re.search(r"^status:\s+succeeded$", task, re.M), task
    assert re.search(r"^1\s+\S.*\s200\s+\d+ ms\s+\d+\.\d ms", task, re.M), task  # its attempt
    assert re.search(r"^status:\s+cancelled$", out["taskorch tasks cancel $OTHER"], re.M)
    listed = out["taskorch tasks list --limit 10"].splitlines()
    assert listed[0].split()[:3] == ["ID", "STATUS", "NAME"]
    assert [row.split()[1] for row in listed[1:]] == ["cancelled", "succeeded"]
    assert out["taskorch tasks list --status failed"].strip() == "no tasks"
    answer = json.loads(out["taskorch tasks list --json"])
    assert [t["status"] for t in answer["items"]] == ["cancelled", "succeeded"]
    assert answer["next_cursor"] is None
    assert "rate:           5/s" in out["taskorch queues set hooks --rate 5 --max-concurrent 2"]
    schedule = out["taskorch schedules get $SCHEDULE"]
    assert "every 1m" in schedule and schedule.count(" in ") >= 5  # five next runs, "in 42 s"
    assert re.search(r"^status:\s+paused$", out["taskorch schedules pause $SCHEDULE"], re.M)
    queues = out["taskorch queues list"].splitlines()
    assert [row.split()[0] for row in queues] == ["NAME", "default", "hooks"]


# -- every verb, in process (the same code path as the command, without a process each) ---------


@pytest.fixture
def as_user(service: Service, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> Any:
    token = service.token(new_owner())
    monkeypatch.setenv("TASKORCH_API_URL", service.url)
    monkeypatch.setenv("TASKORCH_TOKEN", token)

    def run(*args: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as ended:
            cli.main(list(args))
        out = capsys.readouterr()
        return int(ended.value.code or 0), out.out, out.err

    with Client(service.url, token=token) as client:
        run.client = client  # type: ignore[attr-defined]
        yield run


def test_tasks_verbs_and_exit_codes(service: Service, as_user: Any) -> None:
    code, out, _ = as_user(
        "tasks", "create", "--url", "https://example.com/a", "--in", "1h30m", "--name", "nightly",
        "--payload", '{"n": 1}', "--header", "X-A: 1", "--retries", "5", "--queue", "q1",
    )  # fmt: skip
    assert code == 0
    assert re.search(r"^due:\s+in 1 h 30 min \(", out, re.M), out
    task_id = re.search(r"^id:\s+(tsk_\w+)$", out, re.M).group(1)  # type: ignore[union-attr]
    task = as_user.client.get_task(task_id)
    assert (task.payload, task.headers, task.retries, task.queue) == (
        {"n": 1},
        {"X-A": "1"},
        5,
        "q1",
    )

    code, out, _ = as_user("tasks", "get", task_id, "--json")
    assert code == 0 and json.loads(out) == json.loads(
        _raw(service, f"/v1/tasks/{task_id}", as_user)
    )  # --json prints the API's answer
    code, out, _ = as_user("tasks", "list", "--name", "night", "--queue", "q1")
    assert code == 0 and task_id in out and "in 1 h 30 min" in out

    assert as_user("tasks", "cancel", task_id)[0] == 0
    code, _, err = as_user("tasks", "cancel", task_id)
    assert code == commands.EXIT_CONFLICT == 4 and "cancelled" in err
    code, _, err = as_user("tasks", "get", "tsk_000000000000000000000000")
    assert code == commands.EXIT_NOT_FOUND == 3 and "404 not_found" in err
    code, out, err = as_user("tasks", "create", "--url", "ftp://x", "--json")
    assert code == commands.EXIT_INVALID == 7 and "url:" in err
    assert json.loads(out)["error"]["details"][0]["field"] == "url"
    code, _, err = as_user("tasks", "create", "--url", "https://x", "--in", "soon")
    assert code == commands.EXIT_USAGE == 2 and "not a duration" in err

    at = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    code, out, _ = as_user("tasks", "create", "--url", "https://x.example", "--at", at, "-q")
    assert code == 0 and re.fullmatch(r"tsk_\w+\n", out)
    assert as_user.client.get_task(out.strip()).run_at == at.replace("Z", ".000Z")


def _raw(service: Service, path: str, as_user: Any) -> str:
    import httpx

    token = as_user.client.token
    return httpx.get(service.url + path, headers={"Authorization": f"Bearer {token}"}).text


def test_retry_and_queue_redrive(service: Service, as_user: Any) -> None:
    c = as_user.client
    failing = [
        c.create_task(url=f"{service.url}/missing", method="GET", retries=0, queue="rd")
        for _ in range(3)
    ]
    for t in failing:
        _wait(lambda t=t: c.get_task(t.id).status == "failed")
    code, out, _ = as_user("tasks", "retry", failing[0].id)
    assert code == 0 and re.search(r"^status:\s+(scheduled|running|failed)$", out, re.M)
    _wait(
        lambda: (
            len(c.get_task(failing[0].id).attempts) == 2
            and c.get_task(failing[0].id).status == "failed"
        )
    )

    code, out, err = as_user("queues", "redrive", "rd")
    assert code == 0, err
    assert "retried 3 failed task(s) of queue rd" in out and "3/3" in err
    for t in failing:
        _wait(lambda t=t: len(c.get_task(t.id).attempts) == (3 if t is failing[0] else 2))
    code, out, _ = as_user("queues", "redrive", "empty", "--json")
    assert code == 0 and json.loads(out) == {"queue": "empty", "retried": [], "refused": []}


def _wait(check: Any, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_schedules_and_queues_verbs(service: Service, as_user: Any) -> None:
    code, out, _ = as_user(
        "schedules", "create", "--cron", "30 4 * * *", "--timezone", "Europe/Berlin",
        "--url", "https://example.com/n", "--name", "nightly", "--retries", "1",
    )  # fmt: skip
    assert code == 0 and "cron 30 4 * * * (Europe/Berlin)" in out
    sch = re.search(r"^id:\s+(sch_\w+)$", out, re.M).group(1)  # type: ignore[union-attr]
    assert len(re.findall(r"T\d\d:30:00.000Z  in ", out)) == 5
    code, out, _ = as_user("schedules", "list")
    assert code == 0 and out.splitlines()[1].split()[:3] == [sch, "active", "nightly"]
    assert as_user("schedules", "pause", sch)[1].count("paused") == 1
    assert (
        json.loads(as_user("schedules", "list", "--status", "paused", "--json")[1])["items"][0][
            "id"
        ]
        == sch
    )
    assert "status:        active" in as_user("schedules", "resume", sch)[1]
    assert json.loads(as_user("schedules", "get", sch, "--json")[1])["task"]["retries"] == 1
    assert as_user("schedules", "delete", sch) == (0, f"deleted {sch}\n", "")
    assert as_user("schedules", "get", sch)[0] == commands.EXIT_NOT_FOUND
    code, _, err = as_user(
        "schedules", "create", "--cron", "61 * * * *", "--url", "https://x.example"
    )
    assert code == commands.EXIT_INVALID and "cron:" in err

    code, out, _ = as_user("queues", "set", "mail", "--rate", "2.5", "--max-concurrent", "4")
    assert code == 0 and "rate:           2.5/s" in out and "max concurrent: 4" in out
    assert "state:          paused" in as_user("queues", "pause", "mail")[1]
    assert "state:          active" in as_user("queues", "resume", "mail")[1]
    code, out, _ = as_user("queues", "set", "mail", "--rate", "none")
    assert "rate:           -" in out and "max concurrent: 4" in out  # only the rate lifted
    assert json.loads(as_user("queues", "get", "mail", "--json")[1])["max_concurrent"] == 4
    rows = as_user("queues", "list")[1].splitlines()
    assert [r.split()[0] for r in rows] == ["NAME", "default", "mail"]
    code, _, err = as_user("queues", "pause", "default")
    assert code == commands.EXIT_INVALID and "named queue" in err
    assert as_user("queues", "set", "mail")[0] == commands.EXIT_USAGE


def test_help_shows_an_example_for_every_verb(capsys: Any) -> None:
    verbs = {
        "tasks": ["create", "list", "get", "cancel", "retry"],
        "schedules": ["create", "list", "get", "pause", "resume", "delete"],
        "queues": ["list", "get", "set", "pause", "resume", "redrive"],
    }
    for group, names in verbs.items():
        with pytest.raises(SystemExit):
            cli.main([group, "--help"])
        group_help = capsys.readouterr().out
        for verb in names:
            assert f"  taskorch {group} {verb}" in group_help
            with pytest.raises(SystemExit) as ended:
                cli.main([group, verb, "--help"])
            text = capsys.readouterr().out
            assert ended.value.code == 0
            assert re.search(rf"^example:\n  taskorch {group} {verb}\b", text, re.M), text


def test_missing_settings_and_an_unreachable_api_exit_clearly(service: Service) -> None:
    env = {k: v for k, v in service.env().items() if k != "TASKORCH_API_URL"}
    done = run_cli(["tasks", "list"], env)
    assert done.returncode == 2 and "set TASKORCH_API_URL" in done.stderr
    done = run_cli(["tasks", "list"], service.env())
    assert done.returncode == 2 and "set TASKORCH_TOKEN" in done.stderr
    token = service.token()
    done = run_cli(["tasks", "list"], service.env(TASKORCH_TOKEN="not-a-token"))
    assert done.returncode == commands.EXIT_AUTH == 6 and "401" in done.stderr
    done = run_cli(["tasks", "list"], service.env(TASKORCH_TOKEN=token))
    assert done.returncode == 0 and done.stdout == "no tasks\n"
    from tests.conftest import free_port

    down = service.env(TASKORCH_TOKEN=token, TASKORCH_API_URL=f"http://127.0.0.1:{free_port()}")
    done = run_cli(["tasks", "list"], down)
    assert done.returncode == commands.EXIT_UNAVAILABLE == 5 and "TASKORCH_API_URL" in done.stderr


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10s", 10),
        ("5m", 300),
        ("2h", 7200),
        ("1h30m", 5400),
        ("1d", 86400),
        ("500ms", 0.5),
        ("1.5", 1.5),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert commands.parse_duration(text) == seconds


def test_times_read_as_a_person_reads_them() -> None:
    now = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)
    at = lambda s: (now + dt.timedelta(seconds=s)).isoformat()  # noqa: E731
    assert commands.relative(at(300), now) == "in 5 min"
    assert commands.relative(at(-3), now) == "3 s ago"
    assert commands.relative(at(0.2), now) == "now"
    assert commands.relative(at(5400), now) == "in 1 h 30 min"
    assert commands.relative(at(-2 * 86400), now) == "2 d ago"


def test_group_help_names_the_exit_codes(capsys: Any) -> None:
    for group in ("tasks", "schedules", "queues"):
        with pytest.raises(SystemExit):
            cli.main([group, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "3 not found, 4 conflict, 5 service unavailable" in text
