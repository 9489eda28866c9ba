"""Signed calls: a target verifies every call with the Standard Webhooks library itself, before
and during a rotation, and a tampered call fails verification."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from taskorch import signing
from tests.conftest import SECRET, Api, WorkerProcs, until


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    ok_old: bool  # verified with the first secret
    ok_new: bool  # verified with the rotated-in secret (False while there is none)


@dataclass
class Verifier:
    """A target on 127.0.0.1 that verifies each call as a user's code would, with
    ``standardwebhooks``: it answers 401 to a call no secret it holds verifies, and 200
    (``/v/ok``) or 500 (``/v/fail``) to one that verifies."""

    server: TestServer | None = None
    old: str | None = None
    new: str | None = None
    calls: list[Received] = field(default_factory=list)

    def url(self, path: str) -> str:
        assert self.server is not None
        return str(self.server.make_url(path))

    @staticmethod
    def verifies(secret: str | None, body: bytes, headers: dict[str, str]) -> bool:
        if secret is None:
            return False
        try:
            Webhook(secret).verify(body, headers, json_parse=False)
        except WebhookVerificationError:
            return False
        return True

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = dict(request.headers)
        got = Received(
            request.path,
            headers,
            body,
            time.time(),
            self.verifies(self.old, body, headers),
            self.verifies(self.new, body, headers),
        )
        self.calls.append(got)
        if not (got.ok_old or got.ok_new):
            return web.json_response({"error": "bad signature"}, status=401)
        if request.path.endswith("/fail"):
            return web.json_response({"error": "no"}, status=500)
        return web.json_response({"ok": True})


@pytest.fixture
async def verifier() -> AsyncIterator[Verifier]:
    v = Verifier()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", v.handle)
    v.server = TestServer(app, host="127.0.0.1")
    await v.server.start_server()
    yield v
    await v.server.close()


def test_signatures_are_the_standard_webhooks_ones() -> None:
    """Our signature of a message is the library's, byte for byte; a body, id or timestamp
    changed afterwards fails its verification."""
    secret = signing.new_secret()
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    body = json.dumps({"hello": "wörld"}).encode()
    now = int(time.time())
    h = signing.headers([signing.secret_bytes(secret)], "tsk_0123", body, now)
    assert h["webhook-id"] == "tsk_0123" and h["webhook-timestamp"] == str(now)
    Webhook(secret).verify(body, h)  # raises if not
    for tampered, headers in [
        (body.replace(b"hello", b"hellO"), h),
        (body, {**h, "webhook-id": "tsk_0124"}),
        (body, {**h, "webhook-timestamp": str(now + 1)}),
    ]:
        with pytest.raises(WebhookVerificationError):
            Webhook(secret).verify(tampered, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(signing.new_secret()).verify(body, h)


async def test_signing_keys_made_on_first_use_per_owner_and_scoped(api: Api) -> None:
    r = await api.http.get("/v1/signing-keys", headers=api.auth())
    assert r.status_code == 200, r.text
    [key] = r.json()["keys"]
    assert key["secret"].startswith("whsec_") and key["used_until"] is None
    again = (await api.http.get("/v1/signing-keys", headers=api.auth())).json()
    assert again["keys"] == [key], "made once, then kept"
    bob = (await api.http.get("/v1/signing-keys", headers=api.auth("bob"))).json()
    assert bob["keys"][0]["secret"] != key["secret"], "each owner has its own"
    # read needs read, rotate needs write
    r = await api.http.get("/v1/signing-keys", headers=api.auth(scope="write"))
    assert r.status_code == 403
    r = await api.http.post("/v1/signing-keys/rotate", headers=api.auth(scope="read"))
    assert r.status_code == 403
    r = await api.http.get("/v1/signing-keys")
    assert r.status_code == 401


async def test_a_read_only_token_sees_key_ids_and_ages_not_secrets(api: Api) -> None:
    """Issue #19 item 9: a secret lets its holder forge the owner's calls, so only a token that
    may write sees it; a dashboard's read-only token (``scope`` or ``scp``) sees ids and ages."""
    now = int(time.time())
    scp_read = jwt.encode({"sub": "alice", "iat": now, "exp": now + 60, "scp": ["read"]}, SECRET)
    readers = [api.auth(scope="read"), {"Authorization": f"Bearer {scp_read}"}]
    writers = [api.auth(), api.auth(scope="read write")]
    for rotated in (False, True):
        if rotated:
            r = await api.http.post("/v1/signing-keys/rotate", headers=api.auth(scope="write"))
            assert r.status_code == 200, r.text
        seen = [await api.http.get("/v1/signing-keys", headers=h) for h in readers]
        for r in seen:
            assert r.status_code == 200, r.text
            assert "whsec_" not in r.text, "a read-only token was shown the secret"
        full = [(await api.http.get("/v1/signing-keys", headers=h)).json() for h in writers]
        assert full[0] == full[1]
        keys = full[0]["keys"]
        assert len(keys) == (2 if rotated else 1)
        for key in keys:
            assert key["secret"].startswith("whsec_") and "used_until" in key
            fingerprint = hashlib.sha256(key["secret"].encode()).hexdigest()[:16]
            assert key["id"] == "key_" + fingerprint
        for r in seen:
            assert r.json()["keys"] == [
                {"id": k["id"], "created_at": k["created_at"]} for k in keys
            ]


