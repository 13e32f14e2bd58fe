"""Shard leases: each ingest shard is consumed by one worker at a time.

Why: a consumer group spreads entries over all its consumers, so two messages of one channel
can be processed by two workers at once and fanned out in the wrong order. With
``ordering="shard"`` each worker reads only the shards it leases, one batch at a time, which
keeps per-channel order (a channel always hashes to the same shard) at the cost of at most
``ingest_shards`` busy workers. ``ordering="parallel"`` skips leases: more parallelism, no
order guarantee within a channel — the classic trade-off, measurable with the load tests.

A lease is ``SET lease:{shard} <consumer> NX PX ttl``, renewed by its owner. Fan-out is fenced
by it (``storage/lua/fanout.lua`` refuses to write if the lease is not ours), so a worker that was
paused past its lease cannot deliver after another took over. A worker takes at most its fair
share, ``ceil(shards / live workers)``, and gives up the excess, so shards spread out as
workers join. ``evict(consumer)`` frees a dead worker's leases at once (the supervisor calls it
when it sees a worker process exit; otherwise they expire after ``ttl``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from importlib import resources

import redis.asyncio as aioredis

from chatscale.keys import Keys

RENEW = resources.files("workers").joinpath("lua/lease_renew.lua").read_text()


class ShardLeases:
    def __init__(
        self, redis: aioredis.Redis, keys: Keys, *, shards: int, consumer: str, ttl_ms: int
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._shards = shards
        self.consumer = consumer
        self.ttl_ms = ttl_ms
        self.owned: set[int] = set()
        self._renew = redis.register_script(RENEW)

    def key(self, shard: int) -> str:
        return self._keys.lease(shard)

    def _roster(self) -> str:
        return self._keys.workers()

    async def maintain(
        self,
        *,
        greedy: bool = False,
        before_release: Callable[[int], Awaitable[None]] | None = None,
    ) -> tuple[set[int], set[int]]:
        """Renew, then acquire up to the fair share (all free shards if ``greedy``).

        Returns (gained, lost) shard sets so the caller can reclaim pending entries of gained ones.
        ``before_release(shard)`` runs before a shard above the fair share is given up (the
        worker finishes a read still outstanding on it: ``Worker._settle_read``).
        """
        now_ms = int(time.time() * 1000)
        await self._redis.zadd(self._roster(), {self.consumer: now_ms})
        await self._redis.zremrangebyscore(self._roster(), 0, now_ms - 3 * self.ttl_ms)
        lost = set()
        for shard in sorted(self.owned):
            if not await self._renew(keys=[self.key(shard)], args=[self.consumer, self.ttl_ms]):
                lost.add(shard)
        self.owned -= lost
        live = max(1, await self._redis.zcount(self._roster(), now_ms - self.ttl_ms, "+inf"))
        share = self._shards if greedy else math.ceil(self._shards / live)
        for shard in sorted(self.owned, reverse=True)[: max(0, len(self.owned) - share)]:
            if before_release is not None:
                await before_release(shard)
            await self.release(shard)
        gained = set()
        for shard in range(self._shards):
            if len(self.owned) >= share:
                break
            if shard not in self.owned and await self._redis.set(
                self.key(shard), self.consumer, nx=True, px=self.ttl_ms
            ):
                self.owned.add(shard)
                gained.add(shard)
        return gained, lost

    async def release(self, shard: int) -> None:
        await self._renew(keys=[self.key(shard)], args=[self.consumer, 0])
        self.owned.discard(shard)

    async def release_all(self) -> None:
        for shard in list(self.owned):
            await self.release(shard)
        await self._redis.zrem(self._roster(), self.consumer)


async def evict(redis: aioredis.Redis, keys: Keys, *, shards: int, consumer: str) -> int:
    """Free every lease a (dead) consumer holds; its pending entries are reclaimed by the next owner."""
    script = redis.register_script(RENEW)
    freed = 0
    for shard in range(shards):
        freed += int(await script(keys=[keys.lease(shard)], args=[consumer, 0]))
    await redis.zrem(keys.workers(), consumer)
    return freed
