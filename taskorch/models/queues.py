"""Queues: the body that sets a queue's limits and pause, and a queue as the API answers it."""

from __future__ import annotations

from typing import Annotated

from msgspec import UNSET, Meta, Struct, UnsetType

from taskorch import constants as c
from taskorch.models.shared import _Input

__all__ = ["Queue", "QueueList", "QueueUpdate"]


class QueueUpdate(_Input):
    """Body of ``PUT /v1/queues/{name}``: a field left out keeps its value (a new queue's:
    unlimited, not paused); null lifts a limit."""

    rate: Annotated[float, Meta(ge=c.MIN_QUEUE_RATE, le=c.MAX_QUEUE_RATE)] | UnsetType | None = (
        UNSET
    )
    max_concurrent: Annotated[int, Meta(ge=1, le=c.MAX_QUEUE_CONCURRENCY)] | UnsetType | None = (
        UNSET
    )
    paused: bool | UnsetType = UNSET


class Queue(Struct):
    """A queue as the API answers it: its settings, its tasks counted by status, and how many
    due tasks wait for their turn (``waiting``: over its rate or concurrency, or paused)."""

    name: str
    rate: float | None
    max_concurrent: int | None
    paused: bool
    waiting: int
    counts: dict[str, int]


class QueueList(Struct):
    """Answer of ``GET /v1/queues``: every queue of the owner, ``default`` first."""

    items: list[Queue]
