"""``taskorch dev``: Redis, the API and a worker on one machine, with a token ready to use.

Redis is a ``redis-server`` from PATH with its data under ``.taskorch/redis`` (append-only, so
tasks survive a restart of ``taskorch dev``); without one, fakeredis's in-process server (the ``embedded`` extra)
stands in, and we say loudly that nothing it holds survives.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

DATA = Path(".taskorch")


def _free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise RuntimeError("no free port")


def _wait_port(port: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return True
        time.sleep(0.05)
    return False


def _private_dir(path: Path) -> None:
    """A folder only this user can enter (0700), however it was made before."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to a file only this user can read (0600) from the moment it exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an older file may have been made with wider bits
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _secret() -> str:
    if os.environ.get("TASKORCH_JWT_SECRET"):
        return os.environ["TASKORCH_JWT_SECRET"]
    path = DATA / "dev-secret"
    if not path.exists():
        _write_private(path, secrets.token_hex(32))
    path.chmod(0o600)
    return path.read_text().strip()


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _api_port() -> int:
    """TASKORCH_PORT when given (refused if taken), else 3000, else any free port."""
    given = os.environ.get("TASKORCH_PORT", "").strip()
    if given:
        if given.isdigit() and _port_taken(int(given)):
            raise SystemExit(
                f"taskorch dev: port {given} (TASKORCH_PORT) is already in use by another "
                "program; stop it or choose another port"
            )
        return int(given) if given.isdigit() else 0
    if not _port_taken(3000):
        return 3000
    port = _free_port(0)
    print(f"taskorch dev: port 3000 is in use by another program; the API uses {port} instead")
    return port


def _start_redis() -> tuple[str, subprocess.Popen[bytes] | None, object | None]:
    if os.environ.get("TASKORCH_REDIS_URL"):
        return os.environ["TASKORCH_REDIS_URL"], None, None
    server = shutil.which("redis-server")
    port = _free_port(6390)
    if server:
        folder = DATA / "redis"
        _private_dir(folder)  # the data and log hold every token's tasks
        proc = subprocess.Popen(
            [
                server,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(folder.resolve()),
                "--appendonly",
                "yes",
                "--maxmemory-policy",
                "noeviction",
                "--save",
                "",
                "--daemonize",
                "no",
                "--logfile",
                str((folder / "redis.log").resolve()),
            ],
        )
        if not _wait_port(port):
            raise SystemExit(
                "taskorch dev: redis-server did not start; see .taskorch/redis/redis.log"
            )
        print(f"redis      redis-server on 127.0.0.1:{port}, data in {folder}/")
        return f"redis://127.0.0.1:{port}/0", proc, None
    try:
        from fakeredis import TcpFakeServer
    except ModuleNotFoundError:
        raise SystemExit(
            "taskorch dev: no redis-server on PATH: install Redis (apt-get install redis-server), "
            "or pip install 'taskorch[embedded]' to try it with an in-process fakeredis"
        ) from None

    fake = TcpFakeServer(("127.0.0.1", port), server_type="redis")
    threading.Thread(target=fake.serve_forever, daemon=True).start()
    bar = "!" * 78
    print(
        f"{bar}\n!! No redis-server on PATH: using fakeredis in this process, FOR TRYING OUT ONLY.\n"
        f"!! Nothing survives a restart. Install Redis (apt-get install redis-server) for real use.\n{bar}"
    )
    return f"redis://127.0.0.1:{port}/0", None, fake


def _allow_unsafe_functions(env: dict[str, str]) -> None:
    """Without a sandbox here, local functions run unisolated in dev, and we say so loudly."""
    if env.get("TASKORCH_UNSAFE_FUNCTIONS"):
        return
    from taskorch.functions.errors import SandboxUnavailable
    from taskorch.functions.jail import Jail, default_python

    try:
        Jail.probe(python=default_python())
    except SandboxUnavailable as exc:
        env["TASKORCH_UNSAFE_FUNCTIONS"] = "1"
        bar = "!" * 78
        print(
            f"{bar}\n!! Functions cannot be sandboxed here ({exc}).\n"
            "!! taskorch dev runs them UNISOLATED (TASKORCH_UNSAFE_FUNCTIONS=1): your own code only.\n"
            f"{bar}"
        )


def run_dev() -> int:
    _private_dir(DATA)
    port = _api_port()
    env = dict(os.environ)
    if port:
        env["TASKORCH_PORT"] = str(port)
    env.setdefault("TASKORCH_ALLOW_PRIVATE_TARGETS", "1")  # dev targets are usually local
    env.setdefault("TASKORCH_LOG_FORMAT", "console")
    env["TASKORCH_JWT_SECRET"] = _secret()
    redis_url, redis_proc, fake = _start_redis()
    env["TASKORCH_REDIS_URL"] = redis_url
    _allow_unsafe_functions(env)
    os.environ.update(env)

    from taskorch.auth import mint_token
    from taskorch.errors import ConfigError
    from taskorch.settings import Settings

    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"taskorch: {exc}", file=sys.stderr)
        return 2
    token = mint_token(settings, "dev", ttl_s=min(30 * 24 * 3600, settings.token_max_ttl_s))
    _write_private(DATA / "dev-token", token + "\n")
    # What another shell needs to reach this Redis and sign tokens: `set -a; . .taskorch/dev.env`
    _write_private(
        DATA / "dev.env",
        f"TASKORCH_REDIS_URL={redis_url}\nTASKORCH_JWT_SECRET={env['TASKORCH_JWT_SECRET']}\n",
    )

    def _stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # SIGTERM (a process manager, `kill`) stops everything as Ctrl-C does.
    signal.signal(signal.SIGTERM, _stop)
    worker = subprocess.Popen([sys.executable, "-m", "taskorch", "worker"], env=env)
    api = subprocess.Popen([sys.executable, "-m", "taskorch", "serve"], env=env)
    try:
        if not _wait_port(settings.port, 15) or api.poll() is not None:
            print("taskorch dev: the API did not start", file=sys.stderr)
            return 1
        print(
            f"\ntaskorch is running at {settings.public_url}  (status page: {settings.public_url}/)\n"
            f"Redis: {redis_url}  (settings for another shell: set -a; . .taskorch/dev.env)\n"
            f"token for owner 'dev' (also in .taskorch/dev-token):\n\n{token}\n\n"
            f"  export TOKEN=$(cat .taskorch/dev-token)\n"
            f'  curl -H "Authorization: Bearer $TOKEN" {settings.public_url}/v1/tasks\n\n'
            "Ctrl-C stops everything.\n",
            flush=True,
        )
        while api.poll() is None and worker.poll() is None:
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for p in (api, worker):
            if p.poll() is None:
                p.terminate()
        for p in (api, worker):
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(35)
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(10)
        if fake is not None:
            fake.shutdown()  # type: ignore[attr-defined]
