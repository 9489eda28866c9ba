"""Deploy user functions to AWS Lambda: one source file in, a public function URL out.

`aws_package.package` turns the uploaded source into the zip Lambda expects for its runtime;
`LambdaProvider` creates the function, gives it a function URL and removes both again. boto3 blocks, so every AWS call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
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

from taskorch.functions.aws_package import ARCHITECTURE, package
from taskorch.functions.errors import AwsProviderError

__all__ = ["AwsProviderError", "AwsSettings", "LambdaProvider", "package"]

log = structlog.get_logger(__name__)

# The CreateFunction request carries the zip inline; Lambda rejects inline zips above 50 MB
# (bigger packages need S3, which taskorch does not use). Checking first gives a clear message.
_DIRECT_UPLOAD_LIMIT_BYTES = 50 * 1024 * 1024
# Polling period while waiting for a function to become Active or finish an update.
_WAIT_DELAY_S = 2
# Lambda function names: letters, digits, hyphens and underscores, at most 64 characters.
_NAME_LIMIT = 64
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
# Two statements make a function URL with AuthType NONE public: since October 2025 Lambda wants
# lambda:InvokeFunction too, which InvokedViaFunctionUrl limits to calls through the URL.
_URL_STATEMENT_ID = "taskorch-public-url"
_INVOKE_STATEMENT_ID = "taskorch-public-url-invoke"
# Those two statements, each added where the policy lacks it.
_PUBLIC_STATEMENTS: tuple[tuple[str, dict[str, Any]], ...] = (
    (_URL_STATEMENT_ID, {"Action": "lambda:InvokeFunctionUrl", "FunctionUrlAuthType": "NONE"}),
    (_INVOKE_STATEMENT_ID, {"Action": "lambda:InvokeFunction", "InvokedViaFunctionUrl": True}),
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
                Architectures=[ARCHITECTURE],
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
        for sid, grant in _PUBLIC_STATEMENTS:
            if sid not in present:
                self._client.add_permission(
                    FunctionName=name, StatementId=sid, Principal="*", **grant
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
