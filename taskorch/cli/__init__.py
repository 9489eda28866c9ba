"""The ``taskorch`` command (``taskorch = "taskorch.cli:main"``, and ``python -m taskorch``).

``command`` is its parser and dispatch (dev, serve, worker, migrate, check, token, user); the
client verbs, a module per group (``tasks``, ``schedules``, ``queues``, ``orchestrations``), act
through :mod:`taskorch.client` and are run by ``verbs``, with ``options`` and ``output`` what they
share;
``users`` is ``taskorch user``, ``dev`` is ``taskorch dev``.
"""

from __future__ import annotations

from taskorch.cli.command import _parser, main
from taskorch.cli.options import parse_duration
from taskorch.cli.output import relative
from taskorch.cli.verbs import (
    EXIT_AUTH,
    EXIT_CONFLICT,
    EXIT_ERROR,
    EXIT_INVALID,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
)

__all__ = [
    "EXIT_AUTH",
    "EXIT_CONFLICT",
    "EXIT_ERROR",
    "EXIT_INVALID",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "_parser",
    "main",
    "parse_duration",
    "relative",
]
