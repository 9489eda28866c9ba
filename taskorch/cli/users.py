"""``taskorch user add|passwd|remove NAME``: the users who sign in with a password, kept in the
Redis of TASKORCH_REDIS_URL; passwd and remove revoke the user's tokens."""

from __future__ import annotations

import asyncio
import getpass
import sys
from typing import Any

from taskorch.cli.options import subcommand
from taskorch.settings import Settings


def add(sub: Any) -> None:
    """Add ``taskorch user`` and its verbs to the command's subparsers."""
    u = subcommand(
        sub,
        "user",
        "manage users who sign in with a password",
        "echo 'a long password' | taskorch user add alice\ntaskorch user passwd alice\n"
        "taskorch user remove alice",
        description="Manage users who sign in with a password (POST /v1/auth/token), in the "
        "Redis of TASKORCH_REDIS_URL.",
    )
    usub = u.add_subparsers(dest="user_command", required=True)
    add = subcommand(
        usub,
        "add",
        "add or reset a user (password from a prompt or stdin)",
        "echo 'a long password' | taskorch user add alice",
    )
    add.add_argument("name")
    pw = subcommand(
        usub,
        "passwd",
        "change a user's password and revoke every token issued to them before",
        "taskorch user passwd alice     # asks for the new password twice",
    )
    pw.add_argument("name")
    rm = subcommand(
        usub,
        "remove",
        "remove a user and revoke every token issued to them",
        "taskorch user remove alice",
    )
    rm.add_argument("name")


def _read_password(name: str) -> str:
    if sys.stdin.isatty():
        password = getpass.getpass(f"Password for {name}: ")
        if getpass.getpass("Again: ") != password:
            print("taskorch: the passwords differ", file=sys.stderr)
            sys.exit(1)
    else:
        password = sys.stdin.readline().rstrip("\n")
    if len(password) < 8:
        print("taskorch: a password needs at least 8 characters", file=sys.stderr)
        sys.exit(1)
    return password


def run(settings: Settings, verb: str, name: str) -> None:
    """``taskorch user add|passwd|remove NAME``; passwd and remove revoke the user's tokens."""
    from taskorch import auth
    from taskorch.store import connect

    password = _read_password(name) if verb in ("add", "passwd") else ""

    async def go() -> str:
        redis = connect(settings.redis_url)
        try:
            if verb == "add":
                existed = await auth.add_user(redis, name, password)
                return "password changed, earlier tokens revoked" if existed else "saved"
            if verb == "passwd":
                await auth.set_password(redis, name, password)
                return "password changed, earlier tokens revoked"
            await auth.remove_user(redis, name)
            return "removed, its tokens revoked"
        finally:
            await redis.aclose()

    try:
        outcome = asyncio.run(go())
    except (OSError, ValueError, LookupError) as exc:
        print(f"taskorch: {exc}", file=sys.stderr)
        sys.exit(1)
    except Exception as exc:  # redis errors, e.g. unreachable
        print(f"taskorch: could not reach Redis at TASKORCH_REDIS_URL: {exc}", file=sys.stderr)
        sys.exit(1)
    print(f"user {name} {outcome}")
