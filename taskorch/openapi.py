"""The OpenAPI document, its schemas generated from the msgspec models the API decodes with."""

from __future__ import annotations

import copy
import enum
import zoneinfo
from functools import lru_cache
from typing import Any

import msgspec

from taskorch import models
from taskorch.models import rules
from taskorch.settings import Settings

_REF = "#/components/schemas/{name}"


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": _REF.format(name=name)}


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


def _header(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "schema": schema}


_RETRY_AFTER = {"Retry-After": _header("Seconds to wait before trying again", {"type": "string"})}
_ERRORS = {
    "400": _json("Error", "Malformed JSON (invalid_json) or a bad header"),
    "401": {
        **_json("Error", "Missing or invalid token (missing_token, invalid_token)"),
        "headers": {"WWW-Authenticate": _header("Always Bearer", {"type": "string"})},
    },
    "403": _json("Error", "The token lacks the needed scope"),
    "404": _json("Error", "Not found (or another owner's)"),
    "409": _json("Error", "The status forbids the change; the message names it"),
    "413": _json("Error", "The body is too large"),
    "422": _json("Error", "Validation failed; one detail per field"),
    "429": {
        **_json(
            "Error",
            "Too many requests (sign-ins for one user, open event streams, lists in progress)",
        ),
        "headers": _RETRY_AFTER,
    },
    "503": {
        **_json("Error", "Redis is unreachable or too slow (unavailable); try again"),
        "headers": _RETRY_AFTER,
    },
}
_ID_PREFIX = rules.ID_PREFIXES


def _op(
    summary: str,
    ok: dict[str, Any],
    *,
    op_id: str,
    body: str | None = None,
    codes: tuple[str, ...] = (),
    params: list[dict[str, Any]] | None = None,
    auth: bool = True,
    links: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One operation. With ``auth``, 401 and 403 are added; every operation that reads Redis may
    answer 503 when Redis is out."""
    op: dict[str, Any] = {"operationId": op_id, "summary": summary, "responses": {**ok}}
    extra = ("401", "403") if auth else ()
    for code in sorted({*codes, *extra, "503"}):
        op["responses"][code] = _ERRORS[code]
    if body:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(body)}},
        }
    if params:
        op["parameters"] = params
    if not auth:
        op["security"] = []
    if links:
        for response in ok.values():
            response["links"] = links
    return op


def _path_id(name: str) -> list[dict[str, Any]]:
    schema: dict[str, Any] = {"type": "string"}
    if name in _ID_PREFIX:
        schema["pattern"] = rules.id_pattern(_ID_PREFIX[name])
    return [{"name": name, "in": "path", "required": True, "schema": schema}]


def _links(id_name: str, **operations: str) -> dict[str, Any]:
    """Links from a create's answer to the operations that take its id (for stateful tests)."""
    return {
        name: {"operationId": op, "parameters": {id_name: "$response.body#/id"}}
        for name, op in operations.items()
    }


def _list_params(statuses: type[enum.Enum] | None, prefix: str) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {
            "name": "limit",
            "in": "query",
            "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
        },
        {
            "name": "cursor",
            "in": "query",
            "description": "next_cursor from the previous page",
            # Empty means the first page, like no cursor at all.
            "schema": {"type": "string", "pattern": f"^({prefix}_{rules.ID_BODY})?$"},
        },
    ]
    if statuses is not None:
        enum_values = [s.value for s in statuses]
        params.insert(
            0, {"name": "status", "in": "query", "schema": {"type": "string", "enum": enum_values}}
        )
    return params


_IDEMPOTENCY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "A repeat from the same owner within 24 h answers the first resource (200)",
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": 255,
    },
}


