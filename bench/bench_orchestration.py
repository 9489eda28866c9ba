"""Orchestration benchmark: the time from one step's success to the next step's call.

    python bench/bench_orchestration.py [--steps 1000]

Runs redis-server, one real worker and the recording target (see bench_tasks.py), creates one
orchestration of N instant steps with no condition and no delays, and reports the gap between
consecutive step calls as the target saw them: median overall and for the first and last hundred
steps (advancing must not slow down as the orchestration grows).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import itertools

from bench_tasks import Rig, pct

from taskorch.models import OrchestrationCreate, StepSpec
from taskorch.orchestrations import Orchestrations
from taskorch.store import connect


async def run(rig: Rig, n: int) -> str:
    redis = connect(rig.redis_url)
    url = f"http://127.0.0.1:{rig.target_port}/step"
    body = OrchestrationCreate(steps=[StepSpec(url=url, retries=0) for _ in range(n)])
    orcs = Orchestrations(redis)
    orc, _ = await orcs.create("bench", body)
    deadline = time.time() + 120
    while time.time() < deadline:
        status = (await orcs.get("bench", orc.id)).status
        if status != "running" and status != "scheduled":
            break
        await asyncio.sleep(0.2)
    await redis.aclose()
    return str(status)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=1000)
    n = ap.parse_args().steps
    with tempfile.TemporaryDirectory() as d, Rig(Path(d)) as rig:
        t0 = time.time()
        status = asyncio.run(run(rig, n))
        total = time.time() - t0
        calls = rig.calls()
    arrivals = [at for _, _, at in calls]
    gaps = [(b - a) * 1000 for a, b in itertools.pairwise(arrivals)]
    print(f"orchestration of {n} steps: {status} in {total:.2f} s, {len(calls)} step calls")
    print(
        f"step-to-step gap: median {statistics.median(gaps):.2f} ms, p99 {pct(gaps, 99):.2f} ms, "
        f"max {max(gaps):.2f} ms"
    )
    print(
        f"  first 100 steps median {statistics.median(gaps[:100]):.2f} ms, "
        f"last 100 steps median {statistics.median(gaps[-100:]):.2f} ms"
    )


if __name__ == "__main__":
    main()
