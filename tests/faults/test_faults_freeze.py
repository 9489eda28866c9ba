"""Redis frozen (SIGSTOP) with live workers, issue #19: a claim whose reply is lost in the freeze
still runs when Redis resumes, and its jobs must fire then, not a lease later (item 11); a freeze
longer than a schedule's lead makes every occurrence it missed, late, instead of applying the
schedule's ``catch_up``, which is for when every worker was down (item 13)."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

from faultkit import (
    FaultRedis,
    Procs,
    Recorder,
    api_client,
    count,
    post_until_stored,
    report,
    task_statuses,
    wait_until,
)

from taskorch import constants as c
from taskorch.leases import LeaseTimes


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat()


def _epoch(ts: str) -> float:
    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


async def test_jobs_claimed_by_a_claim_lost_in_a_freeze_fire_when_redis_resumes(
    fault_redis: FaultRedis, recorder: Recorder, procs: Procs
) -> None:
    """The default 30 s lease; tasks and a schedule's occurrence due a second into a freeze
    longer than the worker's Redis socket timeout, so that the claim that takes them is sent
    into the freeze and its reply is given up: every one is called within 2 s of SIGCONT (it
    waited 28 s, a lease less the reaper's round and slack, before the fix)."""
    procs.lease_s = c.DEFAULT_LEASE_S
    timeout_s = LeaseTimes(procs.lease_s).socket_timeout_s
    freeze_s = timeout_s + count(2, 5)  # longer than the socket timeout: the claim's reply is lost
    n = count(100, 400)
    base = procs.start_api()
    r = fault_redis.client()
    workers = [procs.start_worker(), procs.start_worker()]
    for p in workers:
        procs.ready(p, r)
    freeze_at = time.time() + n / 40 + 3.0
    # Due from just past the claim-ahead horizon of the last claims before the freeze (those
    # claim what is due within CLAIM_AHEAD_MS) over the next polls: claimed inside the freeze.
    ahead_s = c.CLAIM_AHEAD_MS / 1000

    def due(i: int) -> float:
        return freeze_at + ahead_s + 0.05 + 0.4 * i / n

    ids: dict[str, float] = {}
    async with api_client(base) as http:
        sem = asyncio.Semaphore(16)

        async def one(i: int) -> None:
            body = {"url": recorder.url("/f"), "run_at": _iso(due(i)), "retries": 0}
            async with sem:
                resp = await post_until_stored(http, "/v1/tasks", body, key=f"f-{i}")
            assert resp.status_code in (200, 201), resp.text
            ids[resp.json()["id"]] = due(i)

        await asyncio.gather(*(one(i) for i in range(n)))
        sch_due = due(n // 2)
        resp = await http.post(
            "/v1/schedules",
            json={"every": 3600, "start_at": _iso(sch_due), "task": {"url": recorder.url("/s")}},
        )
        assert resp.status_code == 201, resp.text
        assert time.time() < freeze_at - 0.5, "creating took longer than planned"
        await asyncio.sleep(freeze_at - time.time())
        fault_redis.freeze()
        frozen_at = time.time()
        await asyncio.sleep(freeze_s)
        fault_redis.thaw()
        thawed_at = time.time()

        def called() -> bool:
            return len(recorder.by_task("/f")) == n and bool(recorder.by_task("/s"))

        try:
            await wait_until(called, timeout_s=6, what="every task called")
        except AssertionError:
            pass  # counted below
        hits = recorder.by_task("/f")
        late = {
            t: h[0].arrived - thawed_at for t, h in hits.items() if h[0].arrived > thawed_at + 2
        }
        missing = [t for t in ids if t not in hits]
        sch_hits = recorder.by_task("/s")
        if missing:  # how long they waited (a lease, before the fix), for the report
            await wait_until(
                lambda: len(recorder.by_task("/f")) == n, timeout_s=procs.lease_s + 10, what="all"
            )
        waited = [recorder.by_task("/f")[t][0].arrived - thawed_at for t in missing]
    figures = {
        "lease_s": procs.lease_s,
        "socket_timeout_s": timeout_s,
        "freeze_s": round(thawed_at - frozen_at, 2),
        "tasks": n,
        "due_into_freeze_s": [round(due(0) - frozen_at, 2), round(due(n - 1) - frozen_at, 2)],
        "called_within_2s_of_sigcont": n - len(missing) - len(late),
        "not_within_6s": len(missing),
        "waited_s_max": round(max(waited), 2) if waited else None,
        "occurrence_called_after_sigcont_s": (
            round(sch_hits[next(iter(sch_hits))][0].arrived - thawed_at, 2) if sch_hits else None
        ),
        "called_twice": sum(len(h) > 1 for h in recorder.by_task("/f").values()),
    }
    report("claim_lost_in_a_freeze", **figures)
    assert not missing and not late, figures
    assert sch_hits and figures["occurrence_called_after_sigcont_s"] <= 2, figures
    assert figures["called_twice"] == 0, figures
    statuses = task_statuses(r, list(ids))
    assert set(statuses.values()) == {"succeeded"}, figures
