"""The OpenAPI document: its paths built from the API's route list (each route carries its
operation, see :mod:`taskorch.api.spec`), its schemas generated from the msgspec models the API
decodes with."""

from __future__ import annotations

import copy
import enum
import zoneinfo
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

import msgspec

from taskorch import models
from taskorch.api.spec import REF, Endpoint, closed_object, ref
from taskorch.models import rules
from taskorch.settings import Settings

# What the API accepts beyond each field's type, written into the generated schemas so that a
# client (or a fuzzer) that follows them is never refused: http(s) URLs with a host, header names
# and values as HTTP allows (minus those the service sets itself), and times with an offset. The
# URL and header rules are stated once, in taskorch.models.rules, with the server's checks.
_URL = rules.URL_SCHEMA
_HEADERS = rules.HEADERS_SCHEMA
_RUN_AT = {
    "type": "string",
    "description": "RFC 3339 with an offset, before the year 9999",
    "pattern": r"^(19[7-9][0-9]|[2-8][0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])[Tt ]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?([Zz]|[+-](0[0-9]|1[0-3]):[0-5][0-9])$",
}
# A number is read as unix seconds.
_UNIX_TIME = {
    "type": "number",
    "minimum": -62135596800,  # 0001-01-01: a time in the past means now
    "maximum": 253370764799,
    "description": "unix seconds",
}
# A queue's name (rules.queue_name_ok); see api.queues for the one PUT takes.
_QUEUE_NAME = rules.QUEUE_NAME_SCHEMA
_HANDLER = r"^[A-Za-z_$][A-Za-z0-9_$]*$"
_JAVA_HANDLER = r"^[A-Za-z_$][A-Za-z0-9_$.]*::[A-Za-z_$][A-Za-z0-9_$]*$"


def _tighten(schema: Any) -> None:
    """Put the API's field rules (above) into the msgspec-generated schemas, in place."""
    if isinstance(schema, list):
        for item in schema:
            _tighten(item)
        return
    if not isinstance(schema, dict):
        return
    props = schema.get("properties", {})
    for name, rule in (("url", _URL), ("headers", _HEADERS), ("run_at", _RUN_AT)):
        if name in props:
            props[name] = _replace_string(props[name], rule)
    if "queue" in props:
        props["queue"] = {**props["queue"], **_QUEUE_NAME}
    if "run_at" in props and "delay" in props:
        schema["not"] = {
            "description": "run_at or delay, not both",
            "required": ["run_at", "delay"],
            "properties": {
                "run_at": {"type": ["string", "number"]},
                "delay": {"type": "number"},
            },
        }
    for name, sub in props.items():
        if name not in ("url", "headers", "run_at"):
            _tighten(sub)
    for key in ("anyOf", "allOf", "oneOf", "items", "additionalProperties"):
        if key in schema:
            _tighten(schema[key])


def _replace_string(prop: dict[str, Any], rule: dict[str, Any]) -> dict[str, Any]:
    """``rule`` in place of the string or object branch of ``prop`` (keeping null branches)."""
    if "anyOf" in prop:
        branches = [b if b.get("type") == "null" else rule for b in prop["anyOf"]]
        if rule is _RUN_AT:
            branches.append(_UNIX_TIME)
        return {**prop, "anyOf": branches}
    merged = {**rule}
    if "default" in prop:
        merged["default"] = prop["default"]
    elif "default" in merged and rule is not _HEADERS:
        del merged["default"]
    return merged


# A cron expression the API always accepts (it takes more: names, ranges, L, W, #): each field
# `*`, `*/step` or a list of values in range; days of the month up to 28, so that every month has
# them.
def _cron_field(value: str, step: str) -> str:
    return rf"(\*(/({step}))?|({value})(,({value}))*)"


_CRON = {
    "type": "string",
    "description": "5 fields as crontab (minute hour day-of-month month day-of-week), read in "
    "timezone; names, ranges and steps as in Debian cron are accepted too",
    "pattern": "^"
    + " ".join(
        (
            _cron_field("[0-5]?[0-9]", "[1-9]|[1-5][0-9]"),
            _cron_field("[01]?[0-9]|2[0-3]", "[1-9]|1[0-9]|2[0-3]"),
            _cron_field("[1-9]|1[0-9]|2[0-8]", "[1-9]|[12][0-9]|30"),
            _cron_field("[1-9]|1[0-2]", "[1-9]|1[01]"),
            _cron_field("[0-7]", "[1-7]"),
        )
    )
    + "$",
}


