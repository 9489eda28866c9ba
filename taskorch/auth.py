"""Bearer tokens and accounts: verifying JWTs, minting them, and scrypt-hashed passwords.

Algorithms are pinned: HS256 with the shared secret, or from a JWKS URL RS256 for an RSA key and
ES256 for an EC key; a token's own ``alg`` header never chooses the key type. ``exp``, ``iat`` and
``sub`` are required, ``exp - iat`` is capped, and a user's tokens issued before their last
password change or removal are refused.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import ipaddress
import math
import secrets
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import jwt

from taskorch import constants as c
from taskorch import lua
from taskorch.errors import Forbidden, TooManyRequests, Unauthorized
from taskorch.limits import off_the_redis_clock
from taskorch.settings import Settings
from taskorch.store import Redis

_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "maxmem": 64 * 1024 * 1024, "dklen": 32}


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's ``sub`` and its scopes (None means all its owner may do)."""

    sub: str
    scopes: frozenset[str] | None

    def may(self, scope: str) -> bool:
        return self.scopes is None or scope in self.scopes

    def require(self, scope: str) -> None:
        if not self.may(scope):
            raise Forbidden(f"This token lacks the {scope!r} scope needed here.")


class TokenVerifier:
    """Checks bearer tokens against the configured secret or JWKS, and against revocations.

    Args:
        settings: the secret or JWKS, issuer, audience and the lifetime cap.
        redis: where ``taskorch user passwd|remove`` record revocations; None checks none (tests
            of the token format alone).
    """

    def __init__(self, settings: Settings, *, redis: Redis | None = None) -> None:
        self.settings = settings
        self.redis = redis
        self._jwks = jwt.PyJWKClient(settings.jwt_jwks_url) if settings.jwt_jwks_url else None
        self._not_before: dict[str, tuple[float, float]] = {}  # sub -> (not before, read at)
        # token -> (who, iat, exp, verified at): a client sends the same token with every
        # request, and its signature and claims were the largest cost of a create after Redis.
        self._verified: dict[str, tuple[Principal, float, int, float]] = {}

    async def verify(self, token: str) -> Principal:
        """The caller behind ``token``, or 401/403. Revocation is checked on every call.

        A token verified once is remembered by its exact text for VERIFIED_TOKEN_CACHE_S, and
        never past its ``exp``; the revocation check (``iat`` against the user's not-before time)
        runs on every call either way.
        """
        now = time.monotonic()
        hit = self._verified.get(token)
        if hit is not None and now - hit[3] < c.VERIFIED_TOKEN_CACHE_S and time.time() < hit[2]:
            who, iat = hit[0], hit[1]
        else:
            who, iat, exp = await self._verify_claims(token)
            if len(self._verified) >= c.VERIFIED_TOKEN_CACHE_SIZE:
                self._verified.clear()  # bounded: a flood of distinct tokens starts it over
            self._verified[token] = (who, iat, exp, now)
        if iat < await self._not_before_s(who.sub):
            raise Unauthorized(
                "The token was revoked (password changed or user removed); sign in again.",
                code="token_revoked",
            )
        return who

    async def _verify_claims(self, token: str) -> tuple[Principal, float, int]:
        """Signature and claims: the principal, ``iat``, and ``exp`` as PyJWT compares it."""
        claims = await self._decode(token)
        sub = claims.get("sub")
        if isinstance(sub, str):
            try:
                sub.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate: valid JSON, not storable text
                sub = None
        if not isinstance(sub, str) or not sub or ":" in sub:
            raise _invalid("the sub claim must be a non-empty string without ':'")
        iat, exp = _number(claims.get("iat")), _number(claims.get("exp"))
        if iat is None or exp is None:
            raise _invalid("iat and exp must be numbers")
        if iat > time.time() + c.IAT_LEEWAY_S:
            raise _invalid("it is not yet valid (iat is in the future)")
        if exp - iat > self.settings.token_max_ttl_s:
            raise _invalid(
                f"it lives longer than TASKORCH_TOKEN_MAX_TTL_S ({self.settings.token_max_ttl_s} s)"
            )
        scopes = _scopes(claims)
        # PyJWT refuses a token once int(exp) <= now; the cache stops trusting it at that moment.
        return Principal(sub=sub, scopes=scopes), iat, int(claims["exp"])

    async def _decode(self, token: str) -> dict[str, Any]:
        # PyJWT compares int(iat) with the time: a token minted at 12:00:00.9996 has iat
        # 12:00:01.000 (rounded up to the ms) and was refused for 0.4 ms. iat is checked above.
        options: Any = {"require": ["exp", "sub", "iat"], "verify_iat": False}
        try:
            header = jwt.get_unverified_header(token)
            if self._jwks is not None and (
                self.settings.jwt_secret is None or header.get("alg") != "HS256"
            ):
                jwk = await asyncio.to_thread(self._jwks.get_signing_key_from_jwt, token)
                key: Any = jwk.key
                algorithms = _algorithms_for(key)
            else:
                key, algorithms = self.settings.jwt_secret, ["HS256"]
            claims: dict[str, Any] = jwt.decode(
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
        except (jwt.PyJWTError, ValueError, TypeError, AttributeError) as exc:
            # TypeError/AttributeError: a key of one type handed an algorithm of another.
            raise _invalid(str(exc)) from None
        return claims

    async def _not_before_s(self, sub: str) -> float:
        """When ``sub``'s tokens start to count (0: never revoked), cached NOT_BEFORE_CACHE_S."""
        if self.redis is None:
            return 0.0
        now = time.monotonic()
        cached = self._not_before.get(sub)
        if cached is not None and now - cached[1] < c.NOT_BEFORE_CACHE_S:
            return cached[0]
        raw = await self.redis.get(c.USER_NOT_BEFORE_KEY_PREFIX + sub)
        value = float(raw) if raw else 0.0
        if len(self._not_before) > 10_000:  # bounded: many owners, or a flood of made-up subs
            self._not_before.clear()
        self._not_before[sub] = (value, now)
        return value


_ABSENT = object()


def _scopes(claims: dict[str, Any]) -> frozenset[str] | None:
    """The token's scopes: ``scope`` (a space-separated string), or where it has none ``scp`` (a
    string or a list of strings, as some identity providers write it); None when it has neither.
    """
    scope = claims.get("scope", _ABSENT)
    if scope is not _ABSENT:
        if not isinstance(scope, str):
            raise _invalid("the scope claim must be a space-separated string")
        return frozenset(scope.split())
    scp = claims.get("scp", _ABSENT)
    if scp is _ABSENT:
        return None
    if isinstance(scp, str):
        return frozenset(scp.split())
    if isinstance(scp, list) and all(isinstance(s, str) for s in scp):
        return frozenset(part for s in scp for part in s.split())
    raise _invalid("the scp claim must be a space-separated string or a list of strings")


def _number(value: Any) -> float | None:
    """A JSON number claim as a float; None for anything else (strings, true, NaN)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        return None
    try:
        return float(value)
    except OverflowError:  # an integer of hundreds of digits
        return None


def _invalid(reason: str) -> Unauthorized:
    return Unauthorized(f"The token is not valid: {reason}.", code="invalid_token")


def _algorithms_for(key: Any) -> list[str]:
    """The one algorithm a JWKS key may verify: the key's type decides, never the token."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(key, rsa.RSAPublicKey):
        return ["RS256"]
    if isinstance(key, ec.EllipticCurvePublicKey):
        return ["ES256"]
    raise jwt.InvalidKeyError("the JWKS key for this kid is neither RSA nor EC")


def mint_token(
    settings: Settings, sub: str, *, ttl_s: int | None = None, scope: str | None = None
) -> str:
    """Sign an HS256 token for ``sub`` (needs TASKORCH_JWT_SECRET)."""
    if not settings.jwt_secret:
        raise Unauthorized("Tokens can only be issued with TASKORCH_JWT_SECRET set.")
    ttl_s = ttl_s or settings.token_ttl_s
    if ttl_s > settings.token_max_ttl_s:
        raise ValueError(
            f"a token may live at most TASKORCH_TOKEN_MAX_TTL_S ({settings.token_max_ttl_s} s)"
        )
    # iat in milliseconds (JWT NumericDate allows fractions), rounded up: a token signed in the
    # same second as a password change, but after it, must not count as issued before it.
    now = math.ceil(time.time() * 1000) / 1000
    claims: dict[str, Any] = {"sub": sub, "iat": now, "exp": int(now) + ttl_s}
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


def _check_name(name: str) -> None:
    if not name or ":" in name:
        raise ValueError("a user name must be non-empty and contain no ':'")


async def add_user(redis: Redis, name: str, password: str) -> bool:
    """Add ``name`` or reset their password; returns True when the user already existed.

    Resetting an existing user's password revokes their earlier tokens, as ``passwd`` does.
    """
    _check_name(name)
    existed = bool(await redis.exists(c.USER_KEY_PREFIX + name))
    if existed:
        await set_password(redis, name, password)
    else:
        await redis.hset(c.USER_KEY_PREFIX + name, mapping={"password": hash_password(password)})
    return existed


async def set_password(redis: Redis, name: str, password: str) -> None:
    """Change an existing user's password and revoke every token issued to them before."""
    _check_name(name)
    if not await redis.exists(c.USER_KEY_PREFIX + name):
        raise LookupError(f"no user {name!r}: add it with taskorch user add")
    digest = hash_password(password)
    # One command each (the keys lie in different slots of a Redis Cluster), tokens revoked
    # first: a failure half-way leaves the old password with no tokens, never new tokens
    # beside old ones. Running the command again completes it.
    await redis.set(c.USER_NOT_BEFORE_KEY_PREFIX + name, repr(time.time()))
    await redis.hset(c.USER_KEY_PREFIX + name, mapping={"password": digest})
    await redis.delete(c.SIGNIN_ATTEMPTS_KEY_PREFIX + name)


async def remove_user(redis: Redis, name: str) -> None:
    """Delete ``name`` and revoke every token issued to them (also ``taskorch token`` ones)."""
    _check_name(name)
    if not await redis.exists(c.USER_KEY_PREFIX + name):
        raise LookupError(f"no user {name!r}")
    # Tokens revoked first, then the user (as in set_password: no transaction on a cluster).
    await redis.set(c.USER_NOT_BEFORE_KEY_PREFIX + name, repr(time.time()))
    await redis.delete(c.USER_KEY_PREFIX + name)
    await redis.delete(c.SIGNIN_ATTEMPTS_KEY_PREFIX + name)


def address_key(host: str | None) -> str:
    """The address sign-ins are counted by: an IPv4 address, an IPv6 one by its /64 (one
    subscriber's whole network), an IPv4-mapped IPv6 one as its IPv4; anything else as given."""
    if not host:
        return "unknown"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host[:100]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class _FairChecks:
    """Password checks on SCRYPT_THREADS threads of their own, shared out among the addresses
    waiting: those with no failed sign-in in the window first, then those with some; within
    each, the addresses in turn, one check each. A flood from one address waits behind itself;
    a user signing in from an address that has not been failing waits for the checks already
    running and those of other such addresses, never for a flood of failures."""

    def __init__(self, threads: int) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="taskorch-scrypt")
        self._threads = threads
        self._running = 0
        # [clean addresses, failing addresses], each address -> its waiting checks, in turn
        self._waiting: tuple[_Turns, _Turns] = ({}, {})
        self._count = 0

    async def check(self, address: str, password: str, stored: str, *, failing: bool) -> bool:
        if self._count >= c.SIGNIN_MAX_WAITING:
            raise TooManyRequests("Too many sign-ins at once; try again shortly.", retry_after_s=1)
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting[failing].setdefault(address, deque()).append((done, password, stored))
        self._count += 1
        self._start()
        return await done

    def _start(self) -> None:
        while self._running < self._threads and (turns := self._waiting[0] or self._waiting[1]):
            address = next(iter(turns))
            queue = turns.pop(address)
            done, password, stored = queue.popleft()
            self._count -= 1
            if queue:
                turns[address] = queue  # its next check: after every other address's
            if done.done():
                continue  # its request went away while it waited
            self._running += 1
            job = done.get_loop().run_in_executor(self._pool, check_password, password, stored)
            job.add_done_callback(functools.partial(self._finished, done))

    def _finished(self, done: asyncio.Future[bool], job: asyncio.Future[bool]) -> None:
        self._running -= 1
        if not done.done():
            if job.cancelled():
                done.cancel()
            elif (exc := job.exception()) is not None:
                done.set_exception(exc)
            else:
                done.set_result(job.result())
        self._start()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


