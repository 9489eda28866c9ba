"""taskorch: scheduled HTTP calls and orchestrations on Redis, fired to the millisecond."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from taskorch.errors import (
    ApiError,
    ConfigError,
    TargetError,
    TaskorchError,
)
from taskorch.models import Task, TaskCreate, TaskPatch, TaskStatus

if TYPE_CHECKING:
    from taskorch.api import create_app
    from taskorch.client import AsyncClient, Client
    from taskorch.settings import Settings
    from taskorch.store import Store, connect
    from taskorch.worker import Worker

# The server's parts (Starlette, redis-py, aiohttp, boto3) load when first named, so that the
# client and the `taskorch tasks` verbs start without them (PEP 562).
_LAZY = {
    "AsyncClient": "taskorch.client",
    "Client": "taskorch.client",
    "Settings": "taskorch.settings",
    "Store": "taskorch.store",
    "Worker": "taskorch.worker",
    "connect": "taskorch.store",
    "create_app": "taskorch.api",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'taskorch' has no attribute {name!r}")


__all__ = [
    "ApiError",
    "AsyncClient",
    "Client",
    "ConfigError",
    "Settings",
    "Store",
    "TargetError",
    "Task",
    "TaskCreate",
    "TaskPatch",
    "TaskStatus",
    "TaskorchError",
    "Worker",
    "connect",
    "create_app",
]
__version__ = "0.1.0"
