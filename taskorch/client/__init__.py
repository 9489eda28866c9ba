"""A typed Python client for the taskorch API: :class:`Client` blocks, :class:`AsyncClient`
awaits; both cover every route of the contract with the same methods.

Answers are the models the API itself answers with (:mod:`taskorch.models`); an error answer
is raised as the class of :mod:`taskorch.errors` the API raised (``NotFound``, ``Conflict``,
``ValidationFailed`` with its ``details`` ...), carrying its ``code``, ``message``, ``details``
and ``status_code``. Lists page on through ``iter_*``; a 503 or 429 is waited out as its
``Retry-After`` says, a bounded number of times, and only where sending again is safe: a create
is sent with an ``Idempotency-Key`` (one is made unless you give yours), so a repeat after a 503
``unknown`` stores it at most once (docs/reliability.md). docs/client.md shows it at work.

Inside: ``_methods.py`` declares every method once (signature, docstring, the requests it makes)
and ``_declare.py`` makes of each a method of both clients; ``_sync.py`` and ``_async.py`` hold
only how each sends, pages on, follows events and closes; ``_common.py`` holds what all use and is
no I/O.
"""

# The options and answers, named once in _common.__all__ (as httpx's modules name theirs).
from taskorch.client import _common
from taskorch.client._async import AsyncClient
from taskorch.client._common import *  # noqa: F403
from taskorch.client._sync import Client

__all__ = ["AsyncClient", "Client", *_common.__all__]
