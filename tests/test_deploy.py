"""Deploying as people deploy: the wheel outside a checkout, started as the Procfile says; the
platform's variables; the release check of Redis's eviction policy; the dev command's manners.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from taskorch.api import create_app
from taskorch.errors import ConfigError
from taskorch.settings import Settings
from tests.conftest import (
    ROOT,
    SECRET,
    Api,
    Target,
    WorkerProcs,
    _WithState,
    free_port,
    make_settings,
)

# -- platform variables ------------------------------------------------------------------------


def test_platform_port_listens_on_every_interface() -> None:
    s = Settings.from_env({"PORT": "5123", "TASKORCH_JWT_SECRET": SECRET})
    assert (s.host, s.port) == ("0.0.0.0", 5123)
    # Our own variables still win over the platform's.
    s = Settings.from_env(
        {"PORT": "5123", "TASKORCH_PORT": "4000", "TASKORCH_HOST": "10.0.0.1"},
        verify_tokens=False,
    )
    assert (s.host, s.port) == ("10.0.0.1", 4000)
    s = Settings.from_env({}, verify_tokens=False)
    assert (s.host, s.port) == ("127.0.0.1", 3000)


def test_platform_redis_url_and_web_concurrency() -> None:
    env = {"REDIS_URL": "rediss://:pw@example.net:6380", "WEB_CONCURRENCY": "3"}
    s = Settings.from_env(env, verify_tokens=False)
    assert (s.redis_url, s.web_concurrency) == ("rediss://:pw@example.net:6380", 3)
    env |= {"TASKORCH_REDIS_URL": "redis://other:6379/1", "TASKORCH_WEB_CONCURRENCY": "2"}
    s = Settings.from_env(env, verify_tokens=False)
    assert (s.redis_url, s.web_concurrency) == ("redis://other:6379/1", 2)
    with pytest.raises(ConfigError, match="WEB_CONCURRENCY must be"):
        Settings.from_env({"WEB_CONCURRENCY": "lots"}, verify_tokens=False)


# -- the release check -------------------------------------------------------------------------


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TASKORCH_")}
    clean.pop("REDIS_URL", None)
    clean.pop("PORT", None)
    return subprocess.run(
        [sys.executable, "-m", "taskorch", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **env},
    )


@pytest.fixture
def evicting_redis(redis_url: str) -> Iterator[str]:
    r = redis.Redis.from_url(redis_url)
    r.config_set("maxmemory-policy", "allkeys-lru")
    try:
        yield redis_url
    finally:
        r.config_set("maxmemory-policy", "noeviction")


def test_check_passes_on_a_queue_redis(redis_url: str) -> None:
    p = _cli("check", REDIS_URL=redis_url, TASKORCH_JWT_SECRET=SECRET)
    assert p.returncode == 0, p.stderr
    assert "look right" in p.stdout


def test_check_and_serve_refuse_an_evicting_redis(evicting_redis: str) -> None:
    env = {"REDIS_URL": evicting_redis, "TASKORCH_JWT_SECRET": SECRET}
    for verb in ("check", "serve"):
        p = _cli(verb, **env, TASKORCH_PORT=str(free_port()))
        assert p.returncode == 2, (verb, p.stdout, p.stderr)
        assert "maxmemory-policy is allkeys-lru" in p.stderr and "noeviction" in p.stderr
    p = _cli("check", **env, TASKORCH_REDIS_POLICY_CHECK="warn")
    assert p.returncode == 0, p.stderr
    assert "redis.eviction_policy" in p.stdout + p.stderr


def test_check_refuses_an_unreachable_redis() -> None:
    p = _cli("check", REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", TASKORCH_JWT_SECRET=SECRET)
    assert p.returncode == 2
    assert "unreachable" in p.stderr


# -- the wheel, outside the source tree, started the Procfile's way ----------------------------


def _procfile() -> dict[str, str]:
    out = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, command = line.partition(":")
            out[name.strip()] = command.strip()
    return out


def _children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# Building the wheel and installing it with its dependencies into an empty venv takes minutes
# on a busy machine; the default 120 s covers the fixture too.
@pytest.mark.timeout(900)
def test_installed_wheel_runs_as_the_procfile_says(
    installed: Path, redis_url: str, tmp_path: Path
) -> None:
    procfile = _procfile()
    assert set(procfile) == {"release", "web", "worker"}
    python = installed / "bin" / "python"
    # The installed package, not this checkout; it no longer pulls in arq, which nothing uses.
    probe = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.metadata as m, taskorch; print(taskorch.__file__); "
            "print(m.requires('taskorch'))",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert str(installed) in probe.stdout and str(ROOT) not in probe.stdout
    assert "arq" not in probe.stdout
    port = free_port()
    env = {
        "PATH": f"{installed / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PORT": str(port),
        "REDIS_URL": redis_url,
        "TASKORCH_JWT_SECRET": SECRET,
        "WEB_CONCURRENCY": "2",
        # The only target reachable here is on loopback, which production refuses by default.
        "TASKORCH_ALLOW_PRIVATE_TARGETS": "1",
    }
    release = subprocess.run(
        ["sh", "-c", procfile["release"]], env=env, cwd=tmp_path, capture_output=True, timeout=60
    )
    assert release.returncode == 0, release.stderr
    procs: list[subprocess.Popen[bytes]] = []
    with open(tmp_path / "procs.log", "wb") as log:
        for name in ("web", "worker"):
            procs.append(
                subprocess.Popen(
                    ["sh", "-c", "exec " + procfile[name]],
                    env=env,
                    cwd=tmp_path,
                    stdout=log,
                    stderr=log,
                )
            )
    web = procs[0]
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert web.poll() is None, (tmp_path / "procs.log").read_text()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, (tmp_path / "procs.log").read_text()
            time.sleep(0.2)
        assert len(_children(web.pid)) >= 2, "WEB_CONCURRENCY=2 runs two API processes"
        page = httpx.get(f"{base}/")
        assert page.status_code == 200 and "<html" in page.text.lower()
        assert httpx.get(f"{base}/static/app.js").status_code == 200
        # Every API process got through its lifespan: each answers ready.
        for _ in range(10):
            with httpx.Client() as fresh:  # a new connection each time, spread over processes
                r = fresh.get(f"{base}/readyz")
                assert r.status_code == 200 and r.json()["redis"] == "ok", r.text
        auth = {"Authorization": f"Bearer {_token(installed, tmp_path)}"}
        created = httpx.post(
            f"{base}/v1/tasks",
            headers=auth,
            json={"url": f"{base}/healthz", "method": "GET", "delay": 0.3},
        )
        assert created.status_code == 201, created.text
        assert created.text.endswith("\n")
        task_id = created.json()["id"]
        deadline = time.monotonic() + 30
        while (got := httpx.get(f"{base}/v1/tasks/{task_id}", headers=auth).json())[
            "status"
        ] != "succeeded":
            assert time.monotonic() < deadline, got
            time.sleep(0.1)
        assert got["attempts"][0]["status_code"] == 200
    finally:
        for p in reversed(procs):
            _stop(p)
    assert not _children(web.pid)


AWS_EXTRA_MISSING = (
    "taskorch: TASKORCH_FUNCTION_PROVIDER=aws needs boto3: pip install 'taskorch[aws]'"
)


@pytest.mark.timeout(900)  # the first test to use `installed` builds and installs the wheel
def test_installed_core_needs_no_extras_and_names_the_aws_one(
    installed: Path, redis_url: str, tmp_path: Path
) -> None:
    """`pip install taskorch` has neither boto3 nor fakeredis; the core imports without them, the
    aws provider then stops the start with one line saying what to install, and `taskorch[aws]`
    is what pulls boto3 in (read from the wheel's metadata, not installed)."""
    python = installed / "bin" / "python"
    probe = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.util as u, json, importlib.metadata as m\n"
            "import taskorch, taskorch.api, taskorch.worker, taskorch.client, taskorch.cli\n"
            "import taskorch.functions, taskorch.cli.dev, sys\n"
            "print(json.dumps({'absent': [n for n in ('boto3', 'botocore', 'fakeredis', 'lupa')"
            " if u.find_spec(n) is None], 'loaded': sorted(n for n in sys.modules"
            " if n.split('.')[0] in ('boto3', 'botocore', 'fakeredis')),"
            " 'requires': m.requires('taskorch')}))",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    found = json.loads(probe.stdout)
    assert found["absent"] == ["boto3", "botocore", "fakeredis", "lupa"]
    assert found["loaded"] == []
    requires = set(found["requires"])
    assert 'boto3>=1.34; extra == "aws"' in requires
    assert 'fakeredis[lua]>=2.26; extra == "embedded"' in requires
    assert not {r for r in requires if r.startswith(("boto3", "fakeredis")) and "extra" not in r}
    env = {
        "PATH": f"{installed / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "TASKORCH_REDIS_URL": redis_url,
        "TASKORCH_JWT_SECRET": SECRET,
        "TASKORCH_PORT": str(free_port()),
        "TASKORCH_AWS_REGION": "eu-west-1",
        "TASKORCH_AWS_LAMBDA_ROLE": "arn:aws:iam::123456789012:role/taskorch",
    }
    serve = subprocess.run(
        [str(installed / "bin" / "taskorch"), "serve"],
        env={**env, "TASKORCH_FUNCTION_PROVIDER": "aws"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (serve.returncode, serve.stderr.splitlines()) == (2, [AWS_EXTRA_MISSING]), serve.stderr
    # The local provider needs no boto3: the API builds, and a function asked of AWS is refused
    # with the same fix.
    app = subprocess.run(
        [
            str(python),
            "-c",
            "from taskorch.api import create_app, lambda_provider\n"
            "from taskorch.settings import Settings\n"
            "s = Settings.from_env()\n"
            "create_app(s)\n"
            "print(lambda_provider(s))",
        ],
        env={**env, "TASKORCH_FUNCTION_PROVIDER": "local", "TASKORCH_LOCAL_FUNCTIONS": "0"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert app.stdout.splitlines()[-1:] == ["None"], app.stderr


def test_dev_without_redis_server_or_fakeredis_says_what_to_install(
    installed: Path, tmp_path: Path
) -> None:
    """The embedded fallback is the `embedded` extra: without it and without a redis-server on
    PATH, `taskorch dev` stops with the two ways out, before starting anything."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    dev = subprocess.Popen(
        [str(installed / "bin" / "taskorch"), "dev"],
        env={"PATH": str(bindir), "HOME": str(tmp_path)},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own group: if it did start the API and a worker, both go
    )
    try:
        _, err = dev.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(dev.pid, signal.SIGKILL)
        dev.wait()
    assert dev.returncode == 1, err
    assert err.splitlines()[-1] == (
        "taskorch dev: no redis-server on PATH: install Redis (apt-get install redis-server), "
        "or pip install 'taskorch[embedded]' to try it with an in-process fakeredis"
    ), err


def _token(venv: Path, cwd: Path) -> str:
    p = subprocess.run(
        [str(venv / "bin" / "taskorch"), "token", "--sub", "heroku"],
        env={"PATH": "/usr/bin:/bin", "TASKORCH_JWT_SECRET": SECRET},
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    return p.stdout.strip()


# -- taskorch dev ------------------------------------------------------------------------------


def _dev(folder: Path, **env: str) -> subprocess.Popen[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TASKORCH_")}
    clean.update(TASKORCH_FUNCTIONS_DIR=str(folder / "functions"), **env)
    return subprocess.Popen(
        [sys.executable, "-m", "taskorch", "dev"],
        cwd=folder,
        env=clean,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _banner(proc: subprocess.Popen[str]) -> str:
    out = []
    assert proc.stdout is not None
    for line in proc.stdout:
        out.append(line)
        if "Ctrl-C stops everything" in line:
            return "".join(out)
    raise AssertionError("taskorch dev exited:\n" + "".join(out))


def _stop_dev(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout:
        proc.stdout.close()


def test_dev_refuses_a_taken_port_it_was_told_to_use(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        proc = _dev(tmp_path, TASKORCH_PORT=str(port))
        try:
            out, _ = proc.communicate(timeout=60)
        finally:
            _stop_dev(proc)
    assert proc.returncode != 0
    assert f"port {port}" in out and "already in use" in out
    assert "taskorch is running" not in out


def test_dev_moves_off_a_taken_port_3000_and_says_where(tmp_path: Path) -> None:
    with socket.socket() as other:
        try:
            other.bind(("127.0.0.1", 3000))
        except OSError:
            pass  # someone already holds 3000: just as good for this test
        else:
            other.listen()
        proc = _dev(tmp_path)
        try:
            banner = _banner(proc)
            assert "port 3000 is in use" in banner
            url = next(w for w in banner.split() if w.startswith("http://127.0.0.1:"))
            port = int(url.rsplit(":", 1)[1].strip("/"))
            assert port != 3000
            token = (tmp_path / ".taskorch" / "dev-token").read_text().strip()
            r = httpx.get(
                f"http://127.0.0.1:{port}/v1/tasks", headers={"Authorization": f"Bearer {token}"}
            )
            assert r.status_code == 200 and r.text.endswith("\n")
            # The banner names the Redis it really started, and dev.env says it to other shells.
            env_file = (tmp_path / ".taskorch" / "dev.env").read_text()
            redis_url = next(
                line.split("=", 1)[1] for line in env_file.splitlines() if "REDIS_URL" in line
            )
            assert f"Redis: {redis_url}" in banner
            assert redis.Redis.from_url(redis_url).ping()
            # Only its user can read the token, the secret and Redis's files.
            data = tmp_path / ".taskorch"
            for folder in (data, data / "redis"):
                assert folder.stat().st_mode & 0o777 == 0o700, folder
            for name in ("dev-token", "dev-secret", "dev.env"):
                assert (data / name).stat().st_mode & 0o777 == 0o600, name
        finally:
            _stop_dev(proc)
    assert proc.returncode == 0


def test_walk_through_files_are_ignored_by_git(tmp_path: Path) -> None:
    names = ["task.json", "other.json", ".taskorch/dev-token"]
    p = subprocess.run(
        ["git", "check-ignore", "--no-index", *names], cwd=ROOT, capture_output=True, text=True
    )
    assert sorted(p.stdout.split()) == sorted(names)


def test_readme_links_only_what_the_repository_has() -> None:
    import re

    text = (ROOT / "README.md").read_text()
    for link in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if "://" in link:
            continue
        where = (ROOT / link).resolve()
        assert where.is_relative_to(ROOT) and where.exists(), (
            f"README links {link}: not in the repo"
        )
    for doc in sorted((ROOT / "docs").glob("*.md")):
        for link in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", doc.read_text()):
            where = (doc.parent / link).resolve()
            if "://" not in link:
                assert where.is_relative_to(ROOT) and where.exists(), f"{doc.name} links {link}"


def test_procfile_and_lock_file_for_heroku() -> None:
    lock = (ROOT / "requirements.txt").read_text().splitlines()
    pins = [line for line in lock if line and not line.startswith("#")]
    # The package itself, with boto3: on a platform, functions can only run on AWS Lambda.
    assert ".[aws]" in pins, "requirements.txt installs the package itself, with the aws extra"
    deps = [p for p in pins if p != ".[aws]"]
    assert deps and all("==" in p for p in deps), deps
    names = {p.split("==")[0].lower().replace("_", "-") for p in deps}
    assert {"starlette", "redis", "uvicorn", "prometheus-client"} <= names
    assert "arq" not in names
    assert "boto3" in names and "fakeredis" not in names


# -- /metrics ----------------------------------------------------------------------------------


async def test_metrics_follow_prometheus_conventions_and_name_no_owner(
    api: Api, target: Target, workers: WorkerProcs
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    workers.start()
    owner = "owner-with-a-secret-name"
    ids = [
        (await api.create({"url": target.url("/ok"), "delay": 0.2}, sub=owner))["id"]
        for _ in range(3)
    ]
    for task_id in ids:
        await api.wait_status(task_id, "succeeded", sub=owner)
    r = await api.http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert owner not in r.text and "owner" not in r.text
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    lateness = families["taskorch_lateness_seconds"]
    assert lateness.type == "histogram"
    samples = {(s.name, s.labels.get("le")): s.value for s in lateness.samples}
    assert samples[("taskorch_lateness_seconds_count", None)] == 3
    assert samples[("taskorch_lateness_seconds_bucket", "+Inf")] == 3
    assert ("taskorch_lateness_seconds_bucket", "0.001") in samples  # seconds, not ms
    assert 0 <= samples[("taskorch_lateness_seconds_sum", None)] < 3 * 5.0
    attempts = {s.labels["outcome"]: s.value for s in families["taskorch_attempts"].samples}
    assert attempts["succeeded"] == 3
    tasks = {s.labels["status"]: s.value for s in families["taskorch_tasks"].samples}
    assert tasks["succeeded"] == 3


async def test_metrics_token_protects_the_page(redis_url: str) -> None:
    settings = make_settings(redis_url, metrics_token="scrape-me-0123456789")
    app = create_app(settings)
    async with app.router.lifespan_context(app) as state:
        transport = httpx.ASGITransport(app=_WithState(app, state))  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            missing = await http.get("/metrics")
            assert missing.status_code == 401
            assert missing.headers["www-authenticate"] == "Bearer"
            assert missing.json()["error"]["code"] == "missing_token"
            wrong = await http.get("/metrics", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            ok = await http.get(
                "/metrics", headers={"Authorization": "Bearer scrape-me-0123456789"}
            )
            assert ok.status_code == 200 and "taskorch_workers" in ok.text
    assert (
        Settings.from_env({"TASKORCH_METRICS_TOKEN": "t0k3n"}, verify_tokens=False).metrics_token
        == "t0k3n"
    )
