"""The OpenAPI document, its schemas generated from the msgspec models the API decodes with."""

from __future__ import annotations

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


_ORC = [{"name": "orc_id", "in": "path", "required": True, "schema": {"type": "string"}}]
_FN = [{"name": "fn_id", "in": "path", "required": True, "schema": {"type": "string"}}]
_ID = [{"name": "task_id", "in": "path", "required": True, "schema": {"type": "string"}}]


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


def document(settings: Settings) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "taskorch",
            "version": "0.1.0",
            "description": "Scheduled HTTP tasks and orchestrations on Redis.",
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
            "/v1/tasks": {
                "post": _op(
                    "Schedule an HTTP call",
                    {
                        "201": _json("Task", "Created"),
                        "200": _json("Task", "An Idempotency-Key repeat: the first task"),
                    },
                    body="TaskCreate",
                    codes=("400", "401", "403", "413", "422"),
                    params=[
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string", "maxLength": 255},
                        }
                    ],
                ),
                "get": _op(
                    "List tasks, newest first",
                    {"200": _json("TaskPage", "A page")},
                    codes=("401", "403", "422"),
                    params=[
                        {
                            "name": "status",
                            "in": "query",
                            "schema": {
                                "type": "string",
                                "enum": [s.value for s in models.TaskStatus],
                            },
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 500},
                        },
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                    ],
                ),
            },
            "/v1/tasks/{task_id}": {
                "get": _op(
                    "Get a task",
                    {"200": _json("Task", "The task")},
                    codes=("401", "403", "404"),
                    params=_ID,
                ),
                "patch": _op(
                    "Modify a scheduled or retrying task",
                    {"200": _json("Task", "The task")},
                    body="TaskPatch",
                    codes=("400", "401", "403", "404", "409", "413", "422"),
                    params=_ID,
                ),
            },
            "/v1/tasks/{task_id}/cancel": {
                "post": _op(
                    "Cancel a scheduled or retrying task",
                    {"200": _json("Task", "The task")},
                    codes=("401", "403", "404", "409"),
                    params=_ID,
                ),
            },
            "/v1/orchestrations": {
                "post": _op(
                    "Create an orchestration: steps in order, a condition check between them",
                    {
                        "201": _json("Orchestration", "Created"),
                        "200": _json("Orchestration", "An Idempotency-Key repeat"),
                    },
                    body="OrchestrationCreate",
                    codes=("400", "401", "403", "413", "422"),
                ),
                "get": _op(
                    "List orchestrations, newest first",
                    {"200": _json("OrchestrationPage", "A page")},
                    codes=("401", "403", "422"),
                    params=[
                        {
                            "name": "status",
                            "in": "query",
                            "schema": {
                                "type": "string",
                                "enum": [s.value for s in models.OrchestrationStatus],
                            },
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 500},
                        },
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                    ],
                ),
            },
            "/v1/orchestrations/{orc_id}": {
                "get": _op(
                    "Get an orchestration",
                    {"200": _json("Orchestration", "It")},
                    codes=("401", "403", "404"),
                    params=_ORC,
                ),
                "patch": _op(
                    "Modify a scheduled orchestration",
                    {"200": _json("Orchestration", "It")},
                    body="OrchestrationPatch",
                    codes=("400", "401", "403", "404", "409", "413", "422"),
                    params=_ORC,
                ),
            },
            "/v1/orchestrations/{orc_id}/cancel": {
                "post": _op(
                    "Cancel a scheduled or running orchestration",
                    {"200": _json("Orchestration", "It")},
                    codes=("401", "403", "404", "409"),
                    params=_ORC,
                ),
            },
            "/v1/functions": {
                "post": _op(
                    "Upload a function (JSON, or multipart with the code as a file)",
                    {"201": _json("Function", "Created; building")},
                    body="FunctionCreate",
                    codes=("400", "401", "403", "413", "422"),
                ),
                "get": _op(
                    "List functions, newest first",
                    {"200": _json("FunctionPage", "A page")},
                    codes=("401", "403", "422"),
                ),
            },
            "/v1/functions/{fn_id}": {
                "get": _op(
                    "Get a function",
                    {"200": _json("Function", "It")},
                    codes=("401", "403", "404"),
                    params=_FN,
                ),
                "delete": _op(
                    "Delete a function (and its Lambda function and URL)",
                    {"204": {"description": "Deleted"}},
                    codes=("401", "403", "404"),
                    params=_FN,
                ),
            },
            "/fn/{fn_id}/{key}": {
                "post": {
                    "summary": "A function's trigger URL: the body is the event, the answer the handler's result",
                    "security": [],
                    "parameters": [
                        *_FN,
                        {
                            "name": "key",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                    ],
                    "requestBody": {"content": {"application/json": {"schema": {}}}},
                    "responses": {
                        "200": {"description": "The handler's return value as JSON"},
                        "404": _json("Error", "Wrong id or key"),
                        "500": _json("Error", "The handler raised (function_error)"),
                        "504": _json("Error", "The handler ran past its timeout"),
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
            "/healthz": {
                "get": {
                    "summary": "Process up",
                    "security": [],
                    "responses": {"200": {"description": "ok"}},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Redis reachable",
                    "security": [],
                    "responses": {
                        "200": {"description": "ok"},
                        "503": {"description": "Redis unreachable"},
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "security": [],
                    "responses": {"200": {"description": "text/plain"}},
                }
            },
        },
    }
