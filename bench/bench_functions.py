"""Function runtime benchmark: cold start and warm invocation latency of local functions.

    python bench/bench_functions.py                     # python and java (and node if present)
    python bench/bench_functions.py --warm 500 --cold 20 --runtimes python

Everything is real: each function is built by `LocalRuntime` and runs in its sandboxed child
process, exactly as the service runs it. A cold call starts a new process (after `close()`
stopped the warm one) and includes loading the handler; a warm call reuses the process.
Run it as root to measure the full sandbox (bubblewrap, seccomp, a uid and cgroups per instance).
`measure` takes any async callable, so the same figures can be taken through a trigger URL.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from taskorch.functions import LocalRuntime, SandboxLimits  # noqa: E402

# What one small, realistic event looks like on its way in and out.
EVENT = {"order_id": "ord_123", "items": [{"sku": "A-1", "qty": 2}], "note": "bench"}

FUNCTIONS = {
    "python": (
        "handler",
        "def handler(event, context):\n    return {'ok': True, 'items': len(event['items'])}\n",
    ),
    "node": (
        "handler",
        "exports.handler = async (event) => ({ ok: true, items: event.items.length });\n",
    ),
    "java": (
        "Bench::handle",
        "import java.util.*;\n\npublic class Bench {\n"
        "    public static Object handle(Map<String, Object> event) {\n"
        '        return Map.of("ok", true, "items", ((List<?>) event.get("items")).size());\n'
        "    }\n}\n",
    ),
}
# The targets this runtime was built to: a warm call adds no more than this to a trigger, and a
# cold start (a new sandbox: bwrap, seccomp, cgroups, the interpreter, the handler) takes no more.
TARGET_WARM_P50_MS = {"python": 2.0, "java": 20.0}
TARGET_COLD_P50_MS = {"python": 150.0}


def percentile(sorted_ms: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    rank = max(1, math.ceil(pct / 100 * len(sorted_ms)))
    return sorted_ms[rank - 1]


async def measure(
    invoke_callable: Callable[[], Awaitable[object]],
    n: int,
    *,
    prepare: Callable[[], Awaitable[None]] | None = None,
) -> dict[str, float]:
    """Times `n` sequential calls of `invoke_callable`; `prepare` runs untimed before each.

    Returns n, p50_ms, p99_ms, mean_ms and max_ms.
    """
    samples = []
    for _ in range(n):
        if prepare is not None:
            await prepare()
        started = time.perf_counter()
        await invoke_callable()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return {
        "n": n,
        "p50_ms": percentile(samples, 50),
        "p99_ms": percentile(samples, 99),
        "mean_ms": statistics.fmean(samples),
        "max_ms": samples[-1],
    }


async def bench_runtime(
    rt: LocalRuntime, runtime: str, *, warm: int, cold: int
) -> list[tuple[str, str, dict[str, float]]]:
    handler, code = FUNCTIONS[runtime]
    function_id = f"bench_{runtime}"
    started = time.perf_counter()
    await rt.build(function_id, runtime=runtime, code=code, handler=handler)
    build_ms = (time.perf_counter() - started) * 1000
    print(f"built {runtime} in {build_ms:.0f} ms", file=sys.stderr)

    async def call() -> None:
        await rt.invoke(function_id, EVENT)

    cold_stats = await measure(call, cold, prepare=rt.close)
    for _ in range(20):  # let the JIT and the caches settle before timing warm calls
        await call()
    warm_stats = await measure(call, warm)
    return [(runtime, "cold", cold_stats), (runtime, "warm", warm_stats)]


def print_table(rows: list[tuple[str, str, dict[str, float]]]) -> None:
    print(
        f"{'runtime':<8} {'call':<5} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} "
        f"{'max ms':>8}  target"
    )
    for runtime, phase, stats in rows:
        target = ""
        goals = TARGET_WARM_P50_MS if phase == "warm" else TARGET_COLD_P50_MS
        if runtime in goals:
            goal = goals[runtime]
            target = f"p50 <= {goal:g} ms: {'met' if stats['p50_ms'] <= goal else 'MISSED'}"
        print(
            f"{runtime:<8} {phase:<5} {stats['n']:>5.0f} {stats['p50_ms']:>8.2f} "
            f"{stats['p99_ms']:>8.2f} {stats['mean_ms']:>8.2f} {stats['max_ms']:>8.2f}  {target}"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--warm", type=int, default=200, help="warm calls per runtime")
    parser.add_argument("--cold", type=int, default=10, help="cold starts per runtime")
    parser.add_argument(
        "--runtimes", default="python,java,node", help="comma-separated: python,java,node"
    )
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    wanted = [name.strip() for name in args.runtimes.split(",") if name.strip()]
    needs = {"python": None, "node": "node", "java": "javac"}
    # Not under the user's temp folder: function uids must be able to pass through its parents.
    base_dir = Path(tempfile.mkdtemp(prefix="taskorch-bench-", dir="/tmp"))
    rt = LocalRuntime(base_dir, limits=SandboxLimits(timeout_s=30.0))
    rows = []
    try:
        for runtime in wanted:
            tool = needs[runtime]
            if tool is not None and shutil.which(tool) is None:
                print(f"skipping {runtime}: {tool} is not installed", file=sys.stderr)
                continue
            rows += await bench_runtime(rt, runtime, warm=args.warm, cold=args.cold)
    finally:
        await rt.close()
        shutil.rmtree(base_dir, ignore_errors=True)
    print_table(rows)


if __name__ == "__main__":
    asyncio.run(main())