def _steerable(
    prefix: str,
    noun: str,
    *,
    id_name: str,
    statuses: type[enum.Enum],
    create_summary: str,
    patch_when: str,
    cancel_when: str,
    filters: tuple[dict[str, Any], ...] = (),
) -> dict[str, Any]:
    """The five routes tasks and orchestrations share: create, list, get, modify, cancel."""
    model = noun.capitalize()
    ids = _path_id(id_name)
    links = _links(
        id_name,
        **{
            f"Get{model}": f"get{model}",
            f"Modify{model}": f"modify{model}",
            f"Cancel{model}": f"cancel{model}",
        },
    )
    return {
        prefix: {
            "post": _op(
                create_summary,
                {
                    "201": _json(model, "Created; Location names it"),
                    "200": _json(model, "An Idempotency-Key repeat: the first one"),
                },
                op_id=f"create{model}",
                body=f"{model}Create",
                codes=("400", "413", "422"),
                params=[_IDEMPOTENCY],
                links=links,
            ),
            "get": _op(
                f"List {noun}s, newest first",
                {"200": _json(f"{model}Page", "A page")},
                op_id=f"list{model}s",
                codes=("422", "429"),
                params=[*_list_params(statuses, _ID_PREFIX[id_name]), *filters],
            ),
        },
        f"{prefix}/{{{id_name}}}": {
            "get": _op(
                f"Get a {noun}",
                {"200": _json(model, "It")},
                op_id=f"get{model}",
                codes=("404",),
                params=ids,
            ),
            "patch": _op(
                f"Modify a {noun} while {patch_when}",
                {"200": _json(model, "It")},
                op_id=f"modify{model}",
                body=f"{model}Patch",
                codes=("400", "404", "409", "413", "422"),
                params=ids,
            ),
        },
        f"{prefix}/{{{id_name}}}/cancel": {
            "post": _op(
                f"Cancel a {noun} while {cancel_when}",
                {"200": _json(model, "It")},
                op_id=f"cancel{model}",
                codes=("404", "409"),
                params=ids,
            ),
        },
    }


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
# A queue's name (rules.queue_name_ok); PUT takes any but default, which cannot be changed.
_QUEUE_NAME = rules.QUEUE_NAME_SCHEMA
_QUEUE_SETTABLE = {
    **_QUEUE_NAME,
    "pattern": "^(?!default$)" + rules.QUEUE_NAME_PATTERN[1:],
    "description": "a named queue (default cannot be limited or paused)",
}
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
        props["timezone"] = _ref("TimeZone")
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
_FUNCTION_RULES = [
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
        ref_template=_REF,
    )
    for name in ("TaskCreate", "TaskBatchItem", "TaskPatch"):
        _tighten(components[name])
    for name in ("OrchestrationCreate", "OrchestrationPatch"):
        _tighten(components[name])
    for name in ("StepSpec", "ConditionSpec", "TaskSpec", "FunctionSchedule", "Callback"):
        _tighten(components[name])
    components["FunctionCreate"]["allOf"] = _FUNCTION_RULES
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


def _schedule_paths() -> dict[str, Any]:
    ids = _path_id("sch_id")
    links = _links(
        "sch_id",
        GetSchedule="getSchedule",
        ModifySchedule="modifySchedule",
        PauseSchedule="pauseSchedule",
        ResumeSchedule="resumeSchedule",
        DeleteSchedule="deleteSchedule",
    )
    it = {"200": _json("Schedule", "It")}
    return {
        "/v1/schedules": {
            "post": _op(
                "Run a task on a cron expression or an interval",
                {
                    "201": _json("Schedule", "Created; Location names it"),
                    "200": _json("Schedule", "An Idempotency-Key repeat: the first one"),
                },
                op_id="createSchedule",
                body="ScheduleCreate",
                codes=("400", "413", "422"),
                params=[_IDEMPOTENCY],
                links=links,
            ),
            "get": _op(
                "List schedules, newest first",
                {"200": _json("SchedulePage", "A page")},
                op_id="listSchedules",
                codes=("422", "429"),
                params=_list_params(models.ScheduleStatus, "sch"),
            ),
        },
        "/v1/schedules/{sch_id}": {
            "get": _op("Get a schedule", it, op_id="getSchedule", codes=("404",), params=ids),
            "patch": _op(
                "Change a schedule (its occurrences not yet due are made anew)",
                it,
                op_id="modifySchedule",
                body="SchedulePatch",
                codes=("400", "404", "409", "413", "422"),
                params=ids,
            ),
            "delete": _op(
                "Delete a schedule and cancel its occurrences not yet started",
                {"204": {"description": "Deleted"}},
                op_id="deleteSchedule",
                codes=("404",),
                params=ids,
            ),
        },
        "/v1/schedules/{sch_id}/pause": {
            "post": _op(
                "Pause a schedule: no more occurrences, those not yet started are cancelled",
                it,
                op_id="pauseSchedule",
                codes=("404", "409"),
                params=ids,
            )
        },
        "/v1/schedules/{sch_id}/resume": {
            "post": _op(
                "Resume a paused schedule from now on",
                it,
                op_id="resumeSchedule",
                codes=("404", "409"),
                params=ids,
            )
        },
    }


