""":class:`Client`, the API blocking. Its methods are declared once for both clients
(``_methods.py``); this file says how it sends a request, sleeps, pages on, follows ``/v1/events``
and closes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from taskorch.client._common import Event, T, _Call, _event, _nothing, error_from
from taskorch.client._declare import _Page, _Plan, _step
from taskorch.client._methods import _Methods

__all__ = ["Client"]


class Client(_Methods[httpx.BaseTransport]):
    """The API, blocking: ``iter_*`` and ``events`` are iterators.

    Use it as a context manager, or close it with :meth:`close`. Its arguments: see ``__init__``.
    """

    _HTTP = httpx.Client
    _http: httpx.Client

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the client's connections."""
        self._http.close()

    def _do(self, action: _Call[Any] | float) -> httpx.Response | httpx.TransportError | None:
        if isinstance(action, _Call):
            try:
                return self._http.request(action.method, action.path, **self._request(action))
            except httpx.TransportError as exc:
                return exc
        time.sleep(action)
        return None

    def _run(self, plan: _Plan[T]) -> T:
        tries = self._tries(plan)
        done, action = _step(tries, None)
        while not done:
            done, action = _step(tries, self._do(action))
        return action  # type: ignore[no-any-return]

    def _iterate(self, fetch: Callable[[str | None], _Page[T]]) -> Iterator[T]:
        page = fetch(None)
        yield from page.items
        while page.next_cursor:
            page = fetch(page.next_cursor)
            yield from page.items

    def events(self) -> Iterator[Event]:
        """``GET /v1/events``: your changes as they happen, until you stop iterating (close the
        iterator, or leave ``with contextlib.closing(...)``)."""
        kw = self._request(_Call("GET", "/v1/events", _nothing))
        timeout = httpx.Timeout(self._http.timeout.connect, read=None)
        with self._http.stream("GET", "/v1/events", timeout=timeout, **kw) as r:
            if not r.is_success:
                r.read()
                raise error_from(r)
            for line in r.iter_lines():
                event = _event(line)
                if event is not None:
                    yield event
