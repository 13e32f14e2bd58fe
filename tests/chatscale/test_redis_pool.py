"""``chatscale.redisconn.connect``: more concurrent calls than pooled connections wait for one
instead of failing (redis-py's default pool raised MaxConnectionsError at once)."""

from __future__ import annotations

import asyncio
import time

from chatscale.config import Settings
from chatscale.redisconn import connect


async def test_calls_beyond_the_pool_wait_for_a_connection(settings: Settings):
    redis = connect(settings.model_copy(update={"redis_max_connections": 2}))
    key = f"{settings.key_prefix}:nothing"
    try:
        started = time.monotonic()
        # six blocking reads of 0.2 s each on two connections: three rounds, none refused
        replies = await asyncio.gather(*(redis.blpop([key], timeout=0.2) for _ in range(6)))
        took = time.monotonic() - started
        assert replies == [None] * 6
        assert took >= 0.5, f"six 0.2 s calls on two connections took only {took:.2f} s"
    finally:
        await redis.aclose()
