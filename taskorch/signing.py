"""Signed calls (Standard Webhooks): every call to a target carries the owner's signature.

Each call sends ``webhook-id`` (the task id, or what else names the message: see docs/api.md),
``webhook-timestamp`` (unix seconds) and ``webhook-signature``: ``v1,<base64 HMAC-SHA256 of
"id.timestamp.body">`` keyed with the base64-decoded part of a ``whsec_...`` secret, as the
Standard Webhooks specification and its ``standardwebhooks`` libraries compute it.

An owner's secrets are a hash ``sk:<owner>`` in the owner's partition
(:meth:`~taskorch.partitions.Layout.owner_partition`): the current one, made on first use, and for
``SIGNING_OVERLAP_S`` after a rotation the previous one, which signs too (both signatures,
space-separated). Rotating again within that time retires the one before at once: at most two
secrets sign.

Workers keep each owner's secrets for ``SIGNING_CACHE_S`` (:class:`Signer`), counted from when
the read was sent; a rotation answers only after that long, so every call signed after the answer
carries the new secret's signature and a target may switch to it right away.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets as _secrets
import time
from collections.abc import Iterable, Sequence

import msgspec
import structlog

from taskorch import constants as c
from taskorch import lua, partitions
from taskorch.cluster import run_script
from taskorch.models import SigningKey, SigningKeys, fmt_ms
from taskorch.store import Redis, until_reachable

log = structlog.get_logger("taskorch.signing")
SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    """A fresh ``whsec_`` secret: SIGNING_SECRET_BYTES random bytes, base64."""
    return SECRET_PREFIX + base64.b64encode(_secrets.token_bytes(c.SIGNING_SECRET_BYTES)).decode()


def secret_bytes(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret (its base64 part, decoded)."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<base64>`` signature of a message."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(
    keys: Sequence[bytes], msg_id: str, body: bytes, now_s: int | None = None
) -> dict[str, str]:
    """The three Standard Webhooks headers for ``body`` sent now, signed with every key."""
    ts = int(time.time()) if now_s is None else now_s
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": " ".join(signature(k, msg_id, ts, body) for k in keys),
    }


class _Stored(msgspec.Struct):
    """``sk:<owner>`` as the scripts answer it."""

    cur: str
    cur_at: int
    prev: str | None = None
    prev_at: int | None = None
    prev_until: int | None = None


def _decode(flat: list[str], now_ms: int) -> _Stored:
    h = dict(zip(flat[::2], flat[1::2], strict=True))
    stored = msgspec.convert(h, _Stored, strict=False)
    if stored.prev_until is not None and stored.prev_until <= now_ms:
        stored.prev = stored.prev_at = stored.prev_until = None
    return stored


class SigningStore:
    """An owner's signing secrets in Redis: read (made on first use) and rotate."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._read = lua.register(redis, "signing_read")
        self._rotate = lua.register(redis, "signing_rotate")

    async def _key(self, owner: str) -> str:
        layout = await partitions.load(self.redis)
        return layout.prefixes[layout.owner_partition(owner)] + c.SIGNING_KEYS + owner

    async def read(self, owner: str) -> _Stored:
        now = _now_ms()
        reply = await run_script(
            self.redis, self._read, [await self._key(owner)], [new_secret(), now]
        )
        return _decode(reply, now)

    async def rotate(self, owner: str) -> _Stored:
        now = _now_ms()
        reply = await run_script(
            self.redis,
            self._rotate,
            [await self._key(owner)],
            [new_secret(), now, c.SIGNING_OVERLAP_S * 1000],
        )
        return _decode(reply, now)

    async def keys(self, owner: str) -> list[bytes]:
        """The HMAC keys that sign the owner's calls now: current first."""
        stored = await self.read(owner)
        out = [secret_bytes(stored.cur)]
        if stored.prev:
            out.append(secret_bytes(stored.prev))
        return out


def key_id(secret: str) -> str:
    """A key's id: its secret's fingerprint, which names it without revealing it."""
    return "key_" + hashlib.sha256(secret.encode()).hexdigest()[:16]


def view(stored: _Stored, *, secrets: bool) -> SigningKeys:
    """What ``GET /v1/signing-keys`` answers; the secrets themselves only when ``secrets``."""
    rows: list[tuple[str, int, str | None]] = [(stored.cur, stored.cur_at, None)]
    if stored.prev and stored.prev_at is not None:
        rows.append((stored.prev, stored.prev_at, fmt_ms(stored.prev_until)))
    items = []
    for secret, at, until in rows:
        key = SigningKey(id=key_id(secret), created_at=fmt_ms(at) or "")
        if secrets:
            key.secret, key.used_until = secret, until
        items.append(key)
    return SigningKeys(keys=items)


class Signer:
    """A worker's copy of its owners' keys, read again once older than SIGNING_CACHE_S.

    The age counts from when the read was sent: a copy read before a rotation took effect is
    never used later than SIGNING_CACHE_S after it, which is when the rotation answers. A copy
    past half its age is read again in the background, and claims warm the copies of their
    owners (:meth:`warm`), so that a call rarely waits for a read.
    """

    def __init__(self, store: SigningStore) -> None:
        self.store = store
        self._cache: dict[str, tuple[float, list[bytes]]] = {}
        self._reading: dict[str, tuple[float, asyncio.Future[list[bytes]]]] = {}
        self._background: set[asyncio.Task[list[bytes]]] = set()

    async def keys(self, owner: str) -> list[bytes]:
        """The keys to sign a call of ``owner`` made now."""
        now = time.monotonic()
        hit = self._cache.get(owner)
        if hit is not None and now - hit[0] < c.SIGNING_CACHE_S:
            if now - hit[0] > c.SIGNING_CACHE_S / 2:
                self.warm([owner])
            return hit[1]
        reading = self._reading.get(owner)
        if reading is not None and now - reading[0] < c.SIGNING_CACHE_S:
            return await asyncio.shield(reading[1])
        return await self._read(owner, now)

    def warm(self, owners: Iterable[str]) -> None:
        """Read the keys of ``owners`` in the background where the copy is past half its age."""
        now = time.monotonic()
        for owner in owners:
            hit = self._cache.get(owner)
            if hit is not None and now - hit[0] <= c.SIGNING_CACHE_S / 2:
                continue
            reading = self._reading.get(owner)
            if reading is not None and now - reading[0] < c.SIGNING_CACHE_S / 2:
                continue
            task = asyncio.ensure_future(self._read(owner, now))
            self._background.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[list[bytes]]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("signing.warm_failed", error=str(task.exception()))

    async def _read(self, owner: str, now: float) -> list[bytes]:
        fut: asyncio.Future[list[bytes]] = asyncio.get_running_loop().create_future()
        self._reading[owner] = (now, fut)
        try:
            # However long the owner's partition is out of reach: a copy older than
            # SIGNING_CACHE_S may predate a rotation that has answered since.
            keys = await until_reachable(lambda: self.store.keys(owner), what="signing_keys")
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # marked retrieved: nobody may be waiting on it
            raise
        finally:
            if self._reading.get(owner, (0.0, None))[1] is fut:
                del self._reading[owner]
        if self._cache.get(owner, (-1.0,))[0] < now:  # never replace a newer copy
            if len(self._cache) >= 100_000:  # owners not seen lately are read again anyway
                self._cache.clear()
            self._cache[owner] = (now, keys)
        fut.set_result(keys)
        return keys


def _now_ms() -> int:
    return int(time.time() * 1000)
