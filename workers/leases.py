"""Shard leases: each ingest shard is consumed by one worker at a time.

Why: a consumer group spreads entries over all its consumers, so two messages of one channel
can be processed by two workers at once and fanned out in the wrong order. With
``ordering="shard"`` each worker reads only the shards it leases, one batch at a time, which
keeps per-channel order (a channel always hashes to the same shard) at the cost of at most
``ingest_shards`` busy workers. ``ordering="parallel"`` skips leases: more parallelism, no
order guarantee within a channel — the classic trade-off, measurable with the load tests.

The lease mechanics (``SET NX PX``, renew-if-ours, a roster for fair shares) are
``chatscale.leases``; this module names the keys. Fan-out is fenced by the lease
(``storage/lua/fanout.lua`` refuses to write if the lease is not ours), so a worker that was
paused past its lease cannot deliver after another took over. A worker takes at most its fair
share, ``ceil(shards / live workers)``, and gives up the excess, so shards spread out as
workers join. ``evict(consumer)`` frees a dead worker's leases at once (the supervisor calls it
when it sees a worker process exit; otherwise they expire after ``ttl``).
"""

from __future__ import annotations

import redis.asyncio as aioredis

from chatscale import leases
from chatscale.keys import Keys


class ShardLeases(leases.Leases):
    def __init__(
        self, redis: aioredis.Redis, keys: Keys, *, shards: int, consumer: str, ttl_ms: int
    ) -> None:
        super().__init__(
            redis,
            count=shards,
            owner=consumer,
            ttl_ms=ttl_ms,
            key=keys.lease,
            roster=keys.workers(),
        )


async def evict(redis: aioredis.Redis, keys: Keys, *, shards: int, consumer: str) -> int:
    """Free every lease a (dead) consumer holds; its pending entries are reclaimed by the next owner."""
    return await leases.evict(
        redis, count=shards, owner=consumer, key=keys.lease, roster=keys.workers()
    )
