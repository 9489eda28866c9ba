"""Task records in Redis: hashes, per-owner indexes and the deferred queue, changed only by Lua.

The API calls the ``*_task`` methods; the worker calls ``claim``/``start``/``finish``/``reap``.
Every status change is one script (see :mod:`taskorch.lua`), so a crash between two Redis
commands cannot leave a task half-changed, and a cancel or modify that races the due time is
decided by one compare-and-set on the task's current job id.

The package, one module per concern: ``connection`` (the client for a URL, the start checks, the
waits on an outage), ``records`` (a task's record as Redis keeps it and as the API answers it),
``listing`` (pages of ids, the task list), and :class:`Store`'s parts: ``base`` (its client,
scripts and reads by id), ``creating``, ``tasks`` (the API's calls on one task) and ``jobs`` (the
worker's). What other modules import from ``taskorch.store`` is re-exported here.
"""

from __future__ import annotations

from taskorch.models.rules import is_id
from taskorch.store.connection import (
    REDIS_DOWN,
    Redis,
    check_redis,
    connect,
    eviction_policy,
    from_flat,
    hiredis_packed,
    new_id,
    now_ms,
    until_reachable,
)
from taskorch.store.creating import BatchItem, Creates, idempotency_redis_key, run_create
from taskorch.store.jobs import Claimed, WorkerCalls
from taskorch.store.listing import Listing, list_ids, page_ids
from taskorch.store.records import (
    _spec_json,
    _spec_parts,
    _task_view,
    decode_callbacks,
    decode_spec,
    encode_attempt,
    encode_callback_attempt,
)
from taskorch.store.tasks import TaskCalls


class Store(Creates, TaskCalls, Listing, WorkerCalls):
    """All Redis access. One per process, built around an injected client.

    Every call runs in the partitions it concerns (see :mod:`taskorch.partitions`): one script per
    partition, routed by that partition's queue key, so the same code serves a single Redis,
    Sentinel and Redis Cluster.
    """


__all__ = [
    "REDIS_DOWN",
    "BatchItem",
    "Claimed",
    "Redis",
    "Store",
    "_spec_json",
    "_spec_parts",
    "_task_view",
    "check_redis",
    "connect",
    "decode_callbacks",
    "decode_spec",
    "encode_attempt",
    "encode_callback_attempt",
    "eviction_policy",
    "from_flat",
    "hiredis_packed",
    "idempotency_redis_key",
    "is_id",
    "list_ids",
    "new_id",
    "now_ms",
    "page_ids",
    "run_create",
    "until_reachable",
]
