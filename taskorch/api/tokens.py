"""Sign-in: a username and password exchanged for a bearer token."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from taskorch import auth
from taskorch.api import spec
from taskorch.api.common import JSON, read_body
from taskorch.errors import Unauthorized
from taskorch.models import TokenRequest, TokenResponse, decode_body
from taskorch.settings import Settings


async def issue_token(request: Request) -> Response:
    body = decode_body(await read_body(request), TokenRequest)
    signin: auth.SignIn = request.state.signin
    # The client's address as uvicorn gives it: X-Forwarded-For from a trusted proxy
    # (FORWARDED_ALLOW_IPS), else the peer. Sign-ins are throttled by it (auth.SignIn).
    address = request.client.host if request.client else None
    if not await signin.authenticate(body.username, body.password, address=address):
        raise Unauthorized("Wrong username or password.", code="invalid_credentials")
    settings: Settings = request.state.settings
    token = auth.mint_token(settings, body.username)
    return JSON(
        TokenResponse(access_token=token, token_type="bearer", expires_in=settings.token_ttl_s)
    )


_SIGN_IN = spec.op(
    "Exchange a username and password for a token",
    spec.it("TokenResponse", "A bearer token"),
    op_id="issueToken",
    body="TokenRequest",
    codes=("400", "401", "413", "422", "429"),
    auth=False,
)

ROUTES = [spec.Endpoint("/v1/auth/token", issue_token, "POST", _SIGN_IN)]
