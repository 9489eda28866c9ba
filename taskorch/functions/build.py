"""The build steps of a local function; each runs in the sandbox, none on the host.

- python: pip resolves and downloads the requirements as wheels only, in the sandbox, reaching
  nothing but the package index (`fetch.py`: an index-only proxy on the host); our launcher
  (`runtimes/pip_build.py`) makes pip refuse direct references (`name @ URL or path`) and
  source builds; then, in the sandbox with no network, every wheel's METADATA and unpacked size
  are checked and the wheels installed; a requirement without a wheel fails the build and says
  so;
- node: `node --check` in the sandbox;
- java: `javac -proc:none` (no annotation processors) in the sandbox;
- then the handler is loaded once in the sandbox, read-only, as a cold start would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from asyncio.subprocess import DEVNULL, PIPE
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import structlog

from taskorch.functions import fetch, source
from taskorch.functions.errors import BuildError
from taskorch.functions.jail import TASK_DIR, Jail, Limits, Mount
from taskorch.functions.process import TAIL_LINES, describe_exit, spawn

log = structlog.get_logger("taskorch.functions")

PY_BOOTSTRAP = "_taskorch_bootstrap.py"
JS_BOOTSTRAP = "_taskorch_bootstrap.js"
JAVA_BOOTSTRAP = "TaskorchBootstrap"
PIP_LAUNCHER = "_taskorch_pip.py"
_CHECK_TIMEOUT_S = 60.0
_COMPILE_TIMEOUT_S = 180.0
_PIP_TIMEOUT_S = 600.0
_BUILD_CPU_S = 600
# Wheels a function may bring: what a cold start can load in reasonable time, and a bound on
# the disk one build can fill.
_MAX_WHEELS_MB = 300
# What the wheels may unpack to (their zips' declared sizes, which pip's unzip never exceeds),
# read before anything installs: a wheel bomb is refused by name instead of filling the disk.
_MAX_UNPACKED_MB = 1024
_MAX_UNPACKED_FILES = 200_000
# The pip launcher's exit code for a refusal (its last stdout line says why).
_REFUSED = 97
# pip's scratch folder, in the function's folder: the sandbox's /tmp is too small to unpack in.
_BUILD_TMP = ".build-tmp"
_PIP_QUIET = ["--no-cache-dir", "--no-input", "--progress-bar=off", "--disable-pip-version-check"]
_MAX_MESSAGE_CHARS = 4096
_NODE_NOISE = re.compile(r"\s+at .*\(node:internal/|Node\.js v\d")


@dataclass(frozen=True)
class Spec:
    """What a build learned and a cold start needs; kept in `<base_dir>/.meta/<id>.json`."""

    runtime: str
    handler: str  # python/node: export name; java: fully qualified Class::method
    entry: str  # the file the bootstrap loads


@dataclass
class Builder:
    """Runs the build steps of one function in the sandbox.

    Args:
        jail: the sandbox (None: the unsafe mode, see docs/functions.md).
        fn_dir: the function's folder on the host.
        uid: the function's own uid (root only), else None.
        limits: the limits of a build step.
        command: makes the argv and environment of a bootstrap in a mode (`check`).
        tools: paths of python, node, java and javac.
    """

    jail: Jail | None
    fn_dir: Path
    uid: int | None
    limits: Limits
    command: Callable[[Spec, str], tuple[list[str], dict[str, str]]]
    tools: dict[str, str | None]

    @property
    def function_id(self) -> str:
        return self.fn_dir.name

    async def python(self, code: str, handler: str, requirements: list[str]) -> Spec:
        files = {"handler.py": code, PY_BOOTSTRAP: bootstrap_source("bootstrap.py")}
        if requirements:
            files[PIP_LAUNCHER] = bootstrap_source("pip_build.py")
        await asyncio.to_thread(self.write_files, files)
        if requirements:
            try:
                await self._fetch_wheels(requirements)
                await self._install_wheels(requirements)
            finally:  # the wheels, pip's scratch folder and settings, the launcher
                for name in ("wheels", _BUILD_TMP, PIP_LAUNCHER):
                    await remove_tree(self.fn_dir / name)
        spec = Spec("python", handler, "handler.py")
        await self.check(spec)
        return spec

    async def _fetch_wheels(self, requirements: list[str]) -> None:
        """Resolves and downloads wheels in the sandbox, reaching only the package index.

        pip runs in the sandbox as the function's uid, behind `fetch.IndexProxy`, with
        `--only-binary=:all:` and our launcher's guards: a direct reference or a source build
        is refused before it is fetched or run.
        """
        sources = await asyncio.to_thread(
            fetch.pip_sources, os.environ, python=self._tool("python")
        )
        await asyncio.to_thread(self._make_dirs, "wheels", _BUILD_TMP)
        conf = self.fn_dir / _BUILD_TMP / "pip.conf"
        await asyncio.to_thread(self._write_private, conf, sources.pip_conf())
        argv = [*self._launcher(), "fetch", fetch.SOCKET_IN_JAIL if self.jail else "", "--"]
        argv += ["--only-binary=:all:", *_PIP_QUIET, "--dest", self._inside("wheels")]
        argv += ["--", *requirements]
        env = {**self._pip_env(), "PIP_CONFIG_FILE": self._inside(f"{_BUILD_TMP}/pip.conf")}
        outbound, no_proxy = fetch.outbound_proxies(os.environ)
        proxy = fetch.IndexProxy(sources.hosts, uid=self.uid, outbound=outbound, no_proxy=no_proxy)
        async with proxy as socket_path:
            if self.jail is None:
                argv[argv.index("fetch") + 1] = str(socket_path)
            mounts = (*sources.mounts, Mount(socket_path, fetch.SOCKET_IN_JAIL))
            rc, out, err = await self.run(
                argv,
                env,
                _PIP_TIMEOUT_S,
                "pip download",
                writable=True,
                file_size_mb=_MAX_WHEELS_MB,
                extra=mounts if self.jail else (),
            )
        await asyncio.to_thread(conf.unlink, True)  # missing_ok; nothing after needs it
        refused = list(dict.fromkeys(proxy.refused))
        text = out + ("\n" + err if err.strip() else "")
        self._raise_refusal(rc, out)
        if rc != 0:
            missing = re.findall(r"No matching distribution found for (\S+)", text)
            if missing:
                raise BuildError(
                    f"no wheel of {', '.join(missing)} for this runtime: only packages published "
                    "as wheels can be installed (nothing is built from source); pip said:\n"
                    + trim(text, self.fn_dir, keep_end=True)
                )
            if refused:
                raise BuildError(
                    f"pip download failed: the build may reach only the package index, and it "
                    f"asked for {', '.join(refused[:5])}; pip said:\n"
                    + trim(text, self.fn_dir, keep_end=True)
                )
            raise BuildError("pip download failed:\n" + trim(text, self.fn_dir, keep_end=True))
        wheels = self.fn_dir / "wheels"
        size = sum(p.lstat().st_size for p in wheels.iterdir())
        if size > _MAX_WHEELS_MB * 1024 * 1024:
            raise BuildError(
                f"the requirements' wheels take {size / 1e6:.0f} MB, above {_MAX_WHEELS_MB} MB"
            )

    async def _install_wheels(self, requirements: list[str]) -> None:
        """Checks the wheels (metadata, unpacked size) and installs them, in the sandbox."""
        argv = [*self._launcher(), "install", self._inside("wheels")]
        argv += [str(_MAX_UNPACKED_MB), str(_MAX_UNPACKED_FILES), "--"]
        argv += ["--no-index", "--find-links", self._inside("wheels"), "--only-binary=:all:"]
        argv += ["--target", self._inside("deps"), *_PIP_QUIET, "--no-warn-script-location"]
        argv += ["--", *requirements]
        rc, out, err = await self.run(
            argv,
            self._pip_env(),
            _PIP_TIMEOUT_S,
            "pip install",
            writable=True,
            file_size_mb=_MAX_UNPACKED_MB,
        )
        self._raise_refusal(rc, out)
        if rc != 0:
            raise BuildError(
                "pip install failed:\n" + trim(out + "\n" + err, self.fn_dir, keep_end=True)
            )

    def _launcher(self) -> list[str]:
        return [self._tool("python"), "-I", "-u", PIP_LAUNCHER]

    def _inside(self, name: str) -> str:
        """The path of a file of the function's folder as the build step sees it."""
        return f"{TASK_DIR}/{name}" if self.jail is not None else str(self.fn_dir / name)

    def _pip_env(self) -> dict[str, str]:
        tmp = self._inside(_BUILD_TMP)
        # On the function's folder, not the sandbox's small /tmp: pip unpacks there first.
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": tmp, "TMPDIR": tmp}
        env["PIP_CONFIG_FILE"] = os.devnull  # none of the host's; fetch writes its own
        return env

    def _make_dirs(self, *names: str) -> None:
        for name in names:
            (self.fn_dir / name).mkdir(mode=0o700, exist_ok=True)
            if self.uid is not None:
                os.lchown(self.fn_dir / name, self.uid, self.uid)

    def _write_private(self, path: Path, text: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        if self.uid is not None:
            os.lchown(path, self.uid, self.uid)

    def _raise_refusal(self, rc: int, out: str) -> None:
        if rc != _REFUSED:
            return
        lines = out.strip().splitlines()
        try:
            refusal = json.loads(lines[-1])["refused"] if lines else None
        except (ValueError, KeyError, TypeError):
            refusal = None
        if isinstance(refusal, str):
            raise BuildError(trim(refusal, self.fn_dir, keep_end=False))

    async def node(self, code: str, handler: str) -> Spec:
        node = self._tool("node")
        entry = source.node_entry(code)
        await asyncio.to_thread(
            self.write_files, {entry: code, JS_BOOTSTRAP: bootstrap_source("bootstrap.js")}
        )
        env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"}
        rc, out, err = await self.run(
            [node, "--check", entry], env, _CHECK_TIMEOUT_S, "node --check"
        )
        if rc != 0:
            # Node's own frames and version banner say nothing about the user's code.
            lines = (err or out).splitlines()
            useful = [line for line in lines if not _NODE_NOISE.match(line)]
            text = re.sub(r"\n{3,}", "\n\n", "\n".join(useful))
            raise BuildError(trim(text, self.fn_dir, keep_end=False))
        spec = Spec("node", handler, entry)
        await self.check(spec)
        return spec

    async def java(self, code: str, handler: str, jvm_flags: list[str]) -> Spec:
        javac = self._tool("javac")
        self._tool("java")
        layout = source.java_layout(code, handler)
        if layout.file_stem == JAVA_BOOTSTRAP:
            raise BuildError(f"the class name {JAVA_BOOTSTRAP} is reserved; rename your class")
        files = {
            f"{layout.file_stem}.java": code,
            f"{JAVA_BOOTSTRAP}.java": bootstrap_source(f"{JAVA_BOOTSTRAP}.java"),
            "classes/.keep": "",
        }
        await asyncio.to_thread(self.write_files, files)
        argv = [javac, *[f"-J{flag}" for flag in jvm_flags], "-proc:none", "-implicit:none"]
        argv += ["-encoding", "UTF-8", "-nowarn", "-d", "classes"]
        argv += [f"{layout.file_stem}.java", f"{JAVA_BOOTSTRAP}.java"]
        env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8", "MALLOC_ARENA_MAX": "2"}
        rc, out, err = await self.run(argv, env, _COMPILE_TIMEOUT_S, "javac", writable=True)
        if rc != 0:
            raise BuildError(trim(out + err, self.fn_dir, keep_end=False))
        spec = Spec("java", f"{layout.class_name}::{layout.method}", "classes")
        await self.check(spec)
        return spec

    async def check(self, spec: Spec) -> None:
        """Loads the handler in the sandbox, read-only, as a cold start would."""
        argv, env = self.command(spec, "check")
        rc, out, err = await self.run(argv, env, _CHECK_TIMEOUT_S, "loading the handler")
        try:
            frame = json.loads(out.splitlines()[0]) if out.strip() else {}
        except (ValueError, RecursionError):
            frame = {}
        if not isinstance(frame, dict):
            frame = {}
        if frame.get("ready") is True and rc == 0:
            return
        if "trace" in frame:
            error = trim(str(frame.get("error", "")), self.fn_dir, keep_end=False)
            # A Python traceback ends with the error; a JVM or V8 stack starts with it.
            keep_end = spec.runtime == "python"
            trace = trim(str(frame["trace"]), self.fn_dir, keep_end=keep_end)
            if trace and (keep_end or error in trace):
                raise BuildError(trace)
            raise BuildError(f"{error}\n{trace}".strip())
        tail = err.splitlines()[-TAIL_LINES:]
        raise BuildError(trim(describe_exit(rc, tail), self.fn_dir, keep_end=True))

    async def run(
        self,
        argv: list[str],
        env: dict[str, str],
        timeout_s: float,
        what: str,
        *,
        writable: bool = False,
        file_size_mb: int = 0,
        extra: Sequence[Mount] = (),
    ) -> tuple[int, str, str]:
        """Runs a build step in the sandbox; returns (exit code, stdout, stderr)."""
        limits = self.limits
        if file_size_mb > limits.file_size_mb:
            limits = replace(limits, file_size_mb=file_size_mb)
        box = await spawn(
            self.jail,
            argv,
            function_id=self.function_id,
            fn_dir=self.fn_dir,
            uid=self.uid,
            limits=limits,
            env=env,
            writable_task=writable,
            extra=extra,
            stdin=asyncio.subprocess.DEVNULL,
        )
        proc = box.proc
        assert proc.stdout is not None and proc.stderr is not None
        out_lines: deque[str] = deque(maxlen=2000)

        async def read_stdout(stream: asyncio.StreamReader) -> None:
            while raw := await stream.readline():
                out_lines.append(raw.decode(errors="replace").rstrip())

        try:
            async with asyncio.timeout(timeout_s):
                _, err = await asyncio.gather(read_stdout(proc.stdout), proc.stderr.read())
                await proc.wait()
        except TimeoutError:
            raise BuildError(f"{what} did not finish within {timeout_s:g} s") from None
        except ValueError:  # a line longer than the stream limit
            raise BuildError(f"{what} wrote an absurdly long line of output") from None
        finally:
            await box.stop()
        rc = proc.returncode if proc.returncode is not None else -1
        return rc, "\n".join(out_lines), err.decode(errors="replace")

    def write_files(self, files: dict[str, str]) -> None:
        for name, text in files.items():
            path = self.fn_dir / name
            path.parent.mkdir(mode=0o700, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        if self.uid is not None:
            chown_tree(self.fn_dir, self.uid)

    def _tool(self, name: str) -> str:
        path = self.tools.get(name)
        if path is None:
            raise BuildError(f"{name} is not installed on this server")
        return path


def bootstrap_source(name: str) -> str:
    return (resources.files("taskorch.functions") / "runtimes" / name).read_text(encoding="utf-8")


def chown_tree(top: Path, uid: int) -> None:
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, uid)
    os.lchown(top, uid, uid)


def relative(text: str, fn_dir: Path | None = None) -> str:
    """Paths of the function's folder made relative: the server's paths are not the user's."""
    for folder in (str(fn_dir or TASK_DIR), TASK_DIR):
        text = text.replace(f"file://{folder}/", "").replace(f"{folder}/", "")
    return text


def trim(text: str, fn_dir: Path, *, keep_end: bool) -> str:
    """Shortens tool output for an error message, with the folder paths removed."""
    text = relative(text, fn_dir).strip()
    if len(text) <= _MAX_MESSAGE_CHARS:
        return text
    return "..." + text[-_MAX_MESSAGE_CHARS:] if keep_end else text[:_MAX_MESSAGE_CHARS] + "..."


async def remove_tree(path: Path) -> None:
    """Deletes a folder whatever it holds: any depth, symlinks (not followed), odd modes.

    `rm -rf` walks iteratively (shutil.rmtree recurses, and a folder 5,000 levels deep ends in
    RecursionError); without root a function's read-only folders are made writable first.
    """
    if not await asyncio.to_thread(os.path.lexists, path):
        return
    for attempt in range(2):
        if attempt or os.geteuid() != 0:
            chmod = await _quiet("chmod", "-R", "u+rwx", "--", str(path))
            await chmod.wait()
        rm = await _quiet("rm", "-rf", "--one-file-system", "--", str(path), stderr=PIPE)
        _, err = await rm.communicate()
        if not await asyncio.to_thread(os.path.lexists, path):
            return
    with contextlib.suppress(Exception):
        log.warning("function.remove_incomplete", path=str(path), error=err.decode()[:500])


async def _quiet(*argv: str, stderr: int = DEVNULL) -> asyncio.subprocess.Process:
    """``argv`` started with its output thrown away (and its errors too, unless ``stderr``)."""
    return await asyncio.create_subprocess_exec(*argv, stdout=DEVNULL, stderr=stderr)
