"""``taskorch tasks create|list|get|cancel|retry``: one HTTP call at the time you choose."""

from __future__ import annotations

import argparse
from typing import Any

from taskorch.cli import options, output
from taskorch.cli.verbs import EXIT_OK
from taskorch.client import Client


def add(sub: Any, about: str) -> None:
    """Add ``taskorch tasks`` and its verbs to the command's subparsers."""
    tasks, tsub = options.group(sub, "tasks", "create, list and steer tasks through the API", about)
    p = options.verb(
        tsub,
        "create",
        "create a task: one HTTP call at the time you choose",
        "taskorch tasks create --url https://example.com/hook --in 10m --payload '{\"a\": 1}'",
        _create,
    )
    options.call_options(p)
    when = p.add_mutually_exclusive_group()
    when.add_argument("--in", dest="delay", type=options.parse_duration, help="10s, 5m, 2h, 1h30m")
    when.add_argument("--at", type=options.parse_time, help="a time, 2026-12-24T18:00:00Z")
    p.add_argument("--name", help="a label (list --name finds it by prefix)")
    p.add_argument("--queue", help="the queue it goes through (default)")
    p.add_argument("--idempotency-key", help="a repeat with the same key returns the first task")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the new task's id")

    p = options.verb(
        tsub,
        "list",
        "list your tasks, newest first",
        "taskorch tasks list --status failed --queue emails",
        _list,
    )
    p.add_argument("--status", choices=[s.value for s in _task_statuses()])
    p.add_argument("--queue")
    p.add_argument("--schedule", dest="schedule_id", help="only tasks this schedule made")
    p.add_argument("--name", help="only tasks whose name starts with this")
    options.page_options(p)
    options.verbs_on_one(
        tsub,
        (
            ("get", "show a task and its attempts", "get_task"),
            ("cancel", "cancel a scheduled or retrying task", "cancel_task"),
            ("retry", "run a failed task again now, with fresh retries", "retry_task"),
        ),
        "taskorch tasks {verb} tsk_0194c3a1b2c3d4e5f6a7b8c9",
        "TASK_ID",
        _show,
    )
    options.examples(tasks, tsub)


def _task_statuses() -> Any:
    from taskorch.models import TaskStatus

    return TaskStatus


def _create(client: Client, args: argparse.Namespace) -> int:
    fields = options.call_fields(args)
    url = fields.pop("url")
    for name in ("delay", "name", "queue"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    if args.at is not None:
        fields["run_at"] = args.at
    task = client.create_task(url=url, idempotency_key=args.idempotency_key, **fields)
    return _show(task, args, quiet=args.quiet)


def _list(client: Client, args: argparse.Namespace) -> int:
    filters = {
        "status": args.status,
        "queue": args.queue,
        "schedule_id": args.schedule_id,
        "name": args.name,
    }
    return output.list_page(
        args,
        "tasks",
        (client.iter_tasks, client.list_tasks),
        ["ID", "STATUS", "NAME", "QUEUE", "DUE/ENDED", "ATTEMPTS", "URL"],
        lambda t: (
            t.id,
            t.status.value,
            t.name,
            t.queue,
            output.relative(t.finished_at or t.run_at),
            len(t.attempts),
            output.short(t.url),
        ),
        **filters,
    )


def _show(task: Any, args: argparse.Namespace, *, quiet: bool = False) -> int:
    if output.as_json(args, task):
        return EXIT_OK
    if quiet:
        print(task.id)
        return EXIT_OK
    due = f"{output.relative(task.run_at)} ({task.run_at})" if task.run_at else "-"
    output.print_fields(
        [
            ("id", task.id),
            ("status", task.status.value),
            ("name", task.name),
            ("call", f"{task.method} {task.url}"),
            ("queue", task.queue),
            ("due", due),
            (
                "finished",
                f"{output.relative(task.finished_at)} ({task.finished_at})"
                if task.finished_at
                else None,
            ),
            (
                "retries",
                f"{task.retries} (first after {output.seconds(task.retry_delay)}, x{task.backoff:g})",
            ),
            ("schedule", task.schedule_id),
            ("orchestration", task.orchestration_id),
        ]
    )
    if task.attempts:
        print()
        print(
            output.table(
                ["ATTEMPT", "STARTED", "ANSWER", "DURATION", "LATENESS", "ERROR"],
                [
                    (
                        at.number,
                        output.relative(at.started_at),
                        at.status_code,
                        f"{at.duration_ms:.0f} ms" if at.duration_ms is not None else None,
                        f"{at.lateness_ms:.1f} ms",
                        output.short(at.error, 60) if at.error else None,
                    )
                    for at in task.attempts
                ],
            )
        )
    return EXIT_OK
