"""Snowflake ids: time-ordered 64-bit integers minted at the gateway.

Layout (Discord's): 42 bits of milliseconds since 2015-01-01, 10 bits of node id, 12 bits of a
per-millisecond counter. The id is fixed before a message is published, so a retried publish or
a redelivered stream entry carries the same id and every store can treat writes as idempotent.
Ids serialize as decimal strings on the wire because JavaScript numbers lose bits above 2**53.
"""

from __future__ import annotations

import time
from collections.abc import Callable

EPOCH_MS = 1_420_070_400_000
NODE_BITS = 10
SEQ_BITS = 12
MAX_NODE = (1 << NODE_BITS) - 1
MAX_SEQ = (1 << SEQ_BITS) - 1


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class SnowflakeGenerator:
    """Monotonic per node even if the wall clock steps back (it then reuses the last ms)."""

    def __init__(self, node: int, *, clock_ms: Callable[[], int] = _wall_ms) -> None:
        if not 0 <= node <= MAX_NODE:
            raise ValueError(f"node must be in 0..{MAX_NODE}")
        self._node = node
        self._clock_ms = clock_ms
        self._last_ms = -1
        self._seq = 0

    def next(self) -> int:
        now = max(self._clock_ms(), self._last_ms)
        if now == self._last_ms:
            self._seq = (self._seq + 1) & MAX_SEQ
            if self._seq == 0:  # 4096 ids in one ms: borrow the next millisecond
                now = self._last_ms + 1
        else:
            self._seq = 0
        self._last_ms = now
        return ((now - EPOCH_MS) << (NODE_BITS + SEQ_BITS)) | (self._node << SEQ_BITS) | self._seq


def timestamp_ms(snowflake: int) -> int:
    return (snowflake >> (NODE_BITS + SEQ_BITS)) + EPOCH_MS


def from_timestamp_ms(ms: int) -> int:
    """The smallest id of a millisecond (for range queries by time)."""
    return (ms - EPOCH_MS) << (NODE_BITS + SEQ_BITS)


def bucket(snowflake: int, span_ms: int) -> int:
    """History partition of an id: a fixed span of snowflake time."""
    return (snowflake >> (NODE_BITS + SEQ_BITS)) // span_ms
