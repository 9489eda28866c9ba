"""What a python build may reach while it fetches wheels: the package index, and nothing else.

pip resolves and downloads a function's requirements inside the sandbox (`build.py`), in a
network namespace of its own with only a loopback. It reaches the index through `--proxy` on
that loopback, where our launcher (`runtimes/pip_build.py`) forwards each connection to a unix
socket bound into the sandbox. At the other end, on the host, `IndexProxy` is a small HTTP proxy
that opens a connection only to a host:port of an index pip is configured with (`pip_sources`:
PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS and the same keys of pip.conf) and answers
403 to anything else: Redis, the API and every other port of the host or the network stay out
of reach. A `file://` index or a find-links folder is bound read-only into the sandbox instead.

The proxy never reads what it carries beyond the request line and headers; TLS to an https index
is end to end (CONNECT), so pip checks the index's certificate itself.
"""

from __future__ import annotations

import asyncio
import base64
import configparser
import contextlib
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

import structlog

from taskorch.functions.errors import BuildError
from taskorch.functions.jail import Mount

log = structlog.get_logger("taskorch.functions")

# Where the proxy's socket appears inside the sandbox.
SOCKET_IN_JAIL = "/run/taskorch-index.sock"
_PYPI = "https://pypi.org/simple"
# PyPI's pages link the files on a host of their own.
_PYPI_FILES = ("files.pythonhosted.org", 443)
_HEAD_LIMIT = 64 * 1024
_CONNECT_TIMEOUT_S = 30.0
_TRUE = ("1", "true", "yes", "on")
# pip options (long names, as pip.conf and PIP_* spell them) that say where packages come from.
_MULTI = ("extra-index-url", "find-links", "trusted-host")
_SINGLE = ("index-url", "no-index", "cert", "constraint", "timeout", "retries")


@dataclass(frozen=True)
class PipSources:
    """Where the fetch step's pip may take packages from.

    Args:
        settings: pip settings naming the indexes, folders, certificate and constraints, read
            on the host; given to pip in the sandbox as a pip.conf (`pip_conf`), not on its
            command line, where an index URL's password would show in `ps` on the host.
        hosts: the (host, port) pairs the proxy lets the build reach.
        mounts: folders and files bound read-only into the sandbox (file:// indexes, find-links
            folders, the certificate bundle, constraint files), at the same path.
    """

    settings: dict[str, str]
    hosts: frozenset[tuple[str, int]]
    mounts: tuple[Mount, ...]

    def pip_conf(self) -> str:
        lines = ["[global]", *(f"{key} = {value}" for key, value in self.settings.items())]
        return "\n".join(lines) + "\n"


def pip_sources(environ: Mapping[str, str], *, python: str) -> PipSources:
    """The package sources pip on the host would use, as pip options for the sandbox.

    pip's own rules: the config files (global, user, site, then PIP_CONFIG_FILE; none when that
    is `os.devnull`), each read in `[global]` then `[download]`, then PIP_<KEY> variables.
    """
    values: dict[str, str] = {}
    for path in _config_files(environ, python):
        parser = configparser.RawConfigParser()
        with contextlib.suppress(OSError, configparser.Error, UnicodeDecodeError):
            parser.read(path, encoding="utf-8")
        for section in ("global", "download"):
            if parser.has_section(section):
                for key, value in parser.items(section):
                    values[_canonical(key)] = value
    for key in (*_MULTI, *_SINGLE, "default-timeout"):
        env = environ.get("PIP_" + key.upper().replace("-", "_"))
        if env is not None:
            values[_canonical(key)] = env
    return _sources(values)


def _canonical(key: str) -> str:
    key = key.strip().lower().replace("_", "-")
    return "timeout" if key == "default-timeout" else key


def _config_files(environ: Mapping[str, str], python: str) -> list[Path]:
    named = environ.get("PIP_CONFIG_FILE")
    if named == os.devnull:
        return []
    xdg_dirs = environ.get("XDG_CONFIG_DIRS") or "/etc/xdg"
    home = Path(environ.get("HOME") or Path.home())
    user_config = Path(environ.get("XDG_CONFIG_HOME") or home / ".config")
    files = [Path(d) / "pip" / "pip.conf" for d in xdg_dirs.split(":") if d]
    files += [Path("/etc/pip.conf"), home / ".pip" / "pip.conf", user_config / "pip" / "pip.conf"]
    files.append(Path(os.path.realpath(python)).parent.parent / "pip.conf")
    if named:
        files.append(Path(named))
    return [f for f in files if f.is_file()]


