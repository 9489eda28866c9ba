"""Waits on events rather than on the clock, for the tests that must show that something does
NOT happen.

A fixed sleep "long enough for a repeat to show up" is too long on an idle machine and too short
on a busy one. A barrier instead: a later task, due after the moment in question, that must
arrive first. The worker claims and fires in due order, so once the barrier's call has arrived
(and its outcome is recorded), whatever was due before it and was going to fire has fired.
"""

from __future__ import annotations

from typing import Any

from tests.conftest import Api


async def barrier(
    api: Api,
    url: str,
    *,
    delay_s: float = 0.0,
    timeout_s: float = 30,
    sub: str = "alice",
    **fields: Any,
) -> dict[str, Any]:
    """Create a task calling ``url`` due ``delay_s`` from now (more task ``fields`` as given),
    wait until it succeeded, and return it as it ended."""
    body = {"url": url, "delay": delay_s, "retries": 0, **fields}
    task = await api.create(body, sub=sub)
    return await api.wait_status(task["id"], "succeeded", timeout_s=timeout_s, sub=sub)
