"""The deployment zip of a function for AWS Lambda: one source file in, the zip Lambda runs out.

Requirements are fetched as wheels for Lambda's platform by pip on this host (not in the sandbox:
the AWS provider needs none), through our launcher `runtimes/pip_build.py`, so that pip builds
nothing and follows no direct reference (`x @ URL or path`) in a package's metadata: no package
code runs here. Java is compiled here. The rules for handlers, requirements and ES modules are
those of `taskorch.functions.source`, the same as the local runtime's.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

from taskorch.functions import source
from taskorch.functions.errors import AwsProviderError, BuildError

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
ARCHITECTURE = "x86_64"  # of the functions AWS runs (and of the wheels fetched for them)
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
_PIP_REFUSED = 97  # runtimes/pip_build.py: a refusal, said in its last line of output


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
    try:
        source.check_handler(runtime, handler.strip())
        lines = source.parse_requirements(runtime, requirements)
        layout = source.java_layout(code, handler.strip()) if runtime == "java" else None
    except BuildError as exc:
        raise AwsProviderError(exc.message) from None
    with tempfile.TemporaryDirectory(prefix="taskorch-build-") as tmp:
        build = Path(tmp)
        root = build / "zip"
        root.mkdir()
        if runtime == "python":
            lambda_handler = _build_python(root, build, code, handler, lines)
        elif runtime == "node":
            lambda_handler = _build_node(root, code, handler)
        else:
            assert layout is not None
            lambda_handler = _build_java(root, build, code, layout)
        return _zip_dir(root), LAMBDA_RUNTIMES[runtime], lambda_handler


def _build_python(root: Path, build: Path, code: str, handler: str, lines: list[str]) -> str:
    (root / "handler.py").write_text(code, encoding="utf-8")
    if lines:
        req_file = build / "requirements.txt"  # outside the zip root: not shipped
        req_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
        platforms = [arg for p in _PIP_PLATFORMS for arg in ("--platform", p)]
        # Through our launcher: pip then refuses a direct reference (`x @ URL or path`) in a
        # package's metadata and any build from source, instead of running it on this host.
        launcher = resources.files("taskorch.functions") / "runtimes" / "pip_build.py"
        with resources.as_file(launcher) as script:
            _pip(
                [
                    sys.executable,
                    "-I",
                    str(script),
                    "pip",
                    "--",
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
                build=build,
            )
    return f"handler.{handler}"


def _pip(cmd: list[str], *, build: Path) -> None:
    try:
        _run(cmd, what="pip install of the requirements", build=build, timeout_s=_PIP_TIMEOUT_S)
    except AwsProviderError as exc:
        # The launcher's refusal: its last line of output, as JSON.
        lines = str(exc).strip().splitlines()
        if f"(exit {_PIP_REFUSED})" in (lines[0] if lines else ""):
            with contextlib.suppress(ValueError, KeyError, TypeError):
                raise AwsProviderError(str(json.loads(lines[-1])["refused"])) from None
        raise


def _build_node(root: Path, code: str, handler: str) -> str:
    filename = source.node_entry(code)
    (root / filename).write_text(code, encoding="utf-8")
    return f"index.{handler}"


def _build_java(root: Path, build: Path, code: str, layout: source.JavaLayout) -> str:
    cls, method = layout.class_name, layout.method
    # javac insists that a public class lives in a file of its name.
    java_file = build / f"{layout.file_stem}.java"
    java_file.write_text(code, encoding="utf-8")
    # -proc:none: no annotation processor, so compiling runs nothing of the user's.
    javac = ["javac", "--release", _JAVA_RELEASE, "-proc:none", "-encoding", "UTF-8"]
    _run(
        [*javac, "-d", str(root), str(java_file)],
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
