"""``chatscale bench storage``: history insert throughput and hot-vs-cold page latency.

- insert: the worker's history stage alone — ``insert_many`` in worker-sized batches
  (``worker_batch``) of realistic payloads into one channel, messages/s;
- pages: p50/p99 of reading the newest page (served by the Redis hot cache) against an older
  page (served by the history backend: SQLite or Cassandra), through the same ``read_page`` the
  gateway uses.

Uses ``REDIS_URL`` if set, else starts a throwaway Valkey.
"""

from __future__ import annotations

import time
from typing import Any

from chatscale import snowflake
from chatscale.config import Settings
from chatscale.keys import Keys
from chatscale.redisconn import connect
from chatscale.valkey import ValkeyServer
from chatscale.wire import Author, message_payload
from loadtest.latency import LatencyRecorder
from storage import StoredMessage, open_store
from storage.hot import HotCache
from storage.paging import read_page


async def run(settings: Settings, *, messages: int, reads: int, say=print) -> dict[str, Any]:  # noqa: ANN001
    valkey = None
    if not settings.redis_url:
        valkey = ValkeyServer().start()
        settings = settings.model_copy(update={"redis_url": valkey.url})
    store = await open_store(settings.storage_url, bucket_span_ms=settings.bucket_span_ms)
    redis = connect(settings)
    keys = Keys(f"bench{time.time_ns()}")
    hot = HotCache(redis, keys, size=settings.hot_size)
    ids = snowflake.SnowflakeGenerator(900)
    channel = ids.next()
    author = Author(id="1", username="bench")
    try:
        batch_size = settings.worker_batch
        rows = []
        for i in range(messages):
            mid = ids.next()
            payload = message_payload(
                message_id=mid,
                channel_id=channel,
                guild_id=1,
                author=author,
                content=f"benchmark message number {i} " + "x" * 60,
                timestamp_ms=snowflake.timestamp_ms(mid),
            )
            rows.append(StoredMessage(channel, mid, 1, payload))
        started = time.perf_counter()
        for i in range(0, messages, batch_size):
            await store.insert_many(rows[i : i + batch_size])
            if (i // batch_size) % 50 == 0:
                say(f"  inserted {i + batch_size}/{messages}")
        insert_s = time.perf_counter() - started
        await hot.add_many(
            [(m.channel_id, m.message_id, m.payload) for m in rows[-settings.hot_size :]]
        )
        newest, older = LatencyRecorder(), LatencyRecorder()
        old_before = rows[len(rows) // 2].message_id
        for _ in range(reads):
            t = time.perf_counter()
            page = await read_page(hot, store, channel, before=None, limit=50)
            newest.record(time.perf_counter() - t)
            assert len(page) == 50
            t = time.perf_counter()
            page = await read_page(hot, store, channel, before=old_before, limit=50)
            older.record(time.perf_counter() - t)
            assert len(page) == 50
        return {
            "storage_url": settings.storage_url.split("?")[0],
            "messages": messages,
            "batch": batch_size,
            "insert_messages_per_s": round(messages / insert_s, 1),
            "newest_page_hot_ms": {k: newest.summary()[k] for k in ("p50_ms", "p99_ms", "max_ms")},
            "older_page_history_ms": {
                k: older.summary()[k] for k in ("p50_ms", "p99_ms", "max_ms")
            },
            "reads": reads,
        }
    finally:
        await redis.aclose()
        await store.close()
        if valkey:
            valkey.stop()
