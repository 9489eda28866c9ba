"""User functions: code in, trigger URL out.

- `record`: the API side (a record in Redis, builds in the background, the trigger URL);
- `source`: what an uploaded source, handler and requirements may be (one rule each);
- the local runtime: `runtime` (build and invoke), `build` (the build steps), `pool` (warm
  instances), `jail` (bubblewrap, seccomp, uid) and `cgroups` (per-instance limits);
- `aws` and `aws_package`: the AWS Lambda provider;
- `runtimes/`: the bootstraps copied next to the user's code.
"""

from taskorch.functions.errors import (
    AwsProviderError,
    BuildError,
    FunctionBusy,
    FunctionError,
    FunctionTimeout,
    SandboxUnavailable,
)
from taskorch.functions.record import Functions
from taskorch.functions.runtime import LocalRuntime, SandboxLimits, local_runtime

__all__ = [
    "AwsProviderError",
    "BuildError",
    "FunctionBusy",
    "FunctionError",
    "FunctionTimeout",
    "Functions",
    "LocalRuntime",
    "SandboxLimits",
    "SandboxUnavailable",
    "local_runtime",
]
