"""Leases over a fixed set of numbered partitions, each held by one process at a time.

Used for the workers' ingest shards (``workers/leases.py``) and the presence partitions
(``presence/partitions.py``). A lease is ``SET <key(n)> <owner> NX PX ttl``, renewed by its owner
with a script that touches the key only if the owner still holds it (a plain PEXPIRE or DEL
could touch a lease another process took after ours expired). Every holder registers in a
roster (sorted set owner -> last heartbeat in ms) and takes at most its fair share,
``ceil(partitions / live holders)``, giving up the excess, so partitions spread out as
holders join; a holder that dies stops renewing and its partitions go to the survivors after
``ttl`` (or at once, when something that saw it die calls ``evict``). A holder restarted under
its old name takes back the leases still in that name on its first ``maintain``.

Guarantee: at any instant at most one live owner per partition *as far as Redis can tell*; a
holder paused past its TTL may still believe it owns a partition until its next ``maintain``,
so work whose duplicate would be harmful must be fenced by the lease key (the workers' fan-out
script checks it) or be idempotent (presence batches are state assignments).
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

#: KEYS[1] lease key  ARGV[1] owner  ARGV[2] ttl ms, or '0' to release. Returns 1 if ours.
RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if ARGV[2] == '0' then
  redis.call('DEL', KEYS[1])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
"""


class Leases:
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        count: int,
        owner: str,
        ttl_ms: int,
        key: Callable[[int], str],
        roster: str,
    ) -> None:
        """
        count: how many partitions exist (0..count-1).
        owner: this holder's name (the lease value).
        ttl_ms: lease lifetime; ``maintain`` must run more often than this (a third is usual).
        key: partition number -> its lease key.
        roster: key of the sorted set of live holders.
        """
        self._redis = redis
        self._count = count
        self.consumer = owner
        self.ttl_ms = ttl_ms
        self._key = key
        self._roster = roster
        self.owned: set[int] = set()
        self._renew = redis.register_script(RENEW)
        self._first = True  # the first maintain also re-adopts leases already in our name

    def key(self, n: int) -> str:
        return self._key(n)

    async def maintain(
        self,
        *,
        greedy: bool = False,
        before_release: Callable[[int], Awaitable[None]] | None = None,
    ) -> tuple[set[int], set[int]]:
        """Renew, then acquire up to the fair share (every free partition if ``greedy``).

        Returns (gained, lost) so the caller can start or stop the work of each partition.
        ``before_release(n)`` runs before a partition above the fair share is given up (the
        worker finishes a read still outstanding on that shard: ``Worker._settle_read``).
        """
        now_ms = int(time.time() * 1000)
        await self._redis.zadd(self._roster, {self.consumer: now_ms})
        await self._redis.zremrangebyscore(self._roster, 0, now_ms - 3 * self.ttl_ms)
        lost = set()
        for n in sorted(self.owned):
            if not await self._renew(keys=[self.key(n)], args=[self.consumer, self.ttl_ms]):
                lost.add(n)
        self.owned -= lost
        live = max(1, await self._redis.zcount(self._roster, now_ms - self.ttl_ms, "+inf"))
        share = self._count if greedy else math.ceil(self._count / live)
        for n in sorted(self.owned, reverse=True)[: max(0, len(self.owned) - share)]:
            if before_release is not None:
                await before_release(n)
            await self.release(n)
            lost.add(n)
        gained = set()
        for n in range(self._count):
            if len(self.owned) >= share:
                break
            if n in self.owned:
                continue
            if await self._redis.set(self.key(n), self.consumer, nx=True, px=self.ttl_ms) or (
                # a process restarted under its old name takes its leases back at once
                self._first
                and await self._renew(keys=[self.key(n)], args=[self.consumer, self.ttl_ms])
            ):
                self.owned.add(n)
                gained.add(n)
        self._first = False
        return gained, lost

    async def release(self, n: int) -> None:
        await self._renew(keys=[self.key(n)], args=[self.consumer, 0])
        self.owned.discard(n)

    async def release_all(self) -> None:
        for n in list(self.owned):
            await self.release(n)
        await self._redis.zrem(self._roster, self.consumer)


async def evict(
    redis: aioredis.Redis, *, count: int, owner: str, key: Callable[[int], str], roster: str
) -> int:
    """Free every lease a (dead) owner holds at once; returns how many it held."""
    script = redis.register_script(RENEW)
    freed = 0
    for n in range(count):
        freed += int(await script(keys=[key(n)], args=[owner, 0]))
    await redis.zrem(roster, owner)
    return freed