_Turns = dict[str, deque[tuple[asyncio.Future[bool], str, str]]]


class SignIn:
    """Password sign-in, throttled per client address, with scrypt on threads of its own.

    Args:
        redis: the users and the attempt counters.

    For one name, each attempt from an address is counted before the password is checked (one
    script), so concurrent guesses cannot slip past SIGNIN_MAX_ATTEMPTS; a success clears that
    address's count. Failures from one address, whatever the name, are counted too, up to
    SIGNIN_ADDRESS_MAX_FAILURES. Neither limit touches other addresses: a user whose name is
    being guessed from elsewhere signs in as ever. One address has at most
    SIGNIN_ADDRESS_CONCURRENCY sign-ins in progress, and the checks are shared out among the
    addresses, those that have not been failing first (:class:`_FairChecks`), so a flood
    neither blocks the event loop nor makes anyone else's sign-in wait behind it.
    """

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._count = lua.register(redis, "count_attempt")
        self._failures = lua.register(redis, "address_failures")
        self._checks = _FairChecks(c.SCRYPT_THREADS)
        self._busy: dict[str, int] = {}  # address -> its sign-ins in progress here

    async def authenticate(self, name: str, password: str, *, address: str | None = None) -> bool:
        """Whether ``password`` is ``name``'s, or 429 (TooManyRequests) for this address.

        Args:
            address: the client's address (``request.client.host``); None counts as one
                address of its own.
        """
        who = address_key(address)
        busy = self._busy.get(who, 0)
        if busy >= c.SIGNIN_ADDRESS_CONCURRENCY:
            raise TooManyRequests(
                "Too many sign-ins at once from this address; try again shortly.", retry_after_s=1
            )
        self._busy[who] = busy + 1
        try:
            return await self._authenticate(name, password, who)
        finally:
            left = self._busy[who] - 1
            if left:
                self._busy[who] = left
            else:
                del self._busy[who]

    async def _authenticate(self, name: str, password: str, who: str) -> bool:
        key = c.SIGNIN_ATTEMPTS_KEY_PREFIX + name
        address_key_ = c.SIGNIN_ADDRESS_KEY_PREFIX + who
        # One script per key (the user's record, the name's count and the address's lie in
        # different slots of a Redis Cluster, where one transaction cannot hold them); all go
        # out at once.
        (attempts, ttl), (failures, address_ttl), stored = await asyncio.gather(
            self._count(keys=[key], args=[who, c.SIGNIN_WINDOW_S]),
            self._failures(keys=[address_key_], args=[0, c.SIGNIN_WINDOW_S]),
            self.redis.hget(c.USER_KEY_PREFIX + name, "password"),
        )
        if failures >= c.SIGNIN_ADDRESS_MAX_FAILURES:
            raise TooManyRequests(
                "Too many failed sign-ins from this address; try again later.",
                retry_after_s=address_ttl if address_ttl > 0 else c.SIGNIN_WINDOW_S,
            )
        if attempts > c.SIGNIN_MAX_ATTEMPTS:
            raise TooManyRequests(
                "Too many sign-in attempts for this user; try again later.",
                retry_after_s=ttl if ttl > 0 else c.SIGNIN_WINDOW_S,
            )
        with off_the_redis_clock():  # CPU, and a turn among sign-ins: not Redis work
            ok = await self._checks.check(who, password, stored or _DUMMY, failing=failures > 0)
        ok = ok and stored is not None
        if ok:
            await self.redis.hdel(key, who)
        else:
            await self._failures(keys=[address_key_], args=[1, c.SIGNIN_WINDOW_S])
        return ok

    def close(self) -> None:
        self._checks.close()
