"""The API against hostile or careless clients: token claims, revocation, sign-in floods, bodies
that never end, clients that drip, ids that name other keys, headers that frame requests, and
trigger keys that must never reach a log."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from taskorch import constants as c
from taskorch.auth import TokenVerifier, mint_token
from taskorch.errors import Unauthorized
from taskorch.functions import Functions
from taskorch.settings import Settings
from tests.conftest import ROOT, SECRET, Api, LiveServer, RedisServer, make_settings
from tests.helpers import until, wait_for
from tests.live import frozen, own_redis_server, raw_socket, serving

TARGET = "http://127.0.0.1:9/"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _token(**claims: Any) -> str:
    now = int(time.time())
    return jwt.encode({"sub": "alice", "iat": now, "exp": now + 60, **claims}, SECRET, "HS256")


def _cli(*args: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    import os

    clean = {k: v for k, v in os.environ.items() if not k.startswith("TASKORCH_")}
    return subprocess.run(
        [sys.executable, "-m", "taskorch", *args],
        input=stdin,
        env={**clean, "TASKORCH_JWT_SECRET": SECRET, **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


# -- item 8: the scope claim -------------------------------------------------------------------


@pytest.mark.parametrize("scope", [["read"], ["write"], 0, 1, False, True, None, {"read": 1}])
async def test_a_scope_that_is_not_a_string_is_an_invalid_token(api: Api, scope: Any) -> None:
    h = _bearer(_token(scope=scope))
    for method, path in [("GET", "/v1/tasks"), ("POST", "/v1/tasks")]:
        r = await api.http.request(method, path, json={"url": TARGET}, headers=h)
        assert r.status_code == 401, (scope, method, r.text)
        assert r.json()["error"]["code"] == "invalid_token"
        assert r.headers["www-authenticate"] == "Bearer"


async def test_a_string_scope_still_limits_and_no_scope_grants_all(api: Api) -> None:
    assert (
        await api.http.get("/v1/tasks", headers=_bearer(_token(scope="read")))
    ).status_code == 200
    r = await api.http.post("/v1/tasks", json={"url": TARGET}, headers=_bearer(_token(scope="")))
    assert r.status_code == 403
    r = await api.http.post(
        "/v1/tasks", json={"url": TARGET, "delay": 60}, headers=_bearer(_token())
    )
    assert r.status_code == 201


@pytest.mark.parametrize(
    ("claims", "reads", "writes"),
    [
        ({"scp": "read"}, 200, 403),
        ({"scp": ["read"]}, 200, 403),
        ({"scp": "read write"}, 200, 201),
        ({"scp": ["read", "write"]}, 200, 201),
        ({"scp": ["write"]}, 403, 201),
        ({"scp": []}, 403, 403),
        ({"scope": "read", "scp": "read write"}, 200, 403),  # scope wins
    ],
)
async def test_scp_is_the_scope_of_a_token_without_one(
    api: Api, claims: dict[str, Any], reads: int, writes: int
) -> None:
    """Issue #19 item 9: ``scp`` (a string or a list, as some identity providers write it) is
    read as the scope where a token has no ``scope``; before, it granted everything."""
    h = _bearer(_token(**claims))
    assert (await api.http.get("/v1/tasks", headers=h)).status_code == reads
    r = await api.http.post("/v1/tasks", json={"url": TARGET, "delay": 60}, headers=h)
    assert r.status_code == writes, r.text
    if writes == 403:
        assert r.json()["error"]["code"] == "forbidden"


@pytest.mark.parametrize("scp", [0, True, None, {"read": 1}, ["read", 1]])
async def test_an_scp_that_is_neither_a_string_nor_a_list_of_strings_is_invalid(
    api: Api, scp: Any
) -> None:
    r = await api.http.get("/v1/tasks", headers=_bearer(_token(scp=scp)))
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_token", r.text


# -- item 9: iat, lifetime cap, revocation, sign-in throttling --------------------------------


async def test_tokens_need_iat_and_a_lifetime_within_the_cap(api: Api) -> None:
    now = int(time.time())
    no_iat = jwt.encode({"sub": "alice", "exp": now + 60}, SECRET, "HS256")
    too_long = _token(iat=now, exp=now + c.DEFAULT_TOKEN_MAX_TTL_S + 1)
    text_iat = _token(iat=str(now))
    huge = _token(iat=now, exp=10**400)  # a JSON integer no float holds
    for what, token in [
        ("no iat", no_iat),
        ("too long", too_long),
        ("text iat", text_iat),
        ("huge exp", huge),
    ]:
        r = await api.http.get("/v1/tasks", headers=_bearer(token))
        assert r.status_code == 401, (what, r.text)
        assert r.json()["error"]["code"] == "invalid_token", what
    at_cap = _token(iat=now, exp=now + c.DEFAULT_TOKEN_MAX_TTL_S)
    assert (await api.http.get("/v1/tasks", headers=_bearer(at_cap))).status_code == 200
    minted = jwt.decode(api.token(), SECRET, algorithms=["HS256"])
    assert isinstance(minted["iat"], int | float) and minted["iat"] <= time.time() + 0.001


def test_the_lifetime_cap_is_configurable_and_checked_at_start() -> None:
    p = _cli("token", "--sub", "a", "--ttl", str(c.DEFAULT_TOKEN_MAX_TTL_S + 1))
    assert p.returncode == 2 and "TASKORCH_TOKEN_MAX_TTL_S" in p.stderr, p.stderr
    p = _cli("token", "--sub", "a", "--ttl", "100", TASKORCH_TOKEN_MAX_TTL_S="60")
    assert p.returncode == 2 and "TASKORCH_TOKEN_MAX_TTL_S" in p.stderr, p.stderr
    p = _cli("serve", TASKORCH_TOKEN_MAX_TTL_S="60")  # the default TTL (3600) would exceed it
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "TASKORCH_TOKEN_TTL_S" in lines[0], p.stderr
    p = _cli("serve", TASKORCH_TOKEN_MAX_TTL_S="soon")
    assert p.returncode == 2 and "TASKORCH_TOKEN_MAX_TTL_S" in p.stderr, p.stderr


async def test_a_remembered_token_still_expires_on_time(api: Api) -> None:
    """Verified tokens are remembered (VERIFIED_TOKEN_CACHE_S), never past their exp."""
    now = time.time()
    exp = int(now) + 2
    token = jwt.encode({"sub": "eve", "iat": now, "exp": exp}, SECRET, algorithm="HS256")
    assert (await api.http.get("/v1/tasks", headers=_bearer(token))).status_code == 200
    assert (await api.http.get("/v1/tasks", headers=_bearer(token))).status_code == 200

    async def refused() -> httpx.Response | None:
        r = await api.http.get("/v1/tasks", headers=_bearer(token))
        return r if r.status_code != 200 else None

    r = await until(refused, timeout_s=10, every_s=0.02, what="the token refused")
    assert time.time() < exp + 0.5, "remembered past its exp"
    assert r.status_code == 401 and r.json()["error"]["code"] == "token_expired", r.text
    flip = "B" if token[-10] == "A" else "A"  # a full six bits of the signature
    tampered = token[:-10] + flip + token[-9:]
    r = await api.http.get("/v1/tasks", headers=_bearer(tampered))
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_token", r.text


async def _until_refused(api: Api, token: str) -> httpx.Response:
    """The first answer to ``token`` that is not a 200 (a revocation takes effect within
    NOT_BEFORE_CACHE_S)."""

    async def refused() -> httpx.Response | None:
        r = await api.http.get("/v1/tasks", headers=_bearer(token))
        return r if r.status_code != 200 else None

    return await until(refused, timeout_s=10, every_s=0.02, what="the token refused")  # type: ignore[no-any-return]


async def _revoke_while_in_use(
    api: Api, sub: str, tokens: list[str], *args: str, **kw: str
) -> tuple[subprocess.CompletedProcess[str], float]:
    """``_cli`` (a command that revokes ``sub``'s ``tokens``) while they are in use, so that what the API
    remembers of their owner is fresh when the change lands; returns the command's outcome and
    when (monotonic) the change landed in Redis: a revocation counts within NOT_BEFORE_CACHE_S
    of that."""
    redis = api.http._transport.app.state["redis"]  # type: ignore[attr-defined]
    key = c.USER_NOT_BEFORE_KEY_PREFIX + sub
    before = await redis.get(key)
    landed: list[float] = []
    command = asyncio.ensure_future(asyncio.to_thread(_cli, *args, **kw))
    while not command.done() or not landed:
        for token in tokens:
            await api.http.get("/v1/tasks", headers=_bearer(token))
        if not landed and await redis.get(key) != before:
            landed.append(time.monotonic())
        if command.done() and not landed:
            break  # the command failed: its outcome says why
        await asyncio.sleep(0.01)
    p = await command
    assert landed, p.stderr
    return p, landed[0]


async def _sign_in(api: Api, name: str, password: str) -> httpx.Response:
    return await api.http.post("/v1/auth/token", json={"username": name, "password": password})


async def test_user_passwd_and_remove_revoke_earlier_tokens(api: Api, redis_url: str) -> None:
    env = {"TASKORCH_REDIS_URL": redis_url}
    assert _cli("user", "add", "rosa", stdin="first password\n", **env).returncode == 0
    signed_in = (await _sign_in(api, "rosa", "first password")).json()["access_token"]
    minted = _cli("token", "--sub", "rosa", **env).stdout.strip()
    for token in (signed_in, minted):
        assert (await api.http.get("/v1/tasks", headers=_bearer(token))).status_code == 200

    p, changed = await _revoke_while_in_use(
        api, "rosa", [signed_in, minted], "user", "passwd", "rosa", stdin="second password\n", **env
    )
    assert p.returncode == 0, p.stderr
    for token in (signed_in, minted):
        r = await _until_refused(api, token)
        assert r.status_code == 401 and r.json()["error"]["code"] == "token_revoked", r.text
    # within the documented delay of the change
    assert time.monotonic() - changed < c.NOT_BEFORE_CACHE_S + 0.5
    assert (await _sign_in(api, "rosa", "first password")).status_code == 401
    fresh = (await _sign_in(api, "rosa", "second password")).json()["access_token"]
    assert (await api.http.get("/v1/tasks", headers=_bearer(fresh))).status_code == 200

    p, removed = await _revoke_while_in_use(api, "rosa", [fresh], "user", "remove", "rosa", **env)
    assert p.returncode == 0, p.stderr
    assert (await _until_refused(api, fresh)).status_code == 401
    assert time.monotonic() - removed < c.NOT_BEFORE_CACHE_S + 0.5
    assert (await _sign_in(api, "rosa", "second password")).status_code == 401
    for verb in ("passwd", "remove"):
        p = _cli("user", verb, "nobody", stdin="some password\n", **env)
        assert p.returncode == 1 and "no user" in p.stderr, p.stderr


async def test_repeated_failed_sign_ins_answer_429_without_slowing_others(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    from taskorch import auth

    app = api.http._transport.app  # type: ignore[attr-defined]
    redis = app.state["redis"]
    await auth.add_user(redis, "victim", "the real password")
    await auth.add_user(redis, "bystander", "another password")
    checks: list[str] = []
    real_check = auth.check_password

    def counting(password: str, stored: str) -> bool:
        checks.append(password)
        return real_check(password, stored)

    monkeypatch.setattr(auth, "check_password", counting)
    elsewhere = httpx.ASGITransport(app=app, client=("192.0.2.7", 4000))
    async with httpx.AsyncClient(transport=elsewhere, base_url="http://taskorch") as other:
        *flood, during = await asyncio.gather(
            *(_sign_in(api, "victim", f"guess {i}") for i in range(40)),
            other.post(
                "/v1/auth/token", json={"username": "bystander", "password": "another password"}
            ),
        )
        assert during.status_code == 200, during.text  # another user signs in during the flood
        codes = sorted(r.status_code for r in flood)
        # At most SIGNIN_MAX_ATTEMPTS guesses are checked (fewer when the address's concurrency
        # cap refuses one of them first); the rest answer 429.
        assert 1 <= codes.count(401) <= c.SIGNIN_MAX_ATTEMPTS
        assert codes.count(429) == 40 - codes.count(401)
        limited = next(r for r in flood if r.status_code == 429)
        assert 1 <= int(limited.headers["retry-after"]) <= c.SIGNIN_WINDOW_S
        assert limited.json()["error"]["code"] == "too_many_requests"
        # The flood cost at most five scrypt runs, not forty (plus the bystander's one).
        assert len(checks) <= c.SIGNIN_MAX_ATTEMPTS + 1
        # From the address that failed, even the right password waits out the window: a
        # guesser cannot tell it was right. From another address the user signs in.
        for _ in range(c.SIGNIN_MAX_ATTEMPTS):
            await _sign_in(api, "victim", "yet another guess")
        assert (await _sign_in(api, "victim", "the real password")).status_code == 429
        r = await other.post(
            "/v1/auth/token", json={"username": "victim", "password": "the real password"}
        )
        assert r.status_code == 200, r.text


def _add_user(redis_url: str, name: str, password: str) -> None:
    from taskorch import auth
    from taskorch.store import connect

    async def add() -> None:
        redis = connect(redis_url)
        try:
            await auth.add_user(redis, name, password)
        finally:
            await redis.aclose()

    asyncio.run(add())


def _live_sign_in(http: httpx.Client, address: str, name: str, password: str) -> httpx.Response:
    """A sign-in as from ``address``: ``taskorch serve`` trusts X-Forwarded-For from 127.0.0.1
    (uvicorn's FORWARDED_ALLOW_IPS default), as it would from a proxy on the same host."""
    return http.post(
        "/v1/auth/token",
        json={"username": name, "password": password},
        headers={"X-Forwarded-For": address},
    )


def test_failed_sign_ins_throttle_the_address_that_fails_not_the_user(
    redis_url: str, tmp_path: Path
) -> None:
    """Issue #19 item 8, against ``taskorch serve`` with real scrypt: six wrong guesses from one
    address no longer lock the user out (they sign in from their own address), and one guess
    each on many names from one address is throttled too."""
    _add_user(redis_url, "carol", "carol's password")
    with (
        serving(redis_url, tmp_path / "serve.log") as srv,
        httpx.Client(base_url=srv.url, timeout=60) as http,
    ):
        guesser, carol, sprayer = "198.51.100.1", "203.0.113.5", "198.51.100.2"
        for i in range(c.SIGNIN_MAX_ATTEMPTS):
            r = _live_sign_in(http, guesser, "carol", f"guess {i}")
            assert r.status_code == 401, r.text
        for password in ("guess 6", "carol's password"):  # the contract: 429 for the failing
            r = _live_sign_in(http, guesser, "carol", password)
            assert r.status_code == 429, r.text
            assert 1 <= int(r.headers["retry-after"]) <= c.SIGNIN_WINDOW_S
        r = _live_sign_in(http, carol, "carol", "carol's password")
        assert r.status_code == 200, r.text  # before: 429 for 300 s
        assert _live_sign_in(http, carol, "carol", "a typo").status_code == 401
        assert _live_sign_in(http, carol, "carol", "carol's password").status_code == 200

        for i in range(c.SIGNIN_ADDRESS_MAX_FAILURES):
            r = _live_sign_in(http, sprayer, f"name{i}", "password")
            assert r.status_code == 401, r.text
        r = _live_sign_in(http, sprayer, "yet-another-name", "password")
        assert r.status_code == 429, r.text  # before: never slowed
        assert 1 <= int(r.headers["retry-after"]) <= c.SIGNIN_WINDOW_S
        assert _live_sign_in(http, carol, "carol", "carol's password").status_code == 200


_REAL_SIGN_IN = """
import sys, httpx
r = httpx.post(sys.argv[1] + "/v1/auth/token", timeout=60, headers={"X-Forwarded-For": sys.argv[2]},
               json={"username": "dave", "password": "dave's password"})
print(r.status_code, r.text)
"""


def test_a_flood_of_sign_ins_cannot_deny_a_correct_one(redis_url: str, tmp_path: Path) -> None:
    """Issue #19 item 8: 48 anonymous clients from one address, and 8 from addresses of their
    own, post random names as fast as they are answered; meanwhile the real user signs in three
    times, from three addresses, each answered 200 (before: 429 "too many sign-ins at once").
    The real user is a process of its own, so that the flood's client does not slow it."""
    _add_user(redis_url, "dave", "dave's password")

    async def flood_and_sign_in(url: str) -> tuple[list[str], list[int]]:
        stop = asyncio.Event()
        codes: list[int] = []
        saturated = asyncio.Event()

        async def flooder(http: httpx.AsyncClient, address: str, n: int) -> None:
            i = 0
            while not stop.is_set():
                i += 1
                r = await http.post(
                    "/v1/auth/token",
                    json={"username": f"random-{n}-{i}", "password": "guess"},
                    headers={"X-Forwarded-For": address},
                )
                codes.append(r.status_code)
                if len(codes) >= 56:
                    saturated.set()

        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
            flooders = [
                asyncio.create_task(flooder(http, "198.51.100.9" if n < 48 else f"192.0.2.{n}", n))
                for n in range(56)
            ]
            await asyncio.wait_for(saturated.wait(), 60)
            answers = []
            for k in range(3):
                real = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-c",
                    _REAL_SIGN_IN,
                    url,
                    f"203.0.113.{k}",
                    stdout=asyncio.subprocess.PIPE,
                )
                out, _ = await real.communicate()
                answers.append(out.decode())
            stop.set()
            await asyncio.gather(*flooders)
        return answers, codes

    with serving(redis_url, tmp_path / "serve.log") as srv:
        answers, codes = asyncio.run(flood_and_sign_in(srv.url))
    assert [a[:3] for a in answers] == ["200"] * 3, answers
    assert set(codes) <= {401, 429}, sorted(set(codes))


# -- item 10: bodies capped while they stream ---------------------------------------------------


async def _chunks(total: int, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        yield b"x" * min(size, total - sent)
        sent += size


async def test_a_chunked_json_body_over_the_cap_is_413(api: Api) -> None:
    for path in ("/v1/tasks", "/v1/auth/token"):
        r = await api.http.post(
            path,
            content=_chunks(3 * c.MAX_BODY_BYTES),
            headers={**api.auth(), "Content-Type": "application/json"},
        )
        assert r.status_code == 413, (path, r.text)
        assert r.json()["error"]["code"] == "payload_too_large"


async def test_a_chunked_multipart_upload_is_cut_at_the_cap(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the multipart parser spools (to memory, then /tmp) never passes the cap."""
    from starlette.datastructures import UploadFile

    monkeypatch.setattr(Functions, "_spawn_build", lambda self, fid: None)
    spooled: dict[int, int] = {}
    real_write = UploadFile.write

    async def counting_write(self: UploadFile, data: bytes) -> None:
        spooled[id(self)] = spooled.get(id(self), 0) + len(data)
        await real_write(self, data)

    monkeypatch.setattr(UploadFile, "write", counting_write)
    boundary = "b0undary"

    async def body() -> AsyncIterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\nf\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="runtime"\r\n\r\npython\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="code"; filename="f.py"\r\n'
            "Content-Type: text/x-python\r\n\r\n"
        ).encode()
        async for chunk in _chunks(20 * c.MAX_BODY_BYTES):
            yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    r = await api.http.post(
        "/v1/functions",
        content=body(),
        headers={**api.auth(), "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert r.status_code == 413, r.text
    assert r.headers.get("connection") == "close"
    assert spooled and max(spooled.values()) <= c.MAX_BODY_BYTES, spooled


def test_taskorch_serve_stops_reading_a_chunked_upload_at_the_cap(
    redis_url: str, tmp_path: Path
) -> None:
    """Over a socket, sent slowly in chunks: the answer (413) comes once the cap is passed, and
    the server closes the connection instead of reading the other megabytes."""
    with serving(redis_url, tmp_path / "serve.log") as srv:
        token = mint_token(make_settings(redis_url), "alice")
        sock = raw_socket(srv.url)
        head = (
            "POST /v1/functions HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {token}\r\n"
            "Content-Type: multipart/form-data; boundary=zz\r\nTransfer-Encoding: chunked\r\n\r\n"
        ).encode()
        sock.sendall(head)
        part = b'--zz\r\nContent-Disposition: form-data; name="code"; filename="a.py"\r\n\r\n'
        sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
        sent, answer = 0, b""
        chunk = b"y" * (64 * 1024)
        sock.settimeout(0.05)
        try:
            while sent < 16 * c.MAX_BODY_BYTES and not answer:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
                try:
                    answer = sock.recv(65536)
                except TimeoutError:
                    pass
        except (BrokenPipeError, ConnectionResetError):
            pass
        sock.settimeout(5)
        try:
            while b"\r\n\r\n" not in answer and (more := sock.recv(65536)):
                answer += more
        except (ConnectionResetError, TimeoutError):
            pass
        sock.close()
    assert answer.startswith(b"HTTP/1.1 413"), (sent, answer[:300])
    # Margin for socket buffers and a loaded machine; without the cap all 16 MiB go in.
    assert sent < 8 * c.MAX_BODY_BYTES, f"the server read {sent} bytes before answering"
    assert b"connection: close" in answer.lower()


def test_taskorch_serve_does_not_drain_a_body_no_route_reads(
    redis_url: str, tmp_path: Path
) -> None:
    """A cancel takes no body: one sent anyway, chunked and endless, is not read for ever to keep
    the connection; the answer says Connection: close and the connection ends."""
    with serving(redis_url, tmp_path / "serve.log") as srv:
        h = _bearer(mint_token(make_settings(redis_url), "alice"))
        task = httpx.post(
            srv.url + "/v1/tasks", json={"url": TARGET, "delay": 60}, headers=h
        ).json()
        sock = raw_socket(srv.url)
        sock.sendall(
            (
                f"POST /v1/tasks/{task['id']}/cancel HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: {h['Authorization']}\r\nTransfer-Encoding: chunked\r\n\r\n"
            ).encode()
        )
        chunk = b"z" * 4096
        answer = b""
        sock.settimeout(0.05)
        for _ in range(2000):
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                answer = sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            if answer:
                break
        sock.settimeout(10)
        try:
            while more := sock.recv(65536):
                answer += more
        except ConnectionResetError:
            pass
        sock.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    assert b"connection: close" in answer.lower(), answer[:300]


# -- item 12: no 500 from ids, limits or keys --------------------------------------------------


async def test_ids_are_checked_against_the_id_format(api: Api) -> None:
    task = await api.create({"url": TARGET, "delay": 60})
    tid = task["id"]
    for raw in (
        f"{tid}:attempts",
        f"{tid}:x",
        tid.upper(),
        tid + "0",
        "tsk_" + "g" * 24,
        "orc_" + tid[4:],
    ):
        for method, path in [
            ("GET", f"/v1/tasks/{raw}"),
            ("PATCH", f"/v1/tasks/{raw}"),
            ("POST", f"/v1/tasks/{raw}/cancel"),
        ]:
            r = await api.http.request(
                method, path, json={} if method == "PATCH" else None, headers=api.auth()
            )
            assert r.status_code == 404, (method, path, r.status_code, r.text)
            assert r.json()["error"]["code"] == "not_found"
    orc = (
        await api.http.post(
            "/v1/orchestrations", json={"steps": [{"url": TARGET}], "delay": 60}, headers=api.auth()
        )
    ).json()
    for path in (
        f"/v1/orchestrations/{orc['id']}:specs",
        f"/v1/orchestrations/{orc['id']}:state/cancel",
    ):
        r = await api.http.request(
            "POST" if path.endswith("cancel") else "GET", path, headers=api.auth()
        )
        assert r.status_code == 404, (path, r.text)
    for path in ("/v1/functions/fn_" + "0" * 23, "/v1/functions/fn_x:y"):
        assert (await api.http.get(path, headers=api.auth())).status_code == 404
    assert (await api.get(tid))["status"] == "scheduled"
    r = await api.http.get(f"/v1/tasks?cursor={tid}:attempts", headers=api.auth())
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "cursor"


@pytest.mark.parametrize("digits", [4300, 4301, 10_000])
@pytest.mark.parametrize("path", ["/v1/tasks", "/v1/orchestrations", "/v1/functions"])
async def test_a_limit_of_thousands_of_digits_is_422(api: Api, path: str, digits: int) -> None:
    r = await api.http.get(f"{path}?limit={'9' * digits}", headers=api.auth())
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"][0]["field"] == "limit"


@pytest.fixture
async def jwks_rsa_server() -> AsyncIterator[tuple[str, Any]]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="rsa1", use="sig")

    async def jwks(_: web.Request) -> web.Response:
        return web.json_response({"keys": [jwk]})

    app = web.Application()
    app.router.add_get("/jwks.json", jwks)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("/jwks.json")), key
    await server.close()


async def test_jwks_token_claiming_es256_with_an_rsa_kid_is_401(
    jwks_rsa_server: tuple[str, Any],
) -> None:
    url, rsa_key = jwks_rsa_server
    verifier = TokenVerifier(Settings.from_env({"TASKORCH_JWT_JWKS_URL": url}))
    now = int(time.time())
    claims = {"sub": "rita", "iat": now, "exp": now + 60}
    good = jwt.encode(claims, rsa_key, algorithm="RS256", headers={"kid": "rsa1"})
    assert (await verifier.verify(good)).sub == "rita"
    ec_key = ec.generate_private_key(ec.SECP256R1())
    for bad in (
        jwt.encode(claims, ec_key, algorithm="ES256", headers={"kid": "rsa1"}),
        jwt.encode(claims, rsa_key, algorithm="RS512", headers={"kid": "rsa1"}),
        jwt.encode(claims, rsa_key, algorithm="PS256", headers={"kid": "rsa1"}),
    ):
        with pytest.raises(Unauthorized) as err:
            await verifier.verify(bad)
        assert err.value.code == "invalid_token"


# -- item 14: headers that frame the request ----------------------------------------------------

FORBIDDEN_HEADERS = [
    "Host",
    "content-length",
    "Transfer-Encoding",
    "Connection",
    "Keep-Alive",
    "TE",
    "Trailer",
    "Upgrade",
    "Proxy-Authorization",
    "proxy-connection",
]


async def test_framing_and_hop_by_hop_headers_are_refused_everywhere(api: Api) -> None:
    headers = dict.fromkeys(FORBIDDEN_HEADERS, "x")
    r = await api.http.post(
        "/v1/tasks", json={"url": TARGET, "headers": headers}, headers=api.auth()
    )
    assert r.status_code == 422, r.text
    fields = {d["field"] for d in r.json()["error"]["details"]}
    assert fields == {f"headers.{h}" for h in FORBIDDEN_HEADERS}
    spec = {"url": TARGET, "headers": {"Host": "evil.example"}}
    r = await api.http.post(
        "/v1/orchestrations",
        json={
            "steps": [spec, {**spec, "condition": spec}],
            "condition": spec,
            "fallback": spec,
        },
        headers=api.auth(),
    )
    assert r.status_code == 422, r.text
    assert {d["field"] for d in r.json()["error"]["details"]} == {
        "steps[0].headers.Host",
        "steps[1].headers.Host",
        "steps[1].condition.headers.Host",
        "condition.headers.Host",
        "fallback.headers.Host",
    }
    task = await api.create({"url": TARGET, "delay": 60, "headers": {"X-Ok": "fine"}})
    r = await api.http.patch(
        f"/v1/tasks/{task['id']}", json={"headers": {"Content-Length": "0"}}, headers=api.auth()
    )
    assert (
        r.status_code == 422
        and r.json()["error"]["details"][0]["field"] == "headers.Content-Length"
    )


@pytest.mark.parametrize(
    "headers",
    [
        {"X-A": "a\r\nHost: b"},
        {"X-A": "a\nb"},
        {"X-A": "nul\x00"},
        {"X-A": "bell\x07"},
        {"X-A": "del\x7f"},
        {"X-A": "snow\u2603"},
        {"Bad Name": "v"},
        {"X:A": "v"},
    ],
)
async def test_header_names_and_values_with_forbidden_characters_are_422(
    api: Api, headers: dict[str, str]
) -> None:
    r = await api.http.post(
        "/v1/tasks", json={"url": TARGET, "headers": headers}, headers=api.auth()
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"][0]["field"] == f"headers.{next(iter(headers))}"


# -- item 16: event streams per owner, slow clients ---------------------------------------------


async def test_event_streams_are_capped_per_owner(live_server: LiveServer) -> None:
    def url(sub: str) -> str:
        return f"{live_server.url}/v1/events?access_token={mint_token(live_server.settings, sub)}"

    async with httpx.AsyncClient(timeout=10) as http:
        streams = []
        try:
            for _ in range(c.MAX_EVENT_STREAMS_PER_OWNER):
                s = await http.send(http.build_request("GET", url("alice")), stream=True)
                assert s.status_code == 200
                streams.append(s)
            r = await http.get(url("alice"))
            assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1, r.text
            assert r.json()["error"]["code"] == "too_many_requests"
            other = await http.send(http.build_request("GET", url("bob")), stream=True)
            assert other.status_code == 200  # the cap is per owner
            await other.aclose()
            await streams.pop().aclose()
            for _ in range(200):  # the server notices the hang-up and frees the slot
                again = await http.send(http.build_request("GET", url("alice")), stream=True)
                if again.status_code == 200:
                    streams.append(again)
                    break
                await again.aclose()
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("a closed stream's slot was never given back")
        finally:
            for s in streams:
                await s.aclose()


def _drip(sock: socket.socket, data: bytes, every_s: float) -> tuple[int, bytes]:
    """Send ``data`` a byte at a time; stop at the server's first answer or hang-up."""
    sock.settimeout(every_s)
    for i in range(len(data)):
        try:
            sock.sendall(data[i : i + 1])
        except (BrokenPipeError, ConnectionResetError):
            return i, b""
        try:
            answer = sock.recv(65536)
            return i + 1, answer  # b"" when the server closed the connection
        except TimeoutError:
            continue
    return len(data), b""


@pytest.mark.parametrize("phase", ["headers", "body"])
def test_taskorch_serve_cuts_off_a_client_that_drips(
    redis_url: str, tmp_path: Path, phase: str
) -> None:
    token = mint_token(make_settings(redis_url), "alice")
    body = b'{"url": "http://127.0.0.1:9/", "delay": 60}' + b" " * 200
    head = (
        "POST /v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with serving(redis_url, tmp_path / "serve.log", TASKORCH_READ_TIMEOUT_S="1") as srv:
        sock = raw_socket(srv.url)
        try:
            if phase == "headers":
                sent, answer = _drip(sock, head + body, 0.2)
                total = len(head) + len(body)
            else:
                sock.sendall(head)
                sent, answer = _drip(sock, body, 0.2)
                total = len(body)
        finally:
            sock.close()
        assert sent < total, "the server let a byte-a-time client send its whole request"
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        # The server still serves others.
        assert httpx.get(srv.url + "/healthz").status_code == 200


def test_taskorch_serve_closes_connections_that_send_nothing(
    redis_url: str, tmp_path: Path
) -> None:
    with serving(
        redis_url, tmp_path / "serve.log", TASKORCH_READ_TIMEOUT_S="1", TASKORCH_KEEP_ALIVE_S="1"
    ) as srv:
        idle = raw_socket(srv.url)
        idle.settimeout(10)
        assert idle.recv(65536).startswith(b"HTTP/1.1 408")  # never sent a request
        idle.close()
        kept = raw_socket(srv.url)
        kept.settimeout(10)
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        while chunk := kept.recv(65536):  # closed after TASKORCH_KEEP_ALIVE_S idle
            got += chunk
        assert got.startswith(b"HTTP/1.1 200") and got.endswith(b'{"status":"ok"}\n'), got
        kept.close()


# -- item 11: trigger keys never reach a log ---------------------------------------------------


def _answered(log: str, status: int) -> int:
    """How many requests the access log says were answered ``status``."""
    events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    return sum(e.get("event") == "http.request" and e.get("status") == status for e in events)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    with own_redis_server(tmp_path) as server:
        yield server


def test_trigger_keys_never_reach_the_log(own_redis: RedisServer, tmp_path: Path) -> None:
    key = "sEcReTkEy-" + "k" * 22
    fid = "fn_" + "0" * 24
    path = f"/fn/{fid}/{key}"
    with serving(own_redis.url, tmp_path / "serve.log", TASKORCH_REDIS_TIMEOUT_S="0.5") as srv:
        # A wrong key or id: 404, and the request in the access log.
        assert httpx.post(srv.url + path, json={"a": 1}).status_code == 404
        assert httpx.options(srv.url + path).status_code == 204
        assert httpx.get(srv.url + path).status_code == 405
        # A client that hangs up mid-body.
        sock = raw_socket(srv.url)
        sock.sendall(
            f"POST {path}?x=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{{}}".encode()
        )
        sock.close()
        wait_for(lambda: "api.client_disconnected" in srv.log(), what="the hang-up logged")
        # The outage handler: Redis frozen, then gone.
        with frozen(own_redis):
            assert httpx.post(srv.url + path, json={}, timeout=30).status_code == 503
        own_redis.stop(9)
        assert httpx.post(srv.url + path, json={}, timeout=30).status_code == 503
        # the access log line of a request is written once it is answered: wait for both 503s'
        wait_for(
            lambda: _answered(srv.log(), 503) >= 2, what="the 503s logged", ignore=(ValueError,)
        )
        log = srv.log()
    events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    names = {e.get("event") for e in events}
    assert {"http.request", "api.client_disconnected", "api.redis_unavailable"} <= names, log
    assert key not in log, "a trigger key reached the log:\n" + log
    assert f"/fn/{fid}/[redacted]" in log


def test_error_handlers_and_tracebacks_are_redacted_too() -> None:
    """The internal-error handler logs the path and a traceback; uvicorn logs its own; both go
    through the redaction (one structlog processor, one logging filter) as `taskorch serve`
    configures them."""
    code = """
import logging, structlog
from taskorch.logs import configure
configure(fmt="json", level="info")
log = structlog.get_logger("taskorch.api")
try:
    raise ValueError("bad request for /fn/fn_1/KEYKEY1 in a message")
except ValueError:
    log.exception("api.unexpected_error", path="/fn/fn_1/KEYKEY2", nested={"u": ["/fn/fn_1/KEYKEY3"]})
    logging.getLogger("uvicorn.error").error("Exception in ASGI application for %s", "/fn/fn_1/KEYKEY4", exc_info=True)
"""
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert p.returncode == 0, p.stderr
    assert "KEYKEY" not in p.stderr, p.stderr
    assert p.stderr.count("/fn/fn_1/[redacted]") == 5, p.stderr


async def test_a_token_whose_iat_rounds_into_the_next_second_is_accepted(api: Api) -> None:
    """mint_token rounds iat up to the millisecond; PyJWT compared its whole second with the
    time, so about 1 token in 2,000 was refused for its first moment. Future iat beyond a
    second's leeway is still refused."""
    import math

    def token(iat: float) -> dict[str, str]:
        claims = {"sub": "alice", "iat": iat, "exp": int(iat) + 600}
        return {"Authorization": "Bearer " + jwt.encode(claims, SECRET, algorithm="HS256")}

    while not 0.1 < math.ceil(time.time()) - time.time() < 0.9:
        await asyncio.sleep(0.05)
    ahead = float(math.ceil(time.time()))  # the next whole second, still ahead during the call
    ok = await api.http.get("/v1/tasks", headers=token(ahead))
    assert ok.status_code == 200, ok.text
    late = await api.http.get("/v1/tasks", headers=token(time.time() + 30))
    assert late.status_code == 401 and late.json()["error"]["code"] == "invalid_token", late.text
