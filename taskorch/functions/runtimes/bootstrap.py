"""Bootstrap that runs inside a sandboxed Python function process (stdlib only).

`taskorch.functions` copies this file into the function's folder and starts it as
`python -I -u bootstrap.py MODE HANDLER FUNCTION_NAME MEMORY_MB FRAME_FD` with the folder as cwd.
It imports `handler.py`, answers `{"ready": ...}` once, then (MODE "serve") reads one JSON
request per line from stdin and writes one JSON response per line to FRAME_FD (a pipe of its
own; 1 means the original stdout): `{"id", "event", "request_id", "deadline_ms"}` ->
`{"id", "ok": true, "result"}` or `{"id", "ok": false, "error": "ValueError: boom", "trace"}`.
MODE "check" stops after "ready". fds 1 and 2 are the function's log.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from typing import IO, Any

# asyncio, inspect and traceback are imported when first needed: together they are most of
# a cold start's import time, and most handlers are plain functions that never fail.

_MAX_TRACE_CHARS = 8000
# A result is at most 6 MB of JSON, AWS Lambda's limit for a response (the same in every runtime).
MAX_RESULT_BYTES = 6 * 1024 * 1024
_TOO_LARGE = (
    f"ResultTooLarge: the result is larger than {MAX_RESULT_BYTES >> 20} MB of JSON "
    "(the limit of a function's answer): return less, or store it elsewhere and return where"
)


class Context:
    """The Lambda-style context object handed to the handler as its second argument."""

    def __init__(self, function_name: str, memory_mb: int, request_id: str, deadline_ms: int):
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = memory_mb
        self.aws_request_id = request_id
        self.invoked_function_arn = ""
        self.log_group_name = ""
        self.log_stream_name = ""
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left before the invocation is killed for taking too long."""
        return max(0, self._deadline_ms - int(time.time() * 1000))


def _describe(exc: BaseException) -> str:
    text = str(exc).replace(os.getcwd() + os.sep, "")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _trace(exc: BaseException) -> str:
    # Only the user's own frames, with paths relative to the function's folder: the bootstrap
    # and importlib frames are noise to the user, and the server's paths are none of its business.
    import traceback

    folder = os.getcwd() + os.sep
    summary = traceback.TracebackException.from_exception(exc)
    summary.stack = traceback.StackSummary.from_list(
        [
            frame
            for frame in summary.stack
            if frame.filename.startswith(folder) and frame.filename != os.path.abspath(__file__)
        ]
    )
    return "".join(summary.format()).replace(folder, "")[-_MAX_TRACE_CHARS:]


def _dumps(obj: object) -> bytes:
    # allow_nan=False: NaN/Infinity are not JSON and would break the reader on the other side.
    return json.dumps(obj, allow_nan=False, separators=(",", ":")).encode() + b"\n"


def _over_limit(obj: object) -> bool:
    """Whether `obj` is surely over the result limit, found without serializing it.

    A lower bound of its JSON size (a string its length and quotes, a number 1), walked with an
    early stop, no copy, and each container once (so a cycle stops too); `_serve` checks the
    exact size once it is serialized.
    """
    total = 0
    seen: set[int] = set()
    end = object()
    stack: list[Iterator[object]] = [iter((obj,))]
    while stack:
        value = next(stack[-1], end)
        if value is end:
            stack.pop()
            continue
        if isinstance(value, str):
            total += len(value) + 2
        elif isinstance(value, dict | list | tuple):
            if id(value) in seen:
                continue
            seen.add(id(value))
            total += 1 + max(len(value), 1)  # brackets and commas
            if isinstance(value, dict):
                for key in value:
                    total += (len(key) if isinstance(key, str) else 1) + 3  # "key":
                    if total > MAX_RESULT_BYTES:
                        return True
                stack.append(iter(value.values()))
            else:
                stack.append(iter(value))
        else:
            total += 1
        if total > MAX_RESULT_BYTES:
            return True
    return False


def _send(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _load(handler_name: str) -> Any:
    cwd = os.getcwd()
    # The function's own folder first, then its pip --target folder, then the stdlib.
    sys.path[:0] = [cwd, os.path.join(cwd, "deps")]
    module = __import__("handler")
    fn = getattr(module, handler_name, None)
    if fn is None:
        raise AttributeError(f"handler.py defines no {handler_name!r}")
    if not callable(fn):
        raise TypeError(f"handler.py: {handler_name!r} is a {type(fn).__name__}, not a function")
    return fn


def _serve(fn: Any, requests: IO[bytes], out: int, function_name: str, memory_mb: int) -> None:
    main_pid = os.getpid()
    loop: Any = None
    for line in requests:
        request = json.loads(line)
        context = Context(function_name, memory_mb, request["request_id"], request["deadline_ms"])
        try:
            result = fn(request["event"], context)
            if hasattr(result, "__await__"):
                import asyncio

                # One loop for the life of the process, so async handlers can keep
                # loop-bound clients (aiohttp sessions, ...) warm between calls.
                loop = loop or asyncio.new_event_loop()
                result = loop.run_until_complete(result)
            data = b""
            if not _over_limit(result):
                data = _dumps({"id": request["id"], "ok": True, "result": result})
            if not data or len(data) > MAX_RESULT_BYTES:
                data = _dumps({"id": request["id"], "ok": False, "error": _TOO_LARGE, "trace": ""})
        except Exception as exc:
            data = _dumps(
                {"id": request["id"], "ok": False, "error": _describe(exc), "trace": _trace(exc)}
            )
        if os.getpid() != main_pid:
            # A fork made inside the handler returned here: only the original may answer.
            os._exit(0)
        _send(out, data)


def main() -> int:
    """Load the handler, report readiness, then serve requests until stdin closes."""
    mode, handler_name, function_name, memory_mb, frame_fd = sys.argv[1:6]
    # Keep private copies of the protocol pipes (not inherited by child processes) and point
    # fds 0 and 1 elsewhere, so that print(), C extensions and child processes write to the log.
    out = os.dup(1) if frame_fd == "1" else int(frame_fd)
    os.set_inheritable(out, False)
    requests = os.fdopen(os.dup(0), "rb")
    os.dup2(2, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    try:
        fn = _load(handler_name)
    except BaseException as exc:  # SystemExit at import time is a broken module too
        _send(out, _dumps({"ready": False, "error": _describe(exc), "trace": _trace(exc)}))
        return 1
    _send(out, _dumps({"ready": True}))
    if mode == "serve":
        _serve(fn, requests, out, function_name, int(memory_mb))
    return 0


if __name__ == "__main__":
    sys.exit(main())
