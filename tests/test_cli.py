"""The ``taskorch`` command against the real service (``taskorch serve`` and a real worker): the
README's walk-throughs run line by line as written with ``taskorch dev`` of the installed wheel,
what each verb prints, ``--json``, the exit codes scripts rely on, ``--help`` with an example
for every command, ``--version`` and the token as users paste it, on the installed package."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import pytest

from taskorch import cli
from taskorch.client import Client
from tests.client_live import Service, new_owner, run_cli, service
from tests.conftest import ROOT
from tests.helpers import wait_for
from tests.test_dev import _run_dev, _wait_ready

__all__ = ["service"]  # the module's fixture


# The README's shell blocks a newcomer runs, in order, in one shell, with `taskorch dev` running:
# the command line's walk-through, curl's, tokens with a password, a schedule, an orchestration.
# (The functions block needs the trigger URL its first answer gives, so it is not run as written.)
WALK_THROUGHS = (
    "## A walk-through with the command line",
    "## The same walk-through with curl",
    "Tokens with a password instead",
    "## Recurring schedules",
    "## Orchestrations",
)


def readme_lines() -> list[str]:
    """The command lines of the README's walk-throughs (WALK_THROUGHS), as written: a line
    continued with a backslash or an open quote is one line."""
    text = (ROOT / "README.md").read_text()
    lines: list[str] = []
    for heading in WALK_THROUGHS:
        section = text.split(heading, 1)[1]
        block = section.split("```sh\n", 1)[1].split("```", 1)[0]
        command = ""
        for line in block.splitlines():
            if not command and (not line.strip() or line.lstrip().startswith("#")):
                continue
            command += line + "\n"
            if not line.endswith("\\") and _complete(command):
                lines.append(command.rstrip("\n"))
                command = ""
        assert not command, f"an unfinished line under {heading!r}: {command}"
    return lines


def _complete(command: str) -> bool:
    """Whether a shell command's quotes are all closed (a `#` comment may hold an apostrophe)."""
    try:
        shlex.split(command, comments=True)
    except ValueError:  # "No closing quotation"
        return False
    return True


