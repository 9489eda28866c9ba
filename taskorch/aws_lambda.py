"""Deploy user functions to AWS Lambda: one source file in, a public function URL out.

`package` turns the uploaded source into the zip Lambda expects for its runtime (installing
Python requirements, compiling Java); `LambdaProvider` creates the function, gives it a function
URL and removes both again. boto3 blocks, so every AWS call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import structlog
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    WaiterError,
)

__all__ = ["AwsProviderError", "AwsSettings", "LambdaProvider", "package"]

log = structlog.get_logger(__name__)

# Lambda runtime per taskorch runtime: runtimes on Amazon Linux 2023 whose deprecation is years
# away. python3.11 and nodejs20.x are deprecated in 2026 and java17 sits on Amazon Linux 2; once a
# runtime is deprecated Lambda refuses to create functions on it. Java is compiled with
# --release 17 (below), which java21 also loads.
LAMBDA_RUNTIMES: Mapping[str, str] = {
    "python": "python3.12",
    "node": "nodejs22.x",
    "java": "java21",
}

# pip resolves wheels for what Lambda runs (CPython 3.12 on x86_64 Amazon Linux 2023, glibc 2.34)
# rather than for this host, so binary packages built here also import there. Several tags
# because wheels carry either the legacy manylinux2014 name or a newer manylinux_2_28 one.
_PIP_PYTHON_VERSION = "3.12"
_PIP_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux2014_x86_64")
_ARCHITECTURE = "x86_64"
_JAVA_RELEASE = "17"

# pip may download; javac is quick. Generous, but a hung build must not hold a worker forever.
_PIP_TIMEOUT_S = 300.0
_JAVAC_TIMEOUT_S = 120.0
# The CreateFunction request carries the zip inline; Lambda rejects inline zips above 50 MB
# (bigger packages need S3, which taskorch does not use). Checking first gives a clear message.
_DIRECT_UPLOAD_LIMIT_BYTES = 50 * 1024 * 1024
# Keep the tail of compiler/pip output: the actual error is at the end, and it ends up in the
# function's `error` field shown to the user.
_BUILD_OUTPUT_LIMIT = 4000
# Polling period while waiting for a function to become Active or finish an update.
_WAIT_DELAY_S = 2
# Lambda function names: letters, digits, hyphens and underscores, at most 64 characters.
_NAME_LIMIT = 64
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
# Two statements make a function URL with AuthType NONE public: since October 2025 Lambda wants
# lambda:InvokeFunction too, which InvokedViaFunctionUrl limits to calls through the URL.
_URL_STATEMENT_ID = "taskorch-public-url"
_INVOKE_STATEMENT_ID = "taskorch-public-url-invoke"

# A JavaScript identifier (ASCII subset); Python handlers use str.isidentifier instead.
_IDENTIFIER = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*")
_JAVA_HANDLER = re.compile(
    r"(?P<cls>[A-Za-z_$][\w$]*(?:\.[A-Za-z_$][\w$]*)*)::(?P<method>[A-Za-z_$][\w$]*)"
)
_JAVA_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.DOTALL)
_JAVA_PACKAGE = re.compile(r"^\s*package\s+([\w.]+)\s*;", re.MULTILINE)
_JAVA_PUBLIC_TYPE = re.compile(
    r"\bpublic\s+(?:(?:final|abstract|strictfp|sealed|non-sealed)\s+)*"
    r"(?:class|record|enum|interface)\s+([A-Za-z_$][\w$]*)"
)
# ES module syntax needs the .mjs extension on Lambda; CommonJS (the contract's
# `exports.handler = ...`) stays index.js.
_NODE_ESM = re.compile(
    r"^\s*export\s+(?:default\b|async\b|function\b|const\b|let\b|var\b|\{)", re.M
)
# A requirements line may name a package, extras, version specifiers and markers, nothing else:
# options (-r, -e, --index-url, --no-binary), paths and direct URLs would let an API caller read
# files on this host or run a package's build script here.
_REQUIREMENT = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?\s*(?:\[[A-Za-z0-9._,\s-]*\])?\s*(?:[<>=!~;(].*)?"
)
_CREDENTIAL_CODES = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "ExpiredTokenException",
        "IncompleteSignature",
    }
)
_CREDENTIALS_HINT = (
    "check the AWS credentials taskorch runs with (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
    "AWS_PROFILE, or an instance/task role)"
)


class AwsProviderError(Exception):
    """Building or deploying a function for AWS Lambda failed; the message says what to check.

    Args:
        message: what failed and what to check.
        function_id: the taskorch function concerned, when there is one.
        aws_code: the AWS error code (`ResourceConflictException`, ...), when AWS answered.
    """

    def __init__(
        self, message: str, *, function_id: str | None = None, aws_code: str | None = None
    ) -> None:
        super().__init__(message)
        self.function_id = function_id
        self.aws_code = aws_code


@dataclass(frozen=True)
class AwsSettings:
    """Where and how functions are deployed to AWS Lambda.

    Args:
        region: AWS region of the functions.
        role_arn: IAM execution role the created functions run as.
        function_prefix: put before the taskorch function id to name the Lambda function.
        endpoint_url: another Lambda endpoint (LocalStack, tests) instead of AWS.
        timeout_s: Lambda timeout of each function.
        memory_mb: Lambda memory of each function (CPU scales with it; Java wants 512 or more).
        ready_timeout_s: how long to wait for a new function to become Active.
    """

    region: str
    role_arn: str
    function_prefix: str = "taskorch-"
    endpoint_url: str | None = None
    timeout_s: int = 30
    memory_mb: int = 512
    ready_timeout_s: float = 300.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AwsSettings:
        """Read TASKORCH_AWS_* (region falling back to AWS_DEFAULT_REGION); name what is missing."""
        env = os.environ if environ is None else environ
        region = env.get("TASKORCH_AWS_REGION") or env.get("AWS_DEFAULT_REGION")
        if not region:
            raise AwsProviderError(
                "Config 'TASKORCH_AWS_REGION' is missing (and AWS_DEFAULT_REGION is not set): "
                "set it to the region to deploy functions to, such as eu-west-1"
            )
        role_arn = env.get("TASKORCH_AWS_LAMBDA_ROLE")
        if not role_arn:
            raise AwsProviderError(
                "Config 'TASKORCH_AWS_LAMBDA_ROLE' is missing: set it to the ARN of an IAM role "
                "that trusts lambda.amazonaws.com, such as arn:aws:iam::123456789012:role/taskorch"
            )
        if not role_arn.startswith("arn:") or ":role/" not in role_arn:
            raise AwsProviderError(
                f"Config 'TASKORCH_AWS_LAMBDA_ROLE' is {role_arn!r}, not a role ARN: expected "
                "arn:aws:iam::<account>:role/<name>"
            )
        return cls(
            region=region,
            role_arn=role_arn,
            function_prefix=env.get("TASKORCH_AWS_FUNCTION_PREFIX", "taskorch-"),
            endpoint_url=env.get("TASKORCH_AWS_ENDPOINT_URL") or None,
        )


def package(
    *, runtime: str, code: str, handler: str, requirements: str | None = None
) -> tuple[bytes, str, str]:
    """Build the deployment zip; return (zip_bytes, lambda_runtime, lambda_handler).

    Runs pip or javac in a subprocess, so call it from a thread in async code.

    Args:
        runtime: `python`, `node` or `java`.
        code: the one source file.
        handler: function name (python, node) or `Class::method` (java).
        requirements: requirements.txt text (python only).

    Raises:
        AwsProviderError: unknown runtime, bad handler or requirements, or a failed build (the
            message carries pip's or javac's output).
    """
    if runtime not in LAMBDA_RUNTIMES:
        raise AwsProviderError(
            f"runtime {runtime!r} is not supported; use one of {', '.join(LAMBDA_RUNTIMES)}"
        )
    if requirements and requirements.strip() and runtime != "python":
        raise AwsProviderError(f"requirements are for python functions only, not {runtime}")
    with tempfile.TemporaryDirectory(prefix="taskorch-build-") as tmp:
        build = Path(tmp)
        root = build / "zip"
        root.mkdir()
        if runtime == "python":
            lambda_handler = _build_python(root, build, code, handler, requirements)
        elif runtime == "node":
            lambda_handler = _build_node(root, code, handler)
        else:
            lambda_handler = _build_java(root, build, code, handler)
        return _zip_dir(root), LAMBDA_RUNTIMES[runtime], lambda_handler


def _build_python(
    root: Path, build: Path, code: str, handler: str, requirements: str | None
) -> str:
    _check_identifier(handler, "python")
    (root / "handler.py").write_text(code, encoding="utf-8")
    lines = _requirement_lines(requirements)
    if lines:
        req_file = build / "requirements.txt"  # outside the zip root: not shipped
        req_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
        platforms = [arg for p in _PIP_PLATFORMS for arg in ("--platform", p)]
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--target",
                str(root),
                *platforms,
                "--python-version",
                _PIP_PYTHON_VERSION,
                "--implementation",
                "cp",
                # Wheels only: required with --platform, and it means no package's setup.py ever
                # runs on this host.
                "--only-binary=:all:",
                # .pyc files made here suit this interpreter, not Lambda's: dead weight.
                "--no-compile",
                "--no-input",
                "--disable-pip-version-check",
                "--quiet",
                "-r",
                str(req_file),
            ],
            what="pip install of the requirements",
            build=build,
            timeout_s=_PIP_TIMEOUT_S,
        )
    return f"handler.{handler}"


def _requirement_lines(requirements: str | None) -> list[str]:
    lines = []
    for raw in (requirements or "").splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if not _REQUIREMENT.fullmatch(line):
            raise AwsProviderError(
                f"requirements line {line!r} is not allowed: list package names with optional "
                "extras and version specifiers (such as 'requests>=2.31'); pip options, paths "
                "and URLs are not accepted"
            )
        lines.append(line)
    return lines


def _build_node(root: Path, code: str, handler: str) -> str:
    _check_identifier(handler, "node")
    filename = "index.mjs" if _NODE_ESM.search(code) else "index.js"
    (root / filename).write_text(code, encoding="utf-8")
    return f"index.{handler}"


def _build_java(root: Path, build: Path, code: str, handler: str) -> str:
    match = _JAVA_HANDLER.fullmatch(handler.strip())
    if match is None:
        raise AwsProviderError(
            f"java handler {handler!r} is not of the form Class::method (or package.Class::method)"
        )
    cls, method = match["cls"], match["method"]
    # Comments may mention `package` or `public class`; look for declarations only in code.
    declarations = _JAVA_COMMENT.sub("", code)
    package_match = _JAVA_PACKAGE.search(declarations)
    java_package = package_match[1] if package_match else ""
    if "." not in cls and java_package:
        cls = f"{java_package}.{cls}"
    public_type = _JAVA_PUBLIC_TYPE.search(declarations)
    # javac insists that a public class lives in a file of its name.
    source_name = public_type[1] if public_type else cls.rsplit(".", 1)[-1]
    source = build / f"{source_name}.java"
    source.write_text(code, encoding="utf-8")
    _run(
        ["javac", "--release", _JAVA_RELEASE, "-encoding", "UTF-8", "-d", str(root), str(source)],
        what="javac",
        build=build,
        timeout_s=_JAVAC_TIMEOUT_S,
    )
    # The zip root is Lambda's classpath, and javac -d already laid classes out by package.
    if not (root / (cls.replace(".", "/") + ".class")).is_file():
        compiled = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.class"))
        raise AwsProviderError(
            f"java handler class {cls} is not in the source (compiled: {', '.join(compiled)}); "
            "name the class that holds the handler method"
        )
    return f"{cls}::{method}"


def _check_identifier(handler: str, runtime: str) -> None:
    valid = handler.isidentifier() if runtime == "python" else _IDENTIFIER.fullmatch(handler)
    if not valid:
        raise AwsProviderError(
            f"{runtime} handler {handler!r} must be the name of a function in the source, "
            "such as 'handler'"
        )


def _run(cmd: list[str], *, what: str, build: Path, timeout_s: float) -> None:
    """Run a build step; raise AwsProviderError with its output when it fails."""
    try:
        done = subprocess.run(
            cmd, cwd=build, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except FileNotFoundError as exc:
        raise AwsProviderError(
            f"{what} failed: {cmd[0]} is not installed on the taskorch host"
            + (" (install a JDK 17 or newer)" if cmd[0] == "javac" else "")
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise AwsProviderError(f"{what} did not finish within {timeout_s:.0f} s") from exc
    if done.returncode != 0:
        output = (done.stderr.strip() or done.stdout.strip() or "no output").replace(
            f"{build}{os.sep}", ""
        )  # the temporary path means nothing to the user and hides the file name
        if len(output) > _BUILD_OUTPUT_LIMIT:
            output = "..." + output[-_BUILD_OUTPUT_LIMIT:]
        raise AwsProviderError(f"{what} failed (exit {done.returncode}):\n{output}")


def _zip_dir(root: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(root.rglob("*")):
            if not path.is_file() or "__pycache__" in path.parts:
                continue
            info = zipfile.ZipInfo(
                path.relative_to(root).as_posix(), date_time=(1980, 1, 1, 0, 0, 0)
            )
            # Lambda runs code as another user than the one that owns the files: world-readable.
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    return buffer.getvalue()


class LambdaProvider:
    """Deploys taskorch functions to AWS Lambda behind public function URLs.

    Args:
        settings: region, execution role and naming.
        client: a boto3 Lambda client to use instead of one made from `settings`.
    """

    def __init__(self, settings: AwsSettings, *, client: Any | None = None) -> None:
        self._settings = settings
        if client is None:
            client = boto3.client(
                "lambda",
                region_name=settings.region,
                endpoint_url=settings.endpoint_url,
                config=Config(
                    retries={"mode": "standard", "max_attempts": 5},
                    connect_timeout=10,
                    # CreateFunction uploads up to 50 MB.
                    read_timeout=120,
                ),
            )
        self._client = client

    def function_name(self, function_id: str) -> str:
        """The Lambda function name for a taskorch function id."""
        name = _NAME_UNSAFE.sub("-", self._settings.function_prefix + function_id)
        if len(name) > _NAME_LIMIT:
            # Cutting alone could make long ids collide; a digest of the whole id keeps them apart.
            digest = hashlib.sha256(function_id.encode()).hexdigest()[:10]
            name = f"{name[: _NAME_LIMIT - len(digest) - 1]}-{digest}"
        return name

    async def deploy(
        self,
        function_id: str,
        *,
        runtime: str,
        code: str,
        handler: str,
        requirements: str | None,
    ) -> str:
        """Build, create (or update) the function and its public URL; return the URL.

        Deploying an id again updates its code and configuration, so a retried build picks up
        where a failed one stopped.

        Raises:
            AwsProviderError: the build failed or AWS refused; the message says what to check.
        """
        try:
            zip_bytes, lambda_runtime, lambda_handler = await asyncio.to_thread(
                package, runtime=runtime, code=code, handler=handler, requirements=requirements
            )
        except AwsProviderError as exc:
            exc.function_id = function_id
            raise
        if len(zip_bytes) > _DIRECT_UPLOAD_LIMIT_BYTES:
            raise AwsProviderError(
                f"the deployment zip is {len(zip_bytes) / 1e6:.1f} MB, above Lambda's 50 MB limit "
                "for direct uploads: trim the requirements",
                function_id=function_id,
            )
        name = self.function_name(function_id)
        url = await asyncio.to_thread(
            self._deploy_sync, function_id, name, zip_bytes, lambda_runtime, lambda_handler
        )
        log.info(
            "aws.function.deployed",
            function_id=function_id,
            lambda_name=name,
            runtime=lambda_runtime,
            zip_bytes=len(zip_bytes),
            url=url,
        )
        return url

    async def remove(self, function_id: str) -> None:
        """Delete the function URL and the function; either being gone already is fine."""
        name = self.function_name(function_id)
        await asyncio.to_thread(self._remove_sync, function_id, name)
        log.info("aws.function.removed", function_id=function_id, lambda_name=name)

    def _deploy_sync(
        self, function_id: str, name: str, zip_bytes: bytes, runtime: str, handler: str
    ) -> str:
        step = "deploy"
        try:
            self._create_or_update(function_id, name, zip_bytes, runtime, handler)
            step = "wait for"
            # New functions start Pending; a URL works only once the function is Active.
            self._wait(name, "function_active_v2")
            step = "make the URL of"
            url = self._ensure_url(name)
            self._ensure_public(name)
        except AwsProviderError as exc:  # from _wait, already explained
            exc.function_id = function_id
            raise
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc, f"{step} Lambda function {name}", function_id) from exc
        return url

    def _create_or_update(
        self, function_id: str, name: str, zip_bytes: bytes, runtime: str, handler: str
    ) -> None:
        config: dict[str, Any] = {
            "FunctionName": name,
            "Runtime": runtime,
            "Role": self._settings.role_arn,
            "Handler": handler,
            "Timeout": self._settings.timeout_s,
            "MemorySize": self._settings.memory_mb,
        }
        try:
            self._client.create_function(
                **config,
                Code={"ZipFile": zip_bytes},
                Architectures=[_ARCHITECTURE],
                Description=f"taskorch function {function_id}",
                # Lets an operator find what taskorch made: tag:taskorch:function-id in the console.
                Tags={"taskorch:function-id": function_id},
            )
            return
        except ClientError as exc:
            if _code(exc) != "ResourceConflictException":
                raise
        # The function exists: an earlier deploy of this id got partway. Lambda takes one update
        # at a time, hence the waits.
        self._wait(name, "function_updated_v2")
        self._client.update_function_code(FunctionName=name, ZipFile=zip_bytes)
        self._wait(name, "function_updated_v2")
        self._client.update_function_configuration(**config)
        self._wait(name, "function_updated_v2")

    def _ensure_url(self, name: str) -> str:
        try:
            return str(self._client.get_function_url_config(FunctionName=name)["FunctionUrl"])
        except ClientError as exc:
            if _code(exc) != "ResourceNotFoundException":
                raise
        created = self._client.create_function_url_config(FunctionName=name, AuthType="NONE")
        return str(created["FunctionUrl"])

    def _ensure_public(self, name: str) -> None:
        try:
            policy = json.loads(self._client.get_policy(FunctionName=name)["Policy"])
            present = {statement.get("Sid") for statement in policy.get("Statement", [])}
        except ClientError as exc:
            if _code(exc) != "ResourceNotFoundException":  # no policy yet
                raise
            present = set()
        if _URL_STATEMENT_ID not in present:
            self._client.add_permission(
                FunctionName=name,
                StatementId=_URL_STATEMENT_ID,
                Action="lambda:InvokeFunctionUrl",
                Principal="*",
                FunctionUrlAuthType="NONE",
            )
        if _INVOKE_STATEMENT_ID not in present:
            self._client.add_permission(
                FunctionName=name,
                StatementId=_INVOKE_STATEMENT_ID,
                Action="lambda:InvokeFunction",
                Principal="*",
                InvokedViaFunctionUrl=True,
            )

    def _wait(self, name: str, waiter_name: str) -> None:
        attempts = max(1, int(self._settings.ready_timeout_s // _WAIT_DELAY_S))
        try:
            self._client.get_waiter(waiter_name).wait(
                FunctionName=name, WaiterConfig={"Delay": _WAIT_DELAY_S, "MaxAttempts": attempts}
            )
        except WaiterError as exc:
            last = exc.last_response or {}
            if "Error" in last:
                # GetFunction itself failed (access denied, throttled): report that, not the state.
                raise ClientError(last, "GetFunction") from exc
            state = last.get("Configuration", {})
            reason = state.get("StateReason") or state.get("LastUpdateStatusReason") or exc
            raise AwsProviderError(
                f"Lambda function {name} did not become ready within "
                f"{self._settings.ready_timeout_s:.0f} s: {reason}; check that "
                f"TASKORCH_AWS_LAMBDA_ROLE ({self._settings.role_arn}) can be assumed by Lambda",
                aws_code=state.get("StateReasonCode"),
            ) from exc

    def _remove_sync(self, function_id: str, name: str) -> None:
        for delete in (self._client.delete_function_url_config, self._client.delete_function):
            try:
                delete(FunctionName=name)
            except ClientError as exc:
                if _code(exc) == "ResourceNotFoundException":
                    continue
                raise self._error(exc, f"delete Lambda function {name}", function_id) from exc
            except BotoCoreError as exc:
                raise self._error(exc, f"delete Lambda function {name}", function_id) from exc

    def _error(self, exc: Exception, action: str, function_id: str) -> AwsProviderError:
        """Turn a botocore error into one that says what the operator should check."""
        settings = self._settings
        code: str | None = None
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            detail, hint = str(exc), _CREDENTIALS_HINT
        elif isinstance(exc, EndpointConnectionError | NoRegionError):
            detail = str(exc)
            hint = (
                f"check TASKORCH_AWS_REGION ({settings.region})"
                + (f" and the endpoint {settings.endpoint_url}" if settings.endpoint_url else "")
                + " and this host's network access to AWS"
            )
        elif isinstance(exc, ClientError):
            code = _code(exc)
            detail = f"{exc.response.get('Error', {}).get('Message', '')} ({code})"
            if code in _CREDENTIAL_CODES:
                hint = _CREDENTIALS_HINT + ": they were rejected or have expired"
            elif code in {"AccessDeniedException", "AccessDenied"}:
                hint = (
                    "the AWS credentials lack a permission: allow lambda:CreateFunction, "
                    "UpdateFunctionCode, UpdateFunctionConfiguration, GetFunction, "
                    "DeleteFunction, CreateFunctionUrlConfig, GetFunctionUrlConfig, "
                    "DeleteFunctionUrlConfig, AddPermission, GetPolicy, TagResource, and "
                    f"iam:PassRole on TASKORCH_AWS_LAMBDA_ROLE ({settings.role_arn})"
                )
            elif "role" in detail.lower():
                hint = (
                    f"check TASKORCH_AWS_LAMBDA_ROLE ({settings.role_arn}): the role must exist "
                    "and trust lambda.amazonaws.com (a role created moments ago may need a few "
                    "seconds before Lambda can assume it)"
                )
            elif code in {"TooManyRequestsException", "ThrottlingException"}:
                hint = "AWS is throttling Lambda API calls; try again later"
            elif code == "RequestEntityTooLargeException":
                hint = "the deployment zip is too large for a direct upload: trim the requirements"
            else:
                hint = f"see the AWS Lambda documentation for {code}"
        else:
            detail, hint = str(exc), "check the AWS settings (TASKORCH_AWS_*)"
        return AwsProviderError(
            f"could not {action}: {detail}; {hint}", function_id=function_id, aws_code=code
        )


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
