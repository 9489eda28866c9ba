"""``taskorch serve``: the API in one process, or several on one port under a supervisor."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from typing import Any

from taskorch import constants as c
from taskorch.api.app import create_app
from taskorch.api.common import log
from taskorch.settings import Settings

_CHILD_ENV = "TASKORCH_SERVE_CHILD"  # set by serve() in the API processes it starts


def serve(settings: Settings) -> None:
    """Entry point of ``taskorch serve``: ``TASKORCH_WEB_CONCURRENCY`` processes on one port.

    One process serves in place. For several, this process starts that many ``taskorch serve``
    children, each with its own app, lifespan and Redis pool, listening on the same port with
    ``SO_REUSEPORT`` (the kernel spreads connections over them), and stays as their supervisor:
    SIGTERM or SIGINT is passed on to all, and if one dies the rest are stopped, so that the
    platform's restart policy sees a failed process rather than a quietly smaller one.
    """
    import uvicorn

    from taskorch.limits import DeadlineHTTPProtocol
    from taskorch.logs import configure
    from taskorch.store import check_redis

    configure(fmt=settings.log_format, level=settings.log_level)
    child = os.environ.get(_CHILD_ENV) == "1"
    if not child:
        check_redis(settings)
    app = create_app(settings)  # built here too, so that bad settings stop the parent at once
    if settings.web_concurrency > 1 and not child:
        sys.exit(_supervise(settings))
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        log_config=None,  # uvicorn's lines go through logs.configure's handler, which redacts
        proxy_headers=True,
        access_log=False,  # the Edge middleware logs each request as http.request
        http=DeadlineHTTPProtocol,  # read deadlines and head limits: see taskorch/limits.py
        h11_max_incomplete_event_size=c.MAX_HEAD_BYTES,  # h11's own cap, if it is the parser
        timeout_keep_alive=settings.keep_alive_s,
    )
    server = _server(config, app.state.stopping)
    if child:
        server.run(sockets=[_reuseport_socket(settings.host, settings.port)])
    else:
        server.run()


def _server(config: Any, stopping: asyncio.Event) -> Any:
    """A uvicorn server that ends the app's event streams as it begins to shut down.

    uvicorn's graceful shutdown waits for every response to finish and tells the app nothing
    (the lifespan's shutdown comes after), so an open status page's stream would hold it until
    the tab is closed. Setting ``stopping`` first ends each stream; EventSource reconnects to
    whichever server answers next.
    """
    import uvicorn

    class _Server(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            stopping.set()
            await super().shutdown(sockets)

    return _Server(config)


def _reuseport_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def _supervise(settings: Settings) -> int:
    import signal
    import subprocess
    import time

    env = {**os.environ, _CHILD_ENV: "1"}
    children = [
        subprocess.Popen([sys.executable, "-m", "taskorch", "serve"], env=env)
        for _ in range(settings.web_concurrency)
    ]
    log.info("api.processes", count=len(children), port=settings.port)
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for p in children:
            if p.poll() is None:
                p.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping and all(p.poll() is None for p in children):
        time.sleep(0.2)
    if not stopping:
        log.error("api.process_exited", codes=[p.poll() for p in children])
        stop(signal.SIGTERM, None)
    for p in children:
        p.wait()
    return 0 if stopping else 1
