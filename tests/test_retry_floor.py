"""The floor on retry waits (issue #19): ``retries: 100, retry_delay: 0`` made 101 calls in
0.6 s. Every wait before a retry is at least MIN_RETRY_DELAY_S, and a retry_delay below it
counts as it, so that backoff still grows the waits; what the task shows is what was given."""

from __future__ import annotations

import itertools

import pytest

from taskorch import constants as c
from taskorch.models import TaskSpec, retry_wait_s
from tests.conftest import Api, Target, WorkerProcs

FLOOR = c.MIN_RETRY_DELAY_S


def _spec(**kw: float) -> TaskSpec:
    return TaskSpec(url="https://example.com/x", **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "number", "retry_after", "want"),
    [
        (_spec(retry_delay=0, backoff=1), 1, None, FLOOR),
        (_spec(retry_delay=0, backoff=1), 50, None, FLOOR),
        (_spec(retry_delay=0, backoff=2), 1, None, FLOOR),
        (_spec(retry_delay=0, backoff=2), 3, None, FLOOR * 4),  # backoff grows from the floor
        (_spec(retry_delay=0.01, backoff=3), 2, None, FLOOR * 3),
        (_spec(retry_delay=1, max_retry_delay=0), 1, None, FLOOR),  # the floor beats the cap
        (_spec(retry_delay=5), 1, 0.0, FLOOR),  # Retry-After: 0
        (_spec(retry_delay=5), 1, 2.0, 2.0),
        (_spec(retry_delay=1, backoff=2), 3, None, 4.0),  # above the floor: as the contract
        (_spec(retry_delay=1, backoff=2, max_retry_delay=3), 5, None, 3.0),
    ],
)
def test_no_wait_is_below_the_floor(
    spec: TaskSpec, number: int, retry_after: float | None, want: float
) -> None:
    assert retry_wait_s(spec, number, 0.0, retry_after) == pytest.approx(want)
    assert retry_wait_s(spec, number, 0.999, retry_after) <= want * (1 + c.RETRY_JITTER) + 1e-9


async def test_retry_delay_0_waits_the_floor_between_calls(
    api: Api, target: Target, workers: WorkerProcs
) -> None:
    workers.start()
    task = await api.create(
        {"url": target.url("/status/500"), "retries": 4, "retry_delay": 0, "backoff": 1}
    )
    assert task["retry_delay"] == 0  # shown as given
    done = await api.wait_status(task["id"], "failed")
    assert len(done["attempts"]) == 5
    arrived = [call.at for call in target.calls_to("/status/500")]
    assert len(arrived) == 5
    gaps = [b - a for a, b in itertools.pairwise(arrived)]
    assert min(gaps) >= FLOOR - 0.002, gaps  # (ms rounding of the due time)


async def test_a_condition_check_with_retry_delay_0_waits_the_floor(
    api: Api, target: Target, workers: WorkerProcs
) -> None:
    """An orchestration's failing condition check is repeated after its retry_delay: never
    sooner than the floor either."""
    workers.start()
    r = await api.http.post(
        "/v1/orchestrations",
        json={
            "steps": [{"url": target.url("/a")}, {"url": target.url("/b")}],
            "condition": {"url": target.url("/status/500"), "retries": 3, "retry_delay": 0},
        },
        headers=api.auth(),
    )
    assert r.status_code == 201, r.text
    await api.wait_status(r.json()["id"], {"stopped", "failed"}, kind="orchestrations")
    checks = [call.at for call in target.calls_to("/status/500")]
    assert len(checks) == 4
    gaps = [b - a for a, b in itertools.pairwise(checks)]
    assert min(gaps) >= FLOOR - 0.002, gaps


@pytest.mark.parametrize(
    ("header", "low", "high"),
    [
        (None, None, None),
        ("", None, None),
        ("7", 7.0, 7.0),
        ("2.5", 2.5, 2.5),
        ("-3", 0.0, 0.0),  # never negative
        ("soon", None, None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0, 0.0),  # a date in the past: now
        # "-0000" makes a naive datetime: read as UTC, not a TypeError
        ("Fri, 01 Jan 2100 00:00:00 -0000", 2e9, 4e9),
    ],
)
def test_retry_after_is_read_the_same_by_worker_and_client(
    header: str | None, low: float | None, high: float | None
) -> None:
    """One reading of ``Retry-After`` (the worker's from targets, the client's from the API)."""
    from taskorch.models import retry_after_s

    got = retry_after_s(header)
    if low is None:
        assert got is None
    else:
        assert got is not None and low <= got <= (high if high else got)
