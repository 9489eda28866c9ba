"""Each input rule the API checks and the OpenAPI document publishes, stated once.

A rule here gives both the server's check (used by :mod:`taskorch.models` and the store) and
the JSON Schema fragment :mod:`taskorch.api.openapi` publishes. The schema never refuses what the
check accepts: where JSON Schema cannot say all of a rule (a URL's port range is said, a
bracketed host being a real IPv6 address is not), the pattern is the expressible part, the check
is that pattern *and* what the server adds, and the schema's description names the addition.
``tests/test_rules.py`` holds both sides to one table of good and bad values.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from taskorch import constants as c

# -- ids -----------------------------------------------------------------------------------------

# An id as the service makes them: a type prefix, "_", then 24 hex digits (time, then randomness).
ID_BODY = "[0-9a-f]{24}"
ID_PREFIXES = {"task_id": "tsk", "orc_id": "orc", "fn_id": "fn", "sch_id": "sch"}
_ID_BODY = re.compile(ID_BODY)


def id_pattern(prefix: str) -> str:
    """The JSON Schema pattern of an id of ``prefix``."""
    return f"^{prefix}_{ID_BODY}$"


def is_id(value: str, prefix: str) -> bool:
    """Whether ``value`` has the exact form the service gives ids of ``prefix``."""
    head, sep, body = value.partition("_")
    return head == prefix and sep == "_" and _ID_BODY.fullmatch(body) is not None


# -- URLs ----------------------------------------------------------------------------------------

URL_MAX_LENGTH = 8192
_CTL = r"\x00-\x1f\x7f"  # control characters: no HTTP client sends them in a URL
_HEX4 = "[0-9A-Fa-f]{1,4}"
_OCTET = "(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_LS32 = rf"({_HEX4}:{_HEX4}|{_OCTET}(\.{_OCTET}){{3}})"


def _ipv6() -> str:
    """RFC 3986's IPv6address, as its ABNF writes it (nine forms)."""
    h = f"{_HEX4}:"
    forms = [f"({h}){{6}}{_LS32}", f"::({h}){{5}}{_LS32}"]
    for before, after in ((0, f"({h}){{4}}{_LS32}"), (1, f"({h}){{3}}{_LS32}")):
        forms.append(f"(({h}){{0,{before}}}{_HEX4})?::{after}")
    forms += [
        f"(({h}){{0,2}}{_HEX4})?::({h}){{2}}{_LS32}",
        f"(({h}){{0,3}}{_HEX4})?::{h}{_LS32}",
        f"(({h}){{0,4}}{_HEX4})?::{_LS32}",
        f"(({h}){{0,5}}{_HEX4})?::{_HEX4}",
        f"(({h}){{0,6}}{_HEX4})?::",
    ]
    return "(" + "|".join(f"({f})" for f in forms) + ")"


_PORT = "0*(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})"
# Leading spaces are dropped by the parser, as browsers do; userinfo may hold "@" (the host is
# after the last one); a host is anything up to the port, path, query or fragment, or an IPv6
# address (with its zone, if any) in brackets.
URL_PATTERN = (
    r"^ *[Hh][Tt][Tt][Pp][Ss]?://"
    rf"([^/?#\[\]{_CTL}]*@)?"
    rf"([^/?#@:\[\]{_CTL}]+|\[{_ipv6()}(%[^%/?#\[\]{_CTL}]+)?\])"
    rf"(:({_PORT})?)?"
    rf"([/?#][^{_CTL}]*)?$"
)
_URL = re.compile(URL_PATTERN)
URL_SCHEMA: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": URL_MAX_LENGTH,
    "description": "http or https URL with a host (port 0 to 65535, any path, query and "
    "fragment); the server also refuses a host that Unicode normalization turns into one of "
    "/?#@: and a bracketed host that is not an IPv6 address",
    "pattern": URL_PATTERN,
}


@functools.lru_cache(maxsize=4096)
def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a target, or None when it can (remembered: a batch's tasks mostly
    share their url)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return "must be an http or https URL"
    if not parts.hostname:
        return "must name a host"
    if _URL.fullmatch(url) is None:
        if re.search(f"[{_CTL}]", url):
            return "must not contain control characters"
        return "is not a valid URL"
    return None


# -- headers -------------------------------------------------------------------------------------

# Headers that frame the message or belong to one connection: the HTTP client sets them from the
# request itself, and a task that set them could smuggle a second request or confuse a proxy.
RESERVED_HEADERS = (
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
)
RESERVED_HEADER_PREFIX = "proxy-"
HEADER_NAME_PATTERN = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"
# A header value: visible characters, spaces and tabs (RFC 9110 field-value), Latin-1 at most.
HEADER_VALUE_PATTERN = "^[\t\u0020-\u007e\u0080-\u00ff]*$"
_HEADER_NAME = re.compile(HEADER_NAME_PATTERN)
_HEADER_VALUE = re.compile(HEADER_VALUE_PATTERN)
_RESERVED = frozenset(RESERVED_HEADERS)


def _ci(word: str) -> str:
    return "".join(f"[{ch.upper()}{ch.lower()}]" if ch.isalpha() else ch for ch in word)


HEADERS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Sent as given. Not Host, Content-Length, Transfer-Encoding, Connection, "
    "Keep-Alive, TE, Trailer, Upgrade or Proxy-*: the service sets those.",
    "propertyNames": {
        "pattern": HEADER_NAME_PATTERN,
        "not": {
            "pattern": "^(("
            + "|".join(_ci(w) for w in RESERVED_HEADERS)
            + f")$|{_ci(RESERVED_HEADER_PREFIX)})"
        },
    },
    "additionalProperties": {"type": "string", "pattern": HEADER_VALUE_PATTERN},
    "default": {},
}


def header_problems(headers: dict[str, Any]) -> list[tuple[str, str]]:
    """(header name, message) for each header a task may not send."""
    problems = []
    for name, text in headers.items():
        lower = name.lower()
        if not _HEADER_NAME.fullmatch(name):
            problems.append((name, "is not a valid HTTP header name"))
        elif lower in _RESERVED or lower.startswith(RESERVED_HEADER_PREFIX):
            problems.append((name, "is set by the service itself and cannot be given"))
        elif "\r" in text or "\n" in text:
            problems.append((name, "must not contain line breaks"))
        elif not _HEADER_VALUE.fullmatch(text):
            problems.append((name, "must hold only visible characters, spaces and tabs"))
    return problems


# -- queue names ---------------------------------------------------------------------------------

QUEUE_NAME_PATTERN = c.QUEUE_NAME_PATTERN
QUEUE_NAME_MESSAGE = (
    "must be a short name: 1 to 64 letters, digits, - or _, starting with a letter or digit"
)
_QUEUE_NAME = re.compile(QUEUE_NAME_PATTERN)
QUEUE_NAME_SCHEMA: dict[str, Any] = {
    "type": "string",
    "pattern": QUEUE_NAME_PATTERN,
    "description": "a queue: 1 to 64 letters, digits, - or _, starting with a letter or digit",
}


@functools.lru_cache(maxsize=1024)
def queue_name_ok(name: str) -> bool:
    return _QUEUE_NAME.fullmatch(name) is not None
