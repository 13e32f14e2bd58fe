"""Embedded SQLite backend for history and metadata (the default; no server to run).

One connection per store, used from one dedicated thread so the event loop never blocks on
disk. WAL mode lets several processes (two workers, two gateways) share the file: one writer at
a time, readers never blocked; ``busy_timeout`` absorbs writer contention. ``synchronous=NORMAL``
in WAL is durable against a process crash (the case the tests exercise), not against power loss.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from chatscale import snowflake
from chatscale.snowflake import bucket
from storage.base import Ban, Channel, ChannelOverwrite, Guild, GuildRole, StoredMessage, User
from storage.exceptions import StorageUnavailable

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    channel_id INTEGER NOT NULL,
    bucket     INTEGER NOT NULL,
    message_id INTEGER NOT NULL,
    author_id  INTEGER NOT NULL,
    payload    TEXT NOT NULL,
    PRIMARY KEY (channel_id, message_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, username TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS guilds (id INTEGER PRIMARY KEY, name TEXT NOT NULL, owner_id INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS guilds_by_name ON guilds (name);
CREATE TABLE IF NOT EXISTS channels (
    id INTEGER PRIMARY KEY, guild_id INTEGER NOT NULL, name TEXT NOT NULL,
    kind TEXT NOT NULL, position INTEGER NOT NULL, slowmode_s INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS channels_by_guild ON channels (guild_id);
CREATE TABLE IF NOT EXISTS members (
    guild_id INTEGER NOT NULL, user_id INTEGER NOT NULL, PRIMARY KEY (guild_id, user_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS members_by_user ON members (user_id, guild_id);
CREATE TABLE IF NOT EXISTS roles (
    guild_id INTEGER NOT NULL, id INTEGER NOT NULL, name TEXT NOT NULL,
    permissions INTEGER NOT NULL, position INTEGER NOT NULL, PRIMARY KEY (guild_id, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS member_roles (
    guild_id INTEGER NOT NULL, user_id INTEGER NOT NULL, role_id INTEGER NOT NULL,
    PRIMARY KEY (guild_id, user_id, role_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS overwrites (
    guild_id INTEGER NOT NULL, channel_id INTEGER NOT NULL, kind TEXT NOT NULL,
    target_id INTEGER NOT NULL, allow INTEGER NOT NULL, deny INTEGER NOT NULL,
    PRIMARY KEY (guild_id, channel_id, kind, target_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS bans (
    guild_id INTEGER NOT NULL, user_id INTEGER NOT NULL, reason TEXT NOT NULL,
    PRIMARY KEY (guild_id, user_id)
) WITHOUT ROWID;
"""

# Columns added after a table first shipped: (table, column, definition) for older files.
MIGRATIONS = [("channels", "slowmode_s", "INTEGER NOT NULL DEFAULT 0")]


