"""The secrets that sign an owner's calls (Standard Webhooks): read and rotate (issue #12)."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response

from taskorch import constants as c
from taskorch import signing
from taskorch.api import spec
from taskorch.api.common import JSON, log, principal
from taskorch.limits import off_the_redis_clock


async def get_signing_keys(request: Request) -> Response:
    """The secrets that sign the owner's calls (the first is made on first use); a token that
    may only read sees their ids and ages alone: with a secret one could forge the owner's calls."""
    p = await principal(request, "read")
    keys: signing.SigningStore = request.state.signing
    return JSON(signing.view(await keys.read(p.sub), secrets=p.may("write")))


async def rotate_signing_keys(request: Request) -> Response:
    """A new secret signs from now on; the one it replaces signs too for 24 h.

    Answered only once every worker's copy of the keys has been read again since
    (SIGNING_CACHE_S), so that every call signed after the answer carries the new signature.
    """
    p = await principal(request, "write")
    keys: signing.SigningStore = request.state.signing
    stored = await keys.rotate(p.sub)
    log.info("signing.rotated", owner=p.sub)
    with off_the_redis_clock():
        await asyncio.sleep(c.SIGNING_CACHE_S + c.SIGNING_ROTATE_MARGIN_S)
    return JSON(signing.view(stored, secrets=True))


ROUTES = [
    spec.Endpoint(
        "/v1/signing-keys",
        get_signing_keys,
        "GET",
        spec.op(
            "The secrets that sign the caller's calls (Standard Webhooks; the first is made "
            "on first use), current first. A token with the read scope alone sees each "
            "key's id and created_at only",
            spec.it(
                "SigningKeys",
                "The current secret, and the previous one while it still signs "
                "(used_until); secret and used_until only for a token that may write",
            ),
            op_id="getSigningKeys",
        ),
    ),
    spec.Endpoint(
        "/v1/signing-keys/rotate",
        rotate_signing_keys,
        "POST",
        spec.op(
            "Make a new signing secret; the current one signs too for 24 h (both "
            "signatures in webhook-signature). Answered once every call signed from then "
            "on carries the new signature",
            spec.it("SigningKeys", "The new secret first, then the previous one"),
            op_id="rotateSigningKeys",
        ),
    ),
]
