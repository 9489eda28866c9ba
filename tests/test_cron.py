"""Cron's ``nW`` day of month (the weekday nearest the n-th, within its month; issue #19): the
docs promise it, and cronsim takes only ``LW``."""

from __future__ import annotations

import datetime as dt

import pytest

from taskorch.cron import Rule, cron_problem, nearest_weekday, zone
from tests.conftest import Api


@pytest.mark.parametrize(
    ("year", "month", "day", "want"),
    [
        (2026, 1, 15, 15),  # a Thursday: itself
        (2026, 8, 15, 14),  # a Saturday: the Friday before
        (2026, 2, 15, 16),  # a Sunday: the Monday after
        (2026, 8, 1, 3),  # the 1st on a Saturday: Monday the 3rd, not the month before
        (2026, 5, 31, 29),  # the last day on a Sunday: the Friday before, not next month
        (2026, 1, 31, 30),  # the 31st on a Saturday
        (2026, 4, 31, None),  # April has no 31st: no run that month
        (2028, 2, 29, 29),  # a leap day on a Tuesday
    ],
)
def test_nearest_weekday(year: int, month: int, day: int, want: int | None) -> None:
    assert nearest_weekday(year, month, day) == want


def _days(rule: Rule, after: str, n: int) -> list[str]:
    start = round(dt.datetime.fromisoformat(after).timestamp() * 1000)
    out = rule.after(start, 2**62, n)
    return [dt.datetime.fromtimestamp(t / 1000, dt.UTC).strftime("%a %Y-%m-%d %H:%M") for t in out]


def test_w_runs_on_the_nearest_weekday_forward_and_back() -> None:
    tz = zone("UTC")
    assert tz is not None
    rule = Rule("0 0 15W * *", None, tz, 0)
    assert _days(rule, "2026-01-01T00:00:00+00:00", 8) == [
        "Thu 2026-01-15 00:00",
        "Mon 2026-02-16 00:00",  # the 15th is a Sunday
        "Mon 2026-03-16 00:00",  # a Sunday
        "Wed 2026-04-15 00:00",
        "Fri 2026-05-15 00:00",
        "Mon 2026-06-15 00:00",
        "Wed 2026-07-15 00:00",
        "Fri 2026-08-14 00:00",  # a Saturday
    ]
    back = rule.before(round(dt.datetime(2026, 9, 1, tzinfo=dt.UTC).timestamp() * 1000), 0, 3)
    assert [dt.datetime.fromtimestamp(t / 1000, dt.UTC).date().isoformat() for t in back] == [
        "2026-08-14",
        "2026-07-15",
        "2026-06-15",
    ]
    thirty_first = Rule("30 9 31W * *", None, tz, 0)
    assert _days(thirty_first, "2026-01-01T00:00:00+00:00", 3) == [
        "Fri 2026-01-30 09:30",  # the 31st is a Saturday
        "Tue 2026-03-31 09:30",  # February and April have none
        "Fri 2026-05-29 09:30",  # a Sunday: never June 1st
    ]
    berlin = zone("Europe/Berlin")
    assert berlin is not None
    local = Rule("0 8 1W * *", None, berlin, 0)
    assert _days(local, "2026-07-15T00:00:00+00:00", 2) == [
        "Mon 2026-08-03 06:00",  # 08:00 CEST; the 1st is a Saturday
        "Tue 2026-09-01 06:00",
    ]


def test_w_is_validated() -> None:
    assert cron_problem("0 0 15W * *") is None
    assert cron_problem("0 0 15w 1-6 *") is None
    assert cron_problem("0 0 LW * *") is None
    assert "day of week" in (cron_problem("0 0 15W * MON") or "")
    assert cron_problem("0 0 32W * *") is not None
    assert cron_problem("0 0 30W 2 *") == "never matches a date"


async def test_a_w_schedule_is_created_with_its_next_runs(api: Api) -> None:
    body = {
        "cron": "0 0 15W * *",
        "start_at": "2027-01-01T00:00:00Z",
        "task": {"url": "https://example.com/w"},
    }
    r = await api.http.post("/v1/schedules", json=body, headers=api.auth())
    assert r.status_code == 201, r.text
    assert r.json()["next_runs"] == [
        "2027-01-15T00:00:00.000Z",
        "2027-02-15T00:00:00.000Z",
        "2027-03-15T00:00:00.000Z",
        "2027-04-15T00:00:00.000Z",
        "2027-05-14T00:00:00.000Z",  # the 15th is a Saturday
    ]
    bad = {**body, "cron": "0 0 15W * 1"}
    r = await api.http.post("/v1/schedules", json=bad, headers=api.auth())
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "cron", r.text
