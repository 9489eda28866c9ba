"""Calling a task's target: one aiohttp session, the private-address guard, and the outcome.

The guard checks the addresses a host resolves to and the connector then connects to exactly
those addresses (it is the same list), so a DNS answer cannot change between check and connect.
Only globally routable addresses pass, and an IPv6 address that carries an IPv4 one (mapped,
6to4, NAT64, Teredo) is judged by the IPv4 inside. Redirects are never followed: a 3xx is an
answer like any other non-2xx. The session keeps no cookies: it serves every owner's tasks, and
a cookie one target sets must never go out with another owner's call.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import msgspec
from yarl import URL

from taskorch import constants as c
from taskorch import signing
from taskorch.errors import TargetBlocked, TargetConnectionError, TargetError, TargetTimeout
from taskorch.models.times import retry_after_s

# Cloud metadata endpoints (also inside the ranges below; named so a change there cannot drop them).
_METADATA = {ipaddress.ip_address("fd00:ec2::254"), ipaddress.ip_address("100.100.100.200")}
# Ranges refused besides what ``ipaddress`` says is not global (its tables differ between Python
# releases, and it counts multicast and some special-purpose blocks as global).
_V4_REFUSED = [
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT
        "192.0.0.0/24",  # IETF protocol assignments
        "192.88.99.0/24",  # 6to4 relay anycast
        "198.18.0.0/15",  # benchmarking
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",
    )
]
_V6_REFUSED = [
    ipaddress.IPv6Network(n)
    for n in (
        "::/8",  # unspecified, loopback, IPv4-compatible
        "64:ff9b:1::/48",  # NAT64 for local use: what it translates to is the network's choice
        "100::/64",  # discard
        "2001::/23",  # IETF protocol assignments (Teredo is decoded before this applies)
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation
        "5f00::/16",  # segment routing
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated, still routed inside sites)
        "ff00::/8",  # multicast
    )
]
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_json = msgspec.json.Encoder()
_SIGNATURE_HEADERS = frozenset({"webhook-id", "webhook-timestamp", "webhook-signature"})


def _embedded_ipv4(addr: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address] | None:
    """The IPv4 addresses an IPv6 address leads to (mapped, 6to4, Teredo, NAT64), if any."""
    if addr.ipv4_mapped is not None:
        return [addr.ipv4_mapped]
    if addr.sixtofour is not None:
        return [addr.sixtofour]
    if addr.teredo is not None:
        return list(addr.teredo)  # the Teredo server and the client's public address
    if addr in _NAT64:
        return [ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)]
    return None


def _ipv4_forbidden(addr: ipaddress.IPv4Address) -> bool:
    return not addr.is_global or addr in _METADATA or any(addr in n for n in _V4_REFUSED)


def address_forbidden(ip: str) -> bool:
    """True for anything but a globally routable address (loopback, private, link-local,
    multicast, reserved, documentation, metadata, ...), judging tunnels by the IPv4 inside."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv4Address):
        return _ipv4_forbidden(addr)
    inner = _embedded_ipv4(addr)
    if inner is not None:
        return any(_ipv4_forbidden(a) for a in inner)
    return not addr.is_global or addr in _METADATA or any(addr in n for n in _V6_REFUSED)


class GuardedConnector(aiohttp.TCPConnector):
    """A connector that refuses to connect to forbidden addresses, after resolving.

    ``trusted`` is one (host, port) let through anyway: this service's own public URL, which
    serves function trigger URLs that tasks must be able to call even on a private network.
    """

    def __init__(self, *args: Any, trusted: tuple[str, int] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.trusted = trusted

    async def _resolve_host(self, host: str, port: int, traces: Any = None) -> Any:
        # aiohttp resolves IP literals here too (without the resolver), so this one place sees
        # every address the connector will connect to.
        infos = await super()._resolve_host(host, port, traces)
        if self.trusted is not None and (host, port) == self.trusted:
            return infos
        allowed = [i for i in infos if not address_forbidden(i["host"])]
        if not allowed:
            raise TargetBlocked(
                f"{host} resolves to a private, loopback or link-local address; set "
                "TASKORCH_ALLOW_PRIVATE_TARGETS=1 to allow such targets"
            )
        return allowed


def make_session(*, allow_private: bool, trusted_url: str | None = None) -> aiohttp.ClientSession:
    """The one session a worker uses for every call (connection reuse is most of the speed).

    The connector has no limit of its own: the worker sends at most ``HOST_CALLS`` calls to a
    host at once, so a burst reuses that many keep-alive connections, and a host that stalls
    loses its room instead of holding up others (see :meth:`~taskorch.worker.Worker._pump`)."""
    connector: aiohttp.TCPConnector
    if allow_private:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=10)
    else:
        trusted = None
        if trusted_url:
            parts = urlsplit(trusted_url)
            default = 443 if parts.scheme == "https" else 80
            trusted = (parts.hostname or "", parts.port or default)
        connector = GuardedConnector(limit=0, ttl_dns_cache=10, trusted=trusted)
    return aiohttp.ClientSession(
        connector=connector,
        # Each call's own timeout (asyncio.timeout in ``call``) bounds everything; aiohttp's
        # default 5-minute one would only add a timer per call.
        timeout=aiohttp.ClientTimeout(total=None),
        cookie_jar=aiohttp.DummyCookieJar(),  # one session for every owner: keep no cookies
        auto_decompress=True,
        skip_auto_headers=("User-Agent",),
        headers={"User-Agent": "taskorch/0.1"},
    )