def _zones() -> list[str]:
    from taskorch.cron import zone

    return sorted(z for z in zoneinfo.available_timezones() if zone(z) is not None)


def _tighten_schedules(components: dict[str, Any]) -> None:
    """A schedule's cron, time zone and times, as the API checks them."""
    # Once, referred to by both bodies: the list is ~600 names.
    components["TimeZone"] = {"type": "string", "enum": _zones(), "description": "IANA name"}
    for name in ("ScheduleCreate", "SchedulePatch"):
        props = components[name]["properties"]
        props["cron"] = _replace_string(props["cron"], _CRON)
        props["timezone"] = ref("TimeZone")
        for field in ("start_at", "end_at"):
            prop = props[field]
            props[field] = (
                _replace_string(prop, _RUN_AT)
                if "anyOf" in prop
                else {"anyOf": [_RUN_AT, _UNIX_TIME]}
            )
    components["ScheduleCreate"]["properties"]["timezone"]["default"] = "UTC"
    components["ScheduleTask"]["properties"]["url"] = _URL
    components["ScheduleTask"]["properties"]["headers"] = _HEADERS
    queue = components["ScheduleTask"]["properties"]["queue"]
    components["ScheduleTask"]["properties"]["queue"] = {**queue, **_QUEUE_NAME}
    create = components["ScheduleCreate"]
    create["oneOf"] = [
        {"required": ["cron"], "properties": {"cron": {"type": "string"}}},
        {"required": ["every"], "properties": {"every": {"type": "number"}}},
    ]
    components["SchedulePatch"]["not"] = {
        "description": "cron or every, not both",
        "required": ["cron", "every"],
    }


# java names Class::method; python and node a function; only python takes requirements.
FUNCTION_RULES = [
    {
        "if": {"properties": {"runtime": {"const": "java"}}, "required": ["runtime"]},
        "then": {
            "required": ["handler"],
            "properties": {"handler": {"type": "string", "pattern": _JAVA_HANDLER}},
        },
        "else": {
            "properties": {
                "handler": {"anyOf": [{"type": "string", "pattern": _HANDLER}, {"type": "null"}]}
            }
        },
    },
    {
        "if": {"properties": {"runtime": {"const": "python"}}, "required": ["runtime"]},
        "else": {"properties": {"requirements": {"anyOf": [{"const": ""}, {"type": "null"}]}}},
    },
]


@lru_cache(maxsize=1)
def _components() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(
        [
            models.TaskCreate,
            models.TaskBatch,
            models.TaskBatchResult,
            models.TaskPatch,
            models.Task,
            models.TaskPage,
            models.Error,
            models.TokenRequest,
            models.TokenResponse,
            models.OrchestrationCreate,
            models.OrchestrationPatch,
            models.Orchestration,
            models.OrchestrationPage,
            models.FunctionCreate,
            models.Function,
            models.FunctionPage,
            models.FunctionCode,
            models.SigningKeys,
            models.ScheduleCreate,
            models.SchedulePatch,
            models.Schedule,
            models.SchedulePage,
            models.QueueUpdate,
            models.Queue,
            models.QueueList,
        ],
        ref_template=REF,
    )
    for name in ("TaskCreate", "TaskBatchItem", "TaskPatch"):
        _tighten(components[name])
    for name in ("OrchestrationCreate", "OrchestrationPatch"):
        _tighten(components[name])
    for name in ("StepSpec", "ConditionSpec", "TaskSpec", "FunctionSchedule", "Callback"):
        _tighten(components[name])
    components["FunctionCreate"]["allOf"] = FUNCTION_RULES
    _tighten_schedules(components)
    # Any value is accepted in a batch's list and answered in its place (a bad task is refused
    # alone, inside the 200), so the list's items are documented, not required, to be tasks.
    tasks = components["TaskBatch"]["properties"]["tasks"]
    tasks["items"] = {
        "anyOf": [
            tasks["items"],
            {"description": "anything else is answered in its place with an error"},
        ]
    }
    # Exactly one of the two per item (msgspec cannot say so of a struct with optional fields).
    outcome = components["TaskBatchOutcome"]
    outcome["oneOf"] = [{"required": ["task"]}, {"required": ["error"]}]
    outcome["additionalProperties"] = False
    for name in ("task", "error"):
        outcome["properties"][name] = outcome["properties"][name]["anyOf"][0]
    return components


