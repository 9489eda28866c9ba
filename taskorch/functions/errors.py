"""Errors of the functions package, below the one root `TaskorchError`.

TaskorchError
├── BuildError          the source, the handler or the requirements were refused, or a build
│                       step failed; `message` is what the user sees on the function
├── FunctionError       the handler raised or its process died ("<ExcType>: <msg>")
├── FunctionTimeout     no answer (or no start) within the limit; the instance was killed
├── FunctionBusy        every instance is busy and the calls waiting for one are at their bound
├── SandboxUnavailable  the sandbox cannot be made on this host; says why and how to fix it
└── AwsProviderError    building or deploying for AWS Lambda failed; says what to check
"""

from __future__ import annotations

from taskorch.errors import TaskorchError

# boto3 is the `aws` extra (pyproject.toml): what an API without it says when the provider is asked for.
AWS_EXTRA_MISSING = "needs boto3: pip install 'taskorch[aws]'"


class BuildError(TaskorchError):
    """The function could not be built; `message` holds the reason or the tool's output."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class FunctionError(TaskorchError):
    """The handler raised, or its process died; `message` reads "<ExcType>: <msg>"."""

    def __init__(self, message: str, *, function_id: str = "", trace: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.function_id = function_id
        self.trace = trace


class FunctionTimeout(TaskorchError):
    """The invocation ran past its timeout; the instance was killed."""

    def __init__(self, function_id: str, timeout_s: float, *, starting: bool = False) -> None:
        what = "did not start" if starting else "did not answer"
        self.message = (
            f"function {function_id} {what} within {timeout_s:g} s and was stopped; "
            "make the handler faster or allow a longer timeout"
        )
        super().__init__(self.message)
        self.function_id = function_id
        self.timeout_s = timeout_s


class FunctionBusy(TaskorchError):
    """Every instance of the function is busy and no more calls may wait: try again later."""

    def __init__(self, function_id: str, *, instances: int, waiting: int, retry_after_s: int):
        self.message = (
            f"function {function_id} is busy: its {instances} instance(s) are serving calls and "
            f"{waiting} more are waiting; retry after {retry_after_s} s or send fewer calls at once"
        )
        super().__init__(self.message)
        self.function_id = function_id
        self.retry_after_s = retry_after_s


class SandboxUnavailable(TaskorchError):
    """Local functions cannot be isolated here; the message says why and what to change."""


class AwsProviderError(TaskorchError):
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
