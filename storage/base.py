"""Storage interfaces and the guarantees every backend must keep.

Two stores sit behind one URL: ``HistoryStore`` (durable message history, partitioned by
(channel_id, bucket) as in Discord's Cassandra schema) and ``MetadataStore`` (users, guilds,
channels, members). The contract suite in ``tests/test_storage_contract.py`` runs the same
tests against every backend, which is what lets the embedded SQLite backend stand in for
Cassandra.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class StoredMessage:
    channel_id: int
    message_id: int
    author_id: int
    payload: str  # MESSAGE_CREATE ``d`` as JSON text, exactly as the gateway built it


@dataclass(frozen=True, slots=True)
class User:
    id: int
    username: str


@dataclass(frozen=True, slots=True)
class Guild:
    id: int
    name: str
    owner_id: int


@dataclass(frozen=True, slots=True)
class Channel:
    id: int  # a snowflake minted at creation: its bucket is the channel's first bucket
    guild_id: int
    name: str
    kind: str = "text"
    position: int = 0


class HistoryStore(Protocol):
    """Durable message history.

    Guarantees:
    - ``insert`` is idempotent: inserting the same (channel_id, message_id) again leaves one row
      (rows are immutable, so last-write-wins never loses anything).
    - When ``insert`` returns, the row is durable at the backend's configured consistency and
      visible to ``page`` on the same store.
    - ``page`` returns messages strictly older than ``before`` (all, if None), newest first,
      at most ``limit``, with no gap and no duplicate between consecutive pages; it walks
      partitions backwards and stops at the channel's first bucket.
    - Raises ``StorageUnavailable`` when the backend cannot be reached; callers retry.
    """

    async def insert(self, message: StoredMessage) -> None: ...

    async def insert_many(self, messages: Sequence[StoredMessage]) -> None:
        """Same guarantees as ``insert`` for each message; a batch may be partly applied when
        it raises, which is safe because a retry re-inserts idempotently."""
        ...

    async def page(
        self, channel_id: int, *, before: int | None, limit: int
    ) -> list[StoredMessage]: ...


class MetadataStore(Protocol):
    """Users, guilds, channels and members.

    Guarantees: a write is visible to every reader once the call returns (read-your-writes
    across processes; Cassandra uses QUORUM here). Re-adding what exists is a no-op.
    """

    async def put_user(self, user: User) -> None: ...
    async def put_guild(self, guild: Guild) -> None: ...
    async def put_channel(self, channel: Channel) -> None: ...
    async def add_member(self, guild_id: int, user_id: int) -> None: ...
    async def remove_member(self, guild_id: int, user_id: int) -> None: ...
    async def get_user(self, user_id: int) -> User | None: ...
    async def find_user(self, username: str) -> User | None: ...
    async def get_guild(self, guild_id: int) -> Guild | None: ...
    async def get_channel(self, channel_id: int) -> Channel | None: ...
    async def guild_channels(self, guild_id: int) -> list[Channel]: ...
    async def user_guilds(self, user_id: int) -> list[Guild]: ...
    async def guild_members(self, guild_id: int) -> list[int]: ...
    async def is_member(self, guild_id: int, user_id: int) -> bool: ...


class Store(HistoryStore, MetadataStore, Protocol):
    """What ``open_store(url)`` returns: both interfaces over one backend connection."""

    async def close(self) -> None: ...
