"""What a job handler that calls out shares (callbacks, orchestration checks): the worker's
session, the owners' signing keys, and one signed attempt whose message id is also its
``Idempotency-Key``."""

from __future__ import annotations

from typing import Any, Protocol

import aiohttp

from taskorch.signing import Signer, SigningStore
from taskorch.store import Redis
from taskorch.worker import outbound


class Target(Protocol):
    """Where a handler calls: a callback's or a condition's ``url`` and ``headers``."""

    @property
    def url(self) -> str: ...
    @property
    def headers(self) -> dict[str, str]: ...


class Sender:
    """The base of the worker's handlers of ``cb`` and ``orc`` jobs."""

    def __init__(
        self, redis: Redis, session: aiohttp.ClientSession, signer: Signer | None = None
    ) -> None:
        self.session = session
        self.signer = signer or Signer(SigningStore(redis))

    async def send(
        self,
        target: Target,
        payload: Any,
        timeout_s: float,
        *,
        method: str,
        msg_id: str,
        owner: str,
        extra_headers: dict[str, str],
    ) -> outbound.CallResult:
        """One attempt at ``target`` (its ``url`` and ``headers``), signed with ``owner``'s keys."""
        return await outbound.call(
            self.session,
            url=target.url,
            method=method,
            headers=target.headers,
            payload=payload,
            timeout_s=timeout_s,
            extra_headers={"Idempotency-Key": msg_id, **extra_headers},
            webhook_id=msg_id,
            keys=await self.signer.keys(owner),
        )
