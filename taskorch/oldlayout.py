"""The single-node layout of releases before issue #10: its key names, and the check at start.

Both taskorch/store/connection.py (``taskorch serve``'s and ``taskorch check``'s start-up check)
and taskorch/migrate.py (the upgrade) need these; they live here so that neither imports the other
inside a function to dodge an import circle (the store is below migrate.py, which uses its client).
"""

from __future__ import annotations

from typing import Any

from taskorch import constants as c
from taskorch.errors import ConfigError

OLD_QUEUE = c.KEY_PREFIX + "queue"
OLD_JOB = c.KEY_PREFIX + "job:"
OLD_LEASES = c.KEY_PREFIX + "leases"
OLD_LEASE_OWNER = c.KEY_PREFIX + "lease-owner"
OLD_TASK = c.KEY_PREFIX + "task:"
OLD_ORCH = c.KEY_PREFIX + "orc:"
OLD_IDEM = c.KEY_PREFIX + "idem:"
OLD_STATS = c.KEY_PREFIX + "stats"
OLD_METRICS = c.KEY_PREFIX + "metrics"
OLD_FINISHED = c.KEY_PREFIX + "finished"
OLD_REAPER = c.KEY_PREFIX + "reaper"
# Any of these means an old deployment's data is here (each is written by its first task).
OLD_MARKERS = (OLD_STATS, OLD_QUEUE, OLD_FINISHED, OLD_LEASES, OLD_METRICS)

MESSAGE = (
    "Redis holds taskorch data in the old single-node layout: stop every old worker and API "
    "process, run `taskorch migrate` once, then start this version"
)


async def old_layout_present(redis: Any) -> bool:
    """Whether an old single-node deployment's data is in this Redis (one key per EXISTS, so a
    cluster client can route each)."""
    for key in OLD_MARKERS:
        if await redis.exists(key):
            return True
    return False


async def refuse_old_layout(redis: Any) -> None:
    """At worker and API start: stop with a message naming ``taskorch migrate`` when the old
    layout is present (running on it would leave its tasks unfired)."""
    if await old_layout_present(redis):
        raise ConfigError(MESSAGE)
