"""Functions through the API: build, trigger URL, schedule-on-create, errors, isolation."""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from taskorch.api import create_app
from taskorch.auth import mint_token
from taskorch.functions import Functions, local_runtime
from taskorch.models import FunctionCreate
from taskorch.settings import Settings
from taskorch.store import Store, connect
from tests.conftest import WorkerProcs, make_settings
from tests.helpers import free_port, live_api, until

PY = """
import os

def handler(event, context):
    if event.get("fail"):
        raise ValueError("boom: " + event["fail"])
    if event.get("sleep"):
        import time
        time.sleep(event["sleep"])
    return {"hello": event.get("name"), "fn": context.function_name}
"""
NODE = """
exports.handler = async (event, context) => ({greeting: `hi ${event.name}`, runtime: "node"});
"""
JAVA = """
import java.util.Map;
import java.util.HashMap;

public class Hello {
    public Object handle(Map<String, Object> event) {
        Map<String, Object> out = new HashMap<>();
        out.put("greeting", "hello " + event.get("name"));
        out.put("runtime", "java");
        return out;
    }
}
"""


class Live:
    def __init__(self, url: str, settings: Settings) -> None:
        self.url = url
        self.settings = settings
        self.http = httpx.AsyncClient(base_url=url, timeout=60)

    def auth(self, sub: str = "alice") -> dict[str, str]:
        return {"Authorization": f"Bearer {mint_token(self.settings, sub)}"}

    async def create(self, body: dict[str, Any], sub: str = "alice") -> dict[str, Any]:
        r = await self.http.post("/v1/functions", json=body, headers=self.auth(sub))
        assert r.status_code == 201, r.text
        return r.json()  # type: ignore[no-any-return]

    async def settle(self, fid: str, sub: str = "alice", timeout_s: float = 120) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            fn = (await self.http.get(f"/v1/functions/{fid}", headers=self.auth(sub))).json()
            if fn["status"] != "building":
                return fn  # type: ignore[no-any-return]
            assert asyncio.get_running_loop().time() < deadline, fn
            await asyncio.sleep(0.1)

    async def call(self, url: str, event: Any) -> httpx.Response:
        return await self.http.post(url, json=event)


@pytest.fixture
async def live(redis_url: str) -> AsyncIterator[Live]:
    folder = Path(tempfile.mkdtemp(prefix="taskorch-fn-api-", dir="/tmp"))
    folder.chmod(0o711)
    port = free_port()
    settings = make_settings(
        redis_url,
        port=port,
        public_url=f"http://127.0.0.1:{port}",
        functions_dir=str(folder),
        function_timeout_s=2.0,
    )
    async with live_api(settings) as url:
        live = Live(url, settings)
        yield live
        await live.http.aclose()
    shutil.rmtree(folder, ignore_errors=True)


async def test_python_function_builds_and_answers_through_its_url(live: Live) -> None:
    fn = await live.create({"name": "greeter", "runtime": "python", "code": PY})
    assert fn["id"].startswith("fn_") and fn["status"] == "building" and fn["url"] is None
    fn = await live.settle(fn["id"])
    assert fn["status"] == "ready" and fn["error"] is None, fn
    assert fn["url"].startswith(live.url + "/fn/" + fn["id"] + "/")
    r = await live.call(fn["url"], {"name": "ada"})
    assert r.status_code == 200 and r.json() == {"hello": "ada", "fn": fn["id"]}
    listed = (await live.http.get("/v1/functions", headers=live.auth())).json()
    assert [f["id"] for f in listed["items"]] == [fn["id"]]


@pytest.mark.skipif(
    shutil.which("node") is None, reason="node is not installed (scripts/test installs it)"
)
async def test_node_function(live: Live) -> None:
    fn = await live.settle(
        (await live.create({"name": "n", "runtime": "node", "code": NODE}))["id"]
    )
    assert fn["status"] == "ready", fn
    r = await live.call(fn["url"], {"name": "bo"})
    assert r.json() == {"greeting": "hi bo", "runtime": "node"}