def _sources(values: dict[str, str]) -> PipSources:
    settings: dict[str, str] = {}
    hosts: set[tuple[str, int]] = set()
    mounts: dict[str, Mount] = {}
    no_index = values.get("no-index", "").strip().lower() in _TRUE
    indexes = [] if no_index else [values.get("index-url", "").strip() or _PYPI]
    extra = [] if no_index else values.get("extra-index-url", "").split()
    links = values.get("find-links", "").split()
    if no_index:
        settings["no-index"] = "true"
    else:
        settings["index-url"] = indexes[0]
        if extra:
            settings["extra-index-url"] = " ".join(extra)
    if links:
        settings["find-links"] = " ".join(links)
    for location in (*indexes, *extra, *links):
        _reach(location, hosts, mounts, index=location not in links)
    if trusted := values.get("trusted-host", "").split():
        settings["trusted-host"] = " ".join(trusted)
    for key in ("cert", "constraint"):
        if path := values.get(key, "").strip():
            settings[key] = path
            _bind(Path(path), mounts, key)
    for key in ("timeout", "retries"):
        if value := values.get(key, "").strip():
            settings[key] = value
    return PipSources(settings, frozenset(hosts), tuple(mounts.values()))


def _reach(
    location: str, hosts: set[tuple[str, int]], mounts: dict[str, Mount], *, index: bool
) -> None:
    """Lets the build reach one index or find-links location: a host:port, or a bound folder."""
    parts = urlsplit(location)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        if parts.hostname:
            hosts.add((parts.hostname.lower(), parts.port or (443 if scheme == "https" else 80)))
            if parts.hostname.lower() == "pypi.org":
                hosts.add(_PYPI_FILES)
        return
    if scheme == "file":
        path = Path(url2pathname(parts.path))
    elif scheme == "":
        path = Path(location)
    else:
        return  # pip refuses other schemes itself
    # An index's pages at <root>/simple/ link files elsewhere under its root.
    if index and path.name == "simple":
        path = path.parent
    _bind(path, mounts, "index" if index else "find-links")


def _bind(path: Path, mounts: dict[str, Mount], what: str) -> None:
    path = Path(os.path.abspath(path))
    if not path.exists():
        return  # pip says so when it looks there
    if not _readable_by_all(path):
        raise BuildError(
            f"the package {what} {path} is not readable by function builds: they run as a uid "
            "of the function's own, so the server's operator must make it and its parent "
            "folders readable by all (chmod o+rx)"
        )
    mounts.setdefault(str(path), Mount(path, str(path)))


def _readable_by_all(path: Path) -> bool:
    try:
        mode = path.stat().st_mode
        wanted = 0o005 if path.is_dir() else 0o004
        return (mode & wanted) == wanted and all(p.stat().st_mode & 0o001 for p in path.parents)
    except OSError:
        return False


@dataclass(frozen=True)
class OutboundProxy:
    """The operator's own proxy (the service's `http_proxy`/`https_proxy`): builds go out via it."""

    host: str
    port: int
    authorization: str = ""  # a Proxy-Authorization header line, or ""


def outbound_proxies(environ: Mapping[str, str]) -> tuple[dict[str, OutboundProxy], list[str]]:
    """The service's proxies by scheme ("http", "https"), and its `no_proxy` entries."""
    found: dict[str, OutboundProxy] = {}
    for scheme in ("http", "https"):
        url = environ.get(f"{scheme}_proxy") or environ.get(f"{scheme.upper()}_PROXY") or ""
        parts = urlsplit(url if "://" in url else f"http://{url}")
        try:
            port = parts.port or 80
        except ValueError:
            continue
        if not url or parts.scheme.lower() != "http" or not parts.hostname:
            continue  # pip itself would not speak TLS to a proxy either
        auth = ""
        if parts.username is not None:
            user = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            auth = f"Proxy-Authorization: Basic {base64.b64encode(user.encode()).decode()}"
        found[scheme] = OutboundProxy(parts.hostname, port, auth)
    no_proxy = environ.get("no_proxy") or environ.get("NO_PROXY") or ""
    return found, [e.strip().lower().lstrip(".") for e in no_proxy.split(",") if e.strip()]


