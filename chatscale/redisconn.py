"""The one way services open Redis: explicit timeouts and retry policy, hiredis parsing.

redis-py retries 10 times by default; against a paused server that turns every call into a
many-second stall and hides the fault. Here a call fails after ``redis_timeout_s`` with at most
``redis_retries`` quick retries, and the caller decides what a failure means (a worker keeps the
entry pending, a gateway answers the client with an error).
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from chatscale.config import Settings

TRANSIENT = (RedisConnectionError, RedisTimeoutError, OSError)


def connect(settings: Settings, *, url: str | None = None, block_ms: int = 0) -> aioredis.Redis:
    """Open a client; ``block_ms`` widens the socket timeout for blocking reads (XREAD BLOCK)."""
    target = url or settings.redis_url
    if not target:
        raise RuntimeError("no Redis URL: set REDIS_URL or run `chatscale run`, which starts one")
    return aioredis.Redis.from_url(
        target,
        socket_timeout=settings.redis_timeout_s + block_ms / 1000,
        socket_connect_timeout=settings.redis_timeout_s,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), settings.redis_retries),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        health_check_interval=30,
        decode_responses=False,
    )
