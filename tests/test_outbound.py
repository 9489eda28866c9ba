"""The outbound call: what is read from a target, which addresses may be called, no cookies."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from taskorch import constants as c
from taskorch.models import Task, TaskCreate, TaskStatus
from taskorch.store import Store, connect
from taskorch.worker import outbound
from tests.conftest import Api, Target, WorkerProcs, until


@dataclass
class PiecesServer:
    """A raw TCP target that answers in several pieces with pauses between them, as a slow
    network or a streaming framework does. ``answers`` maps a path to its body."""

    answers: dict[str, bytes]
    chunked: bool = False
    pause_s: float = 0.15
    pieces: int = 2
    requests: list[bytes] = field(default_factory=list)
    port: int = 0
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(head)
                lines = head.decode().split("\r\n")
                path = lines[0].split(" ")[1]
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                await reader.readexactly(length)
                body = self.answers.get(path, b"{}")
                await self._answer(writer, body)

    async def _answer(self, writer: asyncio.StreamWriter, body: bytes) -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        step = -(-len(body) // self.pieces)
        parts = [body[i : i + step] for i in range(0, len(body), step)]
        if self.chunked:
            writer.write(head + b"Transfer-Encoding: chunked\r\n\r\n")
            for part in parts:
                writer.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                await writer.drain()
                await asyncio.sleep(self.pause_s)
            writer.write(b"0\r\n\r\n")
        else:
            writer.write(head + f"Content-Length: {len(body)}\r\n\r\n".encode())
            for part in parts:
                writer.write(part)
                await writer.drain()
                await asyncio.sleep(self.pause_s)
        await writer.drain()


@contextlib.asynccontextmanager
async def pieces_server(answers: dict[str, bytes], **kw: object) -> AsyncIterator[PiecesServer]:
    srv = PiecesServer(answers, **kw)  # type: ignore[arg-type]
    server = await asyncio.start_server(srv.handle, "127.0.0.1", 0)
    srv.port = server.sockets[0].getsockname()[1]
    try:
        yield srv
    finally:
        server.close()
        for writer in srv.writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        await server.wait_closed()


BIG = b'{"data": "' + b"x" * 9_988 + b'"}'  # 10,000 bytes


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_an_answer_in_pieces_is_read_whole(chunked: bool) -> None:
    assert len(BIG) == 10_000
    answers = {"/big": BIG, "/stop": b'{"continue": false}'}
    async with (
        pieces_server(answers, chunked=chunked, pieces=5) as srv,
        outbound.make_session(allow_private=True) as session,
    ):
        for path, want in answers.items():
            result = await outbound.call(
                session,
                url=srv.url(path),
                method="POST",
                headers={},
                payload={"x": 1},
                timeout_s=10,
                extra_headers={},
            )
            assert result.error is None and result.status_code == 200
            assert result.body == want, (path, len(result.body))
        # and a body longer than what is kept is cut at exactly that many bytes
        result = await outbound.call(
            session,
            url=srv.url("/big"),
            method="GET",
            headers={},
            payload=None,
            timeout_s=10,
            extra_headers={},
            keep_body=7_000,
        )
        assert result.body == BIG[:7_000]


@pytest.mark.parametrize(
    ("address", "forbidden"),
    [
        # globally routable
        ("93.184.216.34", False),
        ("8.8.8.8", False),
        ("2606:4700:4700::1111", False),
        ("::ffff:8.8.8.8", False),
        ("2002:0808:0808::1", False),  # 6to4 of 8.8.8.8
        ("64:ff9b::808:808", False),  # NAT64 of 8.8.8.8
        (
            "2001:0:4136:e378:8000:63bf:f7f7:f7f7",
            False,
        ),  # Teredo: server 65.54.227.120, client 8.8.8.8
        # IPv4 that is not global
        ("127.0.0.1", True),
        ("10.1.2.3", True),
        ("172.16.0.1", True),
        ("192.168.1.1", True),
        ("169.254.169.254", True),
        ("100.64.0.1", True),
        ("100.100.100.200", True),
        ("0.0.0.0", True),
        ("192.0.0.8", True),
        ("192.0.0.170", True),
        ("192.0.2.1", True),
        ("192.88.99.1", True),
        ("198.18.0.1", True),
        ("198.51.100.1", True),
        ("203.0.113.1", True),
        ("224.0.0.1", True),
        ("239.255.255.250", True),
        ("240.0.0.1", True),
        ("255.255.255.255", True),
        # IPv6 that is not global
        ("::1", True),
        ("::", True),
        ("::127.0.0.1", True),  # IPv4-compatible
        ("fe80::1", True),
        ("fe80::1%eth0", True),
        ("fec0::1", True),  # site-local
        ("fc00::1", True),
        ("fd00:ec2::254", True),
        ("ff02::1", True),
        ("2001:db8::1", True),
        ("100::1", True),
        ("2001:10::1", True),
        ("64:ff9b:1::a00:1", True),  # NAT64 local use
        # tunnels judged by the IPv4 inside
        ("::ffff:127.0.0.1", True),
        ("::ffff:169.254.169.254", True),
        ("2002:7f00:0001::1", True),  # 6to4 of 127.0.0.1
        ("2002:a9fe:a9fe::1", True),  # 6to4 of 169.254.169.254
        ("2002:c0a8:0101::1", True),  # 6to4 of 192.168.1.1
        ("64:ff9b::7f00:1", True),  # NAT64 of 127.0.0.1
        ("64:ff9b::a9fe:a9fe", True),  # NAT64 of 169.254.169.254
        ("64:ff9b::a00:1", True),  # NAT64 of 10.0.0.1
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", True),  # Teredo client 127.0.0.1
        ("2001:0:7f00:1:8000:63bf:f7f7:f7f7", True),  # Teredo server 127.0.0.1
    ],
)
def test_only_globally_routable_addresses_pass(address: str, forbidden: bool) -> None:
    assert outbound.address_forbidden(address) is forbidden


async def test_one_owners_cookies_never_reach_another_owners_task(
    api: Api, workers: WorkerProcs
) -> None:
    seen: list[tuple[str, str | None]] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append((request.path, request.headers.get("Cookie")))
        resp = web.json_response({"ok": True})
        resp.set_cookie("session", "alice-secret", path="/")
        return resp

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    # By name: aiohttp's default jar ignores cookies from IP-address hosts, not from names.
    base = f"http://localhost:{server.port}"
    try:
        workers.start()
        a = await api.create({"url": f"{base}/a"}, sub="alice")
        await api.wait_status(a["id"], "succeeded", sub="alice")
        b = await api.create({"url": f"{base}/b"}, sub="bob")
        await api.wait_status(b["id"], "succeeded", sub="bob")
        a2 = await api.create({"url": f"{base}/a2"}, sub="alice")
        await api.wait_status(a2["id"], "succeeded", sub="alice")
    finally:
        await server.close()
    assert seen == [("/a", None), ("/b", None), ("/a2", None)]


@contextlib.asynccontextmanager
async def hung_server() -> AsyncIterator[str]:
    """A target that accepts connections, reads the request and never answers."""
    handlers: list[asyncio.Task[None]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.append(task)
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            await reader.readuntil(b"\r\n\r\n")
            await asyncio.Event().wait()  # no answer, ever (until the server closes)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        for t in handlers:
            t.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


async def _create_due(
    store: Store, urls: list[str], due: dt.datetime, call_timeout_s: float
) -> list[str]:
    """Tasks due at one instant, created in this order (which is the order they are started)."""
    ids = []
    for url in urls:
        task, _ = await store.create_task(
            "alice", TaskCreate(url=url, retries=0, timeout=call_timeout_s, run_at=due)
        )
        ids.append(task.id)
    return ids


async def test_hung_and_slow_hosts_never_hold_up_a_fast_hosts_calls(
    redis_url: str, target: Target, workers: WorkerProcs
) -> None:
    """A burst to hosts that never answer or answer slowly in pieces (more calls than one host
    or one worker makes at once) leaves the calls to a fast host due with them, and after
    them, going out on time; the slow answers are still read whole."""
    slow_body = b'{"slow": "' + b"y" * 4_000 + b'"}'
    store = Store(connect(redis_url))
    workers.start()
    await until(lambda: "worker.started" in workers.logs(), timeout_s=60)
    async with (
        hung_server() as hung_a,
        hung_server() as hung_b,
        hung_server() as hung_c,
        pieces_server({"/slow": slow_body}, pieces=4, pause_s=0.5) as slow,
    ):
        due = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=8)
        later = due + dt.timedelta(seconds=1)
        # Started in this order: 3 x (HOST_CALLS + 20) hung calls, more than WORKER_CALLS
        # in all, then slow ones, then the fast host's, due at the same instant.
        stuck = [f"{h}/hang" for h in (hung_a, hung_b, hung_c) for _ in range(c.HOST_CALLS + 20)]
        assert len(stuck) > c.WORKER_CALLS
        await _create_due(store, stuck, due, call_timeout_s=20)
        slow_ids = await _create_due(store, [slow.url("/slow")] * 30, due, call_timeout_s=20)
        fast_now = await _create_due(store, [target.url("/fast")] * 30, due, call_timeout_s=20)
        fast_later = await _create_due(store, [target.url("/later")] * 30, later, call_timeout_s=20)
        assert dt.datetime.now(dt.UTC) < due - dt.timedelta(seconds=1.5), "created too late"

        await until(lambda: len(target.calls) >= 60, timeout_s=30)
        arrived = {call.headers["X-Taskorch-Task-Id"]: call.at for call in target.calls}
        for ids, at in ((fast_now, due), (fast_later, later)):
            lateness = [arrived[i] - at.timestamp() for i in ids]
            assert min(lateness) >= 0  # never early
            # On time by a wide margin for a busy machine, and long before any stuck call
            # ends (20 s): none waited for the hung or slow hosts.
            assert max(lateness) < 1.5, lateness
        for task_id in slow_ids:

            async def ended(task_id: str = task_id) -> Task | None:
                task = await store.get_task("alice", task_id)
                return task if task.status != TaskStatus.running else None

            task = await until(ended, timeout_s=30)
            assert task.status == TaskStatus.succeeded
            assert task.attempts[0].response_body == slow_body.decode()
    await store.redis.aclose()


async def test_two_workers_share_a_burst(
    redis_url: str, target: Target, workers: WorkerProcs
) -> None:
    """Two real worker processes: a burst due at one instant is called once per task, and both
    workers make part of the calls."""
    store = Store(connect(redis_url))
    workers.start()
    workers.start()
    await until(lambda: workers.logs().count("worker.started") == 2, timeout_s=60)
    n = 1000
    due = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=8)
    ids: list[str] = []
    for _ in range(0, n, 50):
        batch = await asyncio.gather(
            *(_create_due(store, [target.url("/burst")], due, call_timeout_s=10) for _ in range(50))
        )
        ids += [i for b in batch for i in b]
    assert dt.datetime.now(dt.UTC) < due - dt.timedelta(seconds=1.5), "created too late"
    await until(lambda: len(target.calls) >= n, timeout_s=60)
    # the barrier, due after the burst: a second call of any would come before it
    [wall] = await _create_due(store, [target.url("/barrier")], dt.datetime.now(dt.UTC), 10)
    await until(lambda: target.calls_to("/barrier"), timeout_s=30, what="the barrier")
    counts = target.by_task()
    assert counts.pop(wall) == 1
    assert sorted(counts) == sorted(ids)
    assert set(counts.values()) == {1}
    assert min(call.at for call in target.calls) >= due.timestamp()
    await until(lambda: workers.logs().count('"task.attempt"') >= n + 1, timeout_s=30)
    shares = [
        (workers.log_dir / f"worker-{i}.log").read_text().count('"task.attempt"') for i in (0, 1)
    ]
    assert sum(shares) == n + 1 and min(shares) > 0, shares  # the burst and the barrier
    await store.redis.aclose()