def _providers(settings: Settings) -> list[str]:
    """The function providers this server offers: local unless turned off, aws when set up."""
    out = ["local"] if settings.local_functions else []
    if settings.aws_region and settings.aws_lambda_role:
        out.append("aws")
    return out


# What ``GET /v1/events`` reports changes of, as the store's scripts and the functions' records
# publish them: each kind's id prefix, its statuses, and the status its deletion is published as.
EVENT_KINDS: dict[str, tuple[str, type[enum.Enum], tuple[str, ...]]] = {
    "task": ("tsk", models.TaskStatus, ()),
    "orchestration": ("orc", models.OrchestrationStatus, ()),
    "schedule": ("sch", models.ScheduleStatus, ("deleted",)),
    "function": ("fn", models.FunctionStatus, ("deleted",)),
}


def _event_schema() -> dict[str, Any]:
    """One change of ``GET /v1/events``: what changed (``type``, ``id``) and its status now."""
    return {
        "type": "object",
        "required": ["type", "id", "status"],
        "properties": {
            "type": {"type": "string", "enum": list(EVENT_KINDS)},
            "id": {"type": "string"},
            "status": {"type": "string"},
        },
        "oneOf": [
            {
                "properties": {
                    "type": {"const": kind},
                    "id": {"pattern": rules.id_pattern(prefix)},
                    "status": {"enum": [*(s.value for s in statuses), *more]},
                }
            }
            for kind, (prefix, statuses, more) in EVENT_KINDS.items()
        ],
    }


def _lateness_schemas() -> dict[str, Any]:
    """GET /v1/stats/lateness's answer (issue #13): a minute's or the window's figures."""
    ms = {"type": ["number", "null"]}
    figures = {
        "count": {"type": "integer", "minimum": 0},
        "p50_ms": ms,
        "p99_ms": ms,
        "max_ms": ms,
    }
    minute = {**figures, "start": {"type": "string", "format": "date-time"}}
    window = {
        "minutes": {"type": "integer", "minimum": 1, "maximum": 60},
        "items": {"type": "array", "items": closed_object(minute, list(minute))},
        "total": closed_object(figures, list(figures)),
    }
    return {"LatenessStats": closed_object(window, ["minutes", "items", "total"])}


def paths(routes: Iterable[Endpoint]) -> dict[str, Any]:
    """The document's paths: each route's operation under its path and method, a copy (the
    document is filled in per server)."""
    out: dict[str, Any] = {}
    for route in routes:
        if route.op is not None:
            out.setdefault(route.path, {})[route.method.lower()] = copy.deepcopy(route.op)
    return out


def document(settings: Settings, routes: Iterable[Endpoint]) -> dict[str, Any]:
    """The OpenAPI document this server publishes for ``routes`` (the app's ROUTES)."""
    schemas = copy.deepcopy(_components())
    providers = _providers(settings)
    provider: dict[str, Any] = {"anyOf": [{"enum": providers}, {"type": "null"}], "default": None}
    if not providers:
        provider = {"type": "null", "default": None}
    schemas["FunctionCreate"]["properties"]["provider"] = provider
    schemas.update(_lateness_schemas())
    schemas["Event"] = _event_schema()
    doc_paths = paths(routes)
    upload = doc_paths["/v1/functions"]["post"]["requestBody"]["content"]["multipart/form-data"]
    upload["schema"]["properties"]["provider"] = {"type": "string", "enum": providers}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "taskorch",
            "version": "0.1.0",
            "description": "Scheduled HTTP tasks, orchestrations and functions on Redis. "
            "Every error answers {error: {code, message, details}}.",
        },
        "servers": [{"url": settings.public_url}],
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
        "security": [{"bearer": []}],
        "paths": doc_paths,
    }
