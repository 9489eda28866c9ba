"""How a method is declared once for both clients. A method is declared as a *plan*: a generator
that yields each request it makes (a :class:`~taskorch.client._common._Call`) and is sent back its
decoded answer, so that it does no I/O itself (the sans-I/O way of h11 and httpcore's models). A
descriptor, :class:`_Endpoint` (:class:`_Pages` for ``iter_*``), makes of each plan a real method of
each client class: :class:`~taskorch.client.Client` runs the plan blocking,
:class:`~taskorch.client.AsyncClient` awaits it (``async def``). ``__get__`` is overloaded on the
client (its ``_run``), and the plan's arguments travel as a ``ParamSpec``: mypy and IDEs see each
method's arguments and answer; ``help`` and ``inspect.signature`` see the declaration's.
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Iterator,
    Sequence,
)
from typing import (
    Any,
    Concatenate,
    Generic,
    ParamSpec,
    Protocol,
    Self,
    TypeAlias,
    TypeVar,
    overload,
)

from taskorch.client._common import T, _Call

P = ParamSpec("P")
T_co = TypeVar("T_co", covariant=True)
# A method's requests: it yields each one, is sent its answer, and returns what the method does.
_Plan: TypeAlias = Generator[_Call[Any], Any, T]


class _Page(Protocol[T_co]):
    @property
    def items(self) -> Sequence[T_co]: ...
    @property
    def next_cursor(self) -> str | None: ...


# An ``iter_*`` method's pages: a cursor (None first) to its ``list_*`` method's page.
_Fetch: TypeAlias = Callable[[str | None], _Page[T] | Awaitable[_Page[T]]]


class _Blocking(Protocol):
    def _run(self, plan: _Plan[T]) -> T: ...
    def _iterate(self, fetch: Callable[[str | None], _Page[T]]) -> Iterator[T]: ...


class _Awaiting(Protocol):
    def _run(self, plan: _Plan[T]) -> Coroutine[Any, Any, T]: ...
    def _iterate(self, fetch: Callable[[str | None], Awaitable[_Page[T]]]) -> AsyncIterator[T]: ...


def _step(plan: Generator[Any, Any, Any], answer: Any) -> tuple[bool, Any]:
    """Sends ``answer`` into ``plan``: (False, its next request) or (True, what it returns)."""
    try:
        return False, plan.send(answer)
    except StopIteration as stop:
        return True, stop.value


class _Declared:
    """A method declared once: read from a client class it is a real function of that class,
    made once per class, with the declaration's name, docstring and signature (``help``,
    ``inspect`` and IDEs see every argument); read from a client, that function bound. Read from
    the class of the declarations (``_Methods``) it is the declaration."""

    def __init__(self, plan: Callable[..., Any]) -> None:
        self.plan = plan
        self.__doc__ = plan.__doc__
        self._made: dict[type, Callable[..., Any]] = {}

    def _get(self, client: Any, owner: type | None) -> Any:
        owner = owner or type(client)
        if not hasattr(owner, "_run"):
            return self
        method = self._made.get(owner)
        if method is None:
            method = self._made[owner] = self._named(self._make(owner), owner)
        return method if client is None else types.MethodType(method, client)

    def _make(self, owner: type) -> Callable[..., Any]:
        raise NotImplementedError

    def _answers(self, owner: type, answer: str) -> str:
        return answer

    def _named(self, method: Callable[..., Any], owner: type) -> Callable[..., Any]:
        functools.update_wrapper(method, self.plan)
        method.__qualname__ = f"{owner.__qualname__}.{self.plan.__name__}"
        signature = inspect.signature(self.plan)
        declared = str(signature.return_annotation)  # "_Plan[Task]", "_Fetch[Task]"
        answer = self._answers(owner, declared[declared.index("[") + 1 : -1])
        method.__signature__ = signature.replace(return_annotation=answer)  # type: ignore[attr-defined]
        return method


class _Endpoint(_Declared, Generic[P, T]):
    """A method answering ``T``: the client sends each request its plan yields (AsyncClient's
    method is an ``async def``)."""

    plan: Callable[Concatenate[Any, P], _Plan[T]]

    def __init__(self, plan: Callable[Concatenate[Any, P], _Plan[T]]) -> None:
        super().__init__(plan)

    @overload
    def __get__(self, client: None, owner: type) -> Self: ...
    @overload
    def __get__(
        self, client: _Awaiting, owner: type | None = None
    ) -> Callable[P, Coroutine[Any, Any, T]]: ...
    @overload
    def __get__(self, client: _Blocking, owner: type | None = None) -> Callable[P, T]: ...
    @overload
    def __get__(self, client: object, owner: type | None = None) -> Callable[P, Any]: ...
    def __get__(self, client: Any, owner: type | None = None) -> Any:
        return self._get(client, owner)

    def _make(self, owner: type) -> Callable[..., Any]:
        plan = self.plan
        if inspect.iscoroutinefunction(owner._run):  # type: ignore[attr-defined]

            async def method(client: Any, /, *args: Any, **kwargs: Any) -> Any:
                return await client._run(plan(client, *args, **kwargs))

            return method

        def blocking(client: Any, /, *args: Any, **kwargs: Any) -> Any:
            return client._run(plan(client, *args, **kwargs))

        return blocking


class _Pages(_Declared, Generic[P, T]):
    """An ``iter_*`` method: its plan says how to fetch a page; the client's ``_iterate`` pages on
    (an async iterator on AsyncClient)."""

    def __init__(self, plan: Callable[Concatenate[Any, P], _Fetch[T]]) -> None:
        super().__init__(plan)

    def _make(self, owner: type) -> Callable[..., Any]:
        plan = self.plan

        def method(client: Any, /, *args: Any, **kwargs: Any) -> Any:
            return client._iterate(plan(client, *args, **kwargs))

        return method

    def _answers(self, owner: type, answer: str) -> str:
        awaited = inspect.isasyncgenfunction(owner._iterate)  # type: ignore[attr-defined]
        return f"AsyncIterator[{answer}]" if awaited else f"Iterator[{answer}]"

    @overload
    def __get__(self, client: None, owner: type) -> Self: ...
    @overload
    def __get__(self, client: _Blocking, owner: type | None = None) -> Callable[P, Iterator[T]]: ...
    @overload
    def __get__(
        self, client: _Awaiting, owner: type | None = None
    ) -> Callable[P, AsyncIterator[T]]: ...
    def __get__(self, client: Any, owner: type | None = None) -> Any:
        return self._get(client, owner)


_endpoint = _Endpoint
_paged = _Pages
