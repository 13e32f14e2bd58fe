"""Cassandra backend for history and metadata (``cassandra://host:port/keyspace``).

Messages live in ``messages``, partitioned by ``(channel_id, bucket)`` with ``message_id``
clustering descending, as in Discord's schema: a partition holds one fixed span of snowflake
time of one channel, so partitions stay bounded however old the channel grows. Writes are
plain INSERTs of immutable rows: Cassandra's upsert makes a re-insert of the same message a
no-op in effect (same key, same values), which is what the at-least-once workers rely on.

Paging walks buckets backwards. ``channel_buckets`` records every non-empty bucket of a channel
(written alongside the first message of a bucket a process sees), so an old page jumps straight
to the next bucket that has messages instead of probing empty ones; the walk ends at the
channel's first bucket (the bucket of its snowflake id) because nothing can be older.

Consistency per data type (URL query or settings): messages default to ONE (a write succeeds
if any replica has it: availability first; a reader may briefly miss the newest message, which
the hot cache serves anyway); metadata — members, channels, bans — defaults to QUORUM for
reads and writes, so a removal acknowledged to the caller is seen by every later reader
(R + W > RF). On a one-node cluster both are the same; the difference appears with RF=3.

The driver's futures are bridged to asyncio with callbacks (``_aexec``): the event loop never
blocks on a query. Driver errors that mean "cannot reach enough replicas" become
``StorageUnavailable`` so workers keep entries pending instead of dropping them.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, urlparse

from cassandra import (
    ConsistencyLevel,
    DriverException,
    OperationTimedOut,
    ReadTimeout,
    Unavailable,
    WriteTimeout,
)
from cassandra.cluster import (
    EXEC_PROFILE_DEFAULT,
    Cluster,
    ExecutionProfile,
    NoHostAvailable,
    Session,
)
from cassandra.policies import DCAwareRoundRobinPolicy, RetryPolicy
from cassandra.query import PreparedStatement

from chatscale import snowflake
from storage.base import Channel, Guild, StoredMessage, User
from storage.exceptions import StorageUnavailable

UNAVAILABLE = (
    NoHostAvailable,
    OperationTimedOut,
    Unavailable,
    ReadTimeout,
    WriteTimeout,
    DriverException,
)

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS messages (
        channel_id bigint, bucket int, message_id bigint, author_id bigint, payload text,
        PRIMARY KEY ((channel_id, bucket), message_id)
    ) WITH CLUSTERING ORDER BY (message_id DESC)""",
    """CREATE TABLE IF NOT EXISTS channel_buckets (
        channel_id bigint, bucket int, PRIMARY KEY (channel_id, bucket)
    ) WITH CLUSTERING ORDER BY (bucket DESC)""",
    "CREATE TABLE IF NOT EXISTS users (id bigint PRIMARY KEY, username text)",
    "CREATE TABLE IF NOT EXISTS users_by_name (username text PRIMARY KEY, id bigint)",
    "CREATE TABLE IF NOT EXISTS guilds (id bigint PRIMARY KEY, name text, owner_id bigint)",
    "CREATE TABLE IF NOT EXISTS channels (id bigint PRIMARY KEY, guild_id bigint, name text, kind text, position int)",
    """CREATE TABLE IF NOT EXISTS channels_by_guild (
        guild_id bigint, position int, id bigint, PRIMARY KEY (guild_id, position, id))""",
    "CREATE TABLE IF NOT EXISTS members (guild_id bigint, user_id bigint, PRIMARY KEY (guild_id, user_id))",
    "CREATE TABLE IF NOT EXISTS guilds_by_user (user_id bigint, guild_id bigint, PRIMARY KEY (user_id, guild_id))",
]

_TABLE_REF = re.compile(r"\b(INTO|FROM|EXISTS|UPDATE)\s+(\w+)")


def _qualify(cql: str, keyspace: str) -> str:
    """Fully-qualified table names: Cassandra 5 warns about prepared statements under USE."""
    return _TABLE_REF.sub(lambda m: f"{m.group(1)} {keyspace}.{m.group(2)}", cql)


LEVELS = {
    name: getattr(ConsistencyLevel, name)
    for name in ("ONE", "LOCAL_ONE", "TWO", "QUORUM", "LOCAL_QUORUM", "ALL")
}


def _parse(url: str) -> dict[str, Any]:
    u = urlparse(url)
    q = {k: v[-1] for k, v in parse_qs(u.query).items()}
    return {
        "host": u.hostname or "127.0.0.1",
        "port": u.port or 9042,
        "keyspace": (u.path or "/chatscale").strip("/") or "chatscale",
        "rf": int(q.get("rf", "1")),
        "dc": q.get("dc", "datacenter1"),
        "messages": LEVELS[q.get("messages", "ONE").upper()],
        "metadata": LEVELS[q.get("metadata", "QUORUM").upper()],
        "timeout": float(q.get("timeout", "5")),
    }


