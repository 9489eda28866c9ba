"""A request's Redis deadline on a busy event loop, on uvloop as ``taskorch serve`` runs it.

A reply that arrived before the deadline but sat unread while the loop was busy must be taken,
not thrown away; and a create whose deadline passes on a lagging loop cannot claim "not stored".
"""

from __future__ import annotations

import asyncio
import time

import uvloop

from taskorch.limits import RedisDeadline
from taskorch.store import connect


def test_a_reply_that_arrived_while_the_loop_was_busy_is_taken(redis_url: str) -> None:
    async def main() -> tuple[bool, bool, bool, str | None]:
        r = connect(redis_url)
        try:
            await r.ping()
            key = f"deadline-test:{time.monotonic_ns()}"
            loop = asyncio.get_running_loop()
            deadline = RedisDeadline(0.3)
            timed_out = False
            try:
                async with deadline:
                    # The SET is sent, then the loop is busy for twice the deadline: Redis's
                    # reply and the deadline's timer are both ready when it comes back.
                    loop.call_soon(time.sleep, 0.6)
                    await r.set(key, "stored")
            except TimeoutError:
                timed_out = True
            stored = await r.get(key)
            return timed_out, deadline.expired(), deadline.prompt(), stored
        finally:
            await r.aclose()

    timed_out, expired, prompt, stored = uvloop.run(main())
    assert stored == "stored"
    # The reply was there: the request gets it instead of a 503 for a write that happened.
    assert not timed_out
    # And had it been thrown away, the loop's lag says the answer could not be "not stored".
    assert expired and not prompt


def test_a_deadline_on_a_prompt_loop_is_prompt(redis_url: str) -> None:
    async def main() -> tuple[bool, bool]:
        r = connect(redis_url)
        try:
            await r.ping()
            deadline = RedisDeadline(0.1)
            timed_out = False
            try:
                async with deadline:
                    # a Redis call that never answers, as far as we know
                    await asyncio.Event().wait()
            except TimeoutError:
                timed_out = True
            return timed_out, deadline.prompt()
        finally:
            await r.aclose()

    # a deadline that never fires fails the test here (the bound raises outside the block)
    timed_out, prompt = uvloop.run(asyncio.wait_for(main(), 10))
    assert timed_out and prompt
