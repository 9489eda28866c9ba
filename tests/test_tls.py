"""Redis over TLS, as Heroku Redis and other providers serve it: a self-signed certificate that
``rediss://...?ssl_cert_reqs=none`` accepts (encrypted, not verified), and that a verifying
client refuses.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis

from taskorch.store import connect
from tests.conftest import Api, Target, WorkerProcs, _WithState, free_port, make_settings


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem"),
            "-subj", "/CN=redis.provider.invalid",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    port = free_port()
    exe = shutil.which("redis-server")
    assert exe, "redis-server is not installed"
    proc = subprocess.Popen(
        [
            exe, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
            "--tls-cert-file", str(folder / "cert.pem"), "--tls-key-file", str(folder / "key.pem"),
            "--tls-auth-clients", "no", "--save", "", "--appendonly", "no",
            "--maxmemory-policy", "noeviction", "--dir", str(folder),
            "--logfile", str(folder / "redis.log"),
        ]
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with redis.Redis(port=port, ssl=True, ssl_cert_reqs="none") as probe:
                    probe.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, (folder / "redis.log").read_text()
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


async def test_self_signed_certificate_needs_ssl_cert_reqs_none(tls_redis: int) -> None:
    verifying = connect(f"rediss://127.0.0.1:{tls_redis}/0")
    with pytest.raises(aioredis.ConnectionError, match="certificate verify failed"):
        await verifying.ping()
    await verifying.aclose()
    plain = connect(f"redis://127.0.0.1:{tls_redis}/0", socket_timeout=2)
    with pytest.raises((aioredis.ConnectionError, aioredis.TimeoutError)):
        await plain.ping()  # it really is TLS
    await plain.aclose()
    accepting = connect(f"rediss://127.0.0.1:{tls_redis}/0?ssl_cert_reqs=none")
    assert await accepting.ping()
    await accepting.aclose()


async def test_tasks_fire_through_redis_over_tls(
    tls_redis: int, target: Target, workers: WorkerProcs
) -> None:
    import httpx

    from taskorch.api import create_app

    url = f"rediss://127.0.0.1:{tls_redis}/0?ssl_cert_reqs=none"
    settings = make_settings(url)
    client = connect(url)
    await client.flushall()
    app = create_app(settings, redis_client=client)
    workers.start(TASKORCH_REDIS_URL=url)
    async with app.router.lifespan_context(app) as state:
        transport = httpx.ASGITransport(app=_WithState(app, state))  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            api = Api(http, settings)
            ready = await http.get("/readyz")
            assert ready.status_code == 200, ready.text
            ids = [
                (await api.create({"url": target.url("/ok"), "delay": 0.3}))["id"] for _ in range(5)
            ]
            for task_id in ids:
                task = await api.wait_status(task_id, "succeeded", timeout_s=60)
                assert task["attempts"][0]["status_code"] == 200
    await client.aclose()
    assert sorted(target.by_task()) == sorted(ids)
