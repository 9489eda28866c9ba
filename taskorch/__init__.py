"""taskorch: scheduled HTTP calls and orchestrations on Redis, fired to the millisecond."""

from taskorch.api import create_app
from taskorch.errors import (
    ApiError,
    ConfigError,
    TargetError,
    TaskorchError,
)
from taskorch.models import Task, TaskCreate, TaskPatch, TaskStatus
from taskorch.settings import Settings
from taskorch.store import Store, connect
from taskorch.worker import Worker

__all__ = [
    "ApiError",
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
