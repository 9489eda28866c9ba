"""``taskorch queues list|get|set|pause|resume|redrive``: rate limits, concurrency, pause,
redrive."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from taskorch import errors
from taskorch.cli import options, output
from taskorch.cli.verbs import EXIT_CONFLICT, EXIT_OK
from taskorch.client import Client

_COUNTED = ("scheduled", "running", "retrying", "succeeded", "failed", "cancelled")


def add(sub: Any, about: str) -> None:
    """Add ``taskorch queues`` and its verbs to the command's subparsers."""
    queues, qsub = options.group(
        sub, "queues", "queues: rate limits, concurrency, pause, redrive", about
    )
    options.verb(
        qsub,
        "list",
        "list your queues with their tasks by status",
        "taskorch queues list",
        _list,
    )
    p = options.verb(qsub, "get", "show a queue", "taskorch queues get emails", _get)
    p.add_argument("name", metavar="NAME")
    p = options.verb(
        qsub,
        "set",
        "set a queue's rate and concurrency (none lifts a limit)",
        "taskorch queues set emails --rate 50 --max-concurrent 3",
        _set,
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument(
        "--rate", type=options.parse_limit, default=options.KEEP, help="calls per second, or none"
    )
    p.add_argument(
        "--max-concurrent",
        type=options.parse_limit,
        default=options.KEEP,
        help="calls in flight, or none",
    )
    options.verbs_on_one(
        qsub,
        (
            ("pause", "dispatch nothing from the queue until resumed", "pause_queue"),
            ("resume", "dispatch again", "resume_queue"),
        ),
        "taskorch queues {verb} emails",
        "NAME",
        _show,
    )
    text = "retry every failed task of the queue, with progress"
    p = options.verb(qsub, "redrive", text, "taskorch queues redrive emails", _redrive)
    p.add_argument("name", metavar="NAME")
    options.examples(queues, qsub)


def _list(client: Client, args: argparse.Namespace) -> int:
    queues = client.list_queues()
    if output.as_json(args, {"items": queues}):
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
    print(output.table(head, rows))
    return EXIT_OK


def _rate(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:g}/s"


def _show(q: Any, args: argparse.Namespace) -> int:
    if output.as_json(args, q):
        return EXIT_OK
    output.print_fields(
        [
            ("name", q.name),
            ("state", "paused" if q.paused else "active"),
            ("rate", _rate(q.rate)),
            ("max concurrent", q.max_concurrent if q.max_concurrent is not None else "-"),
            ("waiting", q.waiting),
            ("tasks", ", ".join(f"{q.counts.get(s, 0)} {s}" for s in _COUNTED)),
        ],
        width=16,
    )
    return EXIT_OK


def _get(client: Client, args: argparse.Namespace) -> int:
    return _show(client.get_queue(args.name), args)


def _set(client: Client, args: argparse.Namespace) -> int:
    settings: dict[str, Any] = {}
    if args.rate is not options.KEEP:
        settings["rate"] = args.rate
    if args.max_concurrent is not options.KEEP:
        mc = args.max_concurrent
        settings["max_concurrent"] = int(mc) if mc is not None else None
    if not settings:
        raise options.UsageError("give --rate and/or --max-concurrent (a number, or none)")
    return _show(client.put_queue(args.name, **settings), args)


def _redrive(client: Client, args: argparse.Namespace) -> int:
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
        output.print_json({"queue": args.name, "retried": retried, "refused": refused})
    else:
        print(f"retried {len(retried)} failed task(s) of queue {args.name}")
        for r in refused:
            print(f"refused {r['id']}: {r['message']}")
    return EXIT_CONFLICT if refused else EXIT_OK