class CassandraStore:
    def __init__(
        self, cluster: Cluster, session: Session, opts: dict[str, Any], bucket_span_ms: int
    ) -> None:
        self._cluster = cluster
        self._session = session
        self._opts = opts
        self._span = bucket_span_ms
        self._ps: dict[str, PreparedStatement] = {}
        self._known_buckets: set[tuple[int, int]] = set()

    # ---- lifecycle -------------------------------------------------------------------------

    @classmethod
    async def open(cls, url: str, *, bucket_span_ms: int) -> CassandraStore:
        opts = _parse(url)
        profile = ExecutionProfile(
            load_balancing_policy=DCAwareRoundRobinPolicy(local_dc=opts["dc"]),
            retry_policy=RetryPolicy(),
            request_timeout=opts["timeout"],
            consistency_level=opts["metadata"],
        )
        cluster = Cluster(
            [opts["host"]],
            port=opts["port"],
            protocol_version=5,
            execution_profiles={EXEC_PROFILE_DEFAULT: profile},
            connect_timeout=opts["timeout"],
        )
        try:
            session = await asyncio.to_thread(cluster.connect)
            await asyncio.to_thread(
                session.execute,
                f"CREATE KEYSPACE IF NOT EXISTS {opts['keyspace']} WITH replication = "
                f"{{'class': 'SimpleStrategy', 'replication_factor': {opts['rf']}}}",
            )
            for ddl in SCHEMA:
                await asyncio.to_thread(session.execute, _qualify(ddl, opts["keyspace"]))
        except UNAVAILABLE as exc:
            cluster.shutdown()
            raise StorageUnavailable(f"cassandra at {opts['host']}:{opts['port']}: {exc}") from exc
        store = cls(cluster, session, opts, bucket_span_ms)
        await store._prepare()
        return store

    async def _prepare(self) -> None:
        msg, meta = self._opts["messages"], self._opts["metadata"]
        statements = {
            "insert": (
                "INSERT INTO messages (channel_id, bucket, message_id, author_id, payload) VALUES (?, ?, ?, ?, ?)",
                msg,
            ),
            "mark_bucket": ("INSERT INTO channel_buckets (channel_id, bucket) VALUES (?, ?)", msg),
            "buckets": (
                "SELECT bucket FROM channel_buckets WHERE channel_id = ? AND bucket <= ?",
                msg,
            ),
            "page": (
                "SELECT message_id, author_id, payload FROM messages WHERE channel_id = ? AND bucket = ? "
                "AND message_id < ? LIMIT ?",
                msg,
            ),
            "put_user": ("INSERT INTO users (id, username) VALUES (?, ?)", meta),
            "put_user_name": (
                "INSERT INTO users_by_name (username, id) VALUES (?, ?) IF NOT EXISTS",
                meta,
            ),
            "get_user": ("SELECT id, username FROM users WHERE id = ?", meta),
            "find_user": ("SELECT id FROM users_by_name WHERE username = ?", meta),
            "put_guild": ("INSERT INTO guilds (id, name, owner_id) VALUES (?, ?, ?)", meta),
            "get_guild": ("SELECT id, name, owner_id FROM guilds WHERE id = ?", meta),
            "put_channel": (
                "INSERT INTO channels (id, guild_id, name, kind, position) VALUES (?, ?, ?, ?, ?)",
                meta,
            ),
            "put_channel_idx": (
                "INSERT INTO channels_by_guild (guild_id, position, id) VALUES (?, ?, ?)",
                meta,
            ),
            "get_channel": (
                "SELECT id, guild_id, name, kind, position FROM channels WHERE id = ?",
                meta,
            ),
            "guild_channel_ids": ("SELECT id FROM channels_by_guild WHERE guild_id = ?", meta),
            "add_member": ("INSERT INTO members (guild_id, user_id) VALUES (?, ?)", meta),
            "add_member_idx": (
                "INSERT INTO guilds_by_user (user_id, guild_id) VALUES (?, ?)",
                meta,
            ),
            "del_member": ("DELETE FROM members WHERE guild_id = ? AND user_id = ?", meta),
            "del_member_idx": (
                "DELETE FROM guilds_by_user WHERE user_id = ? AND guild_id = ?",
                meta,
            ),
            "is_member": ("SELECT user_id FROM members WHERE guild_id = ? AND user_id = ?", meta),
            "members": ("SELECT user_id FROM members WHERE guild_id = ?", meta),
            "user_guild_ids": ("SELECT guild_id FROM guilds_by_user WHERE user_id = ?", meta),
        }
        for name, (cql, level) in statements.items():
            ps = await asyncio.to_thread(
                self._session.prepare, _qualify(cql, self._opts["keyspace"])
            )
            ps.consistency_level = level
            self._ps[name] = ps

    async def close(self) -> None:
        await asyncio.to_thread(self._cluster.shutdown)

    async def _aexec(self, name: str, params: Sequence[Any]) -> list[Any]:
        """Run a prepared statement without blocking the loop; all result pages, as rows."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[Any]] = loop.create_future()
        rows: list[Any] = []
        try:
            fut = self._session.execute_async(self._ps[name], params)
        except UNAVAILABLE as exc:
            raise StorageUnavailable(str(exc)) from exc

        def ok(page: Any) -> None:
            rows.extend(page or [])
            if fut.has_more_pages:
                fut.start_fetching_next_page()
            else:
                loop.call_soon_threadsafe(lambda: done.done() or done.set_result(rows))

        def fail(exc: BaseException) -> None:
            loop.call_soon_threadsafe(lambda: done.done() or done.set_exception(exc))

        fut.add_callbacks(ok, fail)
        try:
            return await done
        except UNAVAILABLE as exc:
            raise StorageUnavailable(f"cassandra: {type(exc).__name__}: {exc}") from exc

    # ---- history ----------------------------------------------------------------------------

    async def insert(self, message: StoredMessage) -> None:
        await self.insert_many([message])

    async def insert_many(self, messages: Sequence[StoredMessage]) -> None:
        writes = []
        for m in messages:
            b = snowflake.bucket(m.message_id, self._span)
            writes.append(
                self._aexec("insert", (m.channel_id, b, m.message_id, m.author_id, m.payload))
            )
            if (m.channel_id, b) not in self._known_buckets:
                writes.append(self._aexec("mark_bucket", (m.channel_id, b)))
        # Different partitions: concurrent single-partition writes, not a multi-partition batch.
        results = await asyncio.gather(*writes, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        for m in messages:
            self._known_buckets.add((m.channel_id, snowflake.bucket(m.message_id, self._span)))

    async def page(self, channel_id: int, *, before: int | None, limit: int) -> list[StoredMessage]:
        upper = before if before is not None else (1 << 63) - 1
        first = snowflake.bucket(channel_id, self._span)
        start = snowflake.bucket(upper, self._span)
        buckets = [row.bucket for row in await self._aexec("buckets", (channel_id, start))]
        out: list[StoredMessage] = []
        for b in buckets:  # newest first, only non-empty buckets, never below the first
            if b < first or len(out) >= limit:
                break
            rows = await self._aexec("page", (channel_id, b, upper, limit - len(out)))
            out += [StoredMessage(channel_id, r.message_id, r.author_id, r.payload) for r in rows]
        return out

    # ---- metadata ----------------------------------------------------------------------------

    async def put_user(self, user: User) -> None:
        """Usernames are unique: two concurrent signups race, so the name is claimed with a
        lightweight transaction (Paxos, SERIAL) before the user row is written."""
        [claim] = await self._aexec("put_user_name", (user.username, user.id))
        if not claim.applied and claim.id != user.id:
            raise ValueError(f"username {user.username!r} is taken")
        await self._aexec("put_user", (user.id, user.username))

    async def put_guild(self, guild: Guild) -> None:
        await self._aexec("put_guild", (guild.id, guild.name, guild.owner_id))

    async def put_channel(self, channel: Channel) -> None:
        await self._aexec(
            "put_channel",
            (channel.id, channel.guild_id, channel.name, channel.kind, channel.position),
        )
        await self._aexec("put_channel_idx", (channel.guild_id, channel.position, channel.id))

    async def add_member(self, guild_id: int, user_id: int) -> None:
        await self._aexec("add_member", (guild_id, user_id))
        await self._aexec("add_member_idx", (user_id, guild_id))

    async def remove_member(self, guild_id: int, user_id: int) -> None:
        await self._aexec("del_member", (guild_id, user_id))
        await self._aexec("del_member_idx", (user_id, guild_id))

    async def get_user(self, user_id: int) -> User | None:
        rows = await self._aexec("get_user", (user_id,))
        return User(rows[0].id, rows[0].username) if rows else None

    async def find_user(self, username: str) -> User | None:
        rows = await self._aexec("find_user", (username,))
        return await self.get_user(rows[0].id) if rows else None

    async def get_guild(self, guild_id: int) -> Guild | None:
        rows = await self._aexec("get_guild", (guild_id,))
        return Guild(rows[0].id, rows[0].name, rows[0].owner_id) if rows else None

    async def get_channel(self, channel_id: int) -> Channel | None:
        rows = await self._aexec("get_channel", (channel_id,))
        r = rows[0] if rows else None
        return Channel(r.id, r.guild_id, r.name, r.kind, r.position) if r else None

    async def guild_channels(self, guild_id: int) -> list[Channel]:
        # The index row is keyed by position, so a moved channel may leave a stale row behind:
        # dedupe and trust the channel row itself.
        ids = dict.fromkeys(r.id for r in await self._aexec("guild_channel_ids", (guild_id,)))
        channels = [await self.get_channel(i) for i in ids]
        found = [c for c in channels if c is not None and c.guild_id == guild_id]
        return sorted(found, key=lambda c: (c.position, c.id))

    async def user_guilds(self, user_id: int) -> list[Guild]:
        ids = [r.guild_id for r in await self._aexec("user_guild_ids", (user_id,))]
        guilds = [await self.get_guild(i) for i in ids]
        return [g for g in guilds if g is not None]

    async def guild_members(self, guild_id: int) -> list[int]:
        return [r.user_id for r in await self._aexec("members", (guild_id,))]

    async def is_member(self, guild_id: int, user_id: int) -> bool:
        return bool(await self._aexec("is_member", (guild_id, user_id)))