@dataclass
class IndexProxy:
    """An HTTP proxy on a unix socket that connects only to `hosts` (see the module's text).

    Use as `async with IndexProxy(hosts, uid=...) as socket_path:`; `refused` then lists the
    host:port pairs the build asked for and did not get. With `outbound` (the service's own
    proxies, see `outbound_proxies`), the allowed connections go out through them, as pip's
    would have, except to hosts matching `no_proxy`.
    """

    hosts: frozenset[tuple[str, int]]
    uid: int | None = None
    outbound: Mapping[str, OutboundProxy] = field(default_factory=dict)
    no_proxy: Sequence[str] = ()
    refused: list[str] = field(default_factory=list)
    _dir: str = ""
    _server: asyncio.AbstractServer | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def __aenter__(self) -> Path:
        # A short path: a unix socket's path is limited to 107 bytes.
        self._dir = tempfile.mkdtemp(prefix="taskorch-index-")
        path = Path(self._dir) / "s"
        self._server = await asyncio.start_unix_server(
            self._serve, path=str(path), limit=_HEAD_LIMIT
        )
        os.chmod(path, 0o600)
        if self.uid is not None:
            for item in (self._dir, path):
                os.chown(item, self.uid, self.uid)
        return path

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        upstream: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(_CONNECT_TIMEOUT_S):
                request = _parse_head(await reader.readuntil(b"\r\n\r\n"))
                if request is None:
                    return await _answer(writer, 400, "not an HTTP proxy request")
                if (request.host, request.port) not in self.hosts:
                    self.refused.append(request.target)
                    log.warning("function.build.refused_connection", target=request.target)
                    return await _answer(writer, 403, f"{request.target} is not a package index")
                via = self._via(request)
                try:
                    up_reader, upstream = await asyncio.open_connection(
                        via.host if via else request.host, via.port if via else request.port
                    )
                except OSError as exc:
                    return await _answer(writer, 502, f"cannot reach {request.target}: {exc}")
                self._writers.add(upstream)
                if request.method == "CONNECT":
                    if via is not None and not await _tunnel(up_reader, upstream, request, via):
                        return await _answer(writer, 502, f"the proxy refused {request.target}")
                    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                else:
                    upstream.write(request.forward(via))
            # The answer decides the end: the upstream closing (or pip's connection) ends both.
            sending = asyncio.ensure_future(_pump(reader, upstream))
            try:
                await _pump(up_reader, writer)
            finally:
                sending.cancel()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            for w in (writer, upstream):
                if w is not None:
                    self._writers.discard(w)
                    w.close()

    def _via(self, request: _Request) -> OutboundProxy | None:
        host = request.host
        if any(e == "*" or host == e or host.endswith("." + e) for e in self.no_proxy):
            return None
        return self.outbound.get("https" if request.method == "CONNECT" else "http")


@dataclass(frozen=True)
class _Request:
    method: str
    host: str
    port: int
    url: str  # plain HTTP: the absolute URL asked for
    headers: tuple[str, ...]

    @property
    def target(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def forward(self, via: OutboundProxy | None) -> bytes:
        """The request for the next hop: origin form to the index, absolute form to a proxy.

        One request per connection (`Connection: close`): the next may be for another host.
        """
        if via is None:
            parts = urlsplit(self.url)
            first = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        else:
            first = self.url
        lines = [f"{self.method} {first} HTTP/1.1", *self.headers]
        lines += [via.authorization] if via and via.authorization else []
        return "\r\n".join([*lines, "Connection: close", "", ""]).encode("latin-1")


def _parse_head(head: bytes) -> _Request | None:
    """The request of a proxy's client, or None if it is not one."""
    try:
        lines = head.decode("latin-1").split("\r\n")
        method, target, _version = lines[0].split(" ")
    except ValueError:
        return None
    if method == "CONNECT":
        found = _host_port(f"//{target}", None)
        return None if found is None else _Request(method, *found, "", ())
    if urlsplit(target).scheme.lower() != "http" or (found := _host_port(target, 80)) is None:
        return None
    hop_by_hop = ("connection", "keep-alive", "proxy-connection", "proxy-authorization")
    headers = [h for h in lines[1:] if h and h.split(":", 1)[0].strip().lower() not in hop_by_hop]
    return _Request(method, *found, target, tuple(headers))


def _host_port(url: str, default_port: int | None) -> tuple[str, int] | None:
    parts = urlsplit(url)
    try:
        port = parts.port or default_port
    except ValueError:  # not a number, or out of range
        return None
    if not parts.hostname or port is None:
        return None
    return parts.hostname.lower(), port


async def _tunnel(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    request: _Request,
    via: OutboundProxy,
) -> bool:
    """Asks the operator's proxy for a tunnel to the index; whether it answered 200."""
    lines = [f"CONNECT {request.target} HTTP/1.1", f"Host: {request.target}"]
    lines += [via.authorization] if via.authorization else []
    writer.write("\r\n".join([*lines, "", ""]).encode("latin-1"))
    head = await reader.readuntil(b"\r\n\r\n")
    return head.split(b" ", 2)[1:2] == [b"200"]


async def _answer(writer: asyncio.StreamWriter, status: int, reason: str) -> None:
    body = (reason + "\n").encode()
    words = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway"}[status]
    writer.write(
        f"HTTP/1.1 {status} {words}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    with contextlib.suppress(OSError):
        await writer.drain()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(256 * 1024):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