@pytest.mark.skipif(
    shutil.which("javac") is None, reason="javac is not installed (scripts/test installs a JDK)"
)
async def test_java_function(live: Live) -> None:
    fn = await live.create(
        {"name": "j", "runtime": "java", "code": JAVA, "handler": "Hello::handle"}
    )
    fn = await live.settle(fn["id"])
    assert fn["status"] == "ready", fn
    r = await live.call(fn["url"], {"name": "cy"})
    assert r.json() == {"greeting": "hello cy", "runtime": "java"}


async def test_multipart_upload(live: Live) -> None:
    r = await live.http.post(
        "/v1/functions",
        data={"name": "uploaded", "runtime": "python", "schedule": ""},
        files={"code": ("handler.py", PY.encode(), "text/x-python")},
        headers=live.auth(),
    )
    assert r.status_code == 201 and r.json()["task_id"] is None  # an empty field: no schedule
    r = await live.http.post(
        "/v1/functions",
        data={"name": "uploaded", "runtime": "python", "schedule": "{not json"},
        files={"code": ("handler.py", PY.encode(), "text/x-python")},
        headers=live.auth(),
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = await live.http.post(
        "/v1/functions",
        data={"name": "uploaded", "runtime": "python"},
        files={"code": ("handler.py", PY.encode(), "text/x-python")},
        headers=live.auth(),
    )
    assert r.status_code == 201, r.text
    fn = await live.settle(r.json()["id"])
    assert (await live.call(fn["url"], {"name": "up"})).json()["hello"] == "up"


async def test_schedule_on_create_fires_and_keeps_the_answer(
    live: Live, workers: WorkerProcs
) -> None:
    workers.start(TASKORCH_PUBLIC_URL=live.url)
    fn = await live.create(
        {
            "name": "s",
            "runtime": "python",
            "code": PY,
            "schedule": {"payload": {"name": "cron"}, "delay": 0.5},
        }
    )
    fn = await live.settle(fn["id"])
    assert fn["status"] == "ready" and fn["task_id"], fn
    for _ in range(200):
        task = (await live.http.get(f"/v1/tasks/{fn['task_id']}", headers=live.auth())).json()
        if task["status"] == "succeeded":
            break
        await asyncio.sleep(0.05)
    assert task["status"] == "succeeded" and task["url"] == fn["url"]
    assert '"hello":"cron"' in task["attempts"][0]["response_body"].replace(" ", "")


async def test_the_schedule_key_cannot_be_claimed_by_the_owner_first(live: Live) -> None:
    """A task the owner made with the Idempotency-Key the schedule used to take is not the
    function's scheduled task (issue 8, item 15)."""
    code = PY + "\nimport time\ntime.sleep(1.0)  # a build long enough to race\n"
    fn = await live.create(
        {"name": "s", "runtime": "python", "code": code, "schedule": {"delay": 3600}}
    )
    decoy = await live.http.post(
        "/v1/tasks",
        json={"url": "https://example.com/decoy", "delay": 3600},
        headers={**live.auth(), "Idempotency-Key": f"function:{fn['id']}"},
    )
    assert decoy.status_code == 201, decoy.text

    fn = await live.settle(fn["id"])

    assert fn["status"] == "ready" and fn["task_id"], fn
    assert fn["task_id"] != decoy.json()["id"]
    task = (await live.http.get(f"/v1/tasks/{fn['task_id']}", headers=live.auth())).json()
    assert task["url"] == fn["url"]


async def test_build_errors_leave_the_function_failed_with_the_message(live: Live) -> None:
    bad = await live.settle(
        (await live.create({"name": "b", "runtime": "python", "code": "def handler(:\n"}))["id"]
    )
    assert bad["status"] == "failed" and "SyntaxError" in bad["error"] and bad["url"] is None
    missing = await live.settle(
        (await live.create({"name": "m", "runtime": "python", "code": "x = 1\n"}))["id"]
    )
    assert missing["status"] == "failed" and "handler" in missing["error"]
    if shutil.which("javac"):
        java = await live.create(
            {
                "name": "jb",
                "runtime": "java",
                "handler": "Hello::handle",
                "code": "public class Hello { int x = ; }",
            }
        )
        java = await live.settle(java["id"])
        assert java["status"] == "failed" and "error:" in java["error"], java


async def test_runtime_errors_500_timeout_504_wrong_key_404(live: Live) -> None:
    fn = await live.settle(
        (await live.create({"name": "e", "runtime": "python", "code": PY}))["id"]
    )
    r = await live.call(fn["url"], {"fail": "no cheese"})
    assert r.status_code == 500 and r.json()["error"]["code"] == "function_error"
    assert "ValueError: boom: no cheese" in r.json()["error"]["message"]
    r = await live.call(fn["url"], {"sleep": 5})
    assert r.status_code == 504 and r.json()["error"]["code"] == "function_timeout"
    assert (await live.call(fn["url"], {"name": "again"})).status_code == 200  # recovers
    assert (await live.call(fn["url"][:-3] + "xyz", {})).status_code == 404
    assert (await live.call(f"/fn/fn_nope/{fn['url'].rsplit('/', 1)[1]}", {})).status_code == 404
    r = await live.http.post(fn["url"], content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


async def test_owner_isolation_and_delete(live: Live) -> None:
    fn = await live.settle(
        (await live.create({"name": "mine", "runtime": "python", "code": PY}))["id"]
    )
    for method in ("GET", "DELETE"):
        r = await live.http.request(method, f"/v1/functions/{fn['id']}", headers=live.auth("bob"))
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert (await live.http.get("/v1/functions", headers=live.auth("bob"))).json()["items"] == []
    r = await live.http.delete(f"/v1/functions/{fn['id']}", headers=live.auth())
    assert r.status_code == 204
    assert (await live.call(fn["url"], {})).status_code == 404
    assert (
        await live.http.get(f"/v1/functions/{fn['id']}", headers=live.auth())
    ).status_code == 404


async def test_the_code_route_answers_the_source_as_uploaded_to_its_owner_only(
    live: Live,
) -> None:
    """GET /v1/functions/{id}/code (issue #19, for the status page's function view)."""
    fn = await live.settle(
        (await live.create({"name": "mine", "runtime": "python", "code": PY}))["id"]
    )
    path = f"/v1/functions/{fn['id']}/code"
    r = await live.http.get(path, headers=live.auth())
    assert r.status_code == 200, r.text
    assert r.json() == {
        "id": fn["id"],
        "runtime": "python",
        "handler": "handler",
        "code": PY,
        "requirements": None,
    }
    r = await live.http.get(path, headers=live.auth("bob"))
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert (
        await live.http.delete(f"/v1/functions/{fn['id']}", headers=live.auth())
    ).status_code == 204
    assert (await live.http.get(path, headers=live.auth())).status_code == 404


async def test_validation(live: Live) -> None:
    r = await live.http.post(
        "/v1/functions", json={"name": "x", "runtime": "cobol", "code": ""}, headers=live.auth()
    )
    fields = {d["field"] for d in r.json()["error"]["details"]}
    assert r.status_code == 422 and {"runtime", "code"} <= fields
    r = await live.http.post(
        "/v1/functions",
        json={"name": "x", "runtime": "java", "code": "class A {}"},
        headers=live.auth(),
    )
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "handler"
    r = await live.http.post(
        "/v1/functions",
        json={"name": "x", "runtime": "python", "code": "x", "provider": "aws"},
        headers=live.auth(),
    )
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "provider"
    assert "TASKORCH_AWS_REGION" in r.json()["error"]["message"]


async def test_aws_function_without_the_aws_extra_names_it(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An API without boto3 refuses provider=aws saying what to install, not what to set."""
    monkeypatch.setitem(sys.modules, "boto3", None)  # as if `pip install taskorch` only
    r = await live.http.post(
        "/v1/functions",
        json={"name": "x", "runtime": "python", "code": "x", "provider": "aws"},
        headers=live.auth(),
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["details"] == [
        {
            "field": "provider",
            "message": "the aws provider needs boto3: pip install 'taskorch[aws]' (not installed on this API)",
        }
    ]


async def test_aws_provider_through_the_api_with_moto(redis_url: str, role_arn: str) -> None:
    """provider=aws deploys to Lambda (moto) and returns its function URL; DELETE removes both."""
    import boto3

    from tests.conftest import Api, _WithState

    settings = make_settings(redis_url, aws_region="us-east-1", aws_lambda_role=role_arn)
    app = create_app(settings)
    async with app.router.lifespan_context(app) as state:
        transport = httpx.ASGITransport(app=_WithState(app, state))  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            api = Api(http, settings)
            r = await http.post(
                "/v1/functions",
                headers=api.auth(),
                json={"name": "lam", "runtime": "python", "code": PY, "provider": "aws"},
            )
            assert r.status_code == 201 and r.json()["provider"] == "aws"
            fid = r.json()["id"]
            for _ in range(200):
                fn = (await http.get(f"/v1/functions/{fid}", headers=api.auth())).json()
                if fn["status"] != "building":
                    break
                await asyncio.sleep(0.05)
            assert fn["status"] == "ready", fn
            assert fn["url"].startswith("https://") and ".lambda-url.us-east-1.on." in fn["url"]
            lam = boto3.client("lambda", region_name="us-east-1")
            name = lam.list_functions()["Functions"][0]["FunctionName"]
            assert lam.get_function_url_config(FunctionName=name)["FunctionUrl"] == fn["url"]
            assert (
                await http.delete(f"/v1/functions/{fid}", headers=api.auth())
            ).status_code == 204
            assert lam.list_functions()["Functions"] == []


async def test_trigger_urls_answer_cross_origin_calls(live: Live) -> None:
    fn = await live.settle(
        (await live.create({"name": "cors", "runtime": "python", "code": PY}))["id"]
    )
    pre = await live.http.options(
        fn["url"],
        headers={"Origin": "https://elsewhere.example", "Access-Control-Request-Method": "POST"},
    )
    assert pre.status_code == 204 and pre.headers["access-control-allow-origin"] == "*"
    ok = await live.call(fn["url"], {"name": "x"})
    assert ok.headers["access-control-allow-origin"] == "*"
    bad = await live.call(fn["url"] + "x", {})
    assert bad.status_code == 404 and bad.headers["access-control-allow-origin"] == "*"


async def test_a_resume_at_start_does_not_build_a_new_function_twice(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The resume that a starting API runs must not pick up a function created a moment later
    and build (for AWS: deploy) it a second time."""
    folder = Path(tempfile.mkdtemp(prefix="taskorch-fn-resume-", dir="/tmp"))
    settings = make_settings(redis_url, functions_dir=str(folder))
    runtime = local_runtime(settings)
    assert runtime is not None
    builds: list[str] = []
    real_build = runtime.build

    async def counting_build(function_id: str, **kw: Any) -> None:
        builds.append(function_id)
        await real_build(function_id, **kw)

    monkeypatch.setattr(runtime, "build", counting_build)
    client = connect(redis_url)
    fns = Functions(
        client,
        Store(client),
        public_url="http://x",
        default_provider="local",
        runtime=runtime,
        aws=None,
    )
    try:
        fn = await fns.create("alice", FunctionCreate(name="f", runtime="python", code=PY))
        fns.resume()  # as a second API process starting now would, in the same process
        for _ in range(400):
            if (await fns.get("alice", fn.id)).status != "building":
                break
            await asyncio.sleep(0.05)
        # the resume and every build it could start have ended (a second build would be one)
        await until(lambda: not fns._tasks, what="the resume ended")
        assert builds == [fn.id]
    finally:
        await fns.close()
        await runtime.close()
        await client.aclose()
        shutil.rmtree(folder, ignore_errors=True)
