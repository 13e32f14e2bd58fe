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
import contextlib
import logging
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
from cassandra.policies import DCAwareRoundRobinPolicy, RetryPolicy, TokenAwarePolicy
from cassandra.query import PreparedStatement

from chatscale import snowflake
from storage.base import Ban, Channel, ChannelOverwrite, Guild, GuildRole, StoredMessage, User
from storage.exceptions import BadStorageURL, StorageUnavailable

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
    "CREATE TABLE IF NOT EXISTS guilds_by_name (name text, id bigint, PRIMARY KEY (name, id))",
    """CREATE TABLE IF NOT EXISTS channels (
        id bigint PRIMARY KEY, guild_id bigint, name text, kind text, position int, slowmode_s int)""",
    """CREATE TABLE IF NOT EXISTS channels_by_guild (
        guild_id bigint, position int, id bigint, PRIMARY KEY (guild_id, position, id))""",
    "CREATE TABLE IF NOT EXISTS members (guild_id bigint, user_id bigint, PRIMARY KEY (guild_id, user_id))",
    "CREATE TABLE IF NOT EXISTS guilds_by_user (user_id bigint, guild_id bigint, PRIMARY KEY (user_id, guild_id))",
    # ``allow``/``deny`` and ``permissions`` are CQL keywords, hence the _bits/perms names.
    """CREATE TABLE IF NOT EXISTS roles (
        guild_id bigint, id bigint, name text, perms bigint, position int,
        PRIMARY KEY (guild_id, id))""",
    """CREATE TABLE IF NOT EXISTS member_roles (
        guild_id bigint, user_id bigint, role_id bigint, PRIMARY KEY ((guild_id, user_id), role_id))""",
    """CREATE TABLE IF NOT EXISTS overwrites (
        guild_id bigint, channel_id bigint, kind text, target_id bigint, allow_bits bigint,
        deny_bits bigint, PRIMARY KEY (guild_id, channel_id, kind, target_id))""",
    """CREATE TABLE IF NOT EXISTS bans (
        guild_id bigint, user_id bigint, reason text, PRIMARY KEY (guild_id, user_id))""",
]

# Columns added after a table first shipped (a keyspace created by an older build lacks them).
MIGRATIONS = [("channels", "slowmode_s", "int")]

_TABLE_REF = re.compile(r"\b(INTO|FROM|EXISTS|UPDATE)\s+(\w+)")


def _qualify(cql: str, keyspace: str) -> str:
    """Fully-qualified table names: Cassandra 5 warns about prepared statements under USE."""
    return _TABLE_REF.sub(lambda m: f"{m.group(1)} {keyspace}.{m.group(2)}", cql)


#: Schema changes wait for every node to agree on the new schema: on a ring of three JVMs
#: sharing two cores that takes seconds, far more than a query's ``timeout``.
SCHEMA_TIMEOUT_S = 30.0

#: Opening a session — the control connection's handshake and its reads of the system tables,
#: then each node's pool — on a JVM sharing two cores with a busy process has taken over 2 s
#: (a test suite beside another: NoHostAvailable, OperationTimedOut at the default query
#: ``timeout``). A query's timeout bounds how long a stalled node holds a batch; opening only
#: needs to wait, so it gets its own, longer bound (a node that refuses still fails at once).
OPEN_TIMEOUT_S = 15.0

LEVELS = {
    name: getattr(ConsistencyLevel, name)
    for name in ("ONE", "LOCAL_ONE", "TWO", "QUORUM", "LOCAL_QUORUM", "ALL")
}


_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]+))(?::(?P<port>\d+))?$")
_KEYSPACE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,47}$")


def _contact_points(netloc: str) -> list[tuple[str, int]]:
    """``h1:9042,h2:9042,h3`` -> [(h1, 9042), ...]; a missing port is 9042."""
    points = []
    for part in netloc.split(",") if netloc else ["127.0.0.1"]:
        m = _HOST_PORT.match(part.strip())
        if not m or (m.group("port") and not 0 < int(m.group("port")) < 65536):
            raise BadStorageURL(f"bad Cassandra contact point {part!r}: use host or host:port")
        points.append((m.group("v6") or m.group("host"), int(m.group("port") or 9042)))
    return points


