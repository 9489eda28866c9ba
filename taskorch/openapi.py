"""The OpenAPI document, its schemas generated from the msgspec models the API decodes with."""

from __future__ import annotations

import enum
from functools import lru_cache
from typing import Any

import msgspec

from taskorch import models
from taskorch.settings import Settings

_REF = "#/components/schemas/{name}"


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": _REF.format(name=name)}


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


_ERRORS = {
    "400": _json("Error", "Malformed JSON (invalid_json) or a bad header"),
    "401": _json("Error", "Missing or invalid token"),
    "403": _json("Error", "The token lacks the needed scope"),
    "413": _json("Error", "The body is too large"),
    "422": _json("Error", "Validation failed; one detail per field"),
}


def _op(
    summary: str,
    ok: dict[str, Any],
    *,
    body: str | None = None,
    codes: tuple[str, ...] = (),
    params: list[dict[str, Any]] | None = None,
    auth: bool = True,
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {**ok}}
    for code in codes:
        op["responses"][code] = _ERRORS.get(code) or _json(
            "Error",
            {"404": "Not found (or another owner's)", "409": "The status forbids the change"}[code],
        )
    if body:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(body)}},
        }
    if params:
        op["parameters"] = params
    if not auth:
        op["security"] = []
    return op


def _path_id(name: str) -> list[dict[str, Any]]:
    return [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}]


def _list_params(statuses: type[enum.Enum] | None) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {
            "name": "limit",
            "in": "query",
            "schema": {"type": "integer", "minimum": 1, "maximum": 500},
        },
        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
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
    "schema": {"type": "string", "maxLength": 255},
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
) -> dict[str, Any]:
    """The five routes tasks and orchestrations share: create, list, get, modify, cancel."""
    model = noun.capitalize()
    ids = _path_id(id_name)
    return {
        prefix: {
            "post": _op(
                create_summary,
                {
                    "201": _json(model, "Created"),
                    "200": _json(model, "An Idempotency-Key repeat: the first one"),
                },
                body=f"{model}Create",
                codes=("400", "401", "403", "413", "422"),
                params=[_IDEMPOTENCY],
            ),
            "get": _op(
                f"List {noun}s, newest first",
                {"200": _json(f"{model}Page", "A page")},
                codes=("401", "403", "422"),
                params=_list_params(statuses),
            ),
        },
        f"{prefix}/{{{id_name}}}": {
            "get": _op(
                f"Get a {noun}",
                {"200": _json(model, "It")},
                codes=("401", "403", "404"),
                params=ids,
            ),
            "patch": _op(
                f"Modify a {noun} while {patch_when}",
                {"200": _json(model, "It")},
                body=f"{model}Patch",
                codes=("400", "401", "403", "404", "409", "413", "422"),
                params=ids,
            ),
        },
        f"{prefix}/{{{id_name}}}/cancel": {
            "post": _op(
                f"Cancel a {noun} while {cancel_when}",
                {"200": _json(model, "It")},
                codes=("401", "403", "404", "409"),
                params=ids,
            ),
        },
    }


@lru_cache(maxsize=1)
def _components() -> dict[str, Any]:
    _, components = msgspec.json.schema_components(
        [
            models.TaskCreate,
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
        ],
        ref_template=_REF,
    )
    return components


def _simple(summary: str, **responses: str) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "security": [],
            "responses": {code.lstrip("_"): {"description": d} for code, d in responses.items()},
        }
    }


def _function_upload() -> dict[str, Any]:
    op = _op(
        "Upload a function (JSON, or multipart with the code as a file)",
        {"201": _json("Function", "Created; building")},
        body="FunctionCreate",
        codes=("400", "401", "403", "413", "422"),
    )
    # The multipart form carries the same fields; `code` may be a file, `schedule` JSON text.
    op["requestBody"]["content"]["multipart/form-data"] = {
        "schema": {
            "type": "object",
            "required": ["name", "runtime", "code"],
            "properties": {
                "name": {"type": "string"},
                "runtime": {"type": "string", "enum": ["python", "java", "node"]},
                "code": {"type": "string", "format": "binary"},
                "handler": {"type": "string"},
                "requirements": {"type": "string"},
                "provider": {"type": "string", "enum": ["local", "aws"]},
                "schedule": {"type": "string", "description": "FunctionSchedule as JSON text"},
            },
        }
    }
    return op


def document(settings: Settings) -> dict[str, Any]:
    fn_id = _path_id("fn_id")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "taskorch",
            "version": "0.1.0",
            "description": "Scheduled HTTP tasks, orchestrations and functions on Redis.",
        },
        "servers": [{"url": settings.public_url}],
        "components": {
            "schemas": _components(),
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
                    body="TokenRequest",
                    codes=("400", "401", "422"),
                    auth=False,
                )
            },
            **_steerable(
                "/v1/tasks",
                "task",
                id_name="task_id",
                statuses=models.TaskStatus,
                create_summary="Schedule an HTTP call",
                patch_when="scheduled or retrying",
                cancel_when="scheduled or retrying",
            ),
            **_steerable(
                "/v1/orchestrations",
                "orchestration",
                id_name="orc_id",
                statuses=models.OrchestrationStatus,
                create_summary="Run steps in order with a condition check between them",
                patch_when="scheduled",
                cancel_when="scheduled or running",
            ),
            "/v1/functions": {
                "post": _function_upload(),
                "get": _op(
                    "List functions, newest first",
                    {"200": _json("FunctionPage", "A page")},
                    codes=("401", "403", "422"),
                    params=_list_params(None),
                ),
            },
            "/v1/functions/{fn_id}": {
                "get": _op(
                    "Get a function",
                    {"200": _json("Function", "It")},
                    codes=("401", "403", "404"),
                    params=fn_id,
                ),
                "delete": _op(
                    "Delete a function (and its Lambda function and URL)",
                    {"204": {"description": "Deleted"}},
                    codes=("401", "403", "404"),
                    params=fn_id,
                ),
            },
            "/fn/{fn_id}/{key}": {
                "post": {
                    "summary": "A function's trigger URL: the body is the event, the answer the handler's result",
                    "security": [],
                    "parameters": [*fn_id, *_path_id("key")],
                    "requestBody": {"content": {"application/json": {"schema": {}}}},
                    "responses": {
                        "200": {"description": "The handler's return value as JSON"},
                        "404": _json("Error", "Wrong id or key"),
                        "500": _json("Error", "The handler raised (function_error)"),
                        "504": _json(
                            "Error", "The handler ran past its timeout (function_timeout)"
                        ),
                    },
                },
            },
            "/v1/stats": {
                "get": {
                    "summary": "Counts by status of the caller's tasks and orchestrations",
                    "responses": {
                        "200": {
                            "description": "{tasks: {status: n}, orchestrations: {status: n}, functions: n}"
                        }
                    },
                }
            },
            "/v1/events": {
                "get": {
                    "summary": "Server-sent events of the owner's changes",
                    "parameters": [
                        {"name": "access_token", "in": "query", "schema": {"type": "string"}}
                    ],
                    "responses": {"200": {"description": "text/event-stream"}},
                }
            },
            "/healthz": _simple("Process up", _200="ok"),
            "/readyz": _simple("Redis reachable", _200="ok", _503="Redis unreachable"),
            "/metrics": _simple("Prometheus metrics", _200="text/plain"),
        },
    }
