"""Sign-in and signing: the token request and answer, and the keys that sign an owner's calls."""

from __future__ import annotations

from typing import Annotated

from msgspec import UNSET, Meta, Struct, UnsetType

from taskorch.models.shared import Timestamp, _Input

__all__ = ["SigningKey", "SigningKeys", "TokenRequest", "TokenResponse"]


class SigningKey(Struct):
    """One secret that signs an owner's calls (Standard Webhooks ``whsec_...``).

    ``secret`` and ``used_until`` are shown only to a token that may write (or has no scope); a
    read-only token sees ``id`` and ``created_at`` alone, since the secret lets one forge calls.
    """

    id: str  # key_ and 16 hex digits of the secret's SHA-256: names a key without revealing it
    created_at: Timestamp
    secret: str | UnsetType = UNSET
    # null for the current secret; for the previous one, when it stops signing (24 h after
    # the rotation that replaced it)
    used_until: Timestamp | UnsetType | None = UNSET


class SigningKeys(Struct):
    """Answer of ``GET /v1/signing-keys`` and ``POST /v1/signing-keys/rotate``: current first."""

    keys: list[SigningKey]


class TokenRequest(_Input):
    username: Annotated[str, Meta(min_length=1, max_length=200)]
    password: Annotated[str, Meta(min_length=1, max_length=1024)]


class TokenResponse(Struct):
    access_token: str
    token_type: str
    expires_in: int
