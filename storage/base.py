"""Storage interfaces and the guarantees every backend must keep.

Two stores sit behind one URL: ``HistoryStore`` (durable message history, partitioned by
(channel_id, bucket) as in Discord's Cassandra schema) and ``MetadataStore`` (users, guilds,
channels, roles, members and their roles, channel permission overwrites, bans). The contract suite in ``tests/storage/test_storage_contract.py`` runs the same
tests against every backend, which is what lets the embedded SQLite backend stand in for
Cassandra.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol


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
    slowmode_s: int = 0  # seconds a member must wait between messages here (0: off)


@dataclass(frozen=True, slots=True)
class GuildRole:
    """A role of a guild. The @everyone role has ``id == guild_id``; ``permissions`` is the
    integer of ``guilds.permissions.Permission`` bits (stored as a plain int)."""

    id: int
    guild_id: int
    name: str
    permissions: int
    position: int = 0


@dataclass(frozen=True, slots=True)
class ChannelOverwrite:
    """A channel's deny/allow bits for one role (``target_id`` = role id; the guild id means
    @everyone) or one member (``target_id`` = user id)."""

    guild_id: int
    channel_id: int
    kind: Literal["role", "member"]
    target_id: int
    allow: int
    deny: int


@dataclass(frozen=True, slots=True)
class Ban:
    guild_id: int
    user_id: int
    reason: str = ""


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
    - ``page_after`` is its mirror for jumping forwards: messages strictly newer than ``after``,
      *oldest* first, at most ``limit``, the same no-gap/no-duplicate guarantee; it walks
      partitions forwards from ``after``'s bucket (or the channel's first bucket).
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

    async def page_after(
        self, channel_id: int, *, after: int, limit: int
    ) -> list[StoredMessage]: ...

    async def delete_messages(self, keys: Sequence[tuple[int, int]]) -> None:
        """Delete messages by (channel_id, message_id) (DELETE_MESSAGE): idempotent, absent rows
        are no-ops; raises ``StorageUnavailable`` like the writes (a retry is safe)."""
        ...


class ArchivableHistory(HistoryStore, Protocol):
    """What the cold tier's compactor needs from a history store (``storage.tiers``).

    - ``history_channels``: every channel with at least one row, in no particular order.
    - ``channel_buckets``: a channel's non-empty buckets, ascending.
    - ``bucket_messages``: every row of one (channel, bucket), oldest first.
    - ``delete_bucket``: removes that partition at once (a reader sees all of it or none).
    """

    async def history_channels(self) -> list[int]: ...
    async def channel_buckets(self, channel_id: int) -> list[int]: ...
    async def bucket_messages(self, channel_id: int, bucket: int) -> list[StoredMessage]: ...
    async def delete_bucket(self, channel_id: int, bucket: int) -> None: ...


class MetadataStore(Protocol):
    """Users, guilds, channels, roles, members with their roles, overwrites and bans.

    Guarantees (the contract suite checks each on every backend):
    - A write is visible to every reader once the call returns: read-your-writes across
      processes (Cassandra reads and writes this data at QUORUM, so R + W > RF). This is what
      lets the control plane bump the metadata version *after* a write and know that any
      reader that sees the new version also sees the write.
    - Every write is an idempotent upsert or delete: re-adding what exists, or removing what
      is absent, is a no-op. ``put_*`` with the same key replaces the row.
    - Writes are single-row (no multi-row transactions). Callers order them so that every
      intermediate state is safe: a ban is written *before* the membership is removed, and
      readers check bans as well as membership.
    - ``remove_member`` also drops the member's roles (a member who rejoins starts with none).
    - Bans are independent of membership: ``put_ban`` does not remove the member and
      ``add_member`` does not check bans (the control plane does both).
    - Lists come back in a stable order: channels by (position, id), roles by (position, id),
      members, bans and overwrites by id.
    - Raises ``StorageUnavailable`` when the backend cannot be reached; callers retry.
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
    async def guild_member_users(self, guild_id: int) -> list[User]:
        """The guild's members with their usernames, by id (one read answers a member
        request of a lazy guild: gateway/lazy.py)."""
        ...

    async def find_guilds(self, name: str) -> list[Guild]:
        """Guilds named ``name`` (names are not unique), by id."""
        ...

    async def put_role(self, role: GuildRole) -> None: ...
    async def guild_roles(self, guild_id: int) -> list[GuildRole]: ...
    async def add_member_role(self, guild_id: int, user_id: int, role_id: int) -> None: ...
    async def remove_member_role(self, guild_id: int, user_id: int, role_id: int) -> None: ...
    async def member_roles(self, guild_id: int, user_id: int) -> frozenset[int]:
        """Role ids given to the member (never including @everyone, which every member holds
        implicitly). Ids of roles that no longer exist may appear; the permission algorithm
        ignores them."""
        ...

    async def put_overwrite(self, overwrite: ChannelOverwrite) -> None: ...
    async def delete_overwrite(
        self, guild_id: int, channel_id: int, kind: str, target_id: int
    ) -> None: ...
    async def guild_overwrites(self, guild_id: int) -> list[ChannelOverwrite]:
        """Every overwrite of every channel of the guild (one read builds a guild's view)."""
        ...

    async def put_ban(self, ban: Ban) -> None: ...
    async def delete_ban(self, guild_id: int, user_id: int) -> None: ...
    async def is_banned(self, guild_id: int, user_id: int) -> bool: ...
    async def guild_bans(self, guild_id: int) -> list[Ban]: ...


class Store(ArchivableHistory, MetadataStore, Protocol):
    """What ``open_store(url)`` returns: both interfaces over one backend connection."""

    async def close(self) -> None: ...
