"""Schedules: the recurring schedule's bodies, the task it makes at each time, and a schedule as
the API answers it."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Annotated, ClassVar, Literal

from msgspec import UNSET, Meta, Struct, UnsetType

from taskorch import constants as c
from taskorch.models.shared import QueueName, TaskSpec, Timestamp, _Input

__all__ = [
    "CatchUp",
    "Cron",
    "Every",
    "Schedule",
    "ScheduleCreate",
    "SchedulePage",
    "SchedulePatch",
    "ScheduleStatus",
    "ScheduleTask",
    "ZoneName",
    "schedule_problems",
]


class ScheduleStatus(enum.StrEnum):
    """Whether a schedule makes occurrences: ``active``; ``paused`` until resumed; ``ended``
    once its ``end_at`` has come."""

    active = "active"
    paused = "paused"
    ended = "ended"


CatchUp = Literal["one", "none", "all"]
Every = Annotated[float, Meta(ge=c.MIN_EVERY_S, le=c.MAX_EVERY_S, description="seconds")]
Cron = Annotated[str, Meta(max_length=200, description="5 fields, as crontab")]
ZoneName = Annotated[str, Meta(min_length=1, max_length=64, description="IANA time zone name")]


class ScheduleTask(TaskSpec):
    """The task a schedule makes at each of its times: a task body without ``run_at``/``delay``."""

    name: Annotated[str, Meta(max_length=200)] | None = None
    # The queue its tasks are dispatched through: the schedule lives in that queue's partition,
    # so it cannot be changed by PATCH (409), as a task cannot move between queues.
    queue: QueueName = c.DEFAULT_QUEUE
    # Named in the 422 instead of "is not a known field" (see decode._problems).
    _field_hints: ClassVar[dict[str, str]] = {
        "run_at": "cannot be given: the schedule sets each task's time",
        "delay": "cannot be given: the schedule sets each task's time",
    }


def schedule_problems(cron: str | None, every: float | None) -> list[tuple[str, str]]:
    """The rules that span a schedule's fields (each field's own are in decode._FIELD_RULES). An
    ``end_at`` before ``start_at`` or now is not one: the schedule is ``ended`` at once."""
    problems = []
    if (cron is None) == (every is None):
        problems.append(("cron", "give cron or every, exactly one of the two"))
    return problems


class ScheduleCreate(_Input):
    """Body of ``POST /v1/schedules``."""

    task: ScheduleTask
    cron: Cron | None = None
    every: Every | None = None
    timezone: ZoneName = "UTC"
    name: Annotated[str, Meta(max_length=200)] | None = None
    start_at: dt.datetime | None = None
    end_at: dt.datetime | None = None
    catch_up: CatchUp = "one"

    def check(self) -> list[tuple[str, str]]:
        return schedule_problems(self.cron, self.every)


class SchedulePatch(_Input):
    """Body of ``PATCH /v1/schedules/{id}``: absent fields stay. Giving ``cron`` replaces an
    ``every`` and the other way round; ``end_at: null`` removes the end."""

    task: ScheduleTask | UnsetType = UNSET
    cron: Cron | UnsetType = UNSET
    every: Every | UnsetType = UNSET
    timezone: ZoneName | UnsetType = UNSET
    name: Annotated[str, Meta(max_length=200)] | UnsetType | None = UNSET
    start_at: dt.datetime | UnsetType = UNSET
    end_at: dt.datetime | UnsetType | None = UNSET
    catch_up: CatchUp | UnsetType = UNSET

    def check(self) -> list[tuple[str, str]]:
        if self.cron is not UNSET and self.every is not UNSET:
            return [("cron", "give cron or every, not both")]
        return []


class Schedule(Struct):
    """A recurring schedule as the API answers it."""

    id: str
    name: str | None
    status: ScheduleStatus
    cron: str | None
    every: float | None
    timezone: str
    task: ScheduleTask
    start_at: Timestamp
    end_at: Timestamp | None
    catch_up: CatchUp
    next_runs: list[Timestamp]
    last_task_id: str | None
    created_at: Timestamp
    updated_at: Timestamp


class SchedulePage(Struct):
    items: list[Schedule]
    next_cursor: str | None
