"""Bearer tokens and accounts: verifying JWTs, minting them, and scrypt-hashed passwords.

Algorithms are pinned: HS256 with the shared secret, or RS256/ES256 keys from a JWKS URL; a
token's own ``alg`` header never chooses the key type. ``exp`` and ``sub`` are required.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

import jwt

from taskorch import constants as c
from taskorch.errors import Forbidden, Unauthorized
from taskorch.settings import Settings
from taskorch.store import Redis

_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "maxmem": 64 * 1024 * 1024, "dklen": 32}


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's ``sub`` and its scopes (None means all its owner may do)."""

    sub: str
    scopes: frozenset[str] | None

    def require(self, scope: str) -> None:
        if self.scopes is not None and scope not in self.scopes:
            raise Forbidden(f"This token lacks the {scope!r} scope needed here.")


class TokenVerifier:
    """Checks bearer tokens against the configured secret or JWKS."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._jwks = jwt.PyJWKClient(settings.jwt_jwks_url) if settings.jwt_jwks_url else None

    async def verify(self, token: str) -> Principal:
        options: Any = {"require": ["exp", "sub"]}
        try:
            if self._jwks is not None and self.settings.jwt_secret is None:
                key: Any = (await asyncio.to_thread(self._jwks.get_signing_key_from_jwt, token)).key
                algorithms = ["RS256", "ES256"]
            else:
                header = jwt.get_unverified_header(token)
                if header.get("alg") != "HS256" and self._jwks is not None:
                    key = (await asyncio.to_thread(self._jwks.get_signing_key_from_jwt, token)).key
                    algorithms = ["RS256", "ES256"]
                else:
                    key, algorithms = self.settings.jwt_secret, ["HS256"]
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                options=options,
                issuer=self.settings.jwt_issuer,
                audience=self.settings.jwt_audience,
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized(
                "The token has expired; get a new one.", code="token_expired"
            ) from None
        except (jwt.PyJWTError, ValueError) as exc:
            raise Unauthorized(f"The token is not valid: {exc}.", code="invalid_token") from None
        sub = claims.get("sub")
        if isinstance(sub, str):
            try:
                sub.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate: valid JSON, not storable text
                sub = None
        if not isinstance(sub, str) or not sub or ":" in sub:
            raise Unauthorized(
                "The token's sub claim must be a non-empty string without ':'.",
                code="invalid_token",
            )
        scope = claims.get("scope")
        scopes = frozenset(scope.split()) if isinstance(scope, str) else None
        return Principal(sub=sub, scopes=scopes)


def mint_token(
    settings: Settings, sub: str, *, ttl_s: int | None = None, scope: str | None = None
) -> str:
    """Sign an HS256 token for ``sub`` (needs TASKORCH_JWT_SECRET)."""
    if not settings.jwt_secret:
        raise Unauthorized("Tokens can only be issued with TASKORCH_JWT_SECRET set.")
    now = int(time.time())
    claims: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + (ttl_s or settings.token_ttl_s)}
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    if scope:
        claims["scope"] = scope
    return jwt.encode(claims, settings.jwt_secret, algorithm="HS256")


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT)
    return f"scrypt${_SCRYPT['n']}${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str) -> bool:
    try:
        _, n, salt, digest = stored.split("$")
        params = {**_SCRYPT, "n": int(n)}
        got = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), **params)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got.hex(), digest)


# A hash to compare against when the user does not exist, so timing does not reveal accounts.
_DUMMY = hash_password(secrets.token_hex(8))


async def add_user(redis: Redis, name: str, password: str) -> None:
    if not name or ":" in name:
        raise ValueError("a user name must be non-empty and contain no ':'")
    await redis.hset(c.USER_KEY_PREFIX + name, mapping={"password": hash_password(password)})


async def authenticate(redis: Redis, name: str, password: str) -> bool:
    stored = await redis.hget(c.USER_KEY_PREFIX + name, "password")
    ok = await asyncio.to_thread(check_password, password, stored or _DUMMY)
    return ok and stored is not None
