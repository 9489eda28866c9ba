"""Running a client verb of the ``taskorch`` command (``tasks``, ``schedules``, ``queues``,
``orchestrations``): the API through :mod:`taskorch.client`, read from ``TASKORCH_API_URL`` and
``TASKORCH_TOKEN``.

Exit codes (EXIT_*), the same for every verb, so that a script can tell what happened:
0 done; 1 any other error; 2 usage (a bad argument, TASKORCH_API_URL or TASKORCH_TOKEN unset);
3 not found; 4 conflict (the state forbids it, e.g. cancelling a finished task); 5 the service
is unavailable or out of reach (after the client's retries); 6 the token was refused (401/403);
7 the API refused the request as invalid (400, 413, 422).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from taskorch import errors
from taskorch.cli.options import UsageError
from taskorch.client import API_URL_ENV, TOKEN_ENV, Client, bare_token

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_CONFLICT = 4
EXIT_UNAVAILABLE = 5
EXIT_AUTH = 6
EXIT_INVALID = 7

GROUPS = ("tasks", "schedules", "queues", "orchestrations")

# The groups' --help: where the verbs find the API, and what their exit codes say.
ABOUT = (
    f"Reads {API_URL_ENV} (the API's address) and {TOKEN_ENV} (a token). Exit codes: 0 done,"
    " 1 another error, 2 usage, 3 not found, 4 conflict, 5 service unavailable or out of"
    " reach, 6 token refused, 7 request invalid."
)


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