def _simple(summary: str, op_id: str, **responses: str) -> dict[str, Any]:
    return {
        "get": {
            "operationId": op_id,
            "summary": summary,
            "security": [],
            "responses": {code.lstrip("_"): {"description": d} for code, d in responses.items()},
        }
    }


def _function_upload() -> dict[str, Any]:
    op = _op(
        "Upload a function (JSON, or multipart with the code as a file)",
        {"201": _json("Function", "Created; building")},
        op_id="createFunction",
        body="FunctionCreate",
        codes=("400", "413", "422"),
        links=_links(
            "fn_id",
            GetFunction="getFunction",
            GetFunctionCode="getFunctionCode",
            DeleteFunction="deleteFunction",
        ),
    )
    # The multipart form carries the same fields; `code` may be a file of UTF-8 text, `schedule`
    # is the FunctionSchedule object as JSON text (an empty field means none).
    op["requestBody"]["content"]["multipart/form-data"] = {
        "schema": {
            "type": "object",
            "required": ["name", "runtime", "code"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 200},
                "runtime": {"type": "string", "enum": ["python", "java", "node"]},
                "code": {
                    "type": "string",
                    "minLength": 1,
                    "contentMediaType": "text/plain",
                    "description": "the source, as a file or a text field (UTF-8)",
                },
                "handler": {"type": "string"},
                "requirements": {"type": "string", "maxLength": 65536},
                "provider": {"type": "string", "enum": ["local", "aws"]},
                "schedule": _ref("FunctionSchedule"),
            },
            "allOf": _FUNCTION_RULES,
        },
        "encoding": {"schedule": {"contentType": "application/json"}},
    }
    return op


def _calls_paths() -> dict[str, Any]:
    """Signing keys and redrive (issue #12)."""
    ids = _path_id("task_id")
    return {
        "/v1/signing-keys": {
            "get": _op(
                "The secrets that sign the caller's calls (Standard Webhooks; the first is made "
                "on first use), current first. A token with the read scope alone sees each "
                "key's id and created_at only",
                {
                    "200": _json(
                        "SigningKeys",
                        "The current secret, and the previous one while it still signs "
                        "(used_until); secret and used_until only for a token that may write",
                    )
                },
                op_id="getSigningKeys",
            )
        },
        "/v1/signing-keys/rotate": {
            "post": _op(
                "Make a new signing secret; the current one signs too for 24 h (both "
                "signatures in webhook-signature). Answered once every call signed from then "
                "on carries the new signature",
                {"200": _json("SigningKeys", "The new secret first, then the previous one")},
                op_id="rotateSigningKeys",
            )
        },
        "/v1/tasks/{task_id}/retry": {
            "post": _op(
                "Redrive a failed task: scheduled again now with a fresh retry budget; its "
                "attempts are kept and numbering goes on",
                {"200": _json("Task", "It, scheduled")},
                op_id="retryTask",
                codes=("404", "409"),
                params=ids,
            )
        },
    }


def _providers(settings: Settings) -> list[str]:
    """The function providers this server offers: local unless turned off, aws when set up."""
    out = ["local"] if settings.local_functions else []
    if settings.aws_region and settings.aws_lambda_role:
        out.append("aws")
    return out


_SCHEDULE_FILTER = {
    "name": "schedule_id",
    "in": "query",
    "description": "only the tasks this schedule made (latest time first)",
    "schema": {"type": "string", "pattern": f"^(sch_{rules.ID_BODY})?$"},
}


def _task_paths() -> dict[str, Any]:
    paths = _steerable(
        "/v1/tasks",
        "task",
        id_name="task_id",
        statuses=models.TaskStatus,
        create_summary="Schedule an HTTP call",
        patch_when="scheduled or retrying",
        cancel_when="scheduled or retrying",
    )
    paths["/v1/tasks"]["get"]["parameters"].append(_SCHEDULE_FILTER)
    return paths


def _queue_paths() -> dict[str, Any]:
    def name(schema: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"name": "queue", "in": "path", "required": True, "schema": schema}]

    return {
        "/v1/queues": {
            "get": _op(
                "List the owner's queues: default first, then the named ones",
                {"200": _json("QueueList", "Every queue, with its settings and counts")},
                op_id="listQueues",
                codes=("429",),
            )
        },
        "/v1/queues/{queue}": {
            "get": _op(
                "Get a queue: its settings, its tasks counted by status, how many wait",
                {"200": _json("Queue", "It")},
                op_id="getQueue",
                codes=("404",),
                params=name({"type": "string"}),
            ),
            "put": _op(
                "Set a queue's rate, concurrency cap and pause (fields left out are kept)",
                {"200": _json("Queue", "It, as set")},
                op_id="putQueue",
                body="QueueUpdate",
                codes=("400", "413", "422"),
                params=name(_QUEUE_SETTABLE),
            ),
        },
    }


