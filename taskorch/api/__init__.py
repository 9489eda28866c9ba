"""The HTTP API: Starlette routes that validate, authorise and hand over to the store.

One module per domain (``tasks``, ``schedules``, ``queues``, ...) holds its handlers and its
``ROUTES``, each route with its OpenAPI operation; :mod:`taskorch.api.app` builds the app and
:mod:`taskorch.api.openapi` the published document from that one list.
"""

from __future__ import annotations

from taskorch.api.app import ROUTES, body_limit, create_app, lambda_provider
from taskorch.api.common import JSON, error_response, principal, read_body
from taskorch.api.serve import serve

__all__ = [
    "JSON",
    "ROUTES",
    "body_limit",
    "create_app",
    "error_response",
    "lambda_provider",
    "principal",
    "read_body",
    "serve",
]
