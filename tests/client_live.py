"""One real service for the client's and the CLI's tests: ``taskorch serve`` (uvloop, uvicorn,
as production runs it) and one real ``taskorch worker`` on the session's redis-server, started
once per test module. Each test acts as an owner of its own (a token per owner), so tests see
only their own tasks without flushing Redis under the running processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from taskorch.auth import mint_token
from taskorch.settings import Settings
from tests.conftest import ROOT, SECRET, RedisServer, WorkerProcs, make_settings
from tests.live import Serve, serving


@dataclass
class Service:
    serve: Serve
    settings: Settings
    workers: WorkerProcs

    @property
    def url(self) -> str:
        return self.serve.url

    def token(self, sub: str | None = None, **kw: object) -> str:
        return mint_token(self.settings, sub or new_owner(), **kw)  # type: ignore[arg-type]

    def env(self, **extra: str) -> dict[str, str]:
        """The environment a user's shell has for the CLI verbs: the API's address alone."""
        base = {k: v for k, v in os.environ.items() if not k.startswith("TASKORCH_")}
        return {**base, "TASKORCH_API_URL": self.url, **extra}


def new_owner() -> str:
    return f"owner-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def service(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    folder = tmp_path_factory.mktemp("service")
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    settings = make_settings(redis_server.url)
    # The sandbox's own uid must reach the functions' folder: pytest's tmp is 0700 (as
    # tests/test_functions.py does).
    functions = Path(tempfile.mkdtemp(prefix="taskorch-fn-client-", dir="/tmp"))
    functions.chmod(0o711)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TASKORCH_")},
        "TASKORCH_REDIS_URL": redis_server.url,
        "TASKORCH_JWT_SECRET": SECRET,
        "TASKORCH_ALLOW_PRIVATE_TARGETS": "1",
        "TASKORCH_LEASE_S": "3",
        "TASKORCH_LOG_LEVEL": "info",
        "TASKORCH_SHUTDOWN_GRACE_S": "2",
        "TASKORCH_FUNCTIONS_DIR": str(functions),
    }
    workers = WorkerProcs(env, folder)
    try:
        with serving(
            redis_server.url, folder / "serve.log", TASKORCH_FUNCTIONS_DIR=str(functions)
        ) as serve:
            workers.start()
            try:
                yield Service(serve, settings, workers)
            finally:
                workers.stop_all()
    finally:
        shutil.rmtree(functions, ignore_errors=True)


def run_cli(
    args: list[str], env: dict[str, str], *, stdin: str | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    """``taskorch ARGS`` as a user's shell runs it, with what it printed and its exit code."""
    return subprocess.run(
        [sys.executable, "-m", "taskorch", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
    )