# What ``GET /v1/events`` reports changes of, as the store's scripts and the functions' records
# publish them: each kind's id prefix, its statuses, and the status its deletion is published as.
_EVENT_KINDS: dict[str, tuple[str, type[enum.Enum], tuple[str, ...]]] = {
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
            "type": {"type": "string", "enum": list(_EVENT_KINDS)},
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
            for kind, (prefix, statuses, more) in _EVENT_KINDS.items()
        ],
    }


def _sse_event() -> dict[str, Any]:
    """One server-sent event of ``GET /v1/events``. Before OpenAPI 3.2 (``itemSchema``), the
    ``schema`` of a ``text/event-stream`` describes each event, as the SSE parser reads it: an
    object of its fields, ``data`` a string (here the JSON of an Event)."""
    return {
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"type": "string", "enum": list(_EVENT_KINDS)},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": _ref("Event"),
            },
            "id": {"type": "string"},
            "retry": {"type": "integer", "minimum": 0},
        },
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
    return {
        "LatenessStats": {
            "type": "object",
            "required": ["minutes", "items", "total"],
            "additionalProperties": False,
            "properties": {
                "minutes": {"type": "integer", "minimum": 1, "maximum": 60},
                "items": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": list(minute),
                        "additionalProperties": False,
                        "properties": minute,
                    },
                },
                "total": {
                    "type": "object",
                    "required": list(figures),
                    "additionalProperties": False,
                    "properties": figures,
                },
            },
        }
    }


