"""``taskorch schedules create|list|get|pause|resume|delete``: recurring tasks."""

from __future__ import annotations

import argparse
from typing import Any

from taskorch.cli import options, output
from taskorch.cli.verbs import EXIT_OK
from taskorch.client import Client


def add(sub: Any, about: str) -> None:
    """Add ``taskorch schedules`` and its verbs to the command's subparsers."""
    schedules, ssub = options.group(
        sub, "schedules", "recurring tasks: create, list, pause, resume, delete", about
    )
    p = options.verb(
        ssub,
        "create",
        "create a schedule that makes a task at each time of a cron or an interval",
        "taskorch schedules create --cron '0 3 * * *' --timezone Europe/Berlin "
        "--url https://example.com/nightly",
        _create,
    )
    every = p.add_mutually_exclusive_group(required=True)
    every.add_argument("--cron", help="5 fields, as crontab: '*/15 * * * *'")
    every.add_argument("--every", type=options.parse_duration, help="an interval: 30s, 5m, 1h")
    options.call_options(p)
    p.add_argument("--timezone", help="IANA name for the cron (UTC)")
    p.add_argument("--name")
    p.add_argument("--start-at", type=options.parse_time)
    p.add_argument("--end-at", type=options.parse_time)
    p.add_argument("--catch-up", choices=["one", "none", "all"], help="after downtime (one)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the new id")
    example = "taskorch schedules list --status paused"
    p = options.verb(ssub, "list", "list your schedules", example, _list)
    p.add_argument("--status", choices=["active", "paused", "ended"])
    options.page_options(p)
    example = "taskorch schedules {verb} sch_0194c3a1b2c3d4e5f6a7b8c9"
    options.verbs_on_one(
        ssub,
        (
            ("get", "show a schedule and its next runs", "get_schedule"),
            ("pause", "make no more tasks until resumed", "pause_schedule"),
            ("resume", "make tasks again", "resume_schedule"),
        ),
        example,
        "SCHEDULE_ID",
        _show,
    )
    text = "delete a schedule (tasks it made stay)"
    p = options.verb(ssub, "delete", text, example.format(verb="delete"), _delete)
    p.add_argument("schedule_id", metavar="SCHEDULE_ID")
    options.examples(schedules, ssub)


def _create(client: Client, args: argparse.Namespace) -> int:
    task = options.call_fields(args)
    fields: dict[str, Any] = {}
    for name in ("cron", "every", "timezone", "name", "start_at", "end_at", "catch_up"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    return output.print_created(args, client.create_schedule(task=task, **fields), _show)


def _list(client: Client, args: argparse.Namespace) -> int:
    return output.list_page(
        args,
        "schedules",
        (client.iter_schedules, client.list_schedules),
        ["ID", "STATUS", "NAME", "WHEN", "NEXT RUN", "URL"],
        lambda s: (
            s.id,
            s.status.value,
            s.name,
            _when(s),
            output.relative(s.next_runs[0]) if s.next_runs else None,
            output.short(s.task.url),
        ),
        status=args.status,
    )


def _when(s: Any) -> str:
    if s.cron:
        return f"cron {s.cron} ({s.timezone})"
    return f"every {output.seconds(s.every)}"


def _delete(client: Client, args: argparse.Namespace) -> int:
    client.delete_schedule(args.schedule_id)
    answer = {"id": args.schedule_id, "deleted": True}
    return output.print_done(args, answer, f"deleted {args.schedule_id}")


def _show(s: Any, args: argparse.Namespace) -> int:
    if output.as_json(args, s):
        return EXIT_OK
    output.print_fields(
        [
            ("id", s.id),
            ("status", s.status.value),
            ("name", s.name),
            ("when", _when(s)),
            ("call", f"{s.task.method} {s.task.url}"),
            ("last task", s.last_task_id),
        ]
    )
    for i, run in enumerate(s.next_runs):
        print(f"{'next runs:' if i == 0 else '':<15}{run}  {output.relative(run)}")
    return EXIT_OK
