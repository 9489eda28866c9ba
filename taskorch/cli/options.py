"""What the verbs read from a command line: durations, times, headers, payloads, the options a
call takes, and the parsers themselves, each verb's ``--help`` ending with an example."""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import re
import sys
import textwrap
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|min|s|m|h|d)")


class UsageError(Exception):
    """A command line the verbs cannot act on; the message says what to write instead."""


def parse_duration(text: str) -> float:
    """Seconds in ``10s``, ``5m``, ``2h``, ``1h30m``, ``1d``, ``500ms`` or a plain number."""
    text = text.strip().lower()
    try:
        return float(text)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: write 10s, 5m, 2h, 1h30m, 1d or seconds"
        )
    return total


def parse_time(text: str) -> dt.datetime:
    """An ISO 8601 time; without an offset it is read in this machine's time zone."""
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: write 2026-12-24T18:00:00Z or 2026-12-24 18:00"
        ) from None
    return when if when.tzinfo else when.astimezone()


KEEP = object()  # an option not given: the setting keeps its value


def parse_limit(text: str) -> float | None:
    """A number, or ``none`` (also ``null``, ``off``) for no limit."""
    return None if text.lower() in ("none", "null", "off") else float(text)


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not a header: write Name:value")
    return name.strip(), value.strip()


def json_option(option: str) -> Callable[[str], Any]:
    """The argparse ``type`` of an option whose value is JSON (``--payload``, ``--data``)."""

    def parse(text: str) -> Any:
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise argparse.ArgumentTypeError(f"{option} is not JSON: {exc}") from None

    return parse


_payload = json_option("--payload")


def read_json(source: str, what: str) -> Any:
    """The JSON in the file ``source``, or on stdin for ``-``; ``what`` names it in an error."""
    name = "stdin" if source == "-" else source
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{what}: cannot read {name}: {getattr(exc, 'strerror', exc)}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{what}: {name} is not JSON: {exc}") from None


# -- the parsers ---------------------------------------------------------------------------------


def subcommand(
    sub: Any, name: str, help: str, example: str, *, description: str | None = None
) -> argparse.ArgumentParser:
    """A ``taskorch`` verb whose ``--help`` ends with an example (one or more command lines)."""
    p: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help,
        description=textwrap.fill(description or help[0].upper() + help[1:] + ".", 78),
        epilog="example:\n" + "\n".join(f"  {line}" for line in example.splitlines()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return p


_EXAMPLES: dict[int, list[str]] = {}  # each group's verbs' examples, for the group's --help


def group(sub: Any, name: str, help: str, description: str) -> tuple[argparse.ArgumentParser, Any]:
    """A group of client verbs (``taskorch tasks``) and the subparsers its verbs go into."""
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help, description=description)
    return parser, parser.add_subparsers(dest="verb", required=True, metavar="VERB")


def verb(
    sub: Any, name: str, help: str, example: str, run: Callable[[Any, Any], int]
) -> argparse.ArgumentParser:
    """A client verb of a group: ``--json``, and ``run(client, args)`` to act."""
    _EXAMPLES.setdefault(id(sub), []).append(example)
    p = subcommand(sub, name, help, example)
    p.add_argument("--json", action="store_true", help="print the API's answer as JSON")
    p.set_defaults(run=run)
    return p


def verbs_on_one(
    sub: Any,
    verbs: Iterable[tuple[str, str, str]],
    example: str,
    arg: str,
    show: Callable[[Any, argparse.Namespace], int],
) -> None:
    """Verbs (name, help, method) that act on the one thing their argument ``arg`` names
    (``TASK_ID``): each calls the client's ``method`` (``get_task``) with ``args.task_id`` and
    ``show``s its answer. ``example`` is each one's, with ``{verb}`` for its name."""
    dest = arg.lower()
    for name, help, method in verbs:
        run = functools.partial(_call_and_show, method, show, dest)
        p = verb(sub, name, help, example.format(verb=name), run)
        p.add_argument(dest, metavar=arg)


def _call_and_show(
    method: str,
    show: Callable[[Any, argparse.Namespace], int],
    dest: str,
    client: Any,
    args: argparse.Namespace,
) -> int:
    return show(getattr(client, method)(getattr(args, dest)), args)


def examples(group: argparse.ArgumentParser, sub: Any) -> None:
    """End a group's ``--help`` with the examples of all its verbs."""
    group.epilog = "examples:\n" + "\n".join(f"  {e}" for e in _EXAMPLES.pop(id(sub)))
    group.formatter_class = argparse.RawDescriptionHelpFormatter


def page_options(p: argparse.ArgumentParser) -> None:
    """``--limit``, ``--cursor`` and ``--all`` of a list verb."""
    p.add_argument("--limit", type=int, default=20, help="at most this many (20)")
    p.add_argument("--cursor", help="the next page: the cursor the last page printed")
    p.add_argument("--all", action="store_true", help="every page")


def call_options(p: argparse.ArgumentParser, *, url_required: bool = True) -> None:
    """The options of the HTTP call a task (or a schedule's tasks) makes."""
    p.add_argument("--url", required=url_required, help="the http(s) URL to call")
    p.add_argument(
        "--method",
        choices=["GET", "POST", "PUT", "PATCH", "DELETE"],
        type=str.upper,
        help="the HTTP method of the call (POST)",
    )
    p.add_argument("--payload", type=_payload, help="JSON sent as the body, e.g. '{\"a\": 1}'")
    p.add_argument(
        "--header", action="append", type=_header, default=[], help="Name:value (repeatable)"
    )
    p.add_argument("--retries", type=int, help="further attempts after a failed one (3)")
    p.add_argument("--retry-delay", type=parse_duration, help="wait before the first retry (1s)")
    p.add_argument("--timeout", type=parse_duration, help="per attempt (30s)")


def call_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The call's fields for the API, from :func:`call_options` (those not given left out)."""
    fields: dict[str, Any] = {"url": args.url}
    if args.header:
        fields["headers"] = dict(args.header)
    for name in ("method", "payload", "retries", "retry_delay", "timeout"):
        value = getattr(args, name)
        if value is not None:
            fields[name] = value
    return fields