@pytest.mark.timeout(600)  # the first test to use `installed` builds and installs the wheel
def test_the_readme_walk_throughs_run_as_written(installed: Path) -> None:
    """Every walk-through of the README, line by line, as a newcomer runs them with the
    installed package: `taskorch dev` in a folder whose .venv holds the wheel, then the lines
    in a second shell. Each line succeeds, prints what the README says, and no task or
    orchestration they make ends failed."""
    lines = readme_lines()
    assert any("taskorch tasks create" in line for line in lines)
    folder = Path(tempfile.mkdtemp(prefix="taskorch-readme-"))
    folder.chmod(0o711)  # the functions' sandbox uid enters it, as in tests/test_dev.py
    (folder / ".venv").symlink_to(installed)
    dev, port = _run_dev(folder, with_redis=True, taskorch=[str(installed / "bin" / "taskorch")])
    try:
        banner = _wait_ready(dev)
        url = f"http://127.0.0.1:{port}"
        assert url in banner
        script = ["set -e"]
        for i, line in enumerate(lines):
            # The one address the README says may differ: the one `taskorch dev` printed.
            script += [f"echo '@@@ {i}'", line.replace("http://127.0.0.1:3000", url)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKORCH_")}
        env["PATH"] = "/usr/bin:/bin"  # `taskorch` comes from the venv the walk-through activates
        done = subprocess.run(
            ["bash", "-c", "\n".join(script)],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        parts = re.split(r"^@@@ (\d+)\n", done.stdout, flags=re.M)[1:]
        out = {
            lines[int(n)].split("#")[0].strip(): text
            for n, text in zip(parts[::2], parts[1::2], strict=True)
        }
        _check_cli_walk_through(out)
        _check_curl_walk_through(out)
        token = (folder / ".taskorch" / "dev-token").read_text().strip()
        with Client(url, token=token) as client:
            _nothing_failed(client)
    finally:
        dev.send_signal(signal.SIGTERM)
        try:
            dev.wait(60)
        finally:
            if dev.stdout:
                dev.stdout.close()
            shutil.rmtree(folder, ignore_errors=True)


def _check_cli_walk_through(out: dict[str, str]) -> None:
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
    assert re.search(r"^call:\s+GET http", schedule, re.M), schedule
    assert re.search(r"^status:\s+paused$", out["taskorch schedules pause $SCHEDULE"], re.M)
    queues = out["taskorch queues list"].splitlines()
    assert [row.split()[0] for row in queues] == ["NAME", "default", "hooks"]


def _check_curl_walk_through(out: dict[str, str]) -> None:
    by_start = {line.split("\n")[0]: text for line, text in out.items()}

    def answer(start: str) -> Any:
        (text,) = [t for line, t in by_start.items() if line.startswith(start)]
        return json.loads(text)

    task = answer("curl -s $API/v1/tasks/$TASK")
    assert task["status"] == "succeeded" and task["attempts"][0]["status_code"] == 200, task
    assert answer("curl -s -X POST $API/v1/tasks/$OTHER/cancel")["status"] == "cancelled"
    assert answer('curl -s "$API/v1/tasks?status=failed"')["items"] == []
    assert answer("curl -s -X POST $API/v1/auth/token")["token_type"] == "bearer"
    assert answer("curl -s -X POST $API/v1/schedules")["status"] == "active"
    assert answer("curl -s -X POST $API/v1/orchestrations")["status"] in ("scheduled", "running")


def _nothing_failed(client: Client, timeout_s: float = 60) -> None:
    """Wait until every task and orchestration the lines made has settled (nothing running or
    retrying, nothing due in the next minute), then check that none failed."""
    horizon = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)

    def settled() -> bool:
        for t in client.iter_tasks():
            if t.status.value in ("running", "retrying"):
                return False
            due = dt.datetime.fromisoformat(t.run_at) if t.run_at else None
            if t.status.value == "scheduled" and due is not None and due < horizon:
                return False
        return all(
            o.status.value not in ("scheduled", "running") for o in client.iter_orchestrations()
        )

    wait_for(settled, timeout_s)
    tasks = list(client.iter_tasks())
    assert tasks and not [t for t in tasks if t.status.value == "failed"], [
        (t.id, t.method, t.url, t.status.value, t.schedule_id) for t in tasks
    ]
    assert [o.status.value for o in client.iter_orchestrations()] == ["succeeded"]


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
    assert code == cli.EXIT_CONFLICT == 4 and "cancelled" in err
    code, _, err = as_user("tasks", "get", "tsk_000000000000000000000000")
    assert code == cli.EXIT_NOT_FOUND == 3 and "404 not_found" in err
    code, out, err = as_user("tasks", "create", "--url", "ftp://x", "--json")
    assert code == cli.EXIT_INVALID == 7 and "url:" in err
    assert json.loads(out)["error"]["details"][0]["field"] == "url"
    code, _, err = as_user("tasks", "create", "--url", "https://x", "--in", "soon")
    assert code == cli.EXIT_USAGE == 2 and "not a duration" in err

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
        wait_for(lambda t=t: c.get_task(t.id).status == "failed")
    code, out, _ = as_user("tasks", "retry", failing[0].id)
    assert code == 0 and re.search(r"^status:\s+(scheduled|running|failed)$", out, re.M)
    wait_for(
        lambda: (
            len(c.get_task(failing[0].id).attempts) == 2
            and c.get_task(failing[0].id).status == "failed"
        )
    )

    code, out, err = as_user("queues", "redrive", "rd")
    assert code == 0, err
    assert "retried 3 failed task(s) of queue rd" in out and "3/3" in err
    for t in failing:
        wait_for(lambda t=t: len(c.get_task(t.id).attempts) == (3 if t is failing[0] else 2))
    code, out, _ = as_user("queues", "redrive", "empty", "--json")
    assert code == 0 and json.loads(out) == {"queue": "empty", "retried": [], "refused": []}


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
    assert as_user("schedules", "get", sch)[0] == cli.EXIT_NOT_FOUND
    code, _, err = as_user(
        "schedules", "create", "--cron", "61 * * * *", "--url", "https://x.example"
    )
    assert code == cli.EXIT_INVALID and "cron:" in err

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
    assert code == cli.EXIT_INVALID and "named queue" in err
    assert as_user("queues", "set", "mail")[0] == cli.EXIT_USAGE


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


def test_help_shows_the_default_method_of_a_call(capsys: Any) -> None:
    for group in ("tasks", "schedules"):
        with pytest.raises(SystemExit):
            cli.main([group, "create", "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--method {GET,POST,PUT,PATCH,DELETE} the HTTP method of the call (POST)" in text


def _leaves(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()) -> Any:
    """Every command of a parser's tree, as the words that name it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield (*words, name)
                yield from _leaves(child, (*words, name))


def test_every_command_has_an_example_in_its_help(capsys: Any) -> None:
    """The README: "Every verb has --help with an example"; each of the command's own."""
    commands_ = list(_leaves(cli._parser()))
    assert ("serve",) in commands_ and ("user", "passwd") in commands_
    for words in commands_:
        with pytest.raises(SystemExit) as ended:
            cli.main([*words, "--help"])
        text = capsys.readouterr().out
        assert ended.value.code == 0
        example = re.search(r"^examples?:\n((?:  .*\n?)+)", text, re.M)
        assert example, text
        assert f"taskorch {' '.join(words)}" in example.group(1), text


def _installed(
    venv: Path, cwd: Path, *args: str, program: str = "taskorch", **env: str
) -> subprocess.CompletedProcess[str]:
    """A program of the installed wheel's venv (``taskorch`` by default), run with a bare PATH
    outside the checkout."""
    return subprocess.run(
        [str(venv / "bin" / program), *args],
        env={"PATH": "/usr/bin:/bin", "HOME": str(cwd), **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.timeout(600)  # the first test to use `installed` builds and installs the wheel
def test_installed_command_prints_its_version(installed: Path, tmp_path: Path) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    done = _installed(installed, tmp_path, "--version")
    assert (done.returncode, done.stdout) == (0, f"taskorch {version}\n"), done.stderr


@pytest.mark.timeout(600)
def test_installed_service_commands_show_an_example(installed: Path, tmp_path: Path) -> None:
    for verb in ("dev", "serve", "worker", "token", "user", "check", "migrate"):
        done = _installed(installed, tmp_path, verb, "--help")
        assert done.returncode == 0, done.stderr
        example = re.search(r"^example:\n((?:  .*\n)+)", done.stdout, re.M)
        assert example and f"taskorch {verb}" in example.group(1), done.stdout


@pytest.mark.timeout(600)
def test_installed_command_and_client_take_a_bearer_token(
    installed: Path, service: Service, tmp_path: Path
) -> None:
    """TASKORCH_TOKEN pasted with its scheme (any case) and whitespace around it."""
    token = service.token()
    for pasted in (f"Bearer {token}", f"bearer {token}\n", f"  BEARER   {token} "):
        done = _installed(
            installed,
            tmp_path,
            "tasks",
            "list",
            TASKORCH_API_URL=service.url,
            TASKORCH_TOKEN=pasted,
        )
        assert (done.returncode, done.stdout) == (0, "no tasks\n"), done.stderr
    # The Python client reads TASKORCH_TOKEN the same way.
    probe = "from taskorch.client import Client; print(Client().list_tasks().items)"
    done = _installed(
        installed,
        tmp_path,
        "-c",
        probe,
        program="python",
        TASKORCH_API_URL=service.url,
        TASKORCH_TOKEN=f"Bearer {token}\n",
    )
    assert (done.returncode, done.stdout) == (0, "[]\n"), done.stderr


def test_missing_settings_and_an_unreachable_api_exit_clearly(service: Service) -> None:
    env = {k: v for k, v in service.env().items() if k != "TASKORCH_API_URL"}
    done = run_cli(["tasks", "list"], env)
    assert done.returncode == 2 and "set TASKORCH_API_URL" in done.stderr
    done = run_cli(["tasks", "list"], service.env())
    assert done.returncode == 2 and "set TASKORCH_TOKEN" in done.stderr
    token = service.token()
    done = run_cli(["tasks", "list"], service.env(TASKORCH_TOKEN="not-a-token"))
    assert done.returncode == cli.EXIT_AUTH == 6 and "401" in done.stderr
    done = run_cli(["tasks", "list"], service.env(TASKORCH_TOKEN=token))
    assert done.returncode == 0 and done.stdout == "no tasks\n"
    from tests.conftest import free_port

    down = service.env(TASKORCH_TOKEN=token, TASKORCH_API_URL=f"http://127.0.0.1:{free_port()}")
    done = run_cli(["tasks", "list"], down)
    assert done.returncode == cli.EXIT_UNAVAILABLE == 5 and "TASKORCH_API_URL" in done.stderr


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
    assert cli.parse_duration(text) == seconds


def test_times_read_as_a_person_reads_them() -> None:
    now = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)
    at = lambda s: (now + dt.timedelta(seconds=s)).isoformat()  # noqa: E731
    assert cli.relative(at(300), now) == "in 5 min"
    assert cli.relative(at(-3), now) == "3 s ago"
    assert cli.relative(at(0.2), now) == "now"
    assert cli.relative(at(5400), now) == "in 1 h 30 min"
    assert cli.relative(at(-2 * 86400), now) == "2 d ago"


def test_group_help_names_the_exit_codes(capsys: Any) -> None:
    for group in ("tasks", "schedules", "queues"):
        with pytest.raises(SystemExit):
            cli.main([group, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "3 not found, 4 conflict, 5 service unavailable" in text
