"""Orchestrations running while workers are SIGKILLed in turn: every one finishes, and a step or
a condition check is called again only when the attempt before it was lost with its worker."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import time
from collections import defaultdict
from typing import Any
from urllib.parse import quote

import faultkit
from faultkit import FaultRedis, Hit, Procs, Recorder, api_client, count, post_until_stored, report

LEASE_S = 3.0
ROUND_S = LEASE_S + 2.0  # kills further apart than the lease: a live worker redelivers
RESTART_S = 0.3


def _in_flight_owner(
    r: Any, recorder: Recorder, slots: list[subprocess.Popen[bytes]], path: str
) -> subprocess.Popen[bytes] | None:
    """The worker (of ``slots``) that holds the job of a call to ``path`` in flight now."""
    jobs: list[str] = []
    for h in recorder.snapshot():
        if h.path != path or h.finished is not None or time.time() - h.arrived > 0.3:
            continue
        if path == "/check":
            oid, step = h.headers["X-Taskorch-Orchestration-Id"], h.headers["X-Taskorch-Step"]
            jobs.append(f"{oid}.c{step}.{h.attempt}")
        else:
            jobs.append(h.task_id)
    if not jobs:
        return None
    for job, owner in faultkit.lease_owners(r).items():
        if job in jobs or job.rsplit(".", 1)[0] in jobs:
            for p in slots:
                if f":{p.pid}:" in owner and p.poll() is None:
                    return p
    return None


def _killed_between(kills: list[float], a: float, b: float) -> bool:
    return any(a <= k <= b for k in kills)


async def test_orchestrations_finish_under_worker_kills(
    fault_redis: FaultRedis, recorder: Recorder, procs: Procs
) -> None:
    n_orc, n_steps, rounds = count(6, 60), count(4, 5), count(4, 12)
    procs.lease_s = LEASE_S
    base = procs.start_api()
    r = fault_redis.client()
    slots = [procs.start_worker(), procs.start_worker()]
    for p in slots:
        procs.ready(p, r)
    span_s = rounds * (LEASE_S + 3.0)  # about how long the kill rounds last
    orc_ids: list[str] = []

    async with api_client(base, timeout_s=10) as http:

        async def create_all() -> None:
            """The orchestrations start one after another over the kill rounds."""
            t0 = time.monotonic()
            for i in range(n_orc):
                await asyncio.sleep(max(0.0, t0 + span_s * 0.8 * i / n_orc - time.monotonic()))
                body = {
                    "steps": [
                        {"url": recorder.url(f"/step?sleep=0.4&o={i}&s={k}"), "retries": 2}
                        for k in range(n_steps)
                    ],
                    "condition": {
                        "url": recorder.url("/check?sleep=0.4"),
                        "delay": 0.3,
                        "retries": 2,
                        "retry_delay": 0.2,
                    },
                    "fallback": {"url": recorder.url("/fallback")},
                }
                resp = await post_until_stored(http, "/v1/orchestrations", body, key=f"orc-{i}")
                assert resp.status_code in (200, 201), resp.text
                orc_ids.append(resp.json()["id"])

        creating = asyncio.create_task(create_all())
        kills: list[float] = []
        aimed = 0
        for k in range(rounds):
            # Aim each kill at a worker with a call in flight: a step on even rounds, a check on
            # odd ones. If none shows up within a round, kill one anyway.
            await asyncio.sleep(LEASE_S)
            deadline = time.monotonic() + ROUND_S
            victim = None
            while victim is None and time.monotonic() < deadline:
                victim = _in_flight_owner(r, recorder, slots, "/step" if k % 2 == 0 else "/check")
                if victim is None:
                    await asyncio.sleep(0.02)
            aimed += victim is not None
            victim = victim or slots[k % 2]
            i = slots.index(victim)
            kills.append(procs.kill_worker(victim))
            await asyncio.sleep(RESTART_S)
            slots[i] = procs.start_worker()
            await asyncio.to_thread(procs.ready, slots[i], r)
        await creating

        async def states() -> list[dict[str, Any]]:
            out = []
            for oid in orc_ids:
                resp = await http.get(f"/v1/orchestrations/{oid}")
                assert resp.status_code == 200, resp.text
                out.append(resp.json())
            return out

        final: list[dict[str, Any]] = []

        async def poll() -> None:
            while True:
                final[:] = await states()
                if all(o["status"] not in ("scheduled", "running") for o in final):
                    return
                await asyncio.sleep(0.2)

        try:
            await asyncio.wait_for(poll(), timeout=5 * LEASE_S + 40)
        except TimeoutError:
            pass  # counted below, with the figures
        tasks: dict[str, dict[str, Any]] = {}
        for o in final:
            for s in o["steps"]:
                if s["task_id"]:
                    resp = await http.get(f"/v1/tasks/{s['task_id']}")
                    tasks[s["task_id"]] = resp.json()

    unfinished = [
        (o["id"], o["status"], o["current_step"]) for o in final if o["status"] != "succeeded"
    ]
    step_hits = recorder.by_task("/step")
    problems: list[str] = []
    repeated_steps = lost_attempts = 0
    for task_id, task in tasks.items():
        hs = sorted(step_hits.get(task_id, []), key=lambda h: h.arrived)
        attempts = {a["number"]: a for a in task["attempts"]}
        lost_attempts += sum("worker lost" in (a["error"] or "") for a in task["attempts"])
        if len({h.attempt for h in hs}) != len(hs):
            problems.append(f"step {task_id}: one attempt called twice {[h.attempt for h in hs]}")
        if len(hs) > 1:
            repeated_steps += 1
        for h in hs[:-1]:
            err = (attempts.get(h.attempt) or {}).get("error") or ""
            if "worker lost" not in err:
                problems.append(f"step {task_id} called again after attempt {h.attempt}: {err!r}")
    check_calls: dict[str, list[Hit]] = defaultdict(list)
    for h in recorder.snapshot():
        if h.path == "/check":
            check_calls[h.headers.get("X-Taskorch-Check-Id") or h.key].append(h)
    repeated_checks = 0
    for check_id, hs in check_calls.items():
        hs.sort(key=lambda h: h.arrived)
        for before, again in itertools.pairwise(hs):
            repeated_checks += 1
            if not _killed_between(kills, before.arrived, again.arrived):
                problems.append(f"check {check_id} called again with no worker lost in between")
    fallbacks = [h for h in recorder.snapshot() if h.path == "/fallback"]
    figures = {
        "orchestrations": len(orc_ids),
        "steps_each": n_steps,
        "worker_kills": len(kills),
        "kills_aimed_at_a_call_in_flight": aimed,
        "not_succeeded": len(unfinished),
        "step_calls": sum(len(v) for v in step_hits.values()),
        "steps_called_again": repeated_steps,
        "worker_lost_attempts": lost_attempts,
        "check_calls": sum(len(v) for v in check_calls.values()),
        "checks_called_again": repeated_checks,
        "fallback_calls": len(fallbacks),
        "repeats_without_a_lost_attempt": len(problems),
    }
    report("orchestrations_under_worker_kills", **figures)
    if unfinished:
        problems.insert(0, f"{len(unfinished)} orchestrations did not succeed: {unfinished[:5]}")
    if fallbacks:
        problems.append(f"the fallback ran {len(fallbacks)} times")
    assert not problems, "\n".join(problems[:20]) + f"\n{figures}"
    assert lost_attempts + repeated_checks > 0, "no kill caught a call in flight: proved nothing"


async def test_references_and_goto_under_worker_kills(
    fault_redis: FaultRedis, recorder: Recorder, procs: Procs
) -> None:
    """Workflows (issue #21) while workers are SIGKILLed: each step's references resolve from
    the kept output of an earlier one, a durable sleep between them, a check's goto loops until
    max_steps_run, and every orchestration ends failed with step_limit, each step run called
    once (again only after a lost attempt), the fallback once."""
    n_orc, rounds, max_run = count(4, 24), count(3, 8), 9  # a, a sleep, b: 3 rounds
    procs.lease_s = LEASE_S
    base = procs.start_api()
    r = fault_redis.client()
    slots = [procs.start_worker(), procs.start_worker()]
    for p in slots:
        procs.ready(p, r)
    orc_ids: list[str] = []
    async with api_client(base, timeout_s=10) as http:
        for i in range(n_orc):
            body = {
                "input": {"o": i},
                "steps": [
                    {"name": "a", "url": recorder.url("/wf-a?sleep=0.3"), "payload": "{{ input }}"},
                    {"name": "nap", "sleep": 0.3},
                    {
                        "name": "b",
                        "url": recorder.url("/wf-b?sleep=0.3"),
                        "payload": {"ok": "{{ steps.a.output.ok }}", "o": "{{ input.o }}"},
                        "condition": {
                            "url": recorder.url("/wf-check?answer=" + quote('{"goto":"a"}'))
                        },
                    },
                    {"url": recorder.url("/wf-never")},
                ],
                "max_steps_run": max_run,
                "fallback": {"url": recorder.url("/wf-fallback"), "payload": "{{ input.o }}"},
            }
            resp = await post_until_stored(http, "/v1/orchestrations", body, key=f"wf-{i}")
            assert resp.status_code in (200, 201), resp.text
            orc_ids.append(resp.json()["id"])
        kills: list[float] = []
        for k in range(rounds):
            await asyncio.sleep(LEASE_S / 2)
            deadline = time.monotonic() + ROUND_S
            victim = None
            while victim is None and time.monotonic() < deadline:
                victim = _in_flight_owner(r, recorder, slots, "/wf-a" if k % 2 else "/wf-b")
                if victim is None:
                    await asyncio.sleep(0.02)
            victim = victim or slots[k % 2]
            i = slots.index(victim)
            kills.append(procs.kill_worker(victim))
            await asyncio.sleep(RESTART_S)
            slots[i] = procs.start_worker()
            await asyncio.to_thread(procs.ready, slots[i], r)
        final: list[dict[str, Any]] = []
        deadline = time.monotonic() + 5 * LEASE_S + 40
        while time.monotonic() < deadline:
            final = [(await http.get(f"/v1/orchestrations/{oid}")).json() for oid in orc_ids]
            if all(o["status"] not in ("scheduled", "running") for o in final):
                break
            await asyncio.sleep(0.5)
        tasks: dict[str, dict[str, Any]] = {}
        for tid in {h.task_id for h in recorder.snapshot() if h.path in ("/wf-a", "/wf-b")}:
            tasks[tid] = (await http.get(f"/v1/tasks/{tid}")).json()
    problems: list[str] = []
    for o in final:
        if o["status"] != "failed" or (o["error"] or {}).get("code") != "step_limit":
            problems.append(f"{o['id']} ended {o['status']} {o['error']}, not step_limit")
    runs: dict[str, int] = defaultdict(int)
    for tid, task in tasks.items():
        runs[task["orchestration_id"]] += 1
        hs = sorted((h for h in recorder.snapshot() if h.task_id == tid), key=lambda h: h.arrived)
        attempts = {a["number"]: a for a in task["attempts"]}
        if len({h.attempt for h in hs}) != len(hs):
            problems.append(f"step {tid}: one attempt called twice {[h.attempt for h in hs]}")
        for h in hs[:-1]:
            if "worker lost" not in ((attempts.get(h.attempt) or {}).get("error") or ""):
                problems.append(f"step {tid} called again after attempt {h.attempt}")
        if hs and hs[0].path == "/wf-b" and hs[0].body.get("ok") is not True:
            problems.append(f"step {tid} got {hs[0].body}: its reference did not resolve")
    for oid in orc_ids:
        if runs[oid] != max_run // 3 * 2:
            problems.append(f"{oid} ran {runs[oid]} step tasks, not {max_run // 3 * 2}")
    if any(h.path == "/wf-never" for h in recorder.snapshot()):
        problems.append("a step past the goto loop was called")
    fallbacks = [h.body for h in recorder.snapshot() if h.path == "/wf-fallback"]
    if sorted(fallbacks) != list(range(n_orc)):
        problems.append(f"fallbacks called with {sorted(fallbacks)}")
    report(
        "workflows_under_worker_kills",
        orchestrations=n_orc,
        worker_kills=len(kills),
        step_tasks=len(tasks),
        problems=len(problems),
    )
    assert not problems, "\n".join(problems[:20])
