"""The one way services open Redis: explicit timeouts and retry policy, hiredis parsing.

A URL ``redis+cluster://[:password@]host1:port1,host2:port2,...`` opens redis-py's
``RedisCluster`` (asyncio, or sync with ``connect_sync``) seeded with those nodes; any other URL
opens a plain client exactly as before. Code that must do something different on a cluster
(split a cross-slot script into per-slot steps) asks ``is_cluster``.

redis-py retries 10 times by default; against a paused server that turns every call into a
many-second stall and hides the fault. Here a call fails after ``redis_timeout_s`` with at most
``redis_retries`` quick retries, and the caller decides what a failure means (a worker keeps the
entry pending, a gateway answers the client with an error).

The pool is a blocking one of ``redis_max_connections``: a call that finds every connection in
use waits for one (within ``redis_timeout_s``) instead of failing at once, which is what
redis-py's default pool of 100 did to a gateway's herd of IDENTIFYs.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ClusterError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from chatscale.config import Settings

# On a cluster a failover shows as CLUSTERDOWN / TRYAGAIN replies or an exhausted redirect
# budget (``ClusterError``) until the replica is promoted: transient like a lost connection.
TRANSIENT = (RedisConnectionError, RedisTimeoutError, OSError, ClusterError, TryAgainError)
CLUSTER_SCHEME = "redis+cluster"


class BadRedisURL(ValueError):
    """A ``redis+cluster://`` URL that names no usable node (a one-line CLI error)."""


class ClusterURL:
    """A parsed ``redis+cluster://`` URL: seed nodes and the optional password."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != CLUSTER_SCHEME:
            raise BadRedisURL(f"not a {CLUSTER_SCHEME}:// URL: {url!r}")
        netloc = parts.netloc
        creds, _, hosts = netloc.rpartition("@")
        self.username: str | None = None
        self.password: str | None = None
        if creds:
            user, _, password = creds.partition(":")
            self.username = unquote(user) or None
            self.password = unquote(password) or None
        self.nodes: list[tuple[str, int]] = []
        for item in hosts.split(","):
            host, _, port = item.strip().rpartition(":")
            if not host or not port.isdigit():
                raise BadRedisURL(f"{CLUSTER_SCHEME} URL node {item!r} is not host:port ({url!r})")
            self.nodes.append((host.strip("[]"), int(port)))
        if not self.nodes:
            raise BadRedisURL(f"{CLUSTER_SCHEME} URL names no node: {url!r}")


def is_cluster_url(url: str | None) -> bool:
    return bool(url) and str(url).startswith(CLUSTER_SCHEME + "://")


def is_cluster(client: object) -> bool:
    """True for a cluster client (async or sync): cross-slot work must be split by slot."""
    return isinstance(client, (AsyncRedisCluster, redis.RedisCluster))


def connect(settings: Settings, *, url: str | None = None, block_ms: int = 0) -> aioredis.Redis:
    """Open a client; ``block_ms`` widens the socket timeout for blocking reads (XREAD BLOCK)."""
    target = url or settings.redis_url
    if not target:
        raise RuntimeError("no Redis URL: set REDIS_URL or run `chatscale run`, which starts one")
    if is_cluster_url(target):
        parsed = ClusterURL(str(target))
        return AsyncRedisCluster(  # type: ignore[return-value] - same command surface
            startup_nodes=[AsyncClusterNode(h, p) for h, p in parsed.nodes],
            username=parsed.username,
            password=parsed.password,
            socket_timeout=settings.redis_timeout_s + block_ms / 1000,
            socket_connect_timeout=settings.redis_timeout_s,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), settings.redis_retries),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
            health_check_interval=30,
            decode_responses=False,
        )
    # A blocking pool: a call that finds every connection busy waits (at most the Redis
    # timeout) for one, where redis-py's default pool raises MaxConnectionsError at once.
    pool = aioredis.BlockingConnectionPool.from_url(
        target,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_timeout_s,
        socket_timeout=settings.redis_timeout_s + block_ms / 1000,
        socket_connect_timeout=settings.redis_timeout_s,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), settings.redis_retries),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        health_check_interval=30,
        decode_responses=False,
    )
    return aioredis.Redis.from_pool(pool)


def connect_sync(url: str, *, timeout_s: float, **kwargs: object) -> redis.Redis:
    """A synchronous client for ``url`` (plain or ``redis+cluster://``), for the few threads
    that renew keys or scrape metrics outside the event loop."""
    if is_cluster_url(url):
        parsed = ClusterURL(url)
        return redis.RedisCluster(  # type: ignore[return-value]
            startup_nodes=[redis.cluster.ClusterNode(h, p) for h, p in parsed.nodes],
            username=parsed.username,
            password=parsed.password,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            **kwargs,  # type: ignore[arg-type]
        )
    return redis.Redis.from_url(
        url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, **kwargs
    )


async def ready(client: object) -> None:
    """Make sure a cluster client has read the slot map (it does so lazily on its first
    command; its pub/sub needs it before SUBSCRIBE). Nothing to do for a plain client."""
    if isinstance(client, AsyncRedisCluster):
        await client.initialize()
