"""Partitions: how tasks and orchestrations are spread over Redis Cluster slots (issue #10).

A deployment has ``N`` partitions, fixed when it first starts and recorded at
``taskorch:partitions``. Partition ``p`` owns every key under ``taskorch:{<tag>}:``, where the
hash tag is chosen so that its slot lies in the p-th of N equal slices of 0..16383: the even slot
split of ``redis-cli --cluster create`` then spreads the partitions evenly over the masters. A
task, an orchestration with all of its step tasks and their jobs live in one partition, so every
script touches one slot.

An id names its partition in its last four hex digits (``int(id[-4:], 16) % N``): ids keep the
form ``<kind>_<12 hex ms><12 hex random>`` (old ids map too, which is what an in-place upgrade
relies on) and new ones pick those digits so that they land where they were meant to.
"""

from __future__ import annotations

import functools
import os
import secrets
import time
import weakref
import zlib
from collections.abc import Sequence
from typing import Any

import structlog

from taskorch import constants as c

log = structlog.get_logger("taskorch.partitions")
SLOTS = 16384


def _crc16_table() -> list[int]:
    table = []
    for i in range(256):
        crc = i << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return table


_CRC16 = _crc16_table()


def key_slot(tag_text: str) -> int:
    """Redis Cluster's slot for a key whose hash tag is ``tag_text`` (CRC16-XMODEM mod 16384)."""
    crc = 0
    for byte in tag_text.encode():
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16[((crc >> 8) ^ byte) & 0xFF]
    return crc % SLOTS


@functools.cache
def tag(p: int, n: int) -> str:
    """Partition ``p``'s hash tag: ``t{p}``, ``t{p}a``, ... the first whose slot lies in the p-th
    of ``n`` equal slices of the slot space (deterministic: every process finds the same)."""
    lo, hi = p * SLOTS // n, (p + 1) * SLOTS // n
    i = 0
    while True:
        candidate = f"t{p}" + ("" if i == 0 else _suffix(i))
        if lo <= key_slot(candidate) < hi:
            return candidate
        i += 1


def _suffix(i: int) -> str:
    out = ""
    while i > 0:
        i, r = divmod(i - 1, 26)
        out = chr(ord("a") + r) + out
    return out


def prefix(p: int, n: int) -> str:
    """Every key of partition ``p``: ``taskorch:{tag}:``."""
    return f"{c.KEY_PREFIX}{{{tag(p, n)}}}:"


def partition_of(record_id: str, n: int) -> int:
    """The partition of an id (a task, orchestration or job id: the id's own last 4 hex)."""
    return int(record_id.split(".", 1)[0][-4:], 16) % n


def new_id(kind: str, partition: int, n: int) -> str:
    """An id of ``kind`` that sorts by creation time, is unguessable and lies in ``partition``."""
    return id_at(kind, partition, n, int(time.time() * 1000))


def id_at(kind: str, partition: int, n: int, ms: int) -> str:
    """As :func:`new_id`, created at ``ms`` (Unix ms)."""
    return ids_at(kind, [partition], n, ms)[0]


def ids_at(kind: str, parts: Sequence[int], n: int, ms: int) -> list[str]:
    """As :func:`id_at` for each of ``parts``, from one read of the OS's randomness (a batch
    create made two reads per id)."""
    raw = os.urandom(6 * len(parts))
    head = f"{kind}_{ms:012x}"
    out = []
    for i, partition in enumerate(parts):
        r = int.from_bytes(raw[6 * i + 4 : 6 * i + 6])
        low = r - r % n + partition
        if low > 0xFFFF:
            low -= n
        out.append(f"{head}{raw[6 * i : 6 * i + 4].hex()}{low:04x}")
    return out


def partition_for_key(owner: str, key: str, n: int) -> int:
    """Where a record created under an Idempotency-Key lives, so that a repeat finds it."""
    return zlib.crc32(f"{owner}\0{key}".encode()) % n


class Layout:
    """A deployment's partitions: their count and key prefixes."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.prefixes = [prefix(p, n) for p in range(n)]

    def prefix_of(self, record_id: str) -> str:
        return self.prefixes[partition_of(record_id, self.n)]

    def partition_of(self, record_id: str) -> int:
        return partition_of(record_id, self.n)

    def pick(self, owner: str, idempotency_key: str | None, rand16: int | None = None) -> int:
        """A new record's partition: its key's, else at random (from ``rand16``, 16 random
        bits, when the caller drew them already; the bias of % n is below n / 65,536)."""
        if idempotency_key:
            return partition_for_key(owner, idempotency_key, self.n)
        return secrets.randbelow(self.n) if rand16 is None else rand16 % self.n

    def new_id(self, kind: str, partition: int) -> str:
        return new_id(kind, partition, self.n)

    def queue_partition(self, owner: str, queue: str) -> int:
        """The partition of a named queue: its tasks, settings and state live there together,
        so one script sees all three and enforces the queue's limits across every worker."""
        return zlib.crc32(f"{owner}\0q\0{queue}".encode()) % self.n

    def owner_partition(self, owner: str) -> int:
        """The partition of an owner's owner-level records (signing keys)."""
        return zlib.crc32(f"{owner}\0o".encode()) % self.n

    def queue(self, p: int) -> str:
        """The key every script of partition ``p`` is routed by (its ``KEYS[1]``)."""
        return self.prefixes[p] + "q"


_layouts: weakref.WeakKeyDictionary[Any, Layout] = weakref.WeakKeyDictionary()


def configured_partitions() -> int:
    import os

    raw = os.environ.get("TASKORCH_PARTITIONS", "")
    try:
        n = int(raw) if raw else c.DEFAULT_PARTITIONS
    except ValueError:
        n = c.DEFAULT_PARTITIONS
    return max(1, min(n, c.MAX_PARTITIONS))


async def load(redis: Any) -> Layout:
    """The deployment's layout, read once per client (``SET NX`` of the configured count the
    first time a deployment starts; afterwards the recorded count wins)."""
    layout = _layouts.get(redis)
    if layout is not None:
        return layout
    want = configured_partitions()
    await redis.set(c.PARTITIONS_KEY, want, nx=True)
    got = int(await redis.get(c.PARTITIONS_KEY) or want)
    if got != want:
        log.warning("partitions.recorded_count_wins", recorded=got, configured=want)
    layout = Layout(got)
    _layouts[redis] = layout
    return layout


def forget(redis: Any) -> None:
    """Drop the cached layout of ``redis`` (tests that wipe Redis under a live client)."""
    _layouts.pop(redis, None)