def _parse(url: str) -> dict[str, Any]:
    """``cassandra://host[:port][,host[:port]...]/keyspace[?rf=&dc=&messages=&metadata=&timeout=]``.

    A mistake in the URL is ``BadStorageURL`` naming what is wrong (one line at the CLI)."""
    u = urlparse(url)
    q = {k: v[-1] for k, v in parse_qs(u.query).items()}
    unknown = sorted(set(q) - {"rf", "dc", "messages", "metadata", "timeout"})
    if unknown:
        raise BadStorageURL(
            f"unknown Cassandra URL parameter(s) {', '.join(unknown)}: "
            "known are rf, dc, messages, metadata, timeout"
        )
    points = _contact_points(u.netloc)
    keyspace = (u.path or "/chatscale").strip("/") or "chatscale"
    if not _KEYSPACE.match(keyspace):
        raise BadStorageURL(f"bad Cassandra keyspace name {keyspace!r}: letters, digits, _")
    levels = {}
    for kind, default in (("messages", "ONE"), ("metadata", "QUORUM")):
        name = q.get(kind, default).upper()
        if name not in LEVELS:
            raise BadStorageURL(
                f"unknown consistency {kind}={q[kind]!r}: use one of {', '.join(LEVELS)}"
            )
        levels[kind] = LEVELS[name]
    try:
        rf, timeout = int(q.get("rf", "1")), float(q.get("timeout", "2"))
    except ValueError as exc:
        raise BadStorageURL(f"bad Cassandra URL parameter: {exc}") from exc
    if rf < 1 or timeout <= 0:
        raise BadStorageURL(f"Cassandra rf must be >= 1 and timeout > 0 (got rf={rf}, {timeout})")
    return {
        "host": points[0][0],
        "port": points[0][1],
        "contact_points": points,
        "keyspace": keyspace,
        "rf": rf,
        "dc": q.get("dc", "datacenter1"),
        **levels,
        "timeout": timeout,  # also how long a paused node stalls a batch
    }


