"""Tests for the AWS Lambda provider: packaging with real pip and javac, deploys against moto."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from taskorch.functions.aws import AwsProviderError, AwsSettings, LambdaProvider, package
from tests.conftest import AWS_REGION as REGION

PY_CODE = "def handler(event, context):\n    return {'echo': event}\n"
NODE_CODE = "exports.handler = async (event, context) => ({ echo: event });\n"
JAVA_CODE = """\
import java.util.Map;

// A comment that mentions public class Decoy must not confuse the parser.
public class Hello {
    public Object handle(Map<String, Object> event) {
        return Map.of("hello", event.getOrDefault("name", "world"));
    }
}
"""
URL_PATTERN = re.compile(r"https://[a-z0-9]+\.lambda-url\.us-east-1\.on\.aws/?")


def _names(zip_bytes: bytes) -> list[str]:
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as archive:
        return sorted(archive.namelist())


def _read(zip_bytes: bytes, name: str) -> bytes:
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as archive:
        return archive.read(name)


@pytest.fixture
def lambda_client(aws: None) -> Any:
    return boto3.client("lambda", region_name=REGION)


@pytest.fixture
def provider(role_arn: str, lambda_client: Any) -> LambdaProvider:
    return LambdaProvider(AwsSettings(region=REGION, role_arn=role_arn))


# --- package -------------------------------------------------------------------------------


def test_package_python_holds_handler() -> None:
    zip_bytes, runtime, handler = package(runtime="python", code=PY_CODE, handler="handler")

    assert _names(zip_bytes) == ["handler.py"]
    assert _read(zip_bytes, "handler.py").decode() == PY_CODE
    assert (runtime, handler) == ("python3.12", "handler.handler")


def test_package_python_installs_requirements(tmp_path: Path) -> None:
    code = "import six\n\ndef main(event, context):\n    return six.ensure_str(b'ok')\n"

    zip_bytes, _, handler = package(
        runtime="python", code=code, handler="main", requirements="# helpers\nsix>=1.16\n"
    )

    names = _names(zip_bytes)
    assert "six.py" in names and "handler.py" in names
    assert not any("__pycache__" in name for name in names)
    assert "requirements.txt" not in names
    assert handler == "handler.main"
    # What Lambda will do: import the handler with the zip root on the path, then call it.
    archive = tmp_path / "function.zip"
    archive.write_bytes(zip_bytes)
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); import handler; print(handler.main({}, 0))"
    )
    run = subprocess.run(
        [sys.executable, "-c", script, str(archive)],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    assert run.stdout.strip() == "ok"


def test_package_python_reports_pip_failure() -> None:
    with pytest.raises(AwsProviderError) as caught:
        package(
            runtime="python",
            code=PY_CODE,
            handler="handler",
            requirements="taskorch-no-such-package-xyz==1.0\n",
        )

    message = str(caught.value)
    assert message.startswith("pip install of the requirements failed")
    assert "No matching distribution found for taskorch-no-such-package-xyz" in message


@pytest.mark.parametrize(
    "line",
    [
        "-r /etc/passwd",
        "--index-url https://example.com/simple",
        "--no-binary :all:",
        "six @ https://example.com/six.whl",
        "./local-package",
        "/srv/package",
        "git+https://example.com/repo.git",
        "tmp/../../fn_other/evil",
        "evil",
        "six==1.16; python_version > '3'",
    ],
)
def test_package_python_rejects_requirements_beyond_names(line: str) -> None:
    with pytest.raises(AwsProviderError, match="is not allowed"):
        package(
            runtime="python", code=PY_CODE, handler="handler", requirements=f"six==1.16.0\n{line}\n"
        )


def test_package_node_commonjs_and_esm() -> None:
    zip_bytes, runtime, handler = package(runtime="node", code=NODE_CODE, handler="handler")
    assert _names(zip_bytes) == ["index.js"]
    assert _read(zip_bytes, "index.js").decode() == NODE_CODE
    assert (runtime, handler) == ("nodejs22.x", "index.handler")

    esm = "export const run = async (event) => event;\n"
    zip_bytes, _, handler = package(runtime="node", code=esm, handler="run")
    # Lambda loads ES modules only from .mjs files; the handler string stays index.<name>.
    assert _names(zip_bytes) == ["index.mjs"]
    assert handler == "index.run"


def test_package_java_compiles_class_at_zip_root() -> None:
    zip_bytes, runtime, handler = package(runtime="java", code=JAVA_CODE, handler="Hello::handle")

    assert _names(zip_bytes) == ["Hello.class"]
    class_file = _read(zip_bytes, "Hello.class")
    assert class_file[:4] == b"\xca\xfe\xba\xbe"
    assert int.from_bytes(class_file[6:8], "big") == 61  # Java 17 class file version
    assert (runtime, handler) == ("java21", "Hello::handle")


def test_package_java_prefixes_the_declared_package() -> None:
    code = "package com.example.fn;\n\n" + JAVA_CODE

    zip_bytes, _, handler = package(runtime="java", code=code, handler="Hello::handle")

    assert _names(zip_bytes) == ["com/example/fn/Hello.class"]
    assert handler == "com.example.fn.Hello::handle"
    # A handler that already names the package is kept as it is.
    _, _, handler = package(runtime="java", code=code, handler="com.example.fn.Hello::handle")
    assert handler == "com.example.fn.Hello::handle"


def test_package_java_compiler_error_is_reported() -> None:
    broken = "public class Broken {\n    int x = ;\n}\n"

    with pytest.raises(AwsProviderError) as caught:
        package(runtime="java", code=broken, handler="Broken::handle")

    message = str(caught.value)
    assert message.startswith("javac failed")
    assert "Broken.java:2: error: illegal start of expression" in message
    assert "taskorch-build-" not in message  # no temporary paths in what the user sees


def test_package_java_handler_class_must_exist() -> None:
    with pytest.raises(AwsProviderError, match=r"handler class Other is not in the source"):
        package(runtime="java", code=JAVA_CODE, handler="Other::handle")


@pytest.mark.parametrize(
    ("runtime", "handler", "match"),
    [
        ("ruby", "handler", "runtime 'ruby' is not supported"),
        ("python", "handler.main", "must be a Python function name"),
        ("python", "$handler", "must be a Python function name"),
        ("node", "", "must be the name of an export"),
        ("java", "Hello.handle", "must look like Class::method"),
    ],
)
def test_package_rejects_bad_input(runtime: str, handler: str, match: str) -> None:
    with pytest.raises(AwsProviderError, match=match):
        package(runtime=runtime, code=PY_CODE, handler=handler)


def test_package_requirements_are_python_only() -> None:
    with pytest.raises(AwsProviderError, match="python functions only"):
        package(runtime="node", code=NODE_CODE, handler="handler", requirements="six==1.16.0")


# --- settings and names ----------------------------------------------------------------------


def test_settings_from_env() -> None:
    role = "arn:aws:iam::123456789012:role/taskorch"
    settings = AwsSettings.from_env(
        {"AWS_DEFAULT_REGION": "eu-west-1", "TASKORCH_AWS_LAMBDA_ROLE": role}
    )
    assert settings == AwsSettings(region="eu-west-1", role_arn=role)

    settings = AwsSettings.from_env(
        {
            "TASKORCH_AWS_REGION": "eu-central-1",
            "AWS_DEFAULT_REGION": "eu-west-1",
            "TASKORCH_AWS_LAMBDA_ROLE": role,
            "TASKORCH_AWS_ENDPOINT_URL": "http://localhost:4566",
        }
    )
    assert settings.region == "eu-central-1"
    assert settings.endpoint_url == "http://localhost:4566"


@pytest.mark.parametrize(
    ("environ", "match"),
    [
        ({"TASKORCH_AWS_LAMBDA_ROLE": "arn:aws:iam::1:role/r"}, "'TASKORCH_AWS_REGION' is missing"),
        ({"AWS_DEFAULT_REGION": "eu-west-1"}, "'TASKORCH_AWS_LAMBDA_ROLE' is missing"),
        (
            {"AWS_DEFAULT_REGION": "eu-west-1", "TASKORCH_AWS_LAMBDA_ROLE": "taskorch"},
            "not a role ARN",
        ),
    ],
)
def test_settings_from_env_names_what_is_missing(environ: dict[str, str], match: str) -> None:
    with pytest.raises(AwsProviderError, match=match):
        AwsSettings.from_env(environ)


def test_function_name_is_lambda_safe(aws_env: None) -> None:
    provider = LambdaProvider(AwsSettings(region=REGION, role_arn="arn:aws:iam::1:role/r"))

    assert provider.function_name("fn_01H-ab") == "taskorch-fn_01H-ab"
    assert provider.function_name("a/b c.d") == "taskorch-a-b-c-d"
    first, second = provider.function_name("x" * 100 + "1"), provider.function_name("x" * 100 + "2")
    assert len(first) == len(second) == 64
    assert first != second
    assert re.fullmatch(r"[A-Za-z0-9_-]+", first)


# --- deploy and remove (moto) ------------------------------------------------------------------


async def test_deploy_returns_public_function_url(
    provider: LambdaProvider, lambda_client: Any
) -> None:
    url = await provider.deploy(
        "fn1", runtime="python", code=PY_CODE, handler="handler", requirements=None
    )

    assert URL_PATTERN.fullmatch(url)
    config = lambda_client.get_function(FunctionName="taskorch-fn1")["Configuration"]
    assert (config["Runtime"], config["Handler"]) == ("python3.12", "handler.handler")
    assert config["Timeout"] == 30 and config["MemorySize"] == 512
    url_config = lambda_client.get_function_url_config(FunctionName="taskorch-fn1")
    assert (url_config["FunctionUrl"], url_config["AuthType"]) == (url, "NONE")
    policy = json.loads(lambda_client.get_policy(FunctionName="taskorch-fn1")["Policy"])
    statements = {s["Action"]: s for s in policy["Statement"]}
    assert statements["lambda:InvokeFunctionUrl"]["Principal"] == "*"
    assert statements["lambda:InvokeFunctionUrl"]["FunctionUrlAuthType"] == "NONE"
    assert statements["lambda:InvokeFunction"]["InvokedViaFunctionUrl"] is True


async def test_deploy_java_sets_runtime_and_handler(
    provider: LambdaProvider, lambda_client: Any
) -> None:
    await provider.deploy(
        "fn-java", runtime="java", code=JAVA_CODE, handler="Hello::handle", requirements=None
    )

    config = lambda_client.get_function(FunctionName="taskorch-fn-java")["Configuration"]
    assert (config["Runtime"], config["Handler"]) == ("java21", "Hello::handle")


async def test_deploy_again_updates_the_function(
    provider: LambdaProvider, lambda_client: Any
) -> None:
    url = await provider.deploy(
        "fn2", runtime="python", code=PY_CODE, handler="handler", requirements=None
    )
    before = lambda_client.get_function(FunctionName="taskorch-fn2")["Configuration"]

    again = await provider.deploy(
        "fn2", runtime="node", code=NODE_CODE, handler="handler", requirements=None
    )

    after = lambda_client.get_function(FunctionName="taskorch-fn2")["Configuration"]
    assert again == url
    assert (after["Runtime"], after["Handler"]) == ("nodejs22.x", "index.handler")
    assert after["CodeSha256"] != before["CodeSha256"]


async def test_remove_deletes_url_and_function(
    provider: LambdaProvider, lambda_client: Any
) -> None:
    await provider.deploy(
        "fn3", runtime="node", code=NODE_CODE, handler="handler", requirements=None
    )

    await provider.remove("fn3")

    for call in (lambda_client.get_function, lambda_client.get_function_url_config):
        with pytest.raises(ClientError) as caught:
            call(FunctionName="taskorch-fn3")
        assert caught.value.response["Error"]["Code"] == "ResourceNotFoundException"
    await provider.remove("fn3")  # already gone: fine


async def test_deploy_build_failure_creates_nothing(
    provider: LambdaProvider, lambda_client: Any
) -> None:
    with pytest.raises(AwsProviderError) as caught:
        await provider.deploy(
            "fn4",
            runtime="java",
            code="public class Broken { int x = ; }",
            handler="Broken::handle",
            requirements=None,
        )

    assert "error: illegal start of expression" in str(caught.value)
    assert caught.value.function_id == "fn4"
    assert lambda_client.list_functions()["Functions"] == []


async def test_deploy_with_bad_role_names_the_setting(role_arn: str, lambda_client: Any) -> None:
    missing_role = role_arn.rsplit("/", 1)[0] + "/no-such-role"
    provider = LambdaProvider(AwsSettings(region=REGION, role_arn=missing_role))

    with pytest.raises(AwsProviderError) as caught:
        await provider.deploy(
            "fn5", runtime="python", code=PY_CODE, handler="handler", requirements=None
        )

    message = str(caught.value)
    assert "could not deploy Lambda function taskorch-fn5" in message
    assert f"check TASKORCH_AWS_LAMBDA_ROLE ({missing_role})" in message
    assert caught.value.aws_code == "InvalidParameterValueException"
    assert caught.value.function_id == "fn5"


# --- errors AWS gives that moto does not (botocore's Stubber) --------------------------------


@pytest.mark.parametrize(
    ("code", "hint"),
    [
        ("UnrecognizedClientException", "check the AWS credentials"),
        ("AccessDeniedException", "iam:PassRole on TASKORCH_AWS_LAMBDA_ROLE"),
    ],
)
async def test_deploy_rejected_credentials_say_what_to_check(
    aws_env: None, code: str, hint: str
) -> None:
    client = boto3.client("lambda", region_name=REGION)
    provider = LambdaProvider(
        AwsSettings(region=REGION, role_arn="arn:aws:iam::123456789012:role/r"), client=client
    )
    with Stubber(client) as stubber:
        stubber.add_client_error(
            "create_function",
            service_error_code=code,
            service_message="denied",
            http_status_code=403,
        )
        with pytest.raises(AwsProviderError) as caught:
            await provider.deploy(
                "fn6", runtime="python", code=PY_CODE, handler="handler", requirements=None
            )

    assert hint in str(caught.value)
    assert caught.value.aws_code == code


async def test_deploy_reports_a_function_that_fails_to_start(aws_env: None) -> None:
    client = boto3.client("lambda", region_name=REGION)
    provider = LambdaProvider(
        AwsSettings(region=REGION, role_arn="arn:aws:iam::123456789012:role/r"), client=client
    )
    with Stubber(client) as stubber:
        stubber.add_response("create_function", {"State": "Pending"})
        stubber.add_response(
            "get_function",
            {
                "Configuration": {
                    "State": "Failed",
                    "StateReason": "Lambda was unable to configure access to your network",
                    "StateReasonCode": "InvalidSubnet",
                }
            },
        )
        with pytest.raises(AwsProviderError) as caught:
            await provider.deploy(
                "fn7", runtime="python", code=PY_CODE, handler="handler", requirements=None
            )

    assert "did not become ready" in str(caught.value)
    assert "unable to configure access to your network" in str(caught.value)
    assert caught.value.aws_code == "InvalidSubnet"
    assert caught.value.function_id == "fn7"


async def test_deploy_reports_access_denied_while_waiting(aws_env: None) -> None:
    client = boto3.client("lambda", region_name=REGION)
    provider = LambdaProvider(
        AwsSettings(region=REGION, role_arn="arn:aws:iam::123456789012:role/r"), client=client
    )
    with Stubber(client) as stubber:
        stubber.add_response("create_function", {"State": "Pending"})
        stubber.add_client_error(
            "get_function", service_error_code="AccessDeniedException", http_status_code=403
        )
        with pytest.raises(AwsProviderError) as caught:
            await provider.deploy(
                "fn9", runtime="python", code=PY_CODE, handler="handler", requirements=None
            )

    assert "could not wait for Lambda function taskorch-fn9" in str(caught.value)
    assert "allow lambda:CreateFunction" in str(caught.value)
    assert caught.value.aws_code == "AccessDeniedException"


async def test_unreachable_endpoint_names_the_region(aws_env: None) -> None:
    # Port 9 (discard) is closed here: the connection is refused at once. One attempt, no retries.
    client = boto3.client(
        "lambda",
        region_name=REGION,
        endpoint_url="http://127.0.0.1:9",
        config=Config(retries={"total_max_attempts": 1}, connect_timeout=2),
    )
    settings = AwsSettings(region=REGION, role_arn="arn:aws:iam::1:role/r")
    provider = LambdaProvider(settings, client=client)

    with pytest.raises(AwsProviderError, match=r"check TASKORCH_AWS_REGION \(us-east-1\)"):
        await provider.remove("fn8")
