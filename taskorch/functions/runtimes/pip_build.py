"""taskorch's pip launcher: pip that follows no direct reference and builds nothing.

    python -I pip_build.py fetch SOCKET -- <pip download options and requirements>
    python -I pip_build.py install WHEELS MAX_UNPACKED_MB MAX_FILES -- <pip install options>
    python -I pip_build.py pip -- <pip command and options>

`fetch` and `install` are a local function's build steps, in the sandbox. `fetch` forwards
connections from the sandbox's loopback to SOCKET (the host's index-only proxy, see
taskorch/functions/fetch.py) and runs `pip download --proxy` through it. `install` first reads
every wheel in WHEELS (its METADATA and its zip's declared sizes), then runs `pip install` with
no network. `pip` runs a pip command as given (the AWS provider's packaging, on the host). In
each, pip runs in this process with two of its steps replaced, so that it can neither follow a
direct reference (`name @ URL or path`) from a package's metadata nor build anything from
source. A refusal is the last line of stdout and of stderr, as JSON `{"refused": "..."}`, with
exit code 97.
"""

from __future__ import annotations

import email.parser
import json
import os
import re
import socket
import sys
import threading
import zipfile
from typing import Any

REFUSED = 97
_MIB = 1024 * 1024
_MAX_METADATA_BYTES = 1024 * 1024
_METADATA = re.compile(r"[^/]+\.dist-info/METADATA")
_refusal: list[str] = []


def main(argv: list[str]) -> int:
    mode, rest = argv[0], argv[1:]
    split = rest.index("--")
    own, pip_args = rest[:split], rest[split + 1 :]
    if mode != "pip":  # an empty folder: nothing to take for a project
        os.chdir(os.environ.get("TMPDIR", "/tmp"))
    if mode == "fetch":
        port = forward(own[0])
        return run_pip(["download", "--proxy", f"http://127.0.0.1:{port}", *pip_args])
    if mode == "install":
        problem = inspect(own[0], max_unpacked_mb=int(own[1]), max_files=int(own[2]))
        if problem:
            return refuse(problem)
        return run_pip(["install", *pip_args])
    if mode == "pip":
        return run_pip(pip_args)
    raise SystemExit(f"unknown mode {mode!r}")


def refuse(message: str) -> int:
    line = "\n" + json.dumps({"refused": message})
    for stream in (sys.stdout, sys.stderr):
        print(line, file=stream, flush=True)
    return REFUSED


# -- pip, unable to follow direct references or to build ----------------------------------------


def run_pip(args: list[str]) -> int:
    try:
        guard_pip()
    except (ImportError, AttributeError) as exc:  # a pip whose inside we do not know: refuse
        return refuse(
            f"this server's pip cannot be run safely for builds ({exc}); tell its operator"
        )
    from pip._internal.cli.main import main as pip_main

    code = pip_main(args)
    if _refusal:
        return refuse(_refusal[0])
    return int(code or 0)


def guard_pip() -> None:
    from pip._internal.distributions.sdist import SourceDistribution
    from pip._internal.exceptions import InstallationError
    from pip._internal.resolution.resolvelib.factory import Factory

    names = [
        name
        for name in ("_make_requirement_from_install_req", "_make_requirements_from_install_req")
        if hasattr(Factory, name)
    ]
    if not names or not hasattr(SourceDistribution, "prepare_distribution_metadata"):
        raise AttributeError("pip's resolver has changed")

    def stop(message: str) -> Any:
        _refusal.append(message)
        raise InstallationError(message)

    for name in names:
        original = getattr(Factory, name)

        def guarded(
            self: Any, ireq: Any, *args: Any, _original: Any = original, **kwargs: Any
        ) -> Any:
            # Every requirement a function names is a name and a version; a link here comes
            # from a package's metadata (or a constraint): a direct reference.
            if ireq.link is not None:
                parent = getattr(ireq.comes_from, "name", None) or "a requirement"
                url = getattr(ireq.link, "redacted_url", None) or str(ireq.link)
                stop(
                    f"{parent} depends on {ireq.name or 'a package'} @ {url}, a direct "
                    "reference to a URL or path: refused (only packages from the index are "
                    "installed)"
                )
            return _original(self, ireq, *args, **kwargs)

        setattr(Factory, name, guarded)

    def no_build(self: Any, *args: Any, **kwargs: Any) -> Any:
        stop(
            f"{self.req.name if self.req else 'a package'} has no wheel: nothing is built from source"
        )

    SourceDistribution.prepare_distribution_metadata = no_build  # type: ignore[method-assign]


# -- the forwarder from the sandbox's loopback to the host's proxy -------------------------------


def forward(socket_path: str) -> int:
    listener = socket.create_server(("127.0.0.1", 0))

    def accept() -> None:
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=pair, args=(conn, socket_path), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return int(listener.getsockname()[1])


def pair(conn: socket.socket, socket_path: str) -> None:
    with conn, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as up:
        try:
            up.connect(socket_path)
        except OSError:
            return
        back = threading.Thread(target=copy, args=(up, conn), daemon=True)
        back.start()
        copy(conn, up)
        back.join()


def copy(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(256 * 1024):
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


# -- what the wheels hold, read before anything installs -----------------------------------------


def inspect(folder: str, *, max_unpacked_mb: int, max_files: int) -> str | None:
    """Why the wheels in `folder` must not be installed, or None."""
    from pip._vendor.packaging.requirements import InvalidRequirement, Requirement

    sizes: list[tuple[int, str]] = []
    files = 0
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if not name.endswith(".whl") or not os.path.isfile(path) or os.path.islink(path):
            return f"pip fetched {name}, which is not a wheel: only wheels are installed"
        try:
            with zipfile.ZipFile(path) as wheel:
                infos = wheel.infolist()
                meta = [i for i in infos if _METADATA.fullmatch(i.filename)]
                if len(meta) != 1 or meta[0].file_size > _MAX_METADATA_BYTES:
                    return f"{name} is not a valid wheel (its METADATA is missing or too large)"
                text = wheel.read(meta[0]).decode("utf-8", errors="replace")
        except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
            return f"{name} is not a valid wheel ({exc})"
        headers = email.parser.HeaderParser().parsestr(text)
        label = f"{headers.get('Name', name)} {headers.get('Version', '')}".strip()
        for value in headers.get_all("Requires-Dist") or []:
            try:
                url = Requirement(value).url
            except InvalidRequirement:
                return f"{label} has a dependency pip cannot read: {value.strip()[:200]!r}"
            if url:
                return (
                    f"{label} depends on {value.strip()[:300]}, a direct reference to a URL or "
                    "path: refused (only packages from the index are installed)"
                )
        sizes.append((sum(i.file_size for i in infos), label))
        files += len(infos)
    total = sum(size for size, _ in sizes)
    if total > max_unpacked_mb * _MIB:
        sizes.sort(reverse=True)
        names = ", ".join(label for _, label in sizes[:3])
        if len(sizes) > 3:
            names += f" and {len(sizes) - 3} more"
        return (
            f"the wheels of {names} unpack to {-(-total // _MIB):,} MB, above the "
            f"{max_unpacked_mb:,} MB limit"
        )
    if files > max_files:
        return f"the wheels unpack to {files:,} files, above the {max_files:,} files limit"
    return None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
