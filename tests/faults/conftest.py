"""Fixtures of the fault tests: a redis-server of each test's own, the recording target and the
taskorch processes. Every test here is marked ``faults``; under ``TASKORCH_FAULTS=full`` each
may run for up to 15 minutes instead of the suite's 120 s.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from faultkit import FULL, FaultRedis, Procs, Recorder, free_port


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "faults: kills and freezes real processes (tests/faults; TASKORCH_FAULTS=full)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.faults)
            if FULL:
                item.add_marker(pytest.mark.timeout(900))


@pytest.fixture
def fault_redis(tmp_path: Path) -> Iterator[FaultRedis]:
    folder = tmp_path / "redis"
    folder.mkdir()
    server = FaultRedis(port=free_port(), folder=folder)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    r = Recorder()
    r.start()
    yield r
    r.stop()


@pytest.fixture
def procs(fault_redis: FaultRedis, tmp_path: Path) -> Iterator[Procs]:
    p = Procs(redis_url=fault_redis.url, log_dir=tmp_path)
    yield p
    if fault_redis.frozen:  # a frozen server would keep the workers from shutting down
        fault_redis.thaw()
    p.stop_all()
