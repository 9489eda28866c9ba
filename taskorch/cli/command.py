"""The ``taskorch`` command: its parser, and the dispatch that builds settings and objects and
hands over. Nothing else lives here: each group of verbs is its own module."""

from __future__ import annotations

import argparse
import sys
from importlib import metadata

from taskorch.cli import orchestrations, queues, schedules, tasks, users, verbs
from taskorch.cli.options import subcommand
from taskorch.errors import ConfigError
from taskorch.settings import Settings


def _version() -> str:
    """The installed package's version (its metadata, as pip shows it)."""
    try:
        return metadata.version("taskorch")
    except metadata.PackageNotFoundError:  # a source tree on sys.path, never installed
        return "unknown (not installed)"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="taskorch",
        description="Scheduled HTTP tasks on Redis.",
        epilog="examples:\n  taskorch dev\n  taskorch tasks create --help",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"taskorch {_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    redis = "TASKORCH_REDIS_URL=redis://127.0.0.1:6379/0"
    subcommand(
        sub,
        "dev",
        "run Redis, the API and a worker on this machine, for trying out",
        "taskorch dev        # then, in another shell: export TASKORCH_TOKEN=$(cat "
        ".taskorch/dev-token)",
        description="Run Redis, the API and a worker on this machine, for trying out. It prints "
        "the API's address and a token for the owner 'dev' (also in .taskorch/dev-token; the "
        "Redis URL and signing secret, for another shell, in .taskorch/dev.env). Ctrl-C stops "
        "everything.",
    )
    subcommand(
        sub,
        "serve",
        "run the API (TASKORCH_HOST:TASKORCH_PORT)",
        f"export {redis} TASKORCH_JWT_SECRET=$(openssl rand -hex 32)\ntaskorch serve",
        description="Run the API on TASKORCH_HOST:TASKORCH_PORT (127.0.0.1:3000, or every "
        "interface on PORT), in WEB_CONCURRENCY processes. Every setting: docs/configuration.md.",
    )
    subcommand(
        sub,
        "worker",
        "run a worker; run as many as you like",
        f"{redis} taskorch worker",
        description="Run a worker: it makes the calls that are due. Run as many as you like, "
        "anywhere that reaches TASKORCH_REDIS_URL.",
    )
    subcommand(
        sub,
        "migrate",
        "rewrite an old single-node Redis layout into partitions, in place (stop the old "
        "workers and API processes first)",
        f"{redis} taskorch migrate",
    )
    subcommand(
        sub,
        "check",
        "check the settings and Redis's eviction policy (a release step); exit 2 if wrong",
        "taskorch check && taskorch serve    # the Procfile's release step, then the API",
    )
    t = subcommand(
        sub,
        "token",
        "print a signed token",
        "taskorch token --sub dashboard --scope read --ttl 86400",
        description="Print a token signed with TASKORCH_JWT_SECRET, for the owner --sub.",
    )
    t.add_argument("--sub", required=True, help="the owner the token acts for")
    t.add_argument("--ttl", type=int, default=None, help="seconds until it expires")
    t.add_argument("--scope", nargs="*", default=None, help="read, write (default: all)")
    users.add(sub)
    # tasks, schedules, queues, orchestrations (verbs.GROUPS): the API through taskorch.client
    for group in (tasks, schedules, queues, orchestrations):
        group.add(sub, verbs.ABOUT)
    return p


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command in verbs.GROUPS:  # a client of the API: no server settings needed
        sys.exit(verbs.run(args))
    if args.command == "dev":
        from taskorch.cli.dev import run_dev

        sys.exit(run_dev())
    try:
        settings = Settings.from_env(verify_tokens=args.command in ("serve", "token", "check"))
    except ConfigError as exc:
        print(f"taskorch: {exc}", file=sys.stderr)
        sys.exit(2)
    try:
        _run(args, settings)
    except ConfigError as exc:
        print(f"taskorch: {exc}", file=sys.stderr)
        sys.exit(2)


def _run(args: argparse.Namespace, settings: Settings) -> None:
    if args.command == "serve":
        from taskorch.api import serve

        serve(settings)
    elif args.command == "check":
        from taskorch.store import check_redis

        check_redis(settings, require_reachable=True)
        print("taskorch: settings and Redis look right")
    elif args.command == "migrate":
        from taskorch.migrate import run_migrate

        run_migrate(settings)
    elif args.command == "worker":
        from taskorch.worker import run_worker

        run_worker(settings)
    elif args.command == "token":
        from taskorch.auth import mint_token

        if not settings.jwt_secret:
            print("taskorch: token needs TASKORCH_JWT_SECRET", file=sys.stderr)
            sys.exit(2)
        scope = " ".join(args.scope) if args.scope else None
        try:
            print(mint_token(settings, args.sub, ttl_s=args.ttl, scope=scope))
        except ValueError as exc:
            print(f"taskorch: --ttl: {exc}", file=sys.stderr)
            sys.exit(2)
    elif args.command == "user":
        users.run(settings, args.user_command, args.name)
