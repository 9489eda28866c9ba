"""What many tests need, written once: a free port, waiting on a condition (from a coroutine or
a plain function), and the API on a real socket served by uvicorn in the test's own loop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from taskorch.api import create_app
from taskorch.settings import Settings


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on at the moment."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until(
    check: Callable[[], Any], timeout_s: float = 15, every_s: float = 0.05, *, what: str = ""
) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy, and return that; fail
    naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what or 'condition'} not met within {timeout_s} s")
        await asyncio.sleep(every_s)


def wait_for(
    check: Callable[[], Any],
    timeout_s: float = 20,
    every_s: float = 0.05,
    *,
    what: str = "",
    ignore: tuple[type[BaseException], ...] = (),
) -> Any:
    """``until`` for tests without a loop: poll ``check``, counting the errors in ``ignore``
    (a server still starting, say) as not yet."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = check()
        except ignore:
            value = None
        if value:
            return value
        assert time.monotonic() < deadline, f"{what or 'condition'} not met within {timeout_s} s"
        time.sleep(every_s)


@contextlib.asynccontextmanager
async def live_api(settings: Settings, port: int | None = None) -> AsyncIterator[str]:
    """The API built from ``settings`` on 127.0.0.1 (``port``, or ``settings.port``), lifespan
    included, served in this loop until the block ends; yields its base URL."""
    import uvicorn

    port = settings.port if port is None else port
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
        )
    )
    task = asyncio.create_task(server.serve())
    try:
        await until(lambda: server.started or task.done(), timeout_s=30, every_s=0.02)
        if task.done():
            task.result()  # its startup failed: raise what it raised
            raise AssertionError(f"the API on port {port} stopped before it started")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
