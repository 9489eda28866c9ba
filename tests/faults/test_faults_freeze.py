"""Redis frozen (SIGSTOP) with live workers, issue #19: a claim whose reply is lost in the freeze
still runs when Redis resumes, and its jobs must fire then, not a lease later (item 11); a freeze
longer than a schedule's lead makes every occurrence it missed, late, instead of applying the
schedule's ``catch_up``, which is for when every worker was down (item 13)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from typing import Any

import faultkit
from faultkit import (
    FaultRedis,
    Hit,
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
from taskorch.worker.leases import LeaseTimes


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


def _grid_of(hits: list[Hit]) -> list[float]:
    return sorted(_epoch(h.headers["X-Taskorch-Scheduled-For"]) for h in hits)


async def test_a_freeze_longer_than_the_lead_makes_every_missed_occurrence_late(
    fault_redis: FaultRedis, recorder: Recorder, procs: Procs
) -> None:
    """Issue #19, item 13: Redis frozen past SCHEDULE_AHEAD_MS + SCHEDULE_LATE_MS (the real
    numbers: some times were never made before it and are more than 5 s overdue after it) while
    the workers live: no ``catch_up`` applies, whatever it says; every time of the grid runs once,
    late. Before the fix ``one`` ran one of the missed times and ``none`` none."""
    procs.lease_s = 3.0
    freeze_s = (c.SCHEDULE_AHEAD_MS + c.SCHEDULE_LATE_MS) / 1000 + 2
    base = procs.start_api()
    r = fault_redis.client()
    workers = [procs.start_worker(), procs.start_worker()]
    for p in workers:
        procs.ready(p, r)
    start = float(int(time.time()) + 3)
    freeze_at = start + 2.5
    end = freeze_at + freeze_s + 3
    modes = ("one", "none", "all")
    async with api_client(base) as http:
        for mode in modes:
            body = {"every": 1, "catch_up": mode, "start_at": _iso(start), "end_at": _iso(end),
                    "task": {"url": recorder.url(f"/{mode}")}}  # fmt: skip
            resp = await http.post("/v1/schedules", json=body)
            assert resp.status_code == 201, resp.text
        await asyncio.sleep(freeze_at - time.time())
        fault_redis.freeze()
        await asyncio.sleep(freeze_s)
        fault_redis.thaw()
        thawed_at = time.time()
        grid = [start + i for i in range(int(end - start) + 1)]

        def all_called() -> bool:
            return all(len(recorder.by_task(f"/{m}")) >= len(grid) for m in modes)

        with contextlib.suppress(AssertionError):
            await wait_until(all_called, timeout_s=end - time.time() + 8, what="every time called")
    figures: dict[str, Any] = {"freeze_s": freeze_s, "grid": len(grid)}
    for mode in modes:
        hits = [h for hs in recorder.by_task(f"/{mode}").values() for h in hs]
        times = _grid_of(hits)
        missing = [
            round(g - freeze_at, 1) for g in grid if not any(abs(t - g) < 0.01 for t in times)
        ]
        figures[mode] = {
            "calls": len(hits),
            "missed_s_into_freeze": missing,
            "late_over_5s": sum(
                h.arrived - t > 5 for h, t in zip(hits, _grid_of(hits), strict=True)
            ),
        }
    figures["thawed_s_after_start"] = round(thawed_at - start, 1)
    report("schedules_through_a_freeze", **figures)
    for mode in modes:
        assert figures[mode]["missed_s_into_freeze"] == [], figures
        assert figures[mode]["calls"] == len(grid), figures  # each once


async def test_catch_up_one_runs_one_late_run_when_every_worker_was_down(
    fault_redis: FaultRedis, recorder: Recorder, procs: Procs
) -> None:
    """Issue #19, item 13: every worker SIGKILLed for longer than SCHEDULE_LATE_MS, then two
    started at once (as a supervisor restarts them): each ``catch_up: one`` schedule runs exactly
    one of the times more than SCHEDULE_LATE_MS overdue, however the two workers' first rounds
    and claims interleave (before the fix one of them could see no downtime and make, claim and
    fire the overdue occurrences beside the catch-up)."""
    procs.lease_s = 3.0
    down_s = c.SCHEDULE_LATE_MS / 1000 + 3
    n = count(4, 12)
    base = procs.start_api()
    r = fault_redis.client()
    workers = [procs.start_worker(), procs.start_worker()]
    for p in workers:
        procs.ready(p, r)
    start = float(int(time.time()) + 2)
    sids = []
    async with api_client(base) as http:
        for i in range(n):
            body = {"every": 1, "catch_up": "one", "start_at": _iso(start),
                    "task": {"url": recorder.url(f"/one/{i}")}}  # fmt: skip
            resp = await http.post("/v1/schedules", json=body)
            assert resp.status_code == 201, resp.text
            sids.append(resp.json()["id"])
        await wait_until(lambda: all(recorder.by_task(f"/one/{i}") for i in range(n)), timeout_s=10)
        await asyncio.sleep(1.3)
        killed_at = time.time()
        for p in workers:
            procs.kill_worker(p)
        await asyncio.sleep(down_s)
        again = [procs.start_worker(), procs.start_worker()]
        # The missed cut-off the first maker back decided (Redis ms), per schedule.
        layout = faultkit._layout(r)
        makers = [layout.prefixes[layout.partition_of(sid)] + c.SCHEDULE_MAKERS for sid in sids]
        cuts = await wait_until(
            lambda: (
                all(int(r.hget(k, "down_at") or 0) > killed_at * 1000 for k in makers)
                and [int(r.hget(k, "down_cut") or 0) / 1000 for k in makers]
            ),
            timeout_s=10,
            every_s=0.05,
            what="a downtime decided",
        )
        for p in again:
            await asyncio.to_thread(procs.ready, p, r)
        # The catch-up runs, then the grid goes on: a time due after both workers are back is
        # claimed after every overdue one, so once it arrived for each schedule, so did they.
        later = time.time() + 1

        def back_on_the_grid(i: int) -> bool:
            hits = [h for hs in recorder.by_task(f"/one/{i}").values() for h in hs]
            return any(_epoch(h.headers["X-Taskorch-Scheduled-For"]) >= later for h in hits)

        await wait_until(
            lambda: all(back_on_the_grid(i) for i in range(n)),
            timeout_s=15,
            what="the grid's next times after the downtime",
        )
    figures: dict[str, Any] = {"down_s": down_s, "schedules": n}
    missed_runs = []
    for i in range(n):
        hits = [h for hs in recorder.by_task(f"/one/{i}").values() for h in hs]
        # Due after the kill (the dead workers started nothing of it) and before the cut-off:
        # a missed time that ran, and how late.
        missed_runs.append(
            sorted(
                round(h.arrived - t, 2)
                for h in hits
                if killed_at + 0.1 < (t := _epoch(h.headers["X-Taskorch-Scheduled-For"])) <= cuts[i]
            )
        )
    figures["missed_runs_lateness_s"] = missed_runs
    figures["cut_s_after_kill"] = [round(x - killed_at, 2) for x in cuts]
    report("catch_up_one_after_every_worker_was_down", **figures)
    for runs in missed_runs:
        assert len(runs) == 1 and runs[0] > c.SCHEDULE_LATE_MS / 1000, figures