class _OneLineLog(logging.Filter):
    """The driver logs connection failures with their traceback (a node down logs one per
    reconnection attempt): keep the line and the exception's text, drop the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            record.msg, record.args = f"{record.getMessage()} {type(exc).__name__}: {exc}", None
            record.exc_info, record.exc_text = None, None
        return True


_DRIVER_LOGGERS = ("cassandra.cluster", "cassandra.pool", "cassandra.connection")
for _name in _DRIVER_LOGGERS + ("cassandra.io.libevreactor", "cassandra.io.asyncorereactor"):
    logging.getLogger(_name).addFilter(_OneLineLog())


@contextlib.contextmanager
def _driver_quiet():
    """While opening: every connection failure is in the error ``open`` raises, so the driver's
    own warnings about them would only repeat it (a CLI error stays one line)."""
    loggers = [logging.getLogger(n) for n in _DRIVER_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _where(opts: dict[str, Any]) -> str:
    return ",".join(f"{h}:{p}" for h, p in opts["contact_points"])


def unavailable_message(exc: BaseException, what: str = "") -> str:
    """One line for a driver error: for a refusal, how many replicas were needed and alive."""
    what = f" {what}" if what else ""
    level = ConsistencyLevel.value_to_name.get(getattr(exc, "consistency", None), "?")
    if isinstance(exc, Unavailable):
        return (
            f"cassandra refused the{what} at {level}: {exc.required_replicas} replica(s) needed, "
            f"only {exc.alive_replicas} alive (nodes down?)"
        )
    if isinstance(exc, ReadTimeout | WriteTimeout):
        return (
            f"cassandra timed out on the{what} at {level}: {exc.received_responses} of "
            f"{exc.required_responses} replica(s) answered in time"
        )
    if isinstance(exc, NoHostAvailable):
        # The retry policy tried the next host after a refusal: say why the last one refused.
        for inner in reversed(list(exc.errors.values())):
            if isinstance(inner, Unavailable | ReadTimeout | WriteTimeout):
                return unavailable_message(inner, what.strip())
        tried = "; ".join(f"{host}: {err}" for host, err in exc.errors.items())
        return f"cassandra: no node could take the{what} ({tried or 'no node reachable'})"
    return f"cassandra:{what} {type(exc).__name__}: {exc}"


class CassandraStore:
    def __init__(
        self, cluster: Cluster, session: Session, opts: dict[str, Any], bucket_span_ms: int
    ) -> None:
        self._cluster = cluster
        self._session = session
        self._opts = opts
        self._span = bucket_span_ms
        self._ps: dict[str, PreparedStatement] = {}
        self._what: dict[str, str] = {}  # statement name -> "write to bans" (for errors)
        self._known_buckets: set[tuple[int, int]] = set()

    # ---- lifecycle -------------------------------------------------------------------------

    @classmethod
    async def open(cls, url: str, *, bucket_span_ms: int) -> CassandraStore:
        opts = _parse(url)
        profile = ExecutionProfile(
            # Token-aware: a statement goes straight to a replica of its partition (the routing
            # key of a prepared statement), round robin among the replicas of the local DC.
            load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=opts["dc"])),
            retry_policy=RetryPolicy(),
            request_timeout=opts["timeout"],
            consistency_level=opts["metadata"],
        )
        cluster = Cluster(
            opts["contact_points"],
            port=opts["port"],
            protocol_version=5,
            execution_profiles={EXEC_PROFILE_DEFAULT: profile},
            connect_timeout=max(opts["timeout"], OPEN_TIMEOUT_S),
            control_connection_timeout=max(opts["timeout"], OPEN_TIMEOUT_S),
        )
        try:
            with _driver_quiet():
                session = await asyncio.to_thread(cluster.connect)
            nodes = len(cluster.metadata.all_hosts())
            if nodes < opts["rf"]:
                raise BadStorageURL(
                    f"cassandra at {_where(opts)}: rf={opts['rf']} but the cluster has {nodes} "
                    "node(s): every write would be refused; lower rf or add nodes"
                )
            await asyncio.to_thread(
                session.execute,
                f"CREATE KEYSPACE IF NOT EXISTS {opts['keyspace']} WITH replication = "
                f"{{'class': 'SimpleStrategy', 'replication_factor': {opts['rf']}}}",
                timeout=SCHEMA_TIMEOUT_S,
            )
            ks = cluster.metadata.keyspaces.get(opts["keyspace"])
            strategy = ks.replication_strategy if ks is not None else None
            have = getattr(strategy, "replication_factor", opts["rf"])
            if have != opts["rf"]:
                raise BadStorageURL(
                    f"keyspace {opts['keyspace']} exists with replication_factor {have}, the URL "
                    f"asks rf={opts['rf']}: ALTER KEYSPACE (then nodetool repair) or fix the URL"
                )
            for ddl in SCHEMA:
                await asyncio.to_thread(
                    session.execute, _qualify(ddl, opts["keyspace"]), timeout=SCHEMA_TIMEOUT_S
                )
            for table, column, cql_type in MIGRATIONS:
                rows = await asyncio.to_thread(
                    session.execute,
                    "SELECT column_name FROM system_schema.columns "
                    "WHERE keyspace_name = %s AND table_name = %s",
                    (opts["keyspace"], table),
                )
                if column not in {r.column_name for r in rows}:
                    await asyncio.to_thread(
                        session.execute,
                        f"ALTER TABLE {opts['keyspace']}.{table} ADD {column} {cql_type}",
                        timeout=SCHEMA_TIMEOUT_S,
                    )
        except BadStorageURL:
            cluster.shutdown()
            raise
        except UNAVAILABLE as exc:
            cluster.shutdown()
            why = unavailable_message(exc, "schema setup").removeprefix("cassandra: ")
            raise StorageUnavailable(f"cassandra at {_where(opts)}: {why}") from exc
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
            "buckets_from": (
                "SELECT bucket FROM channel_buckets WHERE channel_id = ? AND bucket >= ? "
                "ORDER BY bucket ASC",
                msg,
            ),
            "page_after": (
                "SELECT message_id, author_id, payload FROM messages WHERE channel_id = ? AND bucket = ? "
                "AND message_id > ? ORDER BY message_id ASC LIMIT ?",
                msg,
            ),
            "history_channels": ("SELECT DISTINCT channel_id FROM channel_buckets", msg),
            "all_buckets": ("SELECT bucket FROM channel_buckets WHERE channel_id = ?", msg),
            "bucket_rows": (
                "SELECT message_id, author_id, payload FROM messages WHERE channel_id = ? "
                "AND bucket = ?",
                msg,
            ),
            "del_bucket": ("DELETE FROM messages WHERE channel_id = ? AND bucket = ?", msg),
            "del_message": (
                "DELETE FROM messages WHERE channel_id = ? AND bucket = ? AND message_id = ?",
                msg,
            ),
            "unmark_bucket": (
                "DELETE FROM channel_buckets WHERE channel_id = ? AND bucket = ?",
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
            "put_guild_name": ("INSERT INTO guilds_by_name (name, id) VALUES (?, ?)", meta),
            "find_guilds": ("SELECT id FROM guilds_by_name WHERE name = ?", meta),
            "get_guild": ("SELECT id, name, owner_id FROM guilds WHERE id = ?", meta),
            "put_channel": (
                "INSERT INTO channels (id, guild_id, name, kind, position, slowmode_s) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                meta,
            ),
            "put_channel_idx": (
                "INSERT INTO channels_by_guild (guild_id, position, id) VALUES (?, ?, ?)",
                meta,
            ),
            "get_channel": (
                "SELECT id, guild_id, name, kind, position, slowmode_s FROM channels WHERE id = ?",
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
            "del_member_roles": (
                "DELETE FROM member_roles WHERE guild_id = ? AND user_id = ?",
                meta,
            ),
            "put_role": (
                "INSERT INTO roles (guild_id, id, name, perms, position) VALUES (?, ?, ?, ?, ?)",
                meta,
            ),
            "roles": ("SELECT id, name, perms, position FROM roles WHERE guild_id = ?", meta),
            "add_member_role": (
                "INSERT INTO member_roles (guild_id, user_id, role_id) VALUES (?, ?, ?)",
                meta,
            ),
            "del_member_role": (
                "DELETE FROM member_roles WHERE guild_id = ? AND user_id = ? AND role_id = ?",
                meta,
            ),
            "member_roles": (
                "SELECT role_id FROM member_roles WHERE guild_id = ? AND user_id = ?",
                meta,
            ),
            "put_overwrite": (
                "INSERT INTO overwrites (guild_id, channel_id, kind, target_id, allow_bits, "
                "deny_bits) VALUES (?, ?, ?, ?, ?, ?)",
                meta,
            ),
            "del_overwrite": (
                "DELETE FROM overwrites WHERE guild_id = ? AND channel_id = ? AND kind = ? "
                "AND target_id = ?",
                meta,
            ),
            "overwrites": (
                "SELECT channel_id, kind, target_id, allow_bits, deny_bits FROM overwrites "
                "WHERE guild_id = ?",
                meta,
            ),
            "put_ban": ("INSERT INTO bans (guild_id, user_id, reason) VALUES (?, ?, ?)", meta),
            "del_ban": ("DELETE FROM bans WHERE guild_id = ? AND user_id = ?", meta),
            "is_banned": ("SELECT user_id FROM bans WHERE guild_id = ? AND user_id = ?", meta),
            "bans": ("SELECT user_id, reason FROM bans WHERE guild_id = ?", meta),
        }
        for name, (cql, level) in statements.items():
            ps = await asyncio.to_thread(
                self._session.prepare, _qualify(cql, self._opts["keyspace"])
            )
            ps.consistency_level = level
            self._ps[name] = ps
            verb, table = cql.split()[0].upper(), _TABLE_REF.search(cql).group(2)  # type: ignore[union-attr]
            kind = {"INSERT": "write to", "DELETE": "delete from"}.get(verb, "read of")
            self._what[name] = f"{kind} {table}"

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
            raise StorageUnavailable(unavailable_message(exc, name)) from exc

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
            raise StorageUnavailable(unavailable_message(exc, self._what.get(name, name))) from exc

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

    async def page_after(self, channel_id: int, *, after: int, limit: int) -> list[StoredMessage]:
        start = max(snowflake.bucket(after, self._span), snowflake.bucket(channel_id, self._span))
        buckets = [row.bucket for row in await self._aexec("buckets_from", (channel_id, start))]
        out: list[StoredMessage] = []
        for b in buckets:  # oldest first, only non-empty buckets
            if len(out) >= limit:
                break
            rows = await self._aexec("page_after", (channel_id, b, after, limit - len(out)))
            out += [StoredMessage(channel_id, r.message_id, r.author_id, r.payload) for r in rows]
        return out

    async def history_channels(self) -> list[int]:
        return [r.channel_id for r in await self._aexec("history_channels", ())]

    async def channel_buckets(self, channel_id: int) -> list[int]:
        return sorted(r.bucket for r in await self._aexec("all_buckets", (channel_id,)))

    async def bucket_messages(self, channel_id: int, bucket: int) -> list[StoredMessage]:
        rows = await self._aexec("bucket_rows", (channel_id, bucket))
        out = [StoredMessage(channel_id, r.message_id, r.author_id, r.payload) for r in rows]
        return out[::-1]  # the partition clusters newest first

    async def delete_bucket(self, channel_id: int, bucket: int) -> None:
        """One partition delete (atomic for readers), then its marker; the marker goes last so
        a crash in between leaves an empty bucket that paging merely visits."""
        await self._aexec("del_bucket", (channel_id, bucket))
        await self._aexec("unmark_bucket", (channel_id, bucket))
        self._known_buckets.discard((channel_id, bucket))

    async def delete_messages(self, keys: Sequence[tuple[int, int]]) -> None:
        """Row deletes (tombstones at the messages consistency), concurrently; deleting an
        absent row is a no-op. The bucket marker stays: an emptied bucket is merely visited."""
        results = await asyncio.gather(
            *(self._aexec("del_message", (c, snowflake.bucket(m, self._span), m)) for c, m in keys),
            return_exceptions=True,
        )
        for r in results:
            if isinstance(r, BaseException):
                raise r

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
        await self._aexec("put_guild_name", (guild.name, guild.id))

    async def put_channel(self, channel: Channel) -> None:
        c = channel
        await self._aexec(
            "put_channel", (c.id, c.guild_id, c.name, c.kind, c.position, c.slowmode_s)
        )
        await self._aexec("put_channel_idx", (channel.guild_id, channel.position, channel.id))

    async def add_member(self, guild_id: int, user_id: int) -> None:
        await self._aexec("add_member", (guild_id, user_id))
        await self._aexec("add_member_idx", (user_id, guild_id))

    async def remove_member(self, guild_id: int, user_id: int) -> None:
        await self._aexec("del_member", (guild_id, user_id))
        await self._aexec("del_member_idx", (user_id, guild_id))
        await self._aexec("del_member_roles", (guild_id, user_id))

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
        if r is None:
            return None
        return Channel(r.id, r.guild_id, r.name, r.kind, r.position, r.slowmode_s or 0)

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

    async def guild_member_users(self, guild_id: int) -> list[User]:
        # No join in Cassandra: one read per member, concurrently (a lazy guild's member
        # directory is cached by the gateway for a few seconds, gateway/lazy.py).
        users = await asyncio.gather(
            *(self.get_user(u) for u in await self.guild_members(guild_id))
        )
        return [u for u in users if u is not None]

    async def is_member(self, guild_id: int, user_id: int) -> bool:
        return bool(await self._aexec("is_member", (guild_id, user_id)))

    async def find_guilds(self, name: str) -> list[Guild]:
        # The name index may hold a stale row after a rename: trust the guild row itself.
        ids = sorted(r.id for r in await self._aexec("find_guilds", (name,)))
        guilds = [await self.get_guild(i) for i in ids]
        return [g for g in guilds if g is not None and g.name == name]

    # ---- roles, overwrites, bans -------------------------------------------------------------

    async def put_role(self, role: GuildRole) -> None:
        await self._aexec(
            "put_role", (role.guild_id, role.id, role.name, int(role.permissions), role.position)
        )

    async def guild_roles(self, guild_id: int) -> list[GuildRole]:
        rows = await self._aexec("roles", (guild_id,))
        roles = [GuildRole(r.id, guild_id, r.name, r.perms, r.position) for r in rows]
        return sorted(roles, key=lambda r: (r.position, r.id))

    async def add_member_role(self, guild_id: int, user_id: int, role_id: int) -> None:
        await self._aexec("add_member_role", (guild_id, user_id, role_id))

    async def remove_member_role(self, guild_id: int, user_id: int, role_id: int) -> None:
        await self._aexec("del_member_role", (guild_id, user_id, role_id))

    async def member_roles(self, guild_id: int, user_id: int) -> frozenset[int]:
        rows = await self._aexec("member_roles", (guild_id, user_id))
        return frozenset(r.role_id for r in rows)

    async def put_overwrite(self, overwrite: ChannelOverwrite) -> None:
        o = overwrite
        await self._aexec(
            "put_overwrite",
            (o.guild_id, o.channel_id, o.kind, o.target_id, int(o.allow), int(o.deny)),
        )

    async def delete_overwrite(
        self, guild_id: int, channel_id: int, kind: str, target_id: int
    ) -> None:
        await self._aexec("del_overwrite", (guild_id, channel_id, kind, target_id))

    async def guild_overwrites(self, guild_id: int) -> list[ChannelOverwrite]:
        rows = await self._aexec("overwrites", (guild_id,))
        return [
            ChannelOverwrite(guild_id, r.channel_id, r.kind, r.target_id, r.allow_bits, r.deny_bits)
            for r in rows
        ]

    async def put_ban(self, ban: Ban) -> None:
        await self._aexec("put_ban", (ban.guild_id, ban.user_id, ban.reason))

    async def delete_ban(self, guild_id: int, user_id: int) -> None:
        await self._aexec("del_ban", (guild_id, user_id))

    async def is_banned(self, guild_id: int, user_id: int) -> bool:
        return bool(await self._aexec("is_banned", (guild_id, user_id)))

    async def guild_bans(self, guild_id: int) -> list[Ban]:
        rows = await self._aexec("bans", (guild_id,))
        return [Ban(guild_id, r.user_id, r.reason or "") for r in rows]
