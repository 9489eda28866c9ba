"""The client verbs of the ``taskorch`` command (``tasks``, ``schedules``, ``queues``): the API
through :mod:`taskorch.client`, read from ``TASKORCH_API_URL`` and ``TASKORCH_TOKEN``, answered
as tables for people or, with ``--json``, as the API's own JSON for scripts.

Exit codes (EXIT_*), the same for every verb, so that a script can tell what happened:
0 done; 1 any other error; 2 usage (a bad argument, TASKORCH_API_URL or TASKORCH_TOKEN unset);
3 not found; 4 conflict (the state forbids it, e.g. cancelling a finished task); 5 the service
is unavailable or out of reach (after the client's retries); 6 the token was refused (401/403);
7 the API refused the request as invalid (400, 413, 422).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
import textwrap
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgspec

from taskorch import errors
from taskorch.client import API_URL_ENV, TOKEN_ENV, Client, bare_token

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_CONFLICT = 4
EXIT_UNAVAILABLE = 5
EXIT_AUTH = 6
EXIT_INVALID = 7

GROUPS = ("tasks", "schedules", "queues")
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


_KEEP = object()  # an option not given: the setting keeps its value


def _limit(text: str) -> float | None:
    return None if text.lower() in ("none", "null", "off") else float(text)


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not a header: write Name:value")
    return name.strip(), value.strip()


def _payload(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"--payload is not JSON: {exc}") from None


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


def _seconds(value: float | None) -> str:
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


def _short(text: str | None, width: int = 48) -> str:
    if not text:
        return "-"
    return text if len(text) <= width else text[: width - 1] + "…"


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


def _verb(
    sub: Any, name: str, help: str, example: str, run: Callable[[Client, Any], int]
) -> argparse.ArgumentParser:
    _EXAMPLES.setdefault(id(sub), []).append(example)
    p = subcommand(sub, name, help, example)
    p.add_argument("--json", action="store_true", help="print the API's answer as JSON")
    p.set_defaults(run=run)
    return p


_EXAMPLES: dict[int, list[str]] = {}  # each group's verbs' examples, for the group's --help


def _examples(group: argparse.ArgumentParser, sub: Any) -> None:
    group.epilog = "examples:\n" + "\n".join(f"  {e}" for e in _EXAMPLES.pop(id(sub)))
    group.formatter_class = argparse.RawDescriptionHelpFormatter


def _call_options(p: argparse.ArgumentParser, *, url_required: bool = True) -> None:
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


def add_verbs(sub: Any) -> None:
    """Add ``tasks``, ``schedules`` and ``queues`` to the ``taskorch`` command's subparsers."""
    env = (
        f"Reads {API_URL_ENV} (the API's address) and {TOKEN_ENV} (a token). Exit codes: 0 done,"
        " 1 another error, 2 usage, 3 not found, 4 conflict, 5 service unavailable or out of"
        " reach, 6 token refused, 7 request invalid."
    )
    tasks = sub.add_parser(
        "tasks", help="create, list and steer tasks through the API", description=env
    )
    tsub = tasks.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = _verb(
        tsub,
        "create",
        "create a task: one HTTP call at the time you choose",
        "taskorch tasks create --url https://example.com/hook --in 10m --payload '{\"a\": 1}'",
        _task_create,
    )
    _call_options(p)
    when = p.add_mutually_exclusive_group()
    when.add_argument("--in", dest="delay", type=parse_duration, help="10s, 5m, 2h, 1h30m")
    when.add_argument("--at", type=parse_time, help="a time, 2026-12-24T18:00:00Z")
    p.add_argument("--name", help="a label (list --name finds it by prefix)")
    p.add_argument("--queue", help="the queue it goes through (default)")
    p.add_argument("--idempotency-key", help="a repeat with the same key returns the first task")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the new task's id")

    p = _verb(
        tsub,
        "list",
        "list your tasks, newest first",
        "taskorch tasks list --status failed --queue emails",
        _task_list,
    )
    p.add_argument("--status", choices=[s.value for s in _task_statuses()])
    p.add_argument("--queue")
    p.add_argument("--schedule", dest="schedule_id", help="only tasks this schedule made")
    p.add_argument("--name", help="only tasks whose name starts with this")
    p.add_argument("--limit", type=int, default=20, help="at most this many (20)")
    p.add_argument("--cursor", help="the next page: the cursor the last page printed")
    p.add_argument("--all", action="store_true", help="every page")
    for verb, text, run in (
        ("get", "show a task and its attempts", _task_get),
        ("cancel", "cancel a scheduled or retrying task", _task_cancel),
        ("retry", "run a failed task again now, with fresh retries", _task_retry),
    ):
        p = _verb(tsub, verb, text, f"taskorch tasks {verb} tsk_0194c3a1b2c3d4e5f6a7b8c9", run)
        p.add_argument("id", metavar="TASK_ID")

    _examples(tasks, tsub)
    schedules = sub.add_parser(
        "schedules", help="recurring tasks: create, list, pause, resume, delete", description=env
    )
    ssub = schedules.add_subparsers(dest="verb", required=True, metavar="VERB")
    p = _verb(
        ssub,
        "create",
        "create a schedule that makes a task at each time of a cron or an interval",
        "taskorch schedules create --cron '0 3 * * *' --timezone Europe/Berlin "
        "--url https://example.com/nightly",
        _schedule_create,
    )
    every = p.add_mutually_exclusive_group(required=True)
    every.add_argument("--cron", help="5 fields, as crontab: '*/15 * * * *'")
    every.add_argument("--every", type=parse_duration, help="an interval: 30s, 5m, 1h")
    _call_options(p)
    p.add_argument("--timezone", help="IANA name for the cron (UTC)")
    p.add_argument("--name")
    p.add_argument("--start-at", type=parse_time)
    p.add_argument("--end-at", type=parse_time)
    p.add_argument("--catch-up", choices=["one", "none", "all"], help="after downtime (one)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the new id")
    p = _verb(
        ssub,
        "list",
        "list your schedules",
        "taskorch schedules list --status paused",
        _schedule_list,
    )
    p.add_argument("--status", choices=["active", "paused", "ended"])
    p.add_argument("--limit", type=int, default=20, help="at most this many (20)")
    p.add_argument("--cursor")
    p.add_argument("--all", action="store_true", help="every page")
    for verb, text, run in (
        ("get", "show a schedule and its next runs", _schedule_get),
        ("pause", "make no more tasks until resumed", _schedule_pause),
        ("resume", "make tasks again", _schedule_resume),
        ("delete", "delete a schedule (tasks it made stay)", _schedule_delete),
    ):
        p = _verb(ssub, verb, text, f"taskorch schedules {verb} sch_0194c3a1b2c3d4e5f6a7b8c9", run)
        p.add_argument("id", metavar="SCHEDULE_ID")

    _examples(schedules, ssub)
    queues = sub.add_parser(
        "queues", help="queues: rate limits, concurrency, pause, redrive", description=env
    )
    qsub = queues.add_subparsers(dest="verb", required=True, metavar="VERB")
    _verb(
        qsub,
        "list",
        "list your queues with their tasks by status",
        "taskorch queues list",
        _queue_list,
    )
    p = _verb(qsub, "get", "show a queue", "taskorch queues get emails", _queue_get)
    p.add_argument("name", metavar="NAME")
    p = _verb(
        qsub,
        "set",
        "set a queue's rate and concurrency (none lifts a limit)",
        "taskorch queues set emails --rate 50 --max-concurrent 3",
        _queue_set,
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--rate", type=_limit, default=_KEEP, help="calls per second, or none")
    p.add_argument("--max-concurrent", type=_limit, default=_KEEP, help="calls in flight, or none")
    for verb, text, run in (
        ("pause", "dispatch nothing from the queue until resumed", _queue_pause),
        ("resume", "dispatch again", _queue_resume),
        ("redrive", "retry every failed task of the queue, with progress", _queue_redrive),
    ):
        p = _verb(qsub, verb, text, f"taskorch queues {verb} emails", run)
        p.add_argument("name", metavar="NAME")
    _examples(queues, qsub)


def _task_statuses() -> Any:
    from taskorch.models import TaskStatus

    return TaskStatus


# -- running a verb ------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Run a client verb; the exit code (EXIT_*) says how it went."""
    import os

    url, token = os.environ.get(API_URL_ENV), bare_token(os.environ.get(TOKEN_ENV))
    if not url:
        return _fail(f"set {API_URL_ENV} to the API's address, such as http://127.0.0.1:3000")
    if not token:
        return _fail(
            f"set {TOKEN_ENV} to a token (taskorch token --sub NAME, or `taskorch dev`'s "
            ".taskorch/dev-token)"
        )
    try:
        with Client(url, token=token) as client:
            code: int = args.run(client, args)
            return code
    except errors.ApiError as exc:
        if args.json:
            print(json.dumps(exc.body()))
        detail = "".join(f"\n  {_detail(d)}" for d in exc.details)
        print(f"taskorch: {exc.message} ({exc.status_code} {exc.code}){detail}", file=sys.stderr)
        return _exit_code(exc)
    except errors.ApiUnreachable as exc:
        print(f"taskorch: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except UsageError as exc:
        return _fail(str(exc))


def _fail(message: str) -> int:
    print(f"taskorch: {message}", file=sys.stderr)
    return EXIT_USAGE


def _detail(d: dict[str, Any]) -> str:
    if "field" in d:
        return f"{d['field'] or 'body'}: {d.get('message', '')}"
    return str(d.get("message", d))


def _exit_code(exc: errors.ApiError) -> int:
    status = exc.status_code
    if status == 404:
        return EXIT_NOT_FOUND
    if status == 409:
        return EXIT_CONFLICT
    if status in (429, 503, 502, 504):
        return EXIT_UNAVAILABLE
    if status in (401, 403):
        return EXIT_AUTH
    if status in (400, 413, 422):
        return EXIT_INVALID
    return EXIT_ERROR


def _print_json(value: Any) -> None:
    print(msgspec.json.encode(value).decode())


def _call_fields(args: argparse.Namespace) -> dict[str, Any]:
    fields: dict[str, Any] = {"url": args.url}
    if args.header:
        fields["headers"] = dict(args.header)
    for name in ("method", "payload", "retries", "retry_delay", "timeout"):
        value = getattr(args, name)
        if value is not None:
            fields[name] = value
    return fields


# -- tasks ---------------------------------------------------------------------------------------


def _task_create(client: Client, args: argparse.Namespace) -> int:
    fields = _call_fields(args)
    url = fields.pop("url")
    for name in ("delay", "name", "queue"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    if args.at is not None:
        fields["run_at"] = args.at
    task = client.create_task(url=url, idempotency_key=args.idempotency_key, **fields)
    return _show_task(task, args, quiet=args.quiet)


def _task_list(client: Client, args: argparse.Namespace) -> int:
    filters = {
        "status": args.status,
        "queue": args.queue,
        "schedule_id": args.schedule_id,
        "name": args.name,
    }
    if args.all:
        items, cursor = list(client.iter_tasks(**filters)), None
    else:
        page = client.list_tasks(**filters, limit=args.limit, cursor=args.cursor)
        items, cursor = page.items, page.next_cursor
    if args.json:
        _print_json({"items": items, "next_cursor": cursor})
        return EXIT_OK
    if not items:
        print("no tasks")
    else:
        rows = [
            (
                t.id,
                t.status.value,
                t.name,
                t.queue,
                relative(t.finished_at or t.run_at),
                len(t.attempts),
                _short(t.url),
            )
            for t in items
        ]
        print(table(["ID", "STATUS", "NAME", "QUEUE", "DUE/ENDED", "ATTEMPTS", "URL"], rows))
    if cursor:
        print(f"more: taskorch tasks list --cursor {cursor}", file=sys.stderr)
    return EXIT_OK


def _task_get(client: Client, args: argparse.Namespace) -> int:
    return _show_task(client.get_task(args.id), args)


def _task_cancel(client: Client, args: argparse.Namespace) -> int:
    return _show_task(client.cancel_task(args.id), args)


def _task_retry(client: Client, args: argparse.Namespace) -> int:
    return _show_task(client.retry_task(args.id), args)


def _show_task(task: Any, args: argparse.Namespace, *, quiet: bool = False) -> int:
    if args.json:
        _print_json(task)
        return EXIT_OK
    if quiet:
        print(task.id)
        return EXIT_OK
    due = f"{relative(task.run_at)} ({task.run_at})" if task.run_at else "-"
    rows = [
        ("id", task.id),
        ("status", task.status.value),
        ("name", task.name),
        ("call", f"{task.method} {task.url}"),
        ("queue", task.queue),
        ("due", due),
        (
            "finished",
            f"{relative(task.finished_at)} ({task.finished_at})" if task.finished_at else None,
        ),
        (
            "retries",
            f"{task.retries} (first after {_seconds(task.retry_delay)}, x{task.backoff:g})",
        ),
        ("schedule", task.schedule_id),
        ("orchestration", task.orchestration_id),
    ]
    print("\n".join(f"{k + ':':<15}{v}" for k, v in rows if v is not None))
    if task.attempts:
        print()
        print(
            table(
                ["ATTEMPT", "STARTED", "ANSWER", "DURATION", "LATENESS", "ERROR"],
                [
                    (
                        a.number,
                        relative(a.started_at),
                        a.status_code,
                        f"{a.duration_ms:.0f} ms" if a.duration_ms is not None else None,
                        f"{a.lateness_ms:.1f} ms",
                        _short(a.error, 60) if a.error else None,
                    )
                    for a in task.attempts
                ],
            )
        )
    return EXIT_OK


# -- schedules -----------------------------------------------------------------------------------


def _schedule_create(client: Client, args: argparse.Namespace) -> int:
    task = _call_fields(args)
    fields: dict[str, Any] = {}
    for name in ("cron", "every", "timezone", "name", "start_at", "end_at", "catch_up"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    sch = client.create_schedule(task=task, **fields)
    if args.quiet and not args.json:
        print(sch.id)
        return EXIT_OK
    return _show_schedule(sch, args)


def _schedule_list(client: Client, args: argparse.Namespace) -> int:
    if args.all:
        items, cursor = list(client.iter_schedules(status=args.status)), None
    else:
        page = client.list_schedules(status=args.status, limit=args.limit, cursor=args.cursor)
        items, cursor = page.items, page.next_cursor
    if args.json:
        _print_json({"items": items, "next_cursor": cursor})
        return EXIT_OK
    if not items:
        print("no schedules")
    else:
        rows = [
            (
                s.id,
                s.status.value,
                s.name,
                _when(s),
                relative(s.next_runs[0]) if s.next_runs else None,
                _short(s.task.url),
            )
            for s in items
        ]
        print(table(["ID", "STATUS", "NAME", "WHEN", "NEXT RUN", "URL"], rows))
    if cursor:
        print(f"more: taskorch schedules list --cursor {cursor}", file=sys.stderr)
    return EXIT_OK


def _when(s: Any) -> str:
    if s.cron:
        return f"cron {s.cron} ({s.timezone})"
    return f"every {_seconds(s.every)}"


def _schedule_get(client: Client, args: argparse.Namespace) -> int:
    return _show_schedule(client.get_schedule(args.id), args)


def _schedule_pause(client: Client, args: argparse.Namespace) -> int:
    return _show_schedule(client.pause_schedule(args.id), args)


def _schedule_resume(client: Client, args: argparse.Namespace) -> int:
    return _show_schedule(client.resume_schedule(args.id), args)


def _schedule_delete(client: Client, args: argparse.Namespace) -> int:
    client.delete_schedule(args.id)
    if args.json:
        _print_json({"id": args.id, "deleted": True})
    else:
        print(f"deleted {args.id}")
    return EXIT_OK


def _show_schedule(s: Any, args: argparse.Namespace) -> int:
    if args.json:
        _print_json(s)
        return EXIT_OK
    rows = [
        ("id", s.id),
        ("status", s.status.value),
        ("name", s.name),
        ("when", _when(s)),
        ("call", f"{s.task.method} {s.task.url}"),
        ("last task", s.last_task_id),
    ]
    print("\n".join(f"{k + ':':<15}{v}" for k, v in rows if v is not None))
    for i, run in enumerate(s.next_runs):
        print(f"{'next runs:' if i == 0 else '':<15}{run}  {relative(run)}")
    return EXIT_OK


# -- queues --------------------------------------------------------------------------------------

_COUNTED = ("scheduled", "running", "retrying", "succeeded", "failed", "cancelled")


def _queue_list(client: Client, args: argparse.Namespace) -> int:
    queues = client.list_queues()
    if args.json:
        _print_json({"items": queues})
        return EXIT_OK
    rows = [
        (
            q.name,
            _rate(q.rate),
            q.max_concurrent,
            "paused" if q.paused else "active",
            q.waiting,
            *(q.counts.get(s, 0) for s in _COUNTED),
        )
        for q in queues
    ]
    head = ["NAME", "RATE", "MAX CONCURRENT", "STATE", "WAITING", *(s.upper() for s in _COUNTED)]
    print(table(head, rows))
    return EXIT_OK


def _rate(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:g}/s"


def _show_queue(q: Any, args: argparse.Namespace) -> int:
    if args.json:
        _print_json(q)
        return EXIT_OK
    rows = [
        ("name", q.name),
        ("state", "paused" if q.paused else "active"),
        ("rate", _rate(q.rate)),
        ("max concurrent", q.max_concurrent if q.max_concurrent is not None else "-"),
        ("waiting", q.waiting),
        ("tasks", ", ".join(f"{q.counts.get(s, 0)} {s}" for s in _COUNTED)),
    ]
    print("\n".join(f"{k + ':':<16}{v}" for k, v in rows))
    return EXIT_OK


def _queue_get(client: Client, args: argparse.Namespace) -> int:
    return _show_queue(client.get_queue(args.name), args)


def _queue_set(client: Client, args: argparse.Namespace) -> int:
    settings: dict[str, Any] = {}
    if args.rate is not _KEEP:
        settings["rate"] = args.rate
    if args.max_concurrent is not _KEEP:
        mc = args.max_concurrent
        settings["max_concurrent"] = int(mc) if mc is not None else None
    if not settings:
        raise UsageError("give --rate and/or --max-concurrent (a number, or none)")
    return _show_queue(client.put_queue(args.name, **settings), args)


def _queue_pause(client: Client, args: argparse.Namespace) -> int:
    return _show_queue(client.pause_queue(args.name), args)


def _queue_resume(client: Client, args: argparse.Namespace) -> int:
    return _show_queue(client.resume_queue(args.name), args)


def _queue_redrive(client: Client, args: argparse.Namespace) -> int:
    """Retry every failed task of the queue: the ids first, then one retry each."""
    ids = [t.id for t in client.iter_tasks(queue=args.name, status="failed")]
    retried: list[str] = []
    refused: list[dict[str, str]] = []
    for n, task_id in enumerate(ids, 1):
        try:
            client.retry_task(task_id)
            retried.append(task_id)
        except (errors.Conflict, errors.NotFound) as exc:  # retried or deleted meanwhile
            refused.append({"id": task_id, "code": exc.code, "message": exc.message})
        if not args.json:
            print(f"\rredrive {args.name}: {n}/{len(ids)}", end="", file=sys.stderr, flush=True)
    if ids and not args.json:
        print(file=sys.stderr)
    if args.json:
        _print_json({"queue": args.name, "retried": retried, "refused": refused})
    else:
        print(f"retried {len(retried)} failed task(s) of queue {args.name}")
        for r in refused:
            print(f"refused {r['id']}: {r['message']}")
    return EXIT_CONFLICT if refused else EXIT_OK
