"""How the verbs answer: tables and ``key: value`` blocks for people, times as far from now as a
person reads them, or, with ``--json``, the API's own JSON for scripts."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgspec


def relative(when: str | None, now: dt.datetime | None = None) -> str:
    """``in 5 min``, ``3 s ago``, ``now``: a time as far from now as a person reads it."""
    if not when:
        return "-"
    then = dt.datetime.fromisoformat(when)
    s = (then - (now or dt.datetime.now(dt.UTC))).total_seconds()
    span = abs(s)
    if span < 1:
        return "now"
    if span < 60:
        text = f"{span:.0f} s"
    elif span < 3600:
        text = f"{span / 60:.0f} min"
    elif span < 86400:
        hours, minutes = divmod(round(span / 60), 60)
        text = f"{hours} h {minutes} min" if minutes and hours < 10 else f"{round(span / 3600)} h"
    else:
        text = f"{span / 86400:.0f} d"
    return f"in {text}" if s > 0 else f"{text} ago"


def seconds(value: float | None) -> str:
    """A duration as it would be written on the command line: ``2h``, ``5m``, ``1.5s``."""
    if value is None:
        return "-"
    if value >= 3600 and value % 3600 == 0:
        return f"{value / 3600:g}h"
    if value >= 60 and value % 60 == 0:
        return f"{value / 60:g}m"
    return f"{value:g}s"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    rows = [["-" if v is None else str(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def short(text: str | None, width: int = 48) -> str:
    """``text`` cut to ``width`` characters, with an ellipsis where it was cut."""
    if not text:
        return "-"
    return text if len(text) <= width else text[: width - 1] + "…"


def print_json(value: Any) -> None:
    print(msgspec.json.encode(value).decode())


def as_json(args: argparse.Namespace, value: Any) -> bool:
    """With ``--json``, print ``value`` as the API's JSON and say so: the verb prints nothing
    else then."""
    if args.json:
        print_json(value)
    return bool(args.json)


def print_done(args: argparse.Namespace, answer: dict[str, Any], text: str) -> int:
    """The answer of a verb the API answers with nothing (a delete, an event): ``answer`` with
    ``--json``, else ``text``; 0, the exit code."""
    if not as_json(args, answer):
        print(text)
    return 0


def print_fields(rows: Iterable[tuple[str, Any]], width: int = 15) -> None:
    """A ``key: value`` block, the keys padded to ``width``; rows whose value is None left out."""
    print("\n".join(f"{k + ':':<{width}}{v}" for k, v in rows if v is not None))


def print_created(
    args: argparse.Namespace, item: Any, show: Callable[[Any, argparse.Namespace], int]
) -> int:
    """A create verb's answer: with ``-q`` (and no ``--json``) the new id alone, else ``show``."""
    if args.quiet and not args.json:
        print(item.id)
        return 0
    return show(item, args)


def list_page(
    args: argparse.Namespace,
    group: str,
    calls: tuple[Callable[..., Any], Callable[..., Any]],
    headers: Sequence[str],
    row: Callable[[Any], Sequence[Any]],
    **filters: Any,
) -> int:
    """A list verb: the page it asks for (:func:`fetch_page`, ``calls`` its ``every`` and
    ``one``) printed (:func:`print_page`); 0, the exit code."""
    items, cursor = fetch_page(args, *calls, **filters)
    print_page(args, group, items, cursor, headers, row)
    return 0


def fetch_page(
    args: argparse.Namespace, every: Callable[..., Any], one: Callable[..., Any], **filters: Any
) -> tuple[list[Any], str | None]:
    """A list verb's items and the next page's cursor: every page with ``--all`` (``every``
    iterates them), else the page ``--limit`` and ``--cursor`` ask ``one`` for."""
    if args.all:
        return list(every(**filters)), None
    page = one(**filters, limit=args.limit, cursor=args.cursor)
    return page.items, page.next_cursor


def print_page(
    args: argparse.Namespace,
    group: str,
    items: list[Any],
    cursor: str | None,
    headers: Sequence[str],
    row: Callable[[Any], Sequence[Any]],
) -> None:
    """A list verb's answer: a table of ``row(item)`` (or ``no <group>``), and on stderr the
    command for the next page; with ``--json``, the page as the API gives it."""
    if as_json(args, {"items": items, "next_cursor": cursor}):
        return
    if not items:
        print(f"no {group}")
    else:
        print(table(headers, [row(item) for item in items]))
    if cursor:
        print(f"more: taskorch {group} list --cursor {cursor}", file=sys.stderr)
