"""A route as the API's modules declare it once: its path, method and handler, and the OpenAPI
operation that documents it, from which both the app and ``/openapi.json`` are built.

The helpers below write the parts operations share: the error answers, path ids, list
parameters and the links from a create's answer to the operations that take its id.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from taskorch.models import rules

Handler = Callable[[Request], Awaitable[Response]]
REF = "#/components/schemas/{name}"


@dataclass(frozen=True, eq=False)
class Endpoint:
    """One route. ``op`` is its OpenAPI operation (None: not in the document); ``bounded``
    puts the request under one Redis deadline (see app._wrap); ``create`` marks a create,
    whose 503 says whether anything was stored."""

    path: str
    handler: Handler
    method: str
    op: dict[str, Any] | None = None
    bounded: bool = True
    create: bool = False

    def __iter__(self) -> Iterator[Any]:
        """``for path, handler, method in ROUTES``, as when the list held tuples."""
        return iter((self.path, self.handler, self.method))


def ref(name: str) -> dict[str, Any]:
    return {"$ref": REF.format(name=name)}


def json_answer(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ref(name)}}}


def header(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "schema": schema}


RETRY_AFTER = {"Retry-After": header("Seconds to wait before trying again", {"type": "string"})}
ERRORS = {
    "400": json_answer("Error", "Malformed JSON (invalid_json) or a bad header"),
    "401": {
        **json_answer("Error", "Missing or invalid token (missing_token, invalid_token)"),
        "headers": {"WWW-Authenticate": header("Always Bearer", {"type": "string"})},
    },
    "403": json_answer("Error", "The token lacks the needed scope"),
    "404": json_answer("Error", "Not found (or another owner's)"),
    "409": json_answer("Error", "The status forbids the change; the message names it"),
    "413": json_answer("Error", "The body is too large"),
    "422": json_answer("Error", "Validation failed; one detail per field"),
    "429": {
        **json_answer(
            "Error",
            "Too many requests (sign-ins for one user, open event streams, lists in progress)",
        ),
        "headers": RETRY_AFTER,
    },
    "503": {
        **json_answer("Error", "Redis is unreachable or too slow (unavailable); try again"),
        "headers": RETRY_AFTER,
    },
}
# The error codes of a body that is read and validated, and of a list.
BODY_CODES = ("400", "413", "422")
LIST_CODES = ("422", "429")


def closed_object(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    """An object schema of these ``properties``, no others, ``required`` of them."""
    return {
        "type": "object",
        "required": required,
        "additionalProperties": False,
        "properties": properties,
    }


def op(
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
    out: dict[str, Any] = {"operationId": op_id, "summary": summary, "responses": {**ok}}
    extra = ("401", "403") if auth else ()
    for code in sorted({*codes, *extra, "503"}):
        out["responses"][code] = ERRORS[code]
    if body:
        out["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": ref(body)}},
        }
    if params:
        out["parameters"] = params
    if not auth:
        out["security"] = []
    if links:
        for response in ok.values():
            response["links"] = links
    return out


def it(model: str, description: str = "It") -> dict[str, Any]:
    """The 200 answer of an operation on one resource."""
    return {"200": json_answer(model, description)}


def simple(summary: str, op_id: str, **responses: str) -> dict[str, Any]:
    """An operation without a token whose answers have no schema (``_200="ok"``)."""
    return {
        "operationId": op_id,
        "summary": summary,
        "security": [],
        "responses": {code.lstrip("_"): {"description": d} for code, d in responses.items()},
    }


def path_id(name: str) -> list[dict[str, Any]]:
    schema: dict[str, Any] = {"type": "string"}
    if name in rules.ID_PREFIXES:
        schema["pattern"] = rules.id_pattern(rules.ID_PREFIXES[name])
    return [{"name": name, "in": "path", "required": True, "schema": schema}]


def links(id_name: str, *operations: str) -> dict[str, Any]:
    """Links from a create's answer to the operations that take its id (for stateful tests):
    each named by its operationId, capitalised."""
    return {
        op_id[0].upper() + op_id[1:]: {
            "operationId": op_id,
            "parameters": {id_name: "$response.body#/id"},
        }
        for op_id in operations
    }


def list_params(statuses: type[enum.Enum] | None, prefix: str) -> list[dict[str, Any]]:
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


IDEMPOTENCY = {
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


# The operations every kind of resource has, named by its noun ("task": the Task model, its
# TaskCreate, TaskPatch and TaskPage, the operations createTask, listTasks, getTask, ...).


def create_op(noun: str, summary: str, id_name: str, *linked: str) -> dict[str, Any]:
    """A create that takes an Idempotency-Key; ``linked`` its links' operations."""
    model = noun.capitalize()
    return op(
        summary,
        {
            "201": json_answer(model, "Created; Location names it"),
            "200": json_answer(model, "An Idempotency-Key repeat: the first one"),
        },
        op_id=f"create{model}",
        body=f"{model}Create",
        codes=BODY_CODES,
        params=[IDEMPOTENCY],
        links=links(id_name, *linked),
    )


def list_op(
    noun: str, statuses: type[enum.Enum] | None, prefix: str, *filters: dict[str, Any]
) -> dict[str, Any]:
    """A page of the owner's, newest first."""
    model = noun.capitalize()
    page = {"200": json_answer(f"{model}Page", "A page")}
    params = [*list_params(statuses, prefix), *filters]
    return op(
        f"List {noun}s, newest first", page, op_id=f"list{model}s", codes=LIST_CODES, params=params
    )


def get_op(noun: str, id_name: str) -> dict[str, Any]:
    model = noun.capitalize()
    return op(
        f"Get a {noun}", it(model), op_id=f"get{model}", codes=("404",), params=path_id(id_name)
    )


def modify_op(noun: str, summary: str, id_name: str) -> dict[str, Any]:
    """A PATCH of the {Noun}Patch fields, which the status may forbid."""
    model = noun.capitalize()
    codes = ("400", "404", "409", "413", "422")
    return op(
        summary,
        it(model),
        op_id=f"modify{model}",
        body=f"{model}Patch",
        codes=codes,
        params=path_id(id_name),
    )


def change_op(op_id: str, summary: str, answer: dict[str, Any], id_name: str) -> dict[str, Any]:
    """A POST without a body that changes one thing, which its status may forbid."""
    return op(summary, answer, op_id=op_id, codes=("404", "409"), params=path_id(id_name))


def delete_op(op_id: str, summary: str, id_name: str) -> dict[str, Any]:
    deleted = {"204": {"description": "Deleted"}}
    return op(summary, deleted, op_id=op_id, codes=("404",), params=path_id(id_name))
