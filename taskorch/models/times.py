"""Times and durations: a due time from ``run_at``/``delay``, the RFC 3339 form of every time
answered, and the wait before a retry."""

from __future__ import annotations

import datetime as dt
import functools
import time
from email.utils import parsedate_to_datetime

from taskorch import constants as c
from taskorch.models.shared import TaskSpec

__all__ = ["due_ms", "fmt_ms", "retry_after_s", "retry_wait_s"]


def due_ms(run_at: dt.datetime | None, delay: float | None, now_ms: int) -> int:
    """The due time in epoch ms: ``run_at``, else now + ``delay``; never before now."""
    if run_at is not None:
        return max(now_ms, round(run_at.timestamp() * 1000))
    return now_ms + round((delay or 0) * 1000)


def fmt_ms(ms: int | float | None) -> str | None:
    """RFC 3339 in UTC with millisecond precision, as the API answers every time."""
    if ms is None:
        return None
    second, milli = divmod(int(ms), 1000)
    return f"{_fmt_second(second)}.{milli:03d}Z"


@functools.lru_cache(maxsize=4096)
def _fmt_second(second: int) -> str:
    # A task's created, updated and due times mostly fall in seconds just formatted.
    t = dt.datetime.fromtimestamp(second, tz=dt.UTC)
    # isoformat, not strftime: %Y writes the year 1 as "1", not RFC 3339's "0001" (a schedule
    # keeps the start_at or end_at it was given, however far back).
    return t.replace(tzinfo=None).isoformat(timespec="seconds")


def retry_wait_s(
    spec: TaskSpec, retry_number: int, jitter: float, retry_after_s: float | None
) -> float:
    """The wait before retry ``retry_number`` (1-based), as the contract defines it.

    ``jitter`` is a draw in [0, 1): the wait is lengthened by up to RETRY_JITTER of itself.
    A ``Retry-After`` replaces the computed wait, still capped by ``max_retry_delay``. No wait is
    shorter than MIN_RETRY_DELAY_S, and a ``retry_delay`` below it counts as it.
    """
    floor = c.MIN_RETRY_DELAY_S
    if retry_after_s is not None:
        return max(floor, min(retry_after_s, spec.max_retry_delay))
    try:
        base = max(spec.retry_delay, floor) * spec.backoff ** (retry_number - 1)
        base = min(base, spec.max_retry_delay)
    except OverflowError:  # a large backoff to a high power: the cap applies
        base = spec.max_retry_delay
    return max(floor, min(base * (1 + c.RETRY_JITTER * jitter), max(spec.max_retry_delay, base)))


def retry_after_s(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delta seconds or an HTTP date, never
    negative); None when it is absent or unreadable. The worker reads it from targets, the
    client from the API."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