async def warm(session: aiohttp.ClientSession, *, url: str, count: int, timeout_s: float) -> int:
    """Open keep-alive connections to ``url``'s host ahead of calls due there, so that at their
    due time they find them open instead of making the TCP (and TLS) handshake then: a burst's
    first call arrived 35 to 60 ms late on new connections, however small the burst.

    Opens ``count`` less the idle connections the session already keeps for that host, through
    the session's own connector (the private-address guard applies), and hands them to its pool.
    Returns how many it opened; a host that cannot be reached is left to the calls to report.
    """
    connector = session.connector
    if connector is None or count <= 0:
        return 0
    try:
        # The connector takes what a connection is for from a request: the same key as a call's.
        req = aiohttp.ClientRequest(
            "GET", URL(url), loop=asyncio.get_running_loop(), session=session
        )
    except (ValueError, TypeError):
        return 0
    pool: Any = getattr(connector, "_conns", {})  # aiohttp's idle connections, by key
    count -= len(pool.get(req.connection_key, ()))
    timeout = aiohttp.ClientTimeout(total=timeout_s, connect=timeout_s)

    async def one() -> None:
        conn = await connector.connect(req, traces=[], timeout=timeout)
        conn.release()

    done = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    for result in done:
        if isinstance(result, asyncio.CancelledError):
            raise result
    return sum(1 for result in done if result is None)


@dataclass(slots=True)
class CallResult:
    """What one attempt got: a status and body, or an error."""

    started_ms: float
    finished_ms: float
    status_code: int | None = None
    body: bytes = b""
    error: str | None = None
    retry_after_s: float | None = None
    content_type: str | None = None  # only when the caller asked (keep_type): a step's output

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    def excerpt(self) -> str | None:
        if self.status_code is None:
            return None
        return self.body[: c.RESPONSE_EXCERPT_BYTES].decode("utf-8", "replace")


async def _read_up_to(stream: aiohttp.StreamReader, n: int) -> bytes:
    """Read ``n`` bytes or to the end, whichever comes first. One ``read(n)`` returns whatever
    is buffered, which is a fraction of an answer that arrives in several TCP pieces."""
    parts: list[bytes] = []
    left = n
    while left > 0:
        part = await stream.read(left)
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


async def call(
    session: aiohttp.ClientSession,
    *,
    url: str,
    method: str,
    headers: dict[str, str],
    payload: Any,
    timeout_s: float,
    extra_headers: dict[str, str],
    keep_body: int = c.RESPONSE_KEEP_BYTES,
    webhook_id: str | None = None,
    keys: Sequence[bytes] = (),
    keep_type: bool = False,
) -> CallResult:
    """Make one attempt. Never raises for the target's failures: they land in ``error``.

    With signing ``keys`` the call carries the Standard Webhooks headers for ``webhook_id``,
    signed over the exact body sent (:mod:`taskorch.signing`); they replace any the task gave.
    """
    all_headers = {**headers, **extra_headers}
    data: bytes | None = None
    if method != "GET" and payload is not None:
        data = _json.encode(payload)
        all_headers.setdefault("Content-Type", "application/json")
    if keys and webhook_id is not None:
        for name in [h for h in all_headers if h.lower() in _SIGNATURE_HEADERS]:
            del all_headers[name]
        all_headers.update(signing.headers(keys, webhook_id, data or b""))
    started = time.time() * 1000
    try:
        async with asyncio.timeout(timeout_s):
            async with session.request(
                method, url, headers=all_headers, data=data, allow_redirects=False
            ) as resp:
                body = await _read_up_to(resp.content, keep_body)
                if not resp.content.at_eof():
                    resp.close()  # too long to keep reading; don't reuse the connection
                retry_after = None
                if resp.status in (429, 503):
                    retry_after = retry_after_s(resp.headers.get("Retry-After"))
                ctype = resp.headers.get("Content-Type") if keep_type else None
                return CallResult(
                    started, time.time() * 1000, resp.status, body, None, retry_after, ctype
                )
    except TimeoutError:
        err: TargetError = TargetTimeout(f"timed out after {timeout_s:g} s")
    except TargetBlocked as exc:
        err = exc
    except aiohttp.ClientConnectorError as exc:
        err = TargetConnectionError(f"connection failed: {exc.os_error or exc}")
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        err = TargetConnectionError(
            f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        )
    return CallResult(started, time.time() * 1000, error=str(err))
