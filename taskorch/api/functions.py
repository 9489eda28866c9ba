"""Functions: upload (JSON or multipart), list, get, get the code, delete, and the trigger URL
that runs one."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from taskorch import constants as c
from taskorch.api import resources, spec
from taskorch.api.common import JSON, error_response, invalid_param, principal, read_body
from taskorch.api.openapi import FUNCTION_RULES
from taskorch.api.spec import Endpoint
from taskorch.errors import ApiError, BadRequest, PayloadTooLarge, ValidationFailed
from taskorch.functions import Functions
from taskorch.models import FunctionCreate, convert, decode_body, parse_json
from taskorch.settings import Settings


async def create_function(request: Request) -> Response:
    p = await principal(request, "write")
    fns: Functions = request.state.functions
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        body = convert(await _function_form(request), FunctionCreate)
    else:
        body = decode_body(await read_body(request), FunctionCreate)
    settings: Settings = request.state.settings
    if not settings.local_functions and (body.provider or settings.function_provider) == "local":
        # An API run without the sandbox's privileges (compose's `api`) must not run code.
        message = (
            "local functions are off on this server (TASKORCH_LOCAL_FUNCTIONS=0): "
            "use the aws provider, or the server that runs the local runtime"
        )
        raise _invalid_field("provider", message)
    fn = await fns.create(p.sub, body)
    return JSON(fn, status_code=201, headers={"Location": f"/v1/functions/{fn.id}"})


def _invalid_field(name: str, message: str) -> ApiError:
    return ValidationFailed(f"{name}: {message}.", details=[{"field": name, "message": message}])


async def _function_form(request: Request) -> dict[str, Any]:
    """A multipart create: the code as a file (or a text field), the rest as fields."""
    declared = request.headers.get("content-length")
    if declared and declared.isascii() and declared.isdigit() and int(declared) > c.MAX_BODY_BYTES:
        raise PayloadTooLarge(f"The body is larger than {c.MAX_BODY_BYTES} bytes.")
    data: dict[str, Any] = {}
    try:
        form = await request.form(max_files=1, max_fields=20)
    except (ApiError, ClientDisconnect):  # the body passed its cap while streaming, or hung up
        raise
    except Exception as exc:  # python-multipart's parse errors
        raise BadRequest(f"The multipart body could not be read: {exc}.") from None
    try:
        for name, value in form.multi_items():
            if isinstance(value, str):
                data[name] = value
                continue
            try:
                data[name] = (await value.read()).decode("utf-8")
            except UnicodeDecodeError:
                raise invalid_param(name, "must be UTF-8 text") from None
    finally:
        await form.close()
    if data.get("schedule") == "":  # an HTML form's empty field: no schedule
        del data["schedule"]
    if isinstance(data.get("schedule"), str):
        try:
            data["schedule"] = parse_json(data["schedule"], "The schedule field")
        except msgspec.DecodeError:
            raise invalid_param("schedule", "must be a JSON object") from None
    return data


async def delete_function(request: Request) -> Response:
    p = await principal(request, "write")
    fns: Functions = request.state.functions
    await fns.delete(p.sub, request.path_params["fn_id"])
    return Response(status_code=204)


async def trigger_function(request: Request) -> Response:
    """A function's trigger URL: the key in the path is the credential; the body is the event."""
    from taskorch.functions import FunctionError, FunctionTimeout

    fns: Functions = request.state.functions
    try:
        raw = await read_body(request)
        event = parse_json(raw, "The event")
        fid, key = request.path_params["fn_id"], request.path_params["key"]
        try:
            result = await fns.invoke(fid, key, event)
        except FunctionTimeout as exc:
            err = ApiError(str(exc), code="function_timeout")
            err.status_code = 504
            raise err from None
        except FunctionError as exc:
            err = ApiError(exc.message, code="function_error")
            err.status_code = 500
            raise err from None
    except ApiError as exc:
        exc.headers = {**exc.headers, **_CORS}
        return error_response(exc)
    return JSON(result, headers=_CORS)


