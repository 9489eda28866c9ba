"""When a recurring schedule runs: cron expressions in a time zone, and fixed intervals.

Cron expressions are parsed and matched by ``cronsim`` (Debian cron's rules, maintained, typed).
We use it on *naive* wall-clock times only and decide daylight saving ourselves, because the
contract reads a crontab as a person does, for every expression:

* a wall-clock time skipped by a spring-forward jump runs at the first moment after the gap
  (``30 2 * * *`` on Berlin's spring day runs at 03:00 CEST); several skipped times collapse
  into that one run;
* a wall-clock time that happens twice (the autumn hour) runs once, at its first occurrence
  (``0 * * * *`` runs at 02:00 CEST, not again at 02:00 CET).

cronsim with an aware datetime does this only for expressions with a fixed minute and hour
(Debian's rule); ``0 * * * *`` and ``*/15 * * * *`` it schedules by elapsed time, so the repeated
hour would run twice. Iterating naive wall times and mapping each to an instant here
(:func:`_instant`) gives the same answer for every expression.

``every`` schedules are elapsed time: ``start + k * every``, whatever the zone says.

A day of month ``nW`` (the weekday nearest the n-th, within its month) is ours too: cronsim takes
only ``LW``. :func:`_cron` walks the candidate days n-2..n+2 with cronsim and keeps the one that
is the nearest weekday in each month (:func:`nearest_weekday`).
"""

from __future__ import annotations

import calendar
import datetime as dt
import itertools
import re
import zoneinfo
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from cronsim import CronSim, CronSimError

UTC = dt.UTC
_TZ_NAME = re.compile(r"[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+){0,2}")
# A fold (autumn) moves wall time back at most this much in any zone: a reverse walk starts
# this far past its bound so that the first pass of a repeated hour is not skipped.
_MAX_FOLD = dt.timedelta(hours=3)
# cronsim gives up on an expression that matches nothing within 50 years; we look no further
# than this many times per call either way.
MAX_ITERATIONS = 10_000


def zone(name: str) -> zoneinfo.ZoneInfo | None:
    """The IANA zone ``name``, or None when there is no such zone."""
    if not _TZ_NAME.fullmatch(name) or len(name) > 64:
        return None
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return None


_GIVE_UP = dt.timedelta(days=50 * 366)
_NEAREST_WEEKDAY = re.compile(r"(0?[1-9]|[12][0-9]|3[01])W", re.IGNORECASE)


def nearest_weekday(year: int, month: int, day: int) -> int | None:
    """The day of month that ``dayW`` means in that month (cron's and Quartz's rule): ``day``
    itself on a weekday; a Saturday moves to the Friday before and a Sunday to the Monday after,
    never across the month's edge (the 1st on a Saturday is Monday the 3rd, the last day on a
    Sunday the Friday before). None when the month is shorter than ``day``."""
    last = calendar.monthrange(year, month)[1]
    if day > last:
        return None
    weekday = dt.date(year, month, day).weekday()  # Monday 0 .. Sunday 6
    if weekday == 5:
        return day - 1 if day > 1 else day + 2
    if weekday == 6:
        return day + 1 if day < last else day - 2
    return day


def _cron(expr: str, start: dt.datetime, *, reverse: bool = False) -> Iterator[dt.datetime]:
    """cronsim's matches of ``expr`` from ``start`` (naive wall times), with ``nW`` in the day of
    month read as the weekday nearest the n-th. Raises CronSimError as cronsim does."""
    fields = expr.split()
    w = _NEAREST_WEEKDAY.fullmatch(fields[2]) if len(fields) == 5 else None
    if w is None:
        yield from CronSim(expr, start, reverse=reverse)
        return
    if fields[4] not in ("*", "?"):
        raise CronSimError("a day of month nW cannot be combined with a day of week (give *)")
    n = int(w.group(1))
    fields[2] = ",".join(str(d) for d in range(max(1, n - 2), min(31, n + 2) + 1))
    fields[4] = "*"
    since = start  # the last match (or the start): as cronsim, give up after 50 years of none
    for wall in CronSim(" ".join(fields), start, reverse=reverse):
        if wall.day == nearest_weekday(wall.year, wall.month, n):
            since = wall
            yield wall
        elif abs(wall - since) > _GIVE_UP:
            return


def cron_problem(expr: str) -> str | None:
    """Why ``expr`` is not a 5-field cron expression we run, or None when it is."""
    if len(expr) > 200 or not expr.isascii() or not expr.isprintable():
        return "must be a cron expression of 5 fields, such as 30 2 * * *"
    if len(expr.split()) != 5:
        return "must have 5 fields (minute hour day-of-month month day-of-week)"
    try:
        it = _cron(expr, dt.datetime(2000, 1, 1))
        next(it)
    except CronSimError as exc:
        return f"is not a valid cron expression ({exc})"
    except StopIteration:
        return "never matches a date"
    return None


