""":class:`AsyncClient`, the API awaited. Its methods are declared once for both clients
(``_methods.py``); this file says how it sends a request, sleeps, pages on, follows ``/v1/events``
and closes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx

from taskorch.client._common import Event, T, _Call, _event, _nothing, error_from
from taskorch.client._declare import _Page, _Plan, _step
from taskorch.client._methods import _Methods

__all__ = ["AsyncClient"]


class AsyncClient(_Methods[httpx.AsyncBaseTransport]):
    """The API, awaited: ``iter_*`` and ``events`` are async iterators.

    Use it as an async context manager, or close it with :meth:`aclose`. Its arguments: see
    ``__init__``.
    """

    _HTTP = httpx.AsyncClient
    _http: httpx.AsyncClient

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the client's connections."""
        await self._http.aclose()

    async def _do(self, action: _Call[Any] | float) -> httpx.Response | httpx.TransportError | None:
        if isinstance(action, _Call):
            try:
                return await self._http.request(action.method, action.path, **self._request(action))
            except httpx.TransportError as exc:
                return exc
        await asyncio.sleep(action)
        return None

    async def _run(self, plan: _Plan[T]) -> T:
        tries = self._tries(plan)
        done, action = _step(tries, None)
        while not done:
            done, action = _step(tries, await self._do(action))
        return action  # type: ignore[no-any-return]

    async def _iterate(
        self, fetch: Callable[[str | None], Awaitable[_Page[T]]]
    ) -> AsyncIterator[T]:
        cursor: str | None = None
        while True:
            page = await fetch(cursor)
            for item in page.items:
                yield item
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    async def events(self) -> AsyncIterator[Event]:
        """``GET /v1/events``: your changes as they happen, until you stop iterating (close the
        iterator, or leave ``async with contextlib.aclosing(...)``)."""
        kw = self._request(_Call("GET", "/v1/events", _nothing))
        timeout = httpx.Timeout(self._http.timeout.connect, read=None)
        async with self._http.stream("GET", "/v1/events", timeout=timeout, **kw) as r:
            if not r.is_success:
                await r.aread()
                raise error_from(r)
            async for line in r.aiter_lines():
                event = _event(line)
                if event is not None:
                    yield event