class SQLiteStore:
    def __init__(self, path: str, *, bucket_span_ms: int) -> None:
        self._path = path
        self._span = bucket_span_ms
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._db: sqlite3.Connection | None = None

    @classmethod
    async def open(cls, url: str, *, bucket_span_ms: int) -> SQLiteStore:
        path = url.removeprefix("sqlite://")
        path = path[1:] if path.startswith("/") and not path.startswith("//") else path
        if path.startswith("//"):
            path = path[1:]  # sqlite:////abs/path -> /abs/path
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        store = cls(path, bucket_span_ms=bucket_span_ms)
        await store._run(store._connect)
        return store

    def _connect(self) -> None:
        db = sqlite3.connect(
            self._path, timeout=10.0, isolation_level=None, check_same_thread=False
        )
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=10000")
        db.executescript(SCHEMA)
        for table, column, definition in MIGRATIONS:
            have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
        self._db = db

    async def _run(self, fn: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, fn, *args)
        except sqlite3.OperationalError as exc:  # locked for longer than busy_timeout, disk gone
            raise StorageUnavailable(str(exc)) from exc

    def _exec(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        assert self._db is not None
        return self._db.execute(sql, params).fetchall()

    async def close(self) -> None:
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._pool.shutdown(wait=True)

    # ---- history ------------------------------------------------------------------------

    async def insert(self, message: StoredMessage) -> None:
        await self._run(
            self._exec,
            "INSERT OR IGNORE INTO messages VALUES (?, ?, ?, ?, ?)",
            (
                message.channel_id,
                bucket(message.message_id, self._span),
                message.message_id,
                message.author_id,
                message.payload,
            ),
        )

    async def insert_many(self, messages: Sequence[StoredMessage]) -> None:
        rows = [
            (m.channel_id, bucket(m.message_id, self._span), m.message_id, m.author_id, m.payload)
            for m in messages
        ]
        await self._run(
            self._executemany, "INSERT OR IGNORE INTO messages VALUES (?, ?, ?, ?, ?)", rows
        )

    def _executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        assert self._db is not None
        self._db.execute("BEGIN")  # one transaction: one commit for the whole batch
        try:
            self._db.executemany(sql, rows)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    async def page(self, channel_id: int, *, before: int | None, limit: int) -> list[StoredMessage]:
        rows = await self._run(
            self._exec,
            "SELECT message_id, author_id, payload FROM messages WHERE channel_id = ? "
            "AND message_id < ? ORDER BY message_id DESC LIMIT ?",
            (channel_id, before if before is not None else (1 << 63) - 1, limit),
        )
        return [StoredMessage(channel_id, mid, author, payload) for mid, author, payload in rows]

    async def page_after(self, channel_id: int, *, after: int, limit: int) -> list[StoredMessage]:
        rows = await self._run(
            self._exec,
            "SELECT message_id, author_id, payload FROM messages WHERE channel_id = ? "
            "AND message_id > ? ORDER BY message_id ASC LIMIT ?",
            (channel_id, after, limit),
        )
        return [StoredMessage(channel_id, mid, author, payload) for mid, author, payload in rows]

    def _bucket_range(self, bucket_no: int) -> tuple[int, int]:
        shift = snowflake.NODE_BITS + snowflake.SEQ_BITS
        return (bucket_no * self._span) << shift, ((bucket_no + 1) * self._span) << shift

    async def history_channels(self) -> list[int]:
        rows = await self._run(self._exec, "SELECT DISTINCT channel_id FROM messages", ())
        return [r[0] for r in rows]

    async def channel_buckets(self, channel_id: int) -> list[int]:
        rows = await self._run(
            self._exec,
            "SELECT DISTINCT bucket FROM messages WHERE channel_id = ? ORDER BY bucket",
            (channel_id,),
        )
        return [r[0] for r in rows]

    async def bucket_messages(self, channel_id: int, bucket_no: int) -> list[StoredMessage]:
        lo, hi = self._bucket_range(bucket_no)
        rows = await self._run(
            self._exec,
            "SELECT message_id, author_id, payload FROM messages WHERE channel_id = ? "
            "AND message_id >= ? AND message_id < ? ORDER BY message_id",
            (channel_id, lo, hi),
        )
        return [StoredMessage(channel_id, mid, author, payload) for mid, author, payload in rows]

    async def delete_bucket(self, channel_id: int, bucket_no: int) -> None:
        lo, hi = self._bucket_range(bucket_no)
        await self._run(
            self._exec,
            "DELETE FROM messages WHERE channel_id = ? AND message_id >= ? AND message_id < ?",
            (channel_id, lo, hi),
        )

    async def delete_messages(self, keys: Sequence[tuple[int, int]]) -> None:
        """Delete rows by (channel_id, message_id) in one transaction; absent rows are no-ops."""
        if keys:
            await self._run(
                self._executemany,
                "DELETE FROM messages WHERE channel_id = ? AND message_id = ?",
                [(c, m) for c, m in keys],
            )

    # ---- metadata -----------------------------------------------------------------------

    async def put_user(self, user: User) -> None:
        try:
            await self._run(
                self._exec,
                "INSERT INTO users VALUES (?, ?) ON CONFLICT(id) DO UPDATE SET username = excluded.username",
                (user.id, user.username),
            )
        except sqlite3.IntegrityError as exc:  # UNIQUE(username) held by another id
            raise ValueError(f"username {user.username!r} is taken") from exc

    async def put_guild(self, guild: Guild) -> None:
        await self._run(
            self._exec,
            "INSERT OR REPLACE INTO guilds VALUES (?, ?, ?)",
            (guild.id, guild.name, guild.owner_id),
        )

    async def put_channel(self, channel: Channel) -> None:
        await self._run(
            self._exec,
            "INSERT OR REPLACE INTO channels VALUES (?, ?, ?, ?, ?, ?)",
            (
                channel.id,
                channel.guild_id,
                channel.name,
                channel.kind,
                channel.position,
                channel.slowmode_s,
            ),
        )

    async def add_member(self, guild_id: int, user_id: int) -> None:
        await self._run(
            self._exec, "INSERT OR IGNORE INTO members VALUES (?, ?)", (guild_id, user_id)
        )

    async def remove_member(self, guild_id: int, user_id: int) -> None:
        await self._run(
            self._exec,
            "DELETE FROM members WHERE guild_id = ? AND user_id = ?",
            (guild_id, user_id),
        )
        await self._run(
            self._exec,
            "DELETE FROM member_roles WHERE guild_id = ? AND user_id = ?",
            (guild_id, user_id),
        )

    async def get_user(self, user_id: int) -> User | None:
        rows = await self._run(
            self._exec, "SELECT id, username FROM users WHERE id = ?", (user_id,)
        )
        return User(*rows[0]) if rows else None

    async def find_user(self, username: str) -> User | None:
        rows = await self._run(
            self._exec, "SELECT id, username FROM users WHERE username = ?", (username,)
        )
        return User(*rows[0]) if rows else None

    async def get_guild(self, guild_id: int) -> Guild | None:
        rows = await self._run(
            self._exec, "SELECT id, name, owner_id FROM guilds WHERE id = ?", (guild_id,)
        )
        return Guild(*rows[0]) if rows else None

    async def get_channel(self, channel_id: int) -> Channel | None:
        rows = await self._run(
            self._exec,
            "SELECT id, guild_id, name, kind, position, slowmode_s FROM channels WHERE id = ?",
            (channel_id,),
        )
        return Channel(*rows[0]) if rows else None

    async def guild_channels(self, guild_id: int) -> list[Channel]:
        rows = await self._run(
            self._exec,
            "SELECT id, guild_id, name, kind, position, slowmode_s FROM channels "
            "WHERE guild_id = ? ORDER BY position, id",
            (guild_id,),
        )
        return [Channel(*row) for row in rows]

    async def user_guilds(self, user_id: int) -> list[Guild]:
        rows = await self._run(
            self._exec,
            "SELECT g.id, g.name, g.owner_id FROM members m JOIN guilds g ON g.id = m.guild_id "
            "WHERE m.user_id = ? ORDER BY g.id",
            (user_id,),
        )
        return [Guild(*row) for row in rows]

    async def guild_members(self, guild_id: int) -> list[int]:
        rows = await self._run(
            self._exec,
            "SELECT user_id FROM members WHERE guild_id = ? ORDER BY user_id",
            (guild_id,),
        )
        return [row[0] for row in rows]

    async def guild_member_users(self, guild_id: int) -> list[User]:
        rows = await self._run(
            self._exec,
            "SELECT u.id, u.username FROM members m JOIN users u ON u.id = m.user_id "
            "WHERE m.guild_id = ? ORDER BY u.id",
            (guild_id,),
        )
        return [User(*row) for row in rows]

    async def is_member(self, guild_id: int, user_id: int) -> bool:
        rows = await self._run(
            self._exec,
            "SELECT 1 FROM members WHERE guild_id = ? AND user_id = ?",
            (guild_id, user_id),
        )
        return bool(rows)

    async def find_guilds(self, name: str) -> list[Guild]:
        rows = await self._run(
            self._exec, "SELECT id, name, owner_id FROM guilds WHERE name = ? ORDER BY id", (name,)
        )
        return [Guild(*row) for row in rows]

    # ---- roles, overwrites, bans ---------------------------------------------------------

    async def put_role(self, role: GuildRole) -> None:
        await self._run(
            self._exec,
            "INSERT OR REPLACE INTO roles VALUES (?, ?, ?, ?, ?)",
            (role.guild_id, role.id, role.name, int(role.permissions), role.position),
        )

    async def guild_roles(self, guild_id: int) -> list[GuildRole]:
        rows = await self._run(
            self._exec,
            "SELECT id, guild_id, name, permissions, position FROM roles WHERE guild_id = ? "
            "ORDER BY position, id",
            (guild_id,),
        )
        return [GuildRole(*row) for row in rows]

    async def add_member_role(self, guild_id: int, user_id: int, role_id: int) -> None:
        await self._run(
            self._exec,
            "INSERT OR IGNORE INTO member_roles VALUES (?, ?, ?)",
            (guild_id, user_id, role_id),
        )

    async def remove_member_role(self, guild_id: int, user_id: int, role_id: int) -> None:
        await self._run(
            self._exec,
            "DELETE FROM member_roles WHERE guild_id = ? AND user_id = ? AND role_id = ?",
            (guild_id, user_id, role_id),
        )

    async def member_roles(self, guild_id: int, user_id: int) -> frozenset[int]:
        rows = await self._run(
            self._exec,
            "SELECT role_id FROM member_roles WHERE guild_id = ? AND user_id = ?",
            (guild_id, user_id),
        )
        return frozenset(row[0] for row in rows)

    async def put_overwrite(self, overwrite: ChannelOverwrite) -> None:
        o = overwrite
        await self._run(
            self._exec,
            "INSERT OR REPLACE INTO overwrites VALUES (?, ?, ?, ?, ?, ?)",
            (o.guild_id, o.channel_id, o.kind, o.target_id, int(o.allow), int(o.deny)),
        )

    async def delete_overwrite(
        self, guild_id: int, channel_id: int, kind: str, target_id: int
    ) -> None:
        await self._run(
            self._exec,
            "DELETE FROM overwrites WHERE guild_id = ? AND channel_id = ? AND kind = ? "
            "AND target_id = ?",
            (guild_id, channel_id, kind, target_id),
        )

    async def guild_overwrites(self, guild_id: int) -> list[ChannelOverwrite]:
        rows = await self._run(
            self._exec,
            "SELECT guild_id, channel_id, kind, target_id, allow, deny FROM overwrites "
            "WHERE guild_id = ? ORDER BY channel_id, kind, target_id",
            (guild_id,),
        )
        return [ChannelOverwrite(*row) for row in rows]

    async def put_ban(self, ban: Ban) -> None:
        await self._run(
            self._exec,
            "INSERT OR REPLACE INTO bans VALUES (?, ?, ?)",
            (ban.guild_id, ban.user_id, ban.reason),
        )

    async def delete_ban(self, guild_id: int, user_id: int) -> None:
        await self._run(
            self._exec, "DELETE FROM bans WHERE guild_id = ? AND user_id = ?", (guild_id, user_id)
        )

    async def is_banned(self, guild_id: int, user_id: int) -> bool:
        rows = await self._run(
            self._exec,
            "SELECT 1 FROM bans WHERE guild_id = ? AND user_id = ?",
            (guild_id, user_id),
        )
        return bool(rows)

    async def guild_bans(self, guild_id: int) -> list[Ban]:
        rows = await self._run(
            self._exec,
            "SELECT guild_id, user_id, reason FROM bans WHERE guild_id = ? ORDER BY user_id",
            (guild_id,),
        )
        return [Ban(*row) for row in rows]
