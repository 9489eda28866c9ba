"""Function trigger benchmark: cold start and warm latency through the real trigger URL.

    python bench/bench_trigger.py [--calls 200]

Starts redis-server and the real API (``taskorch serve``), creates a python and a java function
through ``POST /v1/functions``, then times HTTP calls to their trigger URLs from a keep-alive
client: the first call (cold: the sandboxed process starts) and ``--calls`` warm calls.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_tasks import SECRET, free_port, pct

PY = "def handler(event, context):\n    return {'echo': event}\n"
JAVA = """
import java.util.Map;
public class Echo {
    public static Object handle(Map<String, Object> event) { return event; }
}
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=200)
    n = ap.parse_args().calls
    folder = Path(tempfile.mkdtemp(prefix="taskorch-bench-"))
    fn_dir = Path(
        tempfile.mkdtemp(prefix="taskorch-bench-fn-", dir="/var/lib" if os.geteuid() == 0 else None)
    )
    fn_dir.chmod(0o711)
    redis_port, api_port = free_port(), free_port()
    redis = subprocess.Popen(
        [
            shutil.which("redis-server") or "redis-server",
            "--port",
            str(redis_port),
            "--dir",
            str(folder),
            "--save",
            "",
            "--logfile",
            "redis.log",
        ]
    )
    env = {
        **os.environ,
        "TASKORCH_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "TASKORCH_JWT_SECRET": SECRET,
        "TASKORCH_PORT": str(api_port),
        "TASKORCH_FUNCTIONS_DIR": str(fn_dir),
        "TASKORCH_LOG_LEVEL": "warning",
    }
    api = subprocess.Popen([sys.executable, "-m", "taskorch", "serve"], env=env)
    base = f"http://127.0.0.1:{api_port}"
    try:
        with httpx.Client(base_url=base, timeout=60) as http:
            for _ in range(100):
                try:
                    http.get("/healthz")
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            token = subprocess.run(
                [sys.executable, "-m", "taskorch", "token", "--sub", "bench"],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            auth = {"Authorization": f"Bearer {token}"}
            print(f"function trigger benchmark, {os.cpu_count()} cores, {n} warm calls each")
            for runtime, code, handler in [
                ("python", PY, "handler"),
                ("java", JAVA, "Echo::handle"),
            ]:
                if runtime == "java" and not shutil.which("javac"):
                    print("java: skipped, javac is not installed")
                    continue
                fn = http.post(
                    "/v1/functions",
                    headers=auth,
                    json={
                        "name": f"bench-{runtime}",
                        "runtime": runtime,
                        "code": code,
                        "handler": handler,
                    },
                ).json()
                while fn["status"] == "building":
                    time.sleep(0.05)
                    fn = http.get(f"/v1/functions/{fn['id']}", headers=auth).json()
                assert fn["status"] == "ready", fn
                event = {"n": 1, "s": "x" * 100}
                t0 = time.perf_counter()
                r = http.post(fn["url"], json=event)
                cold = (time.perf_counter() - t0) * 1000
                assert r.status_code == 200, r.text
                warm = []
                for _ in range(n):
                    t0 = time.perf_counter()
                    r = http.post(fn["url"], json=event)
                    warm.append((time.perf_counter() - t0) * 1000)
                    assert r.status_code == 200
                print(
                    f"{runtime:6} cold start {cold:.1f} ms; warm p50 {statistics.median(warm):.2f} ms, "
                    f"p99 {pct(warm, 99):.2f} ms (through the trigger URL)"
                )
    finally:
        api.terminate()
        api.wait(30)
        redis.terminate()
        redis.wait(10)
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(fn_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