def document(settings: Settings) -> dict[str, Any]:
    fn_id = _path_id("fn_id")
    schemas = copy.deepcopy(_components())
    providers = _providers(settings)
    provider: dict[str, Any] = {"anyOf": [{"enum": providers}, {"type": "null"}], "default": None}
    if not providers:
        provider = {"type": "null", "default": None}
    schemas["FunctionCreate"]["properties"]["provider"] = provider
    schemas.update(_lateness_schemas())
    schemas["Event"] = _event_schema()
    upload = _function_upload()
    upload["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]["provider"] = {
        "type": "string",
        "enum": providers,
    }
    doc: dict[str, Any] = {
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
        "paths": {
            "/v1/auth/token": {
                "post": _op(
                    "Exchange a username and password for a token",
                    {"200": _json("TokenResponse", "A bearer token")},
                    op_id="issueToken",
                    body="TokenRequest",
                    codes=("400", "401", "413", "422", "429"),
                    auth=False,
                )
            },
            "/v1/tasks/batch": {
                "post": _op(
                    "Schedule up to 1,000 HTTP calls; each is answered in its place",
                    {
                        "200": _json(
                            "TaskBatchResult",
                            "One item per task sent, in order: {task} (stored, or the first "
                            "task of a repeated idempotency_key) or {error} (that task alone was "
                            "refused: validation_failed, payload_too_large, or unavailable with "
                            "details[0].outcome not_stored or unknown)",
                        )
                    },
                    op_id="createTasks",
                    body="TaskBatch",
                    codes=("400", "413", "422"),
                )
            },
            **_task_paths(),
            **_steerable(
                "/v1/tasks",
                "task",
                id_name="task_id",
                statuses=models.TaskStatus,
                create_summary="Schedule an HTTP call",
                filters=(
                    {
                        "name": "queue",
                        "in": "query",
                        "description": "only this queue's tasks (empty: every queue's)",
                        # Empty means every queue, like no parameter at all.
                        "schema": {
                            "type": "string",
                            "pattern": "^(" + rules.QUEUE_NAME_PATTERN[1:-1] + ")?$",
                        },
                    },
                ),
                patch_when="scheduled or retrying",
                cancel_when="scheduled or retrying",
            ),
            **_queue_paths(),
            **_steerable(
                "/v1/orchestrations",
                "orchestration",
                id_name="orc_id",
                statuses=models.OrchestrationStatus,
                create_summary="Run steps in order with a condition check between them",
                patch_when="scheduled",
                cancel_when="scheduled or running",
            ),
            **_schedule_paths(),
            "/v1/functions": {
                "post": upload,
                "get": _op(
                    "List functions, newest first",
                    {"200": _json("FunctionPage", "A page")},
                    op_id="listFunctions",
                    codes=("422", "429"),
                    params=_list_params(None, "fn"),
                ),
            },
            "/v1/functions/{fn_id}": {
                "get": _op(
                    "Get a function",
                    {"200": _json("Function", "It")},
                    op_id="getFunction",
                    codes=("404",),
                    params=fn_id,
                ),
                "delete": _op(
                    "Delete a function (and its Lambda function and URL)",
                    {"204": {"description": "Deleted"}},
                    op_id="deleteFunction",
                    codes=("404",),
                    params=fn_id,
                ),
            },
            "/v1/functions/{fn_id}/code": {
                "get": _op(
                    "Get a function's source and requirements as uploaded",
                    {"200": _json("FunctionCode", "Its source")},
                    op_id="getFunctionCode",
                    codes=("404",),
                    params=fn_id,
                ),
            },
            "/fn/{fn_id}/{key}": {
                "post": {
                    "operationId": "triggerFunction",
                    "summary": "A function's trigger URL: the body is the event, the answer the handler's result",
                    "security": [],
                    "parameters": [*fn_id, *_path_id("key")],
                    "requestBody": {"content": {"application/json": {"schema": {}}}},
                    "responses": {
                        "200": {"description": "The handler's return value as JSON"},
                        "400": _ERRORS["400"],
                        "404": _json("Error", "Wrong id or key"),
                        "413": _ERRORS["413"],
                        "429": {
                            **_json(
                                "Error",
                                "Every instance is busy and enough calls wait (function_busy)",
                            ),
                            "headers": _RETRY_AFTER,
                        },
                        "500": _json("Error", "The handler raised (function_error)"),
                        "503": _ERRORS["503"],
                        "504": _json(
                            "Error", "The handler ran past its timeout (function_timeout)"
                        ),
                    },
                },
            },
            **_calls_paths(),
            "/v1/stats": {
                "get": _op(
                    "Counts by status of the caller's tasks and orchestrations",
                    {
                        "200": {
                            "description": "{tasks: {status: n}, orchestrations: {status: n}, functions: n}",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                    op_id="stats",
                )
            },
            "/v1/stats/lateness": {
                "get": _op(
                    "The caller's attempts by minute over the last hour: count and p50/p99/max "
                    "lateness (ms, to 2 significant digits), oldest minute first",
                    {
                        "200": {
                            "description": "{minutes, items: [{start, count, p50_ms, p99_ms, "
                            "max_ms}], total: {count, p50_ms, p99_ms, max_ms}}",
                            "content": {"application/json": {"schema": _ref("LatenessStats")}},
                        }
                    },
                    op_id="latenessStats",
                    codes=("422",),
                    params=[
                        {
                            "name": "minutes",
                            "in": "query",
                            "description": "how many minutes back, the current one included",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 60},
                        }
                    ],
                )
            },
            "/v1/events": {
                "get": _op(
                    "Server-sent events of the owner's changes (event: task, orchestration, "
                    "schedule, function; data: the JSON of an Event, {type, id, status})",
                    {
                        "200": {
                            "description": "An endless text/event-stream: `retry: 2000`, then "
                            "an event per change (`event: <type>`, `data: <Event as JSON>`) and "
                            "a comment line every 15 s. The schema describes each event.",
                            "content": {"text/event-stream": {"schema": _sse_event()}},
                        }
                    },
                    op_id="events",
                    codes=("429",),
                    params=[
                        {
                            "name": "access_token",
                            "in": "query",
                            "description": "the token, for EventSource, which cannot send headers",
                            "schema": {"type": "string"},
                        }
                    ],
                )
            },
            "/healthz": _simple("Process up", "healthz", _200="ok"),
            "/readyz": _simple("Redis reachable", "readyz", _200="ok", _503="Redis unreachable"),
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics (a Bearer TASKORCH_METRICS_TOKEN when set)",
                    "security": [],
                    "responses": {
                        "200": {"description": "Prometheus text format 0.0.4"},
                        "401": _ERRORS["401"],
                        "503": _ERRORS["503"],
                    },
                }
            },
        },
    }
    # issue #12: GET /v1/tasks?name= (a prefix of task names)
    doc["paths"]["/v1/tasks"]["get"]["parameters"].append(_NAME_FILTER)
    return doc


_NAME_FILTER = {
    "name": "name",
    "in": "query",
    "description": "only tasks whose name starts with this; a page may then be short (even "
    "empty) with a next_cursor to go on from",
    "schema": {"type": "string", "maxLength": 200},
}
