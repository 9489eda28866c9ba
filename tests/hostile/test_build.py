"""Builds run nothing of the user's, or of a package's, on the host.

The package indexes here are local, so these tests need no network: a folder (PIP_FIND_LINKS
with PIP_NO_INDEX) that holds a wheel and an sdist whose setup.py would leave a marker if run,
and a PEP 503 index served over HTTP on 127.0.0.1 (PIP_INDEX_URL), which the build reaches
through the host's index-only proxy.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.server
import io
import json
import os
import subprocess
import tarfile
import tempfile
import threading
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from taskorch.functions import BuildError, LocalRuntime
from taskorch.functions import build as build_module
from taskorch.functions.aws_package import package
from taskorch.functions.errors import AwsProviderError
from taskorch.functions.fetch import IndexProxy, outbound_proxies, pip_sources
from tests.hostile.conftest import build, needs_root

pytestmark = needs_root


def make_wheel(
    folder: Path, name: str, version: str, module: str, *, requires: Sequence[str] = ()
) -> Path:
    depends = "".join(f"Requires-Dist: {line}\n" for line in requires)
    files = {
        f"{name}/__init__.py": module,
        f"{name}-{version}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n{depends}"
        ),
        f"{name}-{version}.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{name}-{version}.dist-info/RECORD,,")
    files[f"{name}-{version}.dist-info/RECORD"] = "\n".join(record) + "\n"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for member, text in files.items():
            wheel.writestr(member, text)
    return path


def make_sdist(folder: Path, name: str, version: str, marker: Path) -> None:
    setup = (
        f"open({str(marker)!r}, 'w').write('setup.py ran on the host')\n"
        f"from setuptools import setup\nsetup(name={name!r}, version={version!r})\n"
    )
    files = {
        f"{name}-{version}/setup.py": setup,
        f"{name}-{version}/PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
    }
    with tarfile.open(folder / f"{name}-{version}.tar.gz", "w:gz") as sdist:
        for path, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(path)
            info.size = len(data)
            sdist.addfile(info, io.BytesIO(data))


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder function uids can read (a package folder must be, see docs/functions.md)."""
    path = Path(tempfile.mkdtemp(prefix="taskorch-index-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], check=False)


@pytest.fixture
def no_pip_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """This host's own pip settings (pip.conf, PIP_*) stay out of the test's builds."""
    for key in ("PIP_FIND_LINKS", "PIP_NO_INDEX", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)


@pytest.fixture
def index(shared_dir: Path, no_pip_config: None, monkeypatch: pytest.MonkeyPatch) -> Any:
    folder = shared_dir / "links"
    folder.mkdir(mode=0o755)
    marker = shared_dir / "MARKER"
    make_wheel(folder, "goodpkg", "1.0", "VALUE = 'from a wheel'\n")
    make_sdist(folder, "evilpkg", "1.0", marker)
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    return marker


@pytest.mark.parametrize(
    "line",
    [
        "tmp/../../fn_victim/evil",
        "./fn_victim",
        "fn_victim/evil==1.0",
        "/etc/passwd",
        "-e .",
        "--index-url=http://127.0.0.1:6379/",
        "evil @ file:///tmp/evil",
        "evil==1.0 ; python_version > '3'",
        "goodpkg",  # a name without a version
    ],
)
async def test_requirements_beyond_name_and_version_are_refused(
    rt: LocalRuntime, base_dir: Path, index: Path, line: str
) -> None:
    # A victim whose folder the relative path of the original attack pointed at.
    await build(rt, "fn_victim", "python", "def handler(event, context):\n    return 'victim'\n")
    before = json.dumps(sorted(p.name for p in (base_dir / "fn_victim").iterdir()))

    with pytest.raises(BuildError, match="is not allowed"):
        await build(
            rt, "fn_attacker", "python", "def handler(e, c):\n    return 1\n", requirements=line
        )

    assert json.dumps(sorted(p.name for p in (base_dir / "fn_victim").iterdir())) == before
    assert await rt.invoke("fn_victim", None) == "victim"
    assert not index.exists()


async def test_a_requirement_without_a_wheel_fails_and_runs_nothing(
    rt: LocalRuntime, index: Path
) -> None:
    with pytest.raises(BuildError) as caught:
        await build(
            rt,
            "fn_sdist",
            "python",
            "def handler(e, c):\n    return 1\n",
            requirements="evilpkg==1.0",
        )

    assert "no wheel of evilpkg==1.0" in caught.value.message
    assert "nothing is built from source" in caught.value.message
    assert not index.exists(), "a package's setup.py ran on the host"


async def test_wheels_are_installed_in_the_sandbox(
    rt: LocalRuntime, base_dir: Path, index: Path
) -> None:
    code = "import goodpkg\ndef handler(event, context):\n    return goodpkg.VALUE\n"
    await build(rt, "fn_wheel", "python", code, requirements="goodpkg==1.0  # pinned\n")

    assert await rt.invoke("fn_wheel", None) == "from a wheel"
    assert (base_dir / "fn_wheel" / "deps" / "goodpkg" / "__init__.py").is_file()
    assert not (base_dir / "fn_wheel" / "wheels").exists()


# -- a PEP 503 index over HTTP, reached through the host's index-only proxy ----------------------


@dataclass
class HttpIndex:
    """A package index served on 127.0.0.1: `simple/<name>/` pages linking `files/<wheel>`."""

    root: Path
    port: int
    paths: list[str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, wheel: Path) -> None:
        (self.root / "files").mkdir(exist_ok=True)
        target = self.root / "files" / wheel.name
        wheel.replace(target)
        name = wheel.name.split("-", 1)[0]
        page = self.root / "simple" / name
        page.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(target.read_bytes()).hexdigest()
        link = f'<a href="../../files/{target.name}#sha256={digest}">{target.name}</a>'
        (page / "index.html").write_text(f"<!DOCTYPE html><html><body>{link}</body></html>\n")


@pytest.fixture
def http_index(
    shared_dir: Path, no_pip_config: None, monkeypatch: pytest.MonkeyPatch
) -> Iterator[HttpIndex]:
    root = shared_dir / "www"
    (root / "simple").mkdir(parents=True)
    paths: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kw: Any) -> None:
            super().__init__(*args, directory=str(root), **kw)

        def do_GET(self) -> None:
            paths.append(self.path)
            super().do_GET()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    index = HttpIndex(root, server.server_address[1], paths)
    monkeypatch.setenv("PIP_INDEX_URL", f"{index.url}/simple/")
    yield index
    server.shutdown()
    server.server_close()
    thread.join(5)


def make_source_tree(folder: Path, marker: Path, redis_port: int) -> Path:
    """A project whose in-tree build backend, once imported, attacks the machine it runs on."""
    tree = folder / "evil-src"
    tree.mkdir(mode=0o755)
    (tree / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\nbuild-backend = "evil_backend"\nbackend-path = ["."]\n'
    )
    (tree / "evil_backend.py").write_text(
        "import socket\n"
        f"open({str(marker)!r}, 'w').write('a build backend ran on the host')\n"
        "try:\n"
        f"    s = socket.create_connection(('127.0.0.1', {redis_port}), timeout=3)\n"
        "    s.sendall(b'*3\\r\\n$3\\r\\nSET\\r\\n$6\\r\\nstolen\\r\\n$3\\r\\nyes\\r\\n')\n"
        "    s.recv(100)\n"
        "except OSError:\n"
        "    pass\n"
        "def get_requires_for_build_wheel(config_settings=None):\n"
        "    return []\n"
    )
    return tree


@pytest.mark.parametrize("reference", ["source tree", "wheel url", "an extra's source tree"])
async def test_a_dependency_s_direct_reference_is_refused_and_nothing_runs(
    rt: LocalRuntime,
    base_dir: Path,
    shared_dir: Path,
    http_index: HttpIndex,
    redis_server: Any,
    reference: str,
) -> None:
    marker = shared_dir / "MARKER"
    if reference == "wheel url":  # a wheel on the index itself: nothing would be built
        http_index.add(make_wheel(shared_dir, "evil", "1.0", "STOLEN = True\n"))
        target = f"{http_index.url}/files/evil-1.0-py3-none-any.whl"
    else:
        target = make_source_tree(shared_dir, marker, redis_server.port).as_uri()
    # An extra nobody asks for never reaches pip's resolver: the wheels' METADATA check finds it.
    marks = " ; extra == 'dev'" if "extra" in reference else ""
    requires = [f"evil @ {target}{marks}"]
    http_index.add(make_wheel(shared_dir, "carrier", "1.0", "", requires=requires))
    victim = redis.Redis(port=redis_server.port)
    victim.delete("stolen")
    connections = victim.info("stats")["total_connections_received"]

    with pytest.raises(BuildError) as caught:
        await build(
            rt,
            "fn_carrier",
            "python",
            "def handler(e, c):\n    return 1\n",
            requirements="carrier==1.0",
        )

    by = "carrier 1.0 depends on evil @ " if marks else "carrier depends on evil @ "
    assert caught.value.message.startswith(by + target)
    assert "a direct reference to a URL or path: refused" in caught.value.message
    assert not marker.exists(), "a dependency's build backend ran on the host"
    assert victim.get("stolen") is None
    assert victim.info("stats")["total_connections_received"] == connections
    assert not (base_dir / "fn_carrier" / "deps").exists()
    assert "/files/evil-1.0-py3-none-any.whl" not in http_index.paths


async def test_an_index_page_linking_another_host_is_refused_by_the_proxy(
    rt: LocalRuntime, shared_dir: Path, http_index: HttpIndex
) -> None:
    # The same server under another name: what the index may link is its own host:port only.
    http_index.add(make_wheel(shared_dir, "goodpkg", "1.0", ""))
    page = http_index.root / "simple" / "goodpkg" / "index.html"
    elsewhere = f"http://localhost:{http_index.port}/files/"
    page.write_text(page.read_text().replace("../../files/", elsewhere))

    with pytest.raises(BuildError) as caught:
        await build(
            rt,
            "fn_links",
            "python",
            "def handler(e, c):\n    return 1\n",
            requirements="goodpkg==1.0",
        )

    assert caught.value.message.startswith(
        f"pip download failed: the build may reach only the package index, and it asked for "
        f"localhost:{http_index.port}; pip said:"
    )
    assert "/files/goodpkg-1.0-py3-none-any.whl" not in http_index.paths


async def test_wheels_from_an_http_index_install_through_the_proxy(
    rt: LocalRuntime, base_dir: Path, shared_dir: Path, http_index: HttpIndex
) -> None:
    http_index.add(make_wheel(shared_dir, "helperpkg", "2.0", "WORD = 'index'\n"))
    module = "from helperpkg import WORD\nVALUE = 'from the ' + WORD\n"
    http_index.add(make_wheel(shared_dir, "goodpkg", "1.0", module, requires=["helperpkg>=2"]))
    code = "import goodpkg\ndef handler(event, context):\n    return goodpkg.VALUE\n"

    await build(rt, "fn_http", "python", code, requirements="goodpkg==1.0")

    assert await rt.invoke("fn_http", None) == "from the index"
    assert {"/simple/goodpkg/", "/simple/helperpkg/"} <= set(http_index.paths)
    assert {p.name for p in (base_dir / "fn_http").iterdir()} == {
        "handler.py",
        "_taskorch_bootstrap.py",
        "deps",
    }


async def ask(path: Path, request: bytes, *, to_end: bool = False) -> bytes:
    """Sends one request to the proxy's socket; its first bytes back (or all, to its end)."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(request)
    answer = await (reader.read() if to_end else reader.read(200))
    writer.close()
    return answer


async def test_the_index_proxy_reaches_the_index_only(
    http_index: HttpIndex, redis_server: Any
) -> None:
    http_index.add(make_wheel(http_index.root, "goodpkg", "1.0", ""))
    proxy = IndexProxy(frozenset({("127.0.0.1", http_index.port)}))

    async with proxy as path:
        tunnel = await ask(path, f"CONNECT 127.0.0.1:{http_index.port} HTTP/1.1\r\n\r\n".encode())
        page = await ask(
            path,
            f"GET {http_index.url}/simple/goodpkg/ HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        )
        to_redis = await ask(
            path, f"CONNECT 127.0.0.1:{redis_server.port} HTTP/1.1\r\n\r\n".encode()
        )
        by_get = await ask(
            path, f"GET http://localhost:{redis_server.port}/ HTTP/1.1\r\n\r\n".encode()
        )
        garbage = await ask(path, b"PING\r\n\r\n")

    assert tunnel.startswith(b"HTTP/1.1 200 Connection established")
    assert page.startswith(b"HTTP/1.0 200") and "/simple/goodpkg/" in http_index.paths
    assert to_redis.startswith(b"HTTP/1.1 403") and b"is not a package index" in to_redis
    assert by_get.startswith(b"HTTP/1.1 403")
    assert garbage.startswith(b"HTTP/1.1 400")
    assert proxy.refused == [f"127.0.0.1:{redis_server.port}", f"localhost:{redis_server.port}"]


async def test_the_index_proxy_goes_out_through_the_service_s_own_proxy() -> None:
    seen: list[bytes] = []

    async def outbound(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head)
        if head.startswith(b"CONNECT"):
            writer.write(b"HTTP/1.1 200 OK\r\n\r\ntunnelled")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(outbound, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    proxies, no_proxy = outbound_proxies(
        {
            "http_proxy": f"http://u:p%40ss@127.0.0.1:{port}",
            "HTTPS_PROXY": f"127.0.0.1:{port}",
            "no_proxy": "localhost,.direct.example",
        }
    )
    allowed = frozenset({("pkgs.example", 443), ("pkgs.example", 80)})
    async with IndexProxy(allowed, outbound=proxies, no_proxy=no_proxy) as path:
        tunnel = await ask(path, b"CONNECT pkgs.example:443 HTTP/1.1\r\n\r\n", to_end=True)
        page = await ask(
            path,
            b"GET http://pkgs.example/simple/ HTTP/1.1\r\nHost: pkgs.example\r\n"
            b"Proxy-Connection: keep-alive\r\n\r\n",
            to_end=True,
        )
        refused = await ask(path, b"CONNECT other.example:443 HTTP/1.1\r\n\r\n", to_end=True)
    server.close()

    assert no_proxy == ["localhost", "direct.example"]
    assert tunnel == b"HTTP/1.1 200 Connection established\r\n\r\ntunnelled"
    assert page.endswith(b"\r\n\r\nok")
    assert refused.startswith(b"HTTP/1.1 403")
    token = base64.b64encode(b"u:p@ss").decode()
    assert seen == [
        b"CONNECT pkgs.example:443 HTTP/1.1\r\nHost: pkgs.example:443\r\n\r\n",
        b"GET http://pkgs.example/simple/ HTTP/1.1\r\nHost: pkgs.example\r\n"
        + f"Proxy-Authorization: Basic {token}\r\nConnection: close\r\n\r\n".encode(),
    ]


async def test_a_wheel_bomb_is_refused_by_name_before_it_unpacks(
    rt: LocalRuntime,
    base_dir: Path,
    index: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 40 MB that compress to 40 kB, against a limit lowered to 20 MB (and the tests' 16 MB /tmp).
    links = Path(os.environ["PIP_FIND_LINKS"])
    make_wheel(links, "bombpkg", "1.0", "# " + "0" * 40 * 1024 * 1024 + "\n")
    monkeypatch.setattr(build_module, "_MAX_UNPACKED_MB", 20)
    code = "import bombpkg\ndef handler(e, c):\n    return 1\n"

    with pytest.raises(BuildError) as caught:
        await build(rt, "fn_bomb", "python", code, requirements="bombpkg==1.0")

    assert (
        caught.value.message == "the wheels of bombpkg 1.0 unpack to 41 MB, above the 20 MB limit"
    )
    assert not (base_dir / "fn_bomb" / "deps").exists()
    assert not (base_dir / "fn_bomb" / "wheels").exists()


def test_the_index_settings_of_pip_conf_and_the_environment() -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".conf") as conf:
        conf.write(
            "[global]\nindex-url = https://u:p@pkgs.example.com/simple\n"
            "extra-index-url = http://mirror.example:8080/simple file:///usr/share/simple\n"
            "[download]\ntimeout = 7\n[install]\nindex-url = https://ignored.example/\n"
        )
        conf.flush()
        sources = pip_sources(
            {
                "PIP_CONFIG_FILE": conf.name,
                "PIP_FIND_LINKS": "https://links.example/w/",
                "HOME": "/nonexistent",
            },
            python="/usr/bin/python3",
        )

    assert sources.hosts == {
        ("pkgs.example.com", 443),
        ("mirror.example", 8080),
        ("links.example", 443),
    }
    # This host's own /etc/pip.conf may add a certificate or constraints.
    assert {k: v for k, v in sources.settings.items() if k not in ("cert", "constraint")} == {
        "index-url": "https://u:p@pkgs.example.com/simple",
        "extra-index-url": "http://mirror.example:8080/simple file:///usr/share/simple",
        "find-links": "https://links.example/w/",
        "timeout": "7",
    }
    assert sources.pip_conf().startswith(
        "[global]\nindex-url = https://u:p@pkgs.example.com/simple\n"
    )
    assert "/usr/share" in [m.target for m in sources.mounts]
    default = pip_sources({"PIP_CONFIG_FILE": os.devnull}, python="/usr/bin/python3")
    assert default.hosts == {("pypi.org", 443), ("files.pythonhosted.org", 443)}


def test_aws_packaging_refuses_a_direct_reference_and_builds_nothing(
    shared_dir: Path, index: Path, redis_server: Any
) -> None:
    # The AWS provider's pip runs on the host (it needs no sandbox): it must build nothing.
    marker = shared_dir / "MARKER"
    tree = make_source_tree(shared_dir, marker, redis_server.port)
    links = Path(os.environ["PIP_FIND_LINKS"])
    make_wheel(links, "carrier", "1.0", "", requires=[f"evil @ {tree.as_uri()}"])

    with pytest.raises(AwsProviderError) as caught:
        package(
            runtime="python",
            code="def h(e, c):\n    return 1\n",
            handler="h",
            requirements="carrier==1.0",
        )

    assert str(caught.value) == (
        f"carrier depends on evil @ {tree.as_uri()}, a direct reference to a URL or path: "
        "refused (only packages from the index are installed)"
    )
    assert not marker.exists(), "a dependency's build backend ran on the host"
