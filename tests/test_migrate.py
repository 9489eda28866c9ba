"""In-place upgrade from the single-node layout (taskorch/migrate.py), on records the old code
wrote: tests/data/old_layout.json was made by commit dbce519's own store, orchestrations and step
machine (tests/data/make_old_layout.py says how). Its times are shifted to now and its URLs to
the test's target before it is loaded into Redis."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from taskorch import constants as c
from taskorch import partitions
from tests.conftest import ON_CLUSTER, Api, Target, WorkerProcs, until

# The old layout only ever ran on a single Redis (its keys share no hash tag).
pytestmark = pytest.mark.skipif(ON_CLUSTER, reason="the old layout is single-node only")
DATA = Path(__file__).parent / "data" / "old_layout.json"
DAY_MS = 86_400_000


def _shift(value: Any, t0: int, delta: int) -> Any:
    """Move every epoch-ms time near t0 by delta (hash fields, scores, JSON inside strings)."""
    if isinstance(value, str):
        if value.startswith(("{", "[")):
            try:
                return json.dumps(_shift(json.loads(value), t0, delta), separators=(",", ":"))
            except ValueError:
                return value
        if value.lstrip("-").isdigit() and abs(int(value) - t0) < DAY_MS:
            return str(int(value) + delta)
        return value
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and abs(value - t0) < DAY_MS:
        return type(value)(value + delta)
    if isinstance(value, list):
        return [_shift(v, t0, delta) for v in value]
    if isinstance(value, dict):
        return {k: _shift(v, t0, delta) for k, v in value.items()}
    return value


def load_old_layout(url: str, target: str) -> dict[str, str]:
    """Write the old deployment's keys into Redis as if it had just run; returns its ids."""
    import time

    data = json.loads(DATA.read_text())
    t0, old_target = data["t0"], data["target"]
    delta = int(time.time() * 1000) - t0
    r = redis.Redis.from_url(url, decode_responses=True)
    for key, entry in data["keys"].items():
        value = json.loads(json.dumps(entry["value"]).replace(old_target, target))
        kind = entry["type"]
        if kind == "string":
            r.set(
                key, value if key.startswith(c.KEY_PREFIX + "idem:") else _shift(value, t0, delta)
            )
        elif kind == "hash":
            # JSON fields are written back byte for byte unless they hold times (job data).
            r.hset(
                key,
                mapping={
                    k: v if k in ("spec",) else _shift(v, t0, delta) for k, v in value.items()
                },
            )
        elif kind == "list":
            r.rpush(key, *[_shift(v, t0, delta) for v in value])
        elif kind == "zset":
            r.zadd(key, {m: _shift(s, t0, delta) if s else s for m, s in value})
        if entry["pttl"] > 0:
            r.pexpire(key, entry["pttl"])
    r.close()
    return dict(data["ids"])


