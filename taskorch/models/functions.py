"""Functions: the upload body (with the task that calls the function once it is ready), a
function as the API answers it, and its code."""

from __future__ import annotations

import datetime as dt
import enum
import re
from typing import Annotated, Literal

from msgspec import Meta, Struct

from taskorch import constants as c
from taskorch.models.shared import CallPolicy, Seconds, Timestamp, _Input

__all__ = [
    "Function",
    "FunctionCode",
    "FunctionCreate",
    "FunctionPage",
    "FunctionSchedule",
    "FunctionStatus",
]


class FunctionSchedule(CallPolicy, kw_only=True):
    """Task fields for the task that calls a function once it is ready (its url is the trigger)."""

    run_at: dt.datetime | None = None
    delay: Seconds | None = None
    name: Annotated[str, Meta(max_length=200)] | None = None


class FunctionCreate(_Input):
    """Body of ``POST /v1/functions``."""

    name: Annotated[str, Meta(min_length=1, max_length=200)]
    runtime: Literal["python", "java", "node"]
    code: Annotated[str, Meta(min_length=1, max_length=c.MAX_FUNCTION_CODE_BYTES)]
    handler: Annotated[str, Meta(min_length=1, max_length=200)] | None = None
    requirements: Annotated[str, Meta(max_length=64 * 1024)] | None = None
    provider: Literal["local", "aws"] | None = None
    schedule: FunctionSchedule | None = None

    def check(self) -> list[tuple[str, str]]:
        problems = []
        handler = self.handler or ("" if self.runtime == "java" else "handler")
        if self.runtime == "java":
            if not re.fullmatch(r"[A-Za-z_$][\w$.]*::[A-Za-z_$][\w$]*", handler):
                problems.append(("handler", "java needs Class::method, such as Hello::handle"))
        elif not re.fullmatch(r"[A-Za-z_$][\w$]*", handler):
            problems.append(("handler", "must be a function name, such as handler"))
        if self.requirements and self.runtime != "python":
            problems.append(("requirements", "only python functions take requirements"))
        return problems


class FunctionStatus(enum.StrEnum):
    building = "building"
    ready = "ready"
    failed = "failed"


class Function(Struct):
    """A function as the API answers it. ``url`` is a credential: whoever has it can call it."""

    id: str
    name: str
    runtime: str
    handler: str
    provider: str
    status: FunctionStatus
    url: str | None
    error: str | None
    task_id: str | None
    created_at: Timestamp


class FunctionPage(Struct):
    items: list[Function]
    next_cursor: str | None


class FunctionCode(Struct):
    """A function's source as it was uploaded, apart from the Function itself so that lists and
    every refetch of one stay small (the code may be 512 KiB)."""

    id: str
    runtime: str
    handler: str
    code: str
    requirements: str | None
