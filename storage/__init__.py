"""Storage: Redis hot cache, durable history and metadata behind URL-chosen backends.

``open_store("sqlite:///path")`` is the embedded default; ``cassandra://host:port/keyspace``
imports the Cassandra backend only when chosen.
"""

from __future__ import annotations

from storage.base import (
    Ban,
    Channel,
    ChannelOverwrite,
    Guild,
    GuildRole,
    Store,
    StoredMessage,
    User,
)
from storage.exceptions import BadStorageURL, StorageError, StorageUnavailable, UnknownBackend


async def open_store(url: str, *, bucket_span_ms: int = 10 * 24 * 3600 * 1000) -> Store:
    scheme = url.split(":", 1)[0]
    if scheme == "sqlite":
        from storage.sqlite import SQLiteStore

        return await SQLiteStore.open(url, bucket_span_ms=bucket_span_ms)
    if scheme == "cassandra":
        from storage.cassandra import CassandraStore

        return await CassandraStore.open(url, bucket_span_ms=bucket_span_ms)
    raise UnknownBackend(
        f"unknown storage URL {url!r}: use sqlite:///path or cassandra://host:port/keyspace"
    )


__all__ = [
    "Ban",
    "Channel",
    "ChannelOverwrite",
    "GuildRole",
    "Guild",
    "StoredMessage",
    "Store",
    "User",
    "BadStorageURL",
    "StorageError",
    "StorageUnavailable",
    "UnknownBackend",
    "open_store",
]