@dataclass(frozen=True)
class Rule:
    """When a schedule runs: ``cron`` in ``tz``, or every ``every_ms``; never before
    ``start_ms`` or after ``end_ms``."""

    cron: str | None
    every_ms: int | None
    tz: zoneinfo.ZoneInfo
    start_ms: int
    end_ms: int | None = None

    def after(self, after_ms: int, until_ms: int, limit: int) -> list[int]:
        """Up to ``limit`` run times in ``(after_ms, until_ms]``, earliest first (epoch ms)."""
        return self._times(after_ms, until_ms, limit, reverse=False)

    def before(self, before_ms: int, after_ms: int, limit: int) -> list[int]:
        """Up to ``limit`` run times in ``(after_ms, before_ms]``, latest first (epoch ms)."""
        return self._times(after_ms, before_ms, limit, reverse=True)

    def _times(self, after_ms: int, until_ms: int, limit: int, *, reverse: bool) -> list[int]:
        """Up to ``limit`` run times in ``(after_ms, until_ms]`` narrowed to the rule's own
        (``start_ms`` to ``end_ms``): earliest first, or with ``reverse`` latest first."""
        lo = max(after_ms, self.start_ms - 1)
        hi = until_ms if self.end_ms is None else min(until_ms, self.end_ms)
        if hi <= lo or limit <= 0:
            return []
        times: Iterable[int]
        if self.every_ms is None:
            times = self._walk(hi if reverse else lo, reverse=reverse)
        elif reverse:
            ks: Iterable[int] = range((hi - self.start_ms) // self.every_ms, -1, -1)
            times = (self.start_ms + k * self.every_ms for k in ks)
        else:
            ks = itertools.count(max(0, (lo - self.start_ms) // self.every_ms + 1))
            times = (self.start_ms + k * self.every_ms for k in ks)
        inside: Callable[[int], bool] = (lambda t: t > lo) if reverse else (lambda t: t <= hi)
        return list(itertools.islice(itertools.takewhile(inside, times), limit))

    def next_after(self, after_ms: int) -> int | None:
        """The first run time after ``after_ms``, or None when there is none."""
        got = self.after(after_ms, self.end_ms if self.end_ms is not None else 2**62, 1)
        return got[0] if got else None

    def _walk(self, from_ms: int, *, reverse: bool) -> Iterator[int]:
        """Instants of the cron's wall-clock times strictly after ``from_ms`` (or, reversed,
        at or before it), each once, in order."""
        assert self.cron is not None
        local = dt.datetime.fromtimestamp(from_ms / 1000, self.tz)
        naive = local.replace(tzinfo=None, fold=0)
        if reverse:
            # At or before from_ms: start just past it (CronSim's reverse excludes its start);
            # from the second pass of a repeated hour, wall times up to the fold's size later
            # ran (in the first pass) before from_ms.
            naive = naive.replace(microsecond=0) + dt.timedelta(seconds=1)
            if local.fold:
                naive += _MAX_FOLD
        last: int | None = None
        it = _cron(self.cron, naive, reverse=reverse)
        for _ in range(MAX_ITERATIONS):
            try:
                wall = next(it)
            except StopIteration:
                return
            t = _instant(wall, self.tz)
            if t == last:
                continue  # several skipped times run as one, at the end of the gap
            if (t <= from_ms) if not reverse else (t > from_ms):
                continue
            last = t
            yield t


def _instant(wall: dt.datetime, tz: zoneinfo.ZoneInfo) -> int:
    """The epoch ms at which wall-clock ``wall`` (naive) happens in ``tz`` as a person reads a
    crontab: its first occurrence when the hour repeats, the end of the gap when it is skipped."""
    first = wall.replace(tzinfo=tz, fold=0)
    utc = first.astimezone(UTC)
    if utc.astimezone(tz).replace(tzinfo=None) == wall:
        return _ms(utc)
    # Skipped: fold=1 reads it with the offset after the jump (an instant before the jump),
    # fold=0 with the one before (an instant after it). The jump is the first second between
    # them whose offset differs from the earlier one's.
    lo = int(wall.replace(tzinfo=tz, fold=1).timestamp())
    hi = int(first.timestamp())
    before = dt.datetime.fromtimestamp(lo, tz).utcoffset()
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if dt.datetime.fromtimestamp(mid, tz).utcoffset() == before:
            lo = mid
        else:
            hi = mid
    return hi * 1000


def _ms(t: dt.datetime) -> int:
    return round(t.timestamp() * 1000)