# A trigger URL is a bearer credential in itself (like a Lambda function URL without IAM auth),
# so a page on any origin that holds it may call it; cookies are never involved.
_CORS = {"Access-Control-Allow-Origin": "*"}


async def trigger_preflight(request: Request) -> Response:
    return Response(
        status_code=204,
        headers={
            **_CORS,
            "Access-Control-Allow-Methods": "POST, OPTIONS",
            "Access-Control-Allow-Headers": "Content-Type",
            "Access-Control-Max-Age": "600",
        },
    )


# -- routes ------------------------------------------------------------------------------------


def _upload() -> dict[str, Any]:
    """createFunction: the multipart form's provider is filled in per server (openapi)."""
    op = spec.op(
        "Upload a function (JSON, or multipart with the code as a file)",
        {"201": spec.json_answer("Function", "Created; building")},
        op_id="createFunction",
        body="FunctionCreate",
        codes=spec.BODY_CODES,
        links=spec.links("fn_id", "getFunction", "getFunctionCode", "deleteFunction"),
    )
    # The multipart form carries the same fields; `code` may be a file of UTF-8 text, `schedule`
    # is the FunctionSchedule object as JSON text (an empty field means none).
    form = {
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
        "provider": {"type": "string", "enum": []},
        "schedule": spec.ref("FunctionSchedule"),
    }
    op["requestBody"]["content"]["multipart/form-data"] = {
        "schema": {
            **spec.closed_object(form, ["name", "runtime", "code"]),
            "allOf": FUNCTION_RULES,
        },
        "encoding": {"schedule": {"contentType": "application/json"}},
    }
    return op


_FN_ID = spec.path_id("fn_id")
_TRIGGER = {
    "operationId": "triggerFunction",
    "summary": "A function's trigger URL: the body is the event, the answer the handler's result",
    "security": [],
    "parameters": [*_FN_ID, *spec.path_id("key")],
    "requestBody": {"content": {"application/json": {"schema": {}}}},
    "responses": {
        "200": {"description": "The handler's return value as JSON"},
        "400": spec.ERRORS["400"],
        "404": spec.json_answer("Error", "Wrong id or key"),
        "413": spec.ERRORS["413"],
        "429": {
            **spec.json_answer(
                "Error", "Every instance is busy and enough calls wait (function_busy)"
            ),
            "headers": spec.RETRY_AFTER,
        },
        "500": spec.json_answer("Error", "The handler raised (function_error)"),
        "503": spec.ERRORS["503"],
        "504": spec.json_answer("Error", "The handler ran past its timeout (function_timeout)"),
    },
}
_ONE = "/v1/functions/{fn_id}"
_CODE = spec.op(
    "Get a function's source and requirements as uploaded",
    spec.it("FunctionCode", "Its source"),
    op_id="getFunctionCode",
    codes=("404",),
    params=_FN_ID,
)
_DELETE = spec.delete_op(
    "deleteFunction", "Delete a function (and its Lambda function and URL)", "fn_id"
)

# An upload builds the function, a delete removes it from the runtime or AWS, a trigger runs it:
# more than Redis work, so no request-wide Redis deadline (each Redis call still has one).
ROUTES = [
    Endpoint("/v1/functions", create_function, "POST", _upload(), bounded=False),
    resources.page("/v1/functions", "function", "fn_id", "functions.list"),
    resources.one(_ONE, "function", "functions.get"),
    Endpoint(_ONE, delete_function, "DELETE", _DELETE, bounded=False),
    Endpoint(f"{_ONE}/code", resources.owned("functions.code", "fn_id"), "GET", _CODE),
    Endpoint("/fn/{fn_id}/{key}", trigger_function, "POST", _TRIGGER, bounded=False),
    Endpoint("/fn/{fn_id}/{key}", trigger_preflight, "OPTIONS"),
]