async def test_every_call_verifies_before_and_during_a_rotation(
    api: Api, verifier: Verifier, workers: WorkerProcs
) -> None:
    """Tasks (with a retry), an orchestration's steps, condition check and fallback are all
    verified by the target with the owner's secret. Then, while tasks keep firing every 67 ms,
    the owner rotates: every call verifies with the old secret still (the overlap), and every
    call that reached the target after the rotation answered verifies with the new one alone,
    as a target that switched at once would check."""
    workers.start()
    keys = (await api.http.get("/v1/signing-keys", headers=api.auth())).json()["keys"]
    verifier.old = keys[0]["secret"]
    await until(lambda: "worker.started" in workers.logs(), timeout_s=60)

    task = await api.create(
        {"url": verifier.url("/v/fail"), "retries": 1, "retry_delay": 0.1, "payload": {"n": 1}}
    )
    get = await api.create({"url": verifier.url("/v/get"), "method": "GET"})
    r = await api.http.post(
        "/v1/orchestrations",
        json={
            "steps": [
                {"url": verifier.url("/v/step0")},
                {"url": verifier.url("/v/fail"), "retries": 0},
            ],
            "condition": {"url": verifier.url("/v/check")},
            "fallback": {"url": verifier.url("/v/fallback")},
        },
        headers=api.auth(),
    )
    assert r.status_code == 201, r.text
    orc = r.json()
    await api.wait_status(task["id"], "failed")
    assert (await api.wait_status(get["id"], "succeeded"))["attempts"][0]["status_code"] == 200
    await api.wait_status(orc["id"], "failed", kind="orchestrations")
    await until(lambda: any(c.path == "/v/fallback" for c in verifier.calls))
    paths = sorted(c.path for c in verifier.calls)
    assert paths == sorted(
        ["/v/fail", "/v/fail", "/v/get", "/v/step0", "/v/check", "/v/fail", "/v/fallback"]
    ), paths
    assert all(c.ok_old for c in verifier.calls), [c.headers for c in verifier.calls]
    ids = {c.path: c.headers["webhook-id"] for c in verifier.calls}
    assert ids["/v/get"] == get["id"]
    assert ids["/v/check"] == f"{orc['id']}.check.0.1"
    retried = [c for c in verifier.calls if c.headers["webhook-id"] == task["id"]]
    assert [c.headers["X-Taskorch-Attempt"] for c in retried] == ["1", "2"]

    # Tasks every 67 ms over 4 s from a second from now, and the rotation in the middle of them.
    verifier.calls.clear()
    n, span = 60, 4.0
    start = time.time() + 1.0
    auth = api.auth()
    for i in range(n):
        at = start + i * span / n
        body = {"url": verifier.url(f"/v/ok/{i}"), "delay": at - time.time(), "payload": {"ok": i}}
        r = await api.http.post("/v1/tasks", json=body, headers=auth)
        assert r.status_code == 201
    while time.time() < start + 0.6:
        await asyncio.sleep(0.02)
    sent = time.time()
    r = await api.http.post("/v1/signing-keys/rotate", headers=api.auth())
    answered = time.time()
    assert r.status_code == 200, r.text
    new, old = r.json()["keys"]
    assert old["secret"] == verifier.old and new["secret"] != old["secret"]
    assert new["used_until"] is None
    used_until = old["used_until"]
    assert abs(_epoch(used_until) - (_epoch(new["created_at"]) + 24 * 3600)) < 1
    verifier.new = new["secret"]  # the target switches at once
    await until(lambda: len(verifier.calls) >= n, timeout_s=30)
    before = [c for c in verifier.calls if c.at < sent]
    after = [c for c in verifier.calls if c.at > answered]
    assert len(before) >= 3 and len(after) >= 10, (len(before), len(after))
    assert all(c.ok_old for c in verifier.calls), "the old secret signs during the overlap"
    late = [(c.path, round(c.at - answered, 3)) for c in after if not c.ok_new]
    assert not late, f"calls after the rotation answered without the new signature: {late}"
    assert all(len(c.headers["webhook-signature"].split(" ")) == 2 for c in after)
    assert all(len(c.headers["webhook-signature"].split(" ")) == 1 for c in before)
    listed = (await api.http.get("/v1/signing-keys", headers=api.auth())).json()["keys"]
    assert [k["secret"] for k in listed] == [new["secret"], old["secret"]]

    # A tampered call fails verification with either secret.
    call = after[-1]
    for secret in (verifier.old, verifier.new):
        Webhook(secret).verify(call.body, call.headers)
        with pytest.raises(WebhookVerificationError):
            Webhook(secret).verify(call.body.replace(b"ok", b"ko"), call.headers)


