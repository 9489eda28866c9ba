"""GET /v1/stats/lateness: the owner's attempts by minute, recorded by the real worker's FINISH."""

from __future__ import annotations

import time

from taskorch import constants as c
from taskorch.lateness import summarize
from taskorch.partitions import load
from taskorch.store import connect
from tests.conftest import Api, Target, WorkerProcs, until


def test_summary_of_a_histogram() -> None:
    hist = {1.0: 50, 2.5: 49, 900.0: 1}
    assert summarize(hist) == {"count": 100, "p50_ms": 2.5, "p99_ms": 900.0, "max_ms": 900.0}
    assert summarize({}) == {"count": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}


async def test_attempts_are_counted_by_minute_per_owner(
    api: Api, target: Target, workers: WorkerProcs, redis_url: str
) -> None:
    workers.start()
    made = [await api.create({"url": target.url("/ok")}) for _ in range(3)]
    failing = await api.create({"url": target.url("/status/500"), "retries": 1, "retry_delay": 0})
    for t in made:
        await api.wait_status(t["id"], "succeeded")
    await api.wait_status(failing["id"], "failed")

    async def figures() -> dict:  # type: ignore[type-arg]
        r = await api.http.get("/v1/stats/lateness?minutes=5", headers=api.auth())
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    answer = await until(lambda: _with_count(figures, 5))
    assert answer["minutes"] == 5 and len(answer["items"]) == 5
    starts = [item["start"] for item in answer["items"]]
    assert starts == sorted(starts) and all(s.endswith(":00.000Z") for s in starts)
    assert sum(item["count"] for item in answer["items"]) == 5  # 3 + the failing task's 2
    total = answer["total"]
    # The figures agree with the attempts each task records, to 2 significant digits.
    latenesses = []
    for t in [*made, failing]:
        latenesses += [a["lateness_ms"] for a in (await api.get(t["id"]))["attempts"]]
    assert total["max_ms"] == float(f"{max(latenesses):.2g}")
    assert total["p50_ms"] <= total["p99_ms"] <= total["max_ms"]

    # Another owner sees none of them; a bad window is refused.
    r = await api.http.get("/v1/stats/lateness", headers=api.auth("bob"))
    assert r.status_code == 200 and r.json()["total"]["count"] == 0
    assert len(r.json()["items"]) == c.LATENESS_WINDOW_MIN
    for bad in ("0", "61", "x", "1.5"):
        r = await api.http.get(f"/v1/stats/lateness?minutes={bad}", headers=api.auth())
        assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "minutes"

    # What FINISH keeps expires a little over an hour later: nothing outlives the window.
    client = connect(redis_url)
    try:
        layout = await load(client)
        minute = int(time.time() * 1000) // 60_000
        ttls = []
        for pre in layout.prefixes:
            for m in (minute - 1, minute):
                ttl = await client.ttl(f"{pre}{c.LATENESS_BY_MINUTE}alice:{m}")
                if ttl != -2:
                    ttls.append(ttl)
        assert ttls and all(0 < ttl <= c.LATENESS_TTL_S for ttl in ttls), ttls
    finally:
        await client.aclose()


async def _with_count(figures, n):  # type: ignore[no-untyped-def]
    answer = await figures()
    return answer if answer["total"]["count"] == n else None