def _cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKORCH_")}
    env.update(TASKORCH_REDIS_URL=url, TASKORCH_LOG_LEVEL="warning", TASKORCH_JWT_SECRET="s" * 32)
    return subprocess.run(
        [sys.executable, "-m", "taskorch", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_fixture_holds_the_old_layout(redis_url: str) -> None:
    ids = load_old_layout(redis_url, "http://127.0.0.1:9")
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    assert r.hget(f"taskorch:task:{ids['done']}", "status") == "succeeded"
    assert r.zcard("taskorch:queue") > 0 and r.exists("taskorch:stats")
    assert list(r.scan_iter("taskorch:{*")) == []


def test_a_worker_refuses_the_old_layout_naming_taskorch_migrate(redis_url: str) -> None:
    load_old_layout(redis_url, "http://127.0.0.1:9")
    worker = _cli(redis_url, "worker")
    assert worker.returncode == 2, worker.stderr
    assert "taskorch migrate" in worker.stderr
    check = _cli(redis_url, "check")
    assert check.returncode == 2 and "taskorch migrate" in check.stderr
    # nothing was written in the new layout meanwhile
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    assert [k for k in r.scan_iter("taskorch:{*")] == []


async def test_migrate_in_place_then_everything_goes_on(
    redis_url: str, api: Api, target: Target, workers: WorkerProcs
) -> None:
    ids = load_old_layout(redis_url, target.url("").rstrip("/"))
    done = _cli(redis_url, "migrate")
    assert done.returncode == 0, done.stderr
    assert "migrated" in done.stdout
    again = _cli(redis_url, "migrate")  # a second run finds nothing left to do
    assert again.returncode == 0 and "nothing to migrate" in again.stdout

    r = redis.Redis.from_url(redis_url, decode_responses=True)
    stray = [
        k
        for k in r.scan_iter("*")
        if not k.startswith("taskorch:{")
        and k not in (c.PARTITIONS_KEY, c.WORKERS_KEY, "taskorch:owner:alice:functions")
    ]
    assert stray == [], stray  # the old global keys are gone; functions' index stays

    workers.start()
    # finished ones read back, attempts and all
    succeeded = await api.get(ids["done"])
    assert succeeded["status"] == "succeeded" and succeeded["url"].endswith("/done")
    assert [(a["number"], a["status_code"], a["response_body"]) for a in succeeded["attempts"]] == [
        (1, 200, "old answer")
    ]
    assert (await api.get(ids["bad"]))["status"] == "failed"
    assert (await api.get(ids["gone"]))["status"] == "cancelled"
    # a scheduled task fires once, at its time, with its payload as the old code stored it
    soon = await api.get(ids["soon"])
    assert soon["status"] == "scheduled" and soon["payload"] == {"n": 1.0000000000000002}
    fired = await api.wait_status(ids["soon"], "succeeded", timeout_s=20)
    [call] = target.calls_to("/soon")
    assert json.loads(call.body) == {"n": 1.0000000000000002}
    run_at = dt.datetime.fromisoformat(soon["run_at"]).timestamp()
    assert call.at >= run_at - 0.001 and fired["attempts"][0]["scheduled_for"] == soon["run_at"]
    # the orchestration the old step machine had started goes on to its end
    orc = await api.wait_status(ids["orc"], "succeeded", kind="orchestrations", timeout_s=20)
    assert [len(target.calls_to(p)) for p in ("/s0", "/s1")] == [1, 1]
    layout = await partitions.load(api.http._transport.app.state["redis"])  # type: ignore[attr-defined]
    for step in orc["steps"]:  # its live step was moved into its partition
        assert layout.partition_of(step["task_id"]) == layout.partition_of(orc["id"])
        assert (await api.get(step["task_id"]))["status"] == "succeeded"
    # Idempotency-Keys still answer what they made, for tasks and orchestrations alike
    r1 = await api.http.post(
        "/v1/tasks",
        json={"url": target.url("/keyed"), "delay": 3600},
        headers={**api.auth(), "Idempotency-Key": "idem-task"},
    )
    assert r1.status_code == 200 and r1.json()["id"] == ids["keyed"]
    r2 = await api.http.post(
        "/v1/orchestrations",
        json={"steps": [{"url": target.url("/o")}], "delay": 3600},
        headers={**api.auth(), "Idempotency-Key": "idem-orc"},
    )
    assert r2.status_code == 200 and r2.json()["id"] == ids["keyed_orc"]
    # lists and stats see the migrated records, each owner only its own
    listed = (await api.http.get("/v1/tasks?limit=100", headers=api.auth())).json()["items"]
    assert ids["done"] in {t["id"] for t in listed} and ids["bob"] not in {t["id"] for t in listed}
    stats = (await api.http.get("/v1/stats", headers=api.auth("bob"))).json()
    assert stats["tasks"]["scheduled"] == 1
    text = (await api.http.get("/metrics")).text
    assert 'taskorch_attempts_total{outcome="failed"}' in text
    await until(lambda: target.calls_to("/keyed") == [] and target.calls_to("/o") == [])