def _epoch(text: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(text).timestamp()


NODE_VERIFY = Path(__file__).resolve().parent.parent / "README.md"


def _readme_node_snippet() -> str:
    text = NODE_VERIFY.read_text()
    start = text.index("```js\n// verify-webhook.js") + len("```js\n")
    return text[start : text.index("```", start)]


def _readme_python_snippet() -> str:
    text = NODE_VERIFY.read_text()
    start = text.index("```python\n# verify_webhook.py") + len("```python\n")
    return text[start : text.index("```", start)]


async def test_the_readmes_python_verification_accepts_a_real_call(
    api: Api, verifier: Verifier, workers: WorkerProcs
) -> None:
    """The README's Python snippet, run as written, accepts a real signed call and refuses it
    tampered."""
    workers.start()
    secret = (await api.http.get("/v1/signing-keys", headers=api.auth())).json()["keys"][0]
    verifier.old = secret["secret"]
    task = await api.create({"url": verifier.url("/v/readme"), "payload": {"order": 42}})
    await api.wait_status(task["id"], "succeeded", timeout_s=60)
    [call] = verifier.calls
    scope: dict[str, object] = {}
    exec(compile(_readme_python_snippet(), "README.md", "exec"), scope)
    verify = scope["verify"]
    assert verify(call.body, call.headers, verifier.old) == {"order": 42}  # type: ignore[operator]
    with pytest.raises(WebhookVerificationError):
        verify(call.body.replace(b"42", b"43"), call.headers, verifier.old)  # type: ignore[operator]


def _node_modules(tmp: Path) -> Path | None:
    """``standardwebhooks`` from npm in a folder of its own, or None where npm cannot get it."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        return None
    try:
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--silent", "standardwebhooks@1"],
            cwd=tmp,
            check=True,
            capture_output=True,
            timeout=120,
        )
    except (subprocess.SubprocessError, OSError):
        return None
    return tmp


async def test_the_readmes_node_verification_accepts_a_real_call(
    api: Api, verifier: Verifier, workers: WorkerProcs, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The README's Node snippet, with npm's ``standardwebhooks``, accepts a real signed call
    and refuses it tampered (skipped where node or that package cannot be had)."""
    folder = await asyncio.to_thread(_node_modules, tmp_path_factory.mktemp("node-verify"))
    if folder is None:
        pytest.skip("node and npm's standardwebhooks are needed")
    workers.start()
    secret = (await api.http.get("/v1/signing-keys", headers=api.auth())).json()["keys"][0]
    verifier.old = secret["secret"]
    task = await api.create({"url": verifier.url("/v/node"), "payload": {"order": 7}})
    await api.wait_status(task["id"], "succeeded", timeout_s=60)
    [call] = verifier.calls
    (folder / "verify-webhook.js").write_text(_readme_node_snippet())
    runner = folder / "run.js"
    runner.write_text(
        "const { verify } = require('./verify-webhook.js');\n"
        "const [body, headers, secret] = JSON.parse(require('fs').readFileSync(0, 'utf8'));\n"
        "try { console.log(JSON.stringify(verify(body, headers, secret))); }\n"
        "catch (e) { console.log('REFUSED ' + e.message); }\n"
    )

    def run(body: bytes) -> str:
        data = json.dumps([body.decode(), call.headers, verifier.old])
        out = subprocess.run(
            ["node", str(runner)], input=data, capture_output=True, text=True, timeout=30
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    assert json.loads(run(call.body)) == {"order": 7}
    assert run(call.body.replace(b"7", b"8")).startswith("REFUSED")
