"""``taskorch orchestrations create|list|get|cancel|retry|send-event``: steps run in order (and
the workflow kinds), from a JSON body as ``POST /v1/orchestrations`` takes it."""

from __future__ import annotations

import argparse
import json
from typing import Any

import msgspec

from taskorch.cli import options, output
from taskorch.cli.options import UsageError
from taskorch.cli.verbs import EXIT_OK
from taskorch.client import Client

_ID = "orc_0194c3a1b2c3d4e5f6a7b8c9"
# The verbs on one orchestration: name, help, the client's method.
_ON_ONE = (
    ("get", "show an orchestration and its steps", "get_orchestration"),
    ("cancel", "cancel a scheduled or running orchestration", "cancel_orchestration"),
    ("retry", "run a failed or stopped one again from where it ended", "retry_orchestration"),
)


def add(sub: Any, about: str) -> None:
    """Add ``taskorch orchestrations`` and its verbs to the command's subparsers."""
    what = "steps in order: create, list, steer, send events"
    orcs, osub = options.group(sub, "orchestrations", what, about)
    what = "create an orchestration from its JSON body, as POST /v1/orchestrations takes it"
    example = "taskorch orchestrations create order.json --delay 10m --name order-42"
    p = options.verb(osub, "create", what, example, _create)
    p.add_argument("file", metavar="FILE", help="the body as JSON: a file, or - to read stdin")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--delay", type=options.parse_duration, help="start in 10s, 5m, 2h ...")
    when.add_argument("--run-at", type=options.parse_time, help="start at 2026-12-24T18:00:00Z")
    p.add_argument("--name", help="a label (replaces the body's)")
    p.add_argument("--idempotency-key", help="a repeat with the same key returns the first one")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the new id")

    example = "taskorch orchestrations list --status failed"
    p = options.verb(osub, "list", "list your orchestrations, newest first", example, _list)
    p.add_argument("--status", choices=[s.value for s in _statuses()])
    options.page_options(p)
    options.verbs_on_one(
        osub, _ON_ONE, f"taskorch orchestrations {{verb}} {_ID}", "ORCHESTRATION_ID", _show
    )
    p = options.verb(
        osub,
        "send-event",
        "send the event a wait_for_event step waits for (its JSON becomes the step's output)",
        f'taskorch orchestrations send-event {_ID} shipped --data \'{{"tracking": "1Z9"}}\'',
        _send_event,
    )
    p.add_argument("orchestration_id", metavar="ORCHESTRATION_ID")
    p.add_argument("name", metavar="NAME", help="the event's name, as the step names it")
    data = p.add_mutually_exclusive_group()
    data.add_argument("--data", type=options.json_option("--data"), help="the event's JSON")
    data.add_argument("--data-file", metavar="FILE", help="the event's JSON: a file, or - (stdin)")
    options.examples(orcs, osub)


def _statuses() -> Any:
    from taskorch.models import OrchestrationStatus

    return OrchestrationStatus


def _create(client: Client, args: argparse.Namespace) -> int:
    body = options.read_json(args.file, "FILE")
    if not isinstance(body, dict) or not isinstance(body.get("steps"), list):
        raise UsageError(
            f"{args.file} is not an orchestration body: write a JSON object with a list of "
            '"steps", such as {"steps": [{"url": "https://example.com/a"}]}'
        )
    if args.delay is not None:
        body.pop("run_at", None)
        body["delay"] = args.delay
    if args.run_at is not None:
        body.pop("delay", None)
        body["run_at"] = args.run_at
    if args.name is not None:
        body["name"] = args.name
    # A body may carry its key as a batch item does; --idempotency-key wins.
    key = body.pop("idempotency_key", None)
    key = args.idempotency_key if args.idempotency_key is not None else key
    orc = client.create_orchestration(idempotency_key=key, **body)
    return output.print_created(args, orc, _show)


def _list(client: Client, args: argparse.Namespace) -> int:
    return output.list_page(
        args,
        "orchestrations",
        (client.iter_orchestrations, client.list_orchestrations),
        ["ID", "STATUS", "NAME", "STEP", "DUE/ENDED"],
        lambda o: (
            o.id,
            o.status.value,
            o.name,
            _at_step(o),
            output.relative(o.finished_at or o.run_at),
        ),
        status=args.status,
    )


def _at_step(o: Any) -> str:
    """``2/5``: the step it is at (1-based) of how many."""
    return f"{min(o.current_step + 1, len(o.steps))}/{len(o.steps)}"


def _send_event(client: Client, args: argparse.Namespace) -> int:
    body = args.data
    if args.data_file is not None:
        body = options.read_json(args.data_file, "--data-file")
    orc_id, name = args.orchestration_id, args.name
    client.send_event(orc_id, name=name, body=body)
    return output.print_done(
        args, {"id": orc_id, "event": name, "sent": True}, f"sent event {name} to {orc_id}"
    )


def _show(o: Any, args: argparse.Namespace) -> int:
    if output.as_json(args, o):
        return EXIT_OK
    fallback = o.fallback
    output.print_fields(
        [
            ("id", o.id),
            ("status", o.status.value),
            ("name", o.name),
            ("step", _at_step(o)),
            ("due", f"{output.relative(o.run_at)} ({o.run_at})" if o.run_at else None),
            (
                "finished",
                f"{output.relative(o.finished_at)} ({o.finished_at})" if o.finished_at else None,
            ),
            ("schedule", getattr(o, "schedule_id", None)),
            (
                "fallback",
                f"{fallback.status} {fallback.task_id or ''}".rstrip() if fallback else None,
            ),
        ]
    )
    print()
    print(
        output.table(
            ["STEP", "NAME", "KIND", "STATUS", "TASK", "CHECK", "OUTPUT"],
            [
                (
                    s.index,
                    getattr(s, "name", None),
                    getattr(s, "kind", None) or "task",
                    s.status,
                    s.task_id or _calls(s),
                    s.condition.status if s.condition else None,
                    _excerpt(s),
                )
                for s in o.steps
            ],
        )
    )
    return EXIT_OK


def _calls(step: Any) -> str | None:
    """A parallel or map step's calls, as their count by status (``3 succeeded, 1 running``)."""
    counts = msgspec.to_builtins(getattr(step, "counts", None))
    if not isinstance(counts, dict):
        return None
    return ", ".join(f"{n} {status}" for status, n in counts.items() if n) or None


def _excerpt(step: Any) -> str | None:
    """The step's output as JSON, cut to fit a line; None before it has one."""
    value = getattr(step, "output", None)
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    cut = " (truncated)" if getattr(step, "output_truncated", False) else ""
    return output.short(text, 40) + cut
