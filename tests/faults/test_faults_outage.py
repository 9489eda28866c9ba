"""Redis frozen (SIGSTOP) or down (kill -9, restarted later) for twice the lease, with calls in
flight, claimed, due during the outage and due after it: every task fires once Redis is back,
the API answers 503 within 2 s meanwhile, the same worker processes carry on, and no call that
completed during the outage is made again."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from typing import Any

import faultkit
import pytest
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

ANSWER_WITHIN_S = 2.0  # the API's bound on any answer while Redis is out


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat()


def _repeated_after_outage(hits: list[Hit], out_at: float, back_at: float) -> bool:
    """A call that completed during the outage, followed by another call of the same task."""
    for h in hits:
        if h.finished is not None and out_at <= h.finished <= back_at:
            if any(o.arrived > h.finished for o in hits):
                return True
    return False


@pytest.mark.parametrize("how", ["frozen", "down"])
async def test_redis_out_for_twice_the_lease(
    how: str, fault_redis: FaultRedis, recorder: Recorder, procs: Procs
) -> None:
    lease_s = float(count(3, 5))
    outage_s = 2 * lease_s
    n = count(150, 1000)
    procs.lease_s = lease_s
    base = procs.start_api()
    r = fault_redis.client()
    workers = [procs.start_worker(), procs.start_worker()]
    for p in workers:
        procs.ready(p, r)
    pids = [p.pid for p in workers]

    # 40 % of the tasks fall due in the 1.5 s before the outage and take 0.5-2 s at the target
    # (every fifth one outlasts the outage): in flight when Redis goes, finishing during it or
    # after it. The rest fall due from the outage's start to 2 s after its end: claimed and not
    # started, or due while Redis is out.
    create_s = n / 30 + 2.0
    out_at = time.time() + create_s + 1.5
    due: dict[str, float] = {}

    def plan(i: int) -> tuple[float, float]:
        """(due time, seconds the target takes) of task i."""
        before = int(n * 0.4)
        if i < before:
            sleep_s = outage_s + 1 if i % 5 == 4 else 0.5 + (i % 4) * 0.5
            return out_at - 1.5 + 1.5 * i / before, sleep_s
        return out_at + (outage_s + 2) * (i - before) / (n - before), 0.3 + (i % 5) * 0.3

    async with api_client(base, timeout_s=10) as http:
        sem = asyncio.Semaphore(16)

        async def one(i: int) -> None:
            at, sleep_s = plan(i)
            body = {
                "url": recorder.url(f"/o?sleep={sleep_s:.1f}"),
                "run_at": _iso(at),
                "retries": 3,
                "retry_delay": 0.2,
            }
            async with sem:
                resp = await post_until_stored(http, "/v1/tasks", body, key=f"o-{i}")
            assert resp.status_code in (200, 201), resp.text
            due[resp.json()["id"]] = at

        await asyncio.gather(*(one(i) for i in range(n)))
        assert time.time() < out_at - 0.5, "creating took longer than planned: raise create_s"
        probe_task = next(iter(due))
        await asyncio.sleep(out_at - time.time())

        # -- the outage ---------------------------------------------------------------------
        out_at = time.time()
        if how == "frozen":
            fault_redis.freeze()
        else:
            await asyncio.to_thread(fault_redis.kill)
        probes: list[tuple[str, int | str, float, float]] = []  # (what, status, s, answered at)
        # probe create k -> its answer; a 503 with the outcome its details name
        create_answers: dict[int, int | str] = {}

        async def probe(what: str, method: str, path: str, body: Any = None) -> None:
            t0 = time.monotonic()
            try:
                resp = await http.request(method, path, json=body, timeout=10)
                status: int | str = resp.status_code
            except Exception as exc:  # a hang past 10 s or a dropped connection
                status = type(exc).__name__
            probes.append((what, status, time.monotonic() - t0, time.time()))
            if what == "create":
                answer: int | str = status
                if status == 503:
                    with contextlib.suppress(ValueError, KeyError, IndexError, TypeError):
                        answer = f"503 {resp.json()['error']['details'][0]['outcome']}"
                create_answers[body["payload"]["k"]] = answer

        # Probes every 0.5 s, each on its own: one that hangs must not stretch the outage.
        rounds: list[asyncio.Future[Any]] = []
        k = 0
        while time.time() < out_at + outage_s - 0.5:
            k += 1
            rounds.append(
                asyncio.gather(
                    probe(
                        "create",
                        "POST",
                        "/v1/tasks",
                        {"url": recorder.url("/probe"), "payload": {"k": k}},
                    ),
                    probe("get", "GET", f"/v1/tasks/{probe_task}"),
                    probe("list", "GET", "/v1/tasks?limit=5"),
                    probe("readyz", "GET", "/readyz"),
                )
            )
            await asyncio.sleep(max(0.0, out_at + k * 0.5 - time.time()))
        await asyncio.sleep(max(0.0, out_at + outage_s - time.time()))
        if how == "frozen":
            fault_redis.thaw()
        else:
            await asyncio.to_thread(fault_redis.start)
        back_at = time.time()
        await asyncio.gather(*rounds)

        # -- after --------------------------------------------------------------------------
        ids = list(due)

        def all_done() -> bool:
            return all(s == "succeeded" for s in task_statuses(r, ids).values())

        with_s = 3 * lease_s + 20
        try:
            await wait_until(all_done, timeout_s=with_s, what="every task succeeded")
        except AssertionError:
            pass  # counted below, with the figures
        done_after_s = time.time() - back_at
        t0 = time.monotonic()
        after = await http.post("/v1/tasks", json={"url": recorder.url("/after")})
        create_after = (after.status_code, round(time.monotonic() - t0, 3))
        # The same workers take new work after the outage, with no restart.
        t0 = time.monotonic()
        with contextlib.suppress(AssertionError):
            await wait_until(
                lambda: recorder.by_task("/after"), timeout_s=lease_s + 5, what="new task called"
            )
        new_task_called_s = round(time.monotonic() - t0, 2) if recorder.by_task("/after") else None

    statuses = task_statuses(r, ids)
    hits = recorder.by_task("/o")
    not_done = [t for t in ids if statuses[t] != "succeeded" or not hits.get(t)]
    repeated = [t for t, hs in hits.items() if _repeated_after_outage(hs, out_at, back_at)]
    # No worker died and the target answered every call 200: any second call is a repeat of a
    # call whose worker was alive and had its answer (in flight across the outage, say).
    called_twice = [t for t, hs in hits.items() if len(hs) > 1]
    completed_in_outage = sum(
        1 for hs in hits.values() for h in hs if h.finished and out_at <= h.finished <= back_at
    )
    duplicates = recorder.same_attempt_duplicates("/o")
    # Every probe sent while Redis was out answers within 2 s: a 503, or a success if Redis was
    # back by the time it answered.
    bad_probes = [
        p[:3]
        for p in probes
        if p[2] > ANSWER_WITHIN_S or not (p[1] == 503 or (p[3] >= back_at and p[1] in (200, 201)))
    ]
    stored_probes = {h.body["k"] for h in recorder.snapshot() if h.path == "/probe"}
    false_not_stored = [k for k in stored_probes if create_answers[k] == "503 not_stored"]
    restarted = [p for p in procs.workers if p.pid not in pids]
    dead = [p.pid for p in workers if p.poll() is not None]
    figures = {
        "how": how,
        "lease_s": lease_s,
        "outage_s": round(back_at - out_at, 2),
        "tasks": n,
        "calls": sum(len(v) for v in hits.values()),
        "not_succeeded": len(not_done),
        "all_succeeded_within_s_of_return": round(done_after_s, 2) if not not_done else None,
        "completed_during_outage": completed_in_outage,
        "completed_during_outage_then_called_again": len(repeated),
        "in_flight_across_outage": sum(
            1
            for hs in hits.values()
            for h in hs
            if h.arrived < out_at and (h.finished or 0) > back_at
        ),
        "tasks_called_more_than_once": len(called_twice),
        "same_attempt_duplicates": len(duplicates),
        "probes": len(probes),
        "probes_not_503_within_2s": len(bad_probes),
        "probe_max_s": round(max(p[2] for p in probes), 3) if probes else None,
        "probe_creates": len(create_answers),
        "probe_creates_stored": len(stored_probes),
        "probe_creates_stored_despite_503": sum(
            str(create_answers[k]).startswith("503") for k in stored_probes
        ),
        "probe_creates_stored_despite_503_not_stored": len(false_not_stored),
        "workers_restarted": len(restarted),
        "workers_died": len(dead),
        "create_after_outage": create_after,
        "new_task_called_after_s": new_task_called_s,
    }
    report(f"redis_{how}_2x_lease", **figures)
    for t in called_twice[:3]:
        print(f"task {t} (outage {0:+.3f}..{back_at - out_at:+.3f} s):")
        for h in hits[t]:
            fin = f"{h.finished - out_at:+.3f}" if h.finished else "never"
            print(f"  call attempt {h.attempt}: arrived {h.arrived - out_at:+.3f} finished {fin}")
        for a in faultkit.attempts(r, t):
            print(f"  recorded {a}")
    problems = []
    if not_done:
        problems.append(
            f"{len(not_done)} tasks never succeeded, e.g. "
            f"{[(t, statuses[t], len(hits.get(t, []))) for t in not_done[:5]]}"
        )
    if repeated:
        problems.append(f"calls completed during the outage made again: {repeated[:5]}")
    if duplicates:
        problems.append(f"same attempt called twice: {duplicates[:5]}")
    if called_twice:
        problems.append(
            f"{len(called_twice)} tasks called more than once with no worker lost, e.g. "
            f"{[(t, [h.attempt for h in hits[t]]) for t in called_twice[:5]]}"
        )
    if bad_probes:
        problems.append(f"answers while Redis was out that were not a 503 within 2 s: {bad_probes}")
    if dead or restarted:
        problems.append(f"workers died: {dead}")
    if false_not_stored:
        problems.append(f"probe creates answered 503 not_stored, yet stored: {false_not_stored}")
    if create_after[0] != 201:
        problems.append(f"create after the outage answered {create_after}")
    if new_task_called_s is None:
        problems.append("a task created after the outage was not called")
    assert not problems, "\n".join(problems) + f"\n{figures}"
    assert completed_in_outage > 0, "no call completed during the outage: the test proved nothing"
