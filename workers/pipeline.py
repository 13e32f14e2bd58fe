"""What a worker does to a batch of ingest entries, stage by stage.

validate -> authorize -> hot cache -> history -> fan-out -> ack (``history_mode="sync"``), or
validate -> authorize -> hot cache -> fan-out -> history -> ack (``"defer"``: recipients see the
message before it is durable; it is still acked only once stored).

The hot-cache write is where a message is *accepted*: it runs only if the metadata version the
batch was authorized under is still current (``storage/lua/hot_add.lua``), so a ban or permission
change that committed meanwhile makes the worker authorize the batch again.
With ``CHATSCALE_PERMISSION_MODE=cached`` (the eventual arm of the ``bans`` lab experiment)
the authorizer's cache lives ``PERMISSION_CACHE_TTL_S`` whatever changes, so a banned member's
messages are accepted until it expires.

When history storage is down (a paused or dead Cassandra) the batch is still written to the hot
cache and fanned out — live chat keeps working on Redis alone — but not acked: it raises
``HistoryPending`` and the worker finishes it (history write, then ack) once storage is back.

Each stage runs for the whole batch in one round trip (one MULTI for the hot cache, one
transaction for history, one pipeline of fan-out scripts), which is where a Python worker's
throughput comes from. Every stage is idempotent, so a batch that fails half way is simply run
again: hot-cache members and history rows are keyed by message id, and fan-out is guarded by a
per-message marker set in the same Lua script that writes the delivery entries. Transient
failures (Redis or the store unreachable) propagate to the worker, which retries the batch;
entries that can never succeed (undecodable) go to the dead-letter stream at once.

Two knobs change stages for the trade-off lab, never by default: ``hot_size=0`` (no hot cache:
the acceptance script only compares the metadata version) and ``fanout_mode=inbox`` (the fan-out
also appends a pointer to every member's inbox stream, the naive per-user design; ``_inbox``).

The payload bytes are delivered as the gateway built them, so the worker checks that they say
what it authorized: the payload's ``id``, ``channel_id``, ``guild_id`` and ``author`` (id and
stored username) must be the envelope's. A gateway builds both from one session and never
disagrees with itself, so a mismatch is an entry some other Redis client wrote (forged, or a
bug): it is dead-lettered with the reason, not rebuilt. Rebuilding would still post, under a
real user's name, text that user's session never sent; dead-lettering keeps the evidence.

``search_indexing=write`` adds a stage: the batch is committed to the search index just before
its fan-out (``_index_at_write``; the indexer then only gets deletions from this worker).
DELETE_MESSAGE entries (``kind: "delete"``, queued by ``gateway/delete.py`` on the channel's
shard) are applied after the batch's messages and before its ack (``_deletes``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.exceptions import NoScriptError

from chatscale import metrics, trace
from chatscale.config import Settings
from chatscale.keys import INGEST_GROUP, Keys
from chatscale.redisconn import is_cluster
from chatscale.wire import Delivery, IngestDelete, IngestMessage, StoredEntry, dumps, encode_entry
from guilds.access import GuildSnapshot, authorize_send, load_guild, load_member
from guilds.directory import ActivityCounter, Directory
from guilds.permissions import Permission
from storage import StorageUnavailable, Store, StoredMessage
from storage.hot import HotCache, member_bytes, stored_author
from storage.scripts import (
    FANOUT,
    FANOUT_MARKER_TTL_S,
    HOT_ADD,
    queue_fanout_gateway,
    queue_hot_add_channel,
    routed_fanout,
    version_holds,
)
from storage.search_index import SearchIndex
from workers import metrics as worker_metrics
from workers.indexer import queue_feed, stored_entries, to_doc

log = logging.getLogger("chatscale.worker")

MAX_REAUTHORIZE = 10  # version moves while one batch is checked, before it is retried later
INBOX_PIPELINE = 5000  # inbox XADDs sent per round trip (fanout_mode=inbox)


class LeaseLost(Exception):
    """The shard lease moved to another worker mid-batch; stop, leave the rest to it."""


class HistoryPending(StorageUnavailable):
    """Everything but the history write (and so the ack) is done: recipients have the batch.

    The worker keeps such batches in a backlog and finishes them when storage is back, while it
    goes on serving new messages on the hot path.
    """

    def __init__(self, batch: Batch) -> None:
        super().__init__(
            f"history write pending for {len(batch.decoded)} entries of {batch.stream}"
        )
        self.batch = batch


@dataclass
class Stats:
    processed: int = 0
    rejected: int = 0
    dead_lettered: int = 0
    fanout_skipped: int = 0  # redeliveries whose fan-out had already happened
    gateway_writes: int = 0
    inbox_writes: int = 0  # per-user inbox entries (fanout_mode=inbox only)
    reauthorized: int = 0  # batches checked again because permissions changed meanwhile


class MetadataChurn(StorageUnavailable):
    """The metadata version moved every time the batch was authorized: retry the batch later."""


class Authorizer:
    """May this author post this message here? Membership, bans and channel permissions.

    Rules, in order: the channel must be in the message's guild (UNKNOWN_CHANNEL); the author
    must be a member and not banned, and see the channel (MISSING_ACCESS); and hold
    SEND_MESSAGES there (MISSING_PERMISSIONS) — computed by ``guilds.access`` from the
    guild's roles and overwrites, exactly as the gateways compute what members see.

    Guild snapshots and member roles are cached and the cache is dropped whenever the metadata
    version moves. ``version`` is the one the current batch is authorized under: the pipeline
    hands it to the hot-cache write (``storage/lua/hot_add.lua``), which refuses if it moved, so a
    control-plane change committed while the batch was checked sends it back here.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        store: Store,
        *,
        cache_ttl_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._store = store
        # None: strong (the cache follows the metadata version). A number: cached mode — the
        # cache is kept that long whatever changed, and batches are accepted under the
        # current version (so the hot-cache check never sends them back).
        self._ttl = cache_ttl_s
        self._clock = clock
        self._loaded_at = clock()
        self.version: bytes | None = None
        self._guilds: dict[int, GuildSnapshot | None] = {}
        self._members: dict[tuple[int, int], frozenset[int] | None] = {}
        self._usernames: dict[int, str | None] = {}
        self._timeouts: dict[int, dict[bytes, bytes]] = {}  # guild -> user -> ms (timeouts)

    @property
    def may_skip_refresh(self) -> bool:
        """Strong mode with a version known: a batch may be authorized under it without reading
        the version first, because the hot-cache write accepts it only if that version is still
        current (and sends it back here otherwise). Refusals are not checked by that write, so
        a batch with any refusal is authorized again after ``refresh``."""
        return self._ttl is None and self.version is not None

    async def refresh(self) -> None:
        version = await self._redis.get(self._keys.metadata_version())
        if self._ttl is not None:  # cached mode: expire by age only
            self.version = version
            if self._clock() - self._loaded_at < self._ttl:
                return
            self._loaded_at = self._clock()
            self._guilds.clear()
            self._members.clear()
            self._usernames.clear()
            self._timeouts.clear()
            return
        if version != self.version:
            self.version = version
            self._guilds.clear()
            self._members.clear()
            self._usernames.clear()
            self._timeouts.clear()

    async def forged(self, message: IngestMessage) -> str | None:
        """Why the payload disagrees with the envelope that was authorized, or None if it agrees.

        Recipients get ``message.payload`` as it is, so an author, id or channel in it that is
        not the envelope's would be shown although nobody authorized it.
        """
        try:
            d = orjson.loads(message.payload)
        except orjson.JSONDecodeError:
            return "forged: payload is not JSON"
        if not isinstance(d, dict):
            return "forged: payload is not an object"
        for name, value in (
            ("id", message.id),
            ("channel_id", message.channel_id),
            ("guild_id", message.guild_id),
        ):
            if d.get(name) != str(value):
                return f"forged: payload {name} {d.get(name)!r} is not the envelope's {value}"
        user_id = message.author_id
        if user_id not in self._usernames:
            user = await self._store.get_user(user_id)
            self._usernames[user_id] = user.username if user else None
        author = {"id": str(user_id), "username": self._usernames[user_id]}
        if d.get("author") != author:
            return f"forged: payload author {d.get('author')!r} is not the authorized {author}"
        return None

    @metrics.timed("authorize")
    async def check(self, message: IngestMessage) -> str | None:
        """None if the message may be posted, else the rejection code."""
        guild_id, user_id = message.guild_id, message.author_id
        if guild_id not in self._guilds:
            self._guilds[guild_id] = await load_guild(self._store, guild_id)
        snapshot = self._guilds[guild_id]
        if snapshot is None or message.channel_id not in snapshot.channels:
            return "UNKNOWN_CHANNEL"
        if (guild_id, user_id) not in self._members:
            self._members[guild_id, user_id] = await load_member(self._store, guild_id, user_id)
        code = authorize_send(
            snapshot, user_id, self._members[guild_id, user_id], message.channel_id
        )
        if code is None:  # a timeout (ControlPlane.timeout_member) is read once per version
            if guild_id not in self._timeouts:
                self._timeouts[guild_id] = await self._redis.hgetall(self._keys.timeouts(guild_id))
            until = self._timeouts[guild_id].get(str(user_id).encode())
            if until is not None and int(until) > time.time() * 1000:
                return "MEMBER_TIMED_OUT"
        return code


async def _may_delete(auth: Authorizer, d: IngestDelete) -> str | None:
    """May ``d.deleter_id`` delete this message now? Its author, or a member with
    MANAGE_MESSAGES in the channel; either must still see the channel (under the
    authorizer's current metadata version, as sends are checked)."""
    if d.guild_id not in auth._guilds:
        auth._guilds[d.guild_id] = await load_guild(auth._store, d.guild_id)
    snapshot = auth._guilds[d.guild_id]
    if snapshot is None or d.channel_id not in snapshot.channels:
        return "UNKNOWN_CHANNEL"
    key = (d.guild_id, d.deleter_id)
    if key not in auth._members:
        auth._members[key] = await load_member(auth._store, d.guild_id, d.deleter_id)
    roles = auth._members[key]
    if roles is None:
        return "MISSING_ACCESS"
    perms = snapshot.permissions(d.deleter_id, roles, d.channel_id)
    if not perms & Permission.VIEW_CHANNEL:
        return "MISSING_ACCESS"
    if d.deleter_id != d.author_id and not perms & Permission.MANAGE_MESSAGES:
        return "MISSING_PERMISSIONS"
    return None


@dataclass
class Batch:
    stream: str
    shard: int
    entries: list[tuple[bytes, dict[bytes, bytes]]]
    attempts: int = 0
    decoded: list[tuple[bytes, IngestMessage]] = field(default_factory=list)
    accepted: list[IngestMessage] = field(default_factory=list)
    deletes: list[tuple[bytes, IngestDelete]] = field(default_factory=list)  # DELETE_MESSAGE
    is_decoded: bool = False
    deleted: list[IngestDelete] = field(default_factory=list)  # applied, to feed with the ack


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        *,
        redis: aioredis.Redis,
        keys: Keys,
        store: Store,
        consumer: str,
        fenced: bool,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.keys = keys
        self.store = store
        self.hot = HotCache(redis, keys, size=settings.hot_size)
        self.auth = Authorizer(
            redis,
            keys,
            store,
            cache_ttl_s=settings.permission_cache_ttl_s
            if settings.permission_mode == "cached"
            else None,
        )
        self.consumer = consumer
        self.fenced = fenced
        self.stats = Stats()
        self._fanout = redis.register_script(FANOUT)
        self._fanout_loaded = False  # SCRIPT LOAD once, then EVALSHA in the fan-out pipeline
        self._hot_add = redis.register_script(HOT_ADD)
        # search_indexing=write: the worker's own handle on the index (opened on first use)
        self.index: SearchIndex | None = None
        # On a Redis Cluster the cross-slot scripts run as per-slot steps (storage/scripts.py)
        self.cluster = is_cluster(redis)
        self.history_down_until = 0.0  # circuit breaker: skip history attempts until then
        self.breaker_s = 1.0
        self._inbox_members: dict[int, list[int]] = {}  # guild -> members (fanout_mode=inbox)
        self._inbox_version: bytes | None = None
        # Trust & safety (workers/moderation.py): set by the worker when MODERATION_MODE is not
        # off; None keeps the pipeline exactly as without it.
        self.moderation: Any = None
        self.activity = (  # discovery's top-K counters (guilds/directory.py)
            ActivityCounter(
                Directory(
                    redis,
                    keys,
                    window_minutes=settings.discovery_window_minutes,
                    sketch_lg_k=settings.discovery_sketch_lg_k,
                ),
                consumer,
                flush_s=settings.discovery_sketch_flush_s,
            )
            if settings.discovery_activity
            else None
        )

    async def process(self, batch: Batch, *, ack: bool = True) -> None:
        """Run every stage for the batch and ack it. Raises on transient failure (retry it).

        ``ack=False`` exists for fault injection: everything is done except the ack, which is
        the worst moment for a worker to die.
        """
        if not batch.is_decoded:
            await self._decode(batch)
        messages = [m for _, m in batch.decoded]
        for m in messages:
            trace.stamp(m.trace, "worker_read")
        worker_metrics.entries_read(messages)
        screened = await self.moderation.screen(messages) if self.moderation else None  # safety
        if screened is not None:
            messages = screened.passed
        accepted, rejected, forged = await self._authorize_and_accept(messages)
        if screened is not None:
            rejected += screened.blocked
        if forged:
            await self._dead_letter_forged(batch, forged)
        stored = True
        if self.settings.history_mode == "sync":
            stored = await self._try_history(accepted)
            await self._index_at_write(accepted)
            await self._fan_out(batch, accepted, rejected)
        else:
            await self._index_at_write(accepted)
            await self._fan_out(batch, accepted, rejected)
            stored = await self._try_history(accepted)
        if screened is not None and self.moderation is not None:
            await self.moderation.after(accepted, screened)
        self.stats.processed += len(accepted)
        self.stats.rejected += len(rejected)
        batch.accepted = accepted
        if not stored:
            raise HistoryPending(batch)
        metrics.messages_at("worker_done", accepted)  # stored and fanned out
        await self._deletes(batch)  # after the batch's messages: a channel's order holds
        await self._ack(batch, stored=accepted, count=True, ack=ack)

    async def finish(self, batch: Batch) -> None:
        """Write the history of a batch that was already fanned out, then ack it."""
        if time.monotonic() < self.history_down_until:
            raise StorageUnavailable("history store still marked down")
        try:
            await self._history(batch.accepted)
        except StorageUnavailable:
            self.history_down_until = time.monotonic() + self.breaker_s
            raise
        await self._deletes(batch)
        await self._ack(batch, stored=batch.accepted)

    @metrics.timed("ack")
    async def _ack(
        self,
        batch: Batch,
        *,
        stored: list[IngestMessage],
        count: bool = False,
        ack: bool = True,
    ) -> None:
        """A batch's last round trip, once its history is written: the search feed of what it
        stored (before the ack, so a crash in between feeds again rather than never), when
        ``count`` discovery's activity counters, and the ack (``ack=False``: fault injection).
        A failed feed or ack raises (the batch is retried); the counters are best effort."""
        ids = [entry_id for entry_id, _ in batch.decoded + batch.deletes] if ack else []
        # search_indexing=write indexed the messages already: only deletions are fed
        feed = stored_entries(stored) if self.settings.search_indexing == "async" else []
        feed += [
            StoredEntry(kind="delete", id=d.id, channel_id=d.channel_id, guild_id=d.guild_id)
            for d in batch.deleted
        ]
        if self.cluster and ids:
            # a cluster pipeline sends to each node at once, so "feed before ack" needs two
            # round trips there: everything but the ack first, then the ack
            await self._ack_parts(feed, stored=stored, count=count)
            await self.redis.xack(batch.stream, INGEST_GROUP, *ids)
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            must = 0  # the feed's commands come first: their failure fails the batch
            if self.settings.search_url and feed:
                must = queue_feed(pipe, self.keys, feed, self.settings.stored_stream_maxlen)
            if count and self.activity is not None and stored:
                try:
                    await self.activity.batch((m.guild_id for m in stored), pipe=pipe)
                except Exception as exc:  # noqa: BLE001 - a statistic must not hold up delivery
                    log.debug("activity count skipped: %r", exc)  # (its sketch flush failed)
            if ids:
                pipe.xack(batch.stream, INGEST_GROUP, *ids)
            if not len(pipe):
                return
            results = await pipe.execute(raise_on_error=False)
        required = results[:must] + (results[-1:] if ids else [])
        for result in required:
            if isinstance(result, Exception):
                raise result
        for result in results[must : len(results) - (1 if ids else 0)]:
            if isinstance(result, Exception):
                log.debug("activity count skipped: %r", result)

    async def _ack_parts(
        self, feed: list[StoredEntry], *, stored: list[IngestMessage], count: bool
    ) -> None:
        """``_ack`` without the ack (the cluster's first round trip)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            must = 0
            if self.settings.search_url and feed:
                must = queue_feed(pipe, self.keys, feed, self.settings.stored_stream_maxlen)
            if count and self.activity is not None and stored:
                try:
                    await self.activity.batch((m.guild_id for m in stored), pipe=pipe)
                except Exception as exc:  # noqa: BLE001 - a statistic must not hold up delivery
                    log.debug("activity count skipped: %r", exc)
            if not len(pipe):
                return
            results = await pipe.execute(raise_on_error=False)
        for result in results[:must]:
            if isinstance(result, Exception):
                raise result
        for result in results[must:]:
            if isinstance(result, Exception):
                log.debug("activity count skipped: %r", result)

    async def _try_history(self, accepted: list[IngestMessage]) -> bool:
        """History write that reports failure instead of raising, so the hot path goes on.

        While the breaker is open the write is not even attempted: a paused Cassandra would
        otherwise cost every batch a full request timeout before its fan-out.
        """
        if not accepted:
            return True
        if time.monotonic() < self.history_down_until:
            return False
        try:
            await self._history(accepted)
        except StorageUnavailable as exc:
            log.warning(
                "history write failed (%s); serving the hot path, entries stay pending", exc
            )
            self.history_down_until = time.monotonic() + self.breaker_s
            return False
        return True

    async def _decode(self, batch: Batch) -> None:
        poison = []
        for entry_id, fields in batch.entries:
            try:
                raw = orjson.loads(fields[b"e"])
                if isinstance(raw, dict) and raw.get("kind") == "delete":
                    batch.deletes.append((entry_id, IngestDelete.model_validate(raw)))
                else:
                    batch.decoded.append((entry_id, IngestMessage.model_validate(raw)))
            except (KeyError, orjson.JSONDecodeError, ValidationError) as exc:
                poison.append((entry_id, fields, f"undecodable: {type(exc).__name__}"))
        batch.is_decoded = True
        for entry_id, fields, reason in poison:
            await self.dead_letter(batch.stream, entry_id, fields, reason)

    async def dead_letter(
        self, stream: str, entry_id: bytes, fields: dict[bytes, bytes], reason: str
    ) -> None:
        """Move an entry aside for a human, atomically with its ack. The dead-letter stream is
        capped (``dead_letter_maxlen``, approximately): the oldest reasons go first."""
        log.error("dead-lettering %s %s: %s", stream, entry_id, reason)
        if self.cluster:
            # the dead-letter stream and the shard are on different slots: XADD, then XACK. A
            # crash between the two dead-letters the entry again on redelivery (a duplicate
            # reason for a human to read), never loses it.
            await self.redis.xadd(
                self.keys.dead_letter(),
                {b"stream": stream.encode(), b"id": entry_id, b"reason": reason.encode(), **fields},
                maxlen=self.settings.dead_letter_maxlen,
                approximate=True,
            )
            await self.redis.xack(stream, INGEST_GROUP, entry_id)
            self.stats.dead_lettered += 1
            return
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(
                self.keys.dead_letter(),
                {b"stream": stream.encode(), b"id": entry_id, b"reason": reason.encode(), **fields},
                maxlen=self.settings.dead_letter_maxlen,
                approximate=True,
            )
            pipe.xack(stream, INGEST_GROUP, entry_id)
            await pipe.execute()
        self.stats.dead_lettered += 1

    async def _dead_letter_forged(
        self, batch: Batch, forged: list[tuple[IngestMessage, str]]
    ) -> None:
        """Dead-letter (and so ack) entries whose payload is not what was authorized; they
        leave ``batch.decoded`` one by one, so a retried batch neither acks nor redoes them."""
        entry_of = {id(m): entry_id for entry_id, m in batch.decoded}
        fields_of = dict(batch.entries)
        for m, reason in forged:
            entry_id = entry_of[id(m)]
            await self.dead_letter(batch.stream, entry_id, fields_of[entry_id], reason[:300])
            batch.decoded = [(e, d) for e, d in batch.decoded if e != entry_id]

    async def _authorize_and_accept(
        self, messages: list[IngestMessage]
    ) -> tuple[
        list[IngestMessage], list[tuple[IngestMessage, str]], list[tuple[IngestMessage, str]]
    ]:
        """Authorize under the current metadata version, then accept (hot-cache write) only if
        that version still holds; otherwise authorize again under the new one.

        Returns (accepted, rejected with their code, forged with the reason). Forged entries
        are authorized ones whose payload disagrees with the envelope (``Authorizer.forged``);
        entries that fail authorization are only rejected (their payload reaches nobody).
        """
        fresh = not self.auth.may_skip_refresh  # one GET fewer per batch when nothing moved
        for _ in range(MAX_REAUTHORIZE):
            if fresh:
                await self.auth.refresh()
            accepted: list[IngestMessage] = []
            rejected: list[tuple[IngestMessage, str]] = []
            forged: list[tuple[IngestMessage, str]] = []
            for m in messages:
                code = await self.auth.check(m)
                if code is not None:
                    rejected.append((m, code))
                elif (reason := await self.auth.forged(m)) is not None:
                    forged.append((m, reason))
                else:
                    accepted.append(m)
            if not fresh and (rejected or forged):
                fresh = True  # a refusal stands only under the version read now
                continue
            for m in accepted:
                trace.stamp(m.trace, "worker_checks")
            if await self._hot(accepted, self.auth.version):
                return accepted, rejected, forged
            if fresh:
                self.stats.reauthorized += 1
            fresh = True
        raise MetadataChurn("metadata version kept moving while the batch was authorized")

    @metrics.timed("hot_write")
    async def _hot(self, accepted: list[IngestMessage], version: bytes | None) -> bool:
        """The acceptance point: write the hot cache if ``version`` is still current.

        With ``hot_size=0`` (no hot cache) the script only compares the version: acceptance
        stays atomic with the metadata version, and nothing is cached."""
        if not accepted:
            return True
        if self.cluster:
            return await self._hot_by_slot(accepted, version)
        keys = [self.keys.metadata_version()]
        args: list[bytes | int] = [version or b"", self.hot.size]
        if self.hot.size > 0:
            keys += [self.keys.hot(m.channel_id) for m in accepted]
            args += [member_bytes(m.id, m.payload) for m in accepted]
        if not await self._hot_add(keys=keys, args=args):
            return False
        for m in accepted:
            trace.stamp(m.trace, "hot_write")
        return True

    async def _hot_by_slot(self, accepted: list[IngestMessage], version: bytes | None) -> bool:
        """``_hot`` on a Redis Cluster: the version check, then one script per channel (what
        that split keeps: storage/scripts.py)."""
        if not await version_holds(self.redis, self.keys.metadata_version(), version):
            return False
        if self.hot.size > 0:
            by_channel: dict[int, list[bytes]] = {}
            for m in accepted:
                by_channel.setdefault(m.channel_id, []).append(member_bytes(m.id, m.payload))
            async with self.redis.pipeline(transaction=False) as pipe:
                for channel_id, members in by_channel.items():
                    queue_hot_add_channel(pipe, self.keys.hot(channel_id), members, self.hot.size)
                await pipe.execute()
        for m in accepted:
            trace.stamp(m.trace, "hot_write")
        return True

    @metrics.timed("history_write")
    async def _history(self, accepted: list[IngestMessage]) -> None:
        if not accepted:
            return
        if self.settings.history_delay_ms:  # fault injection: a slow store (off by default)
            await asyncio.sleep(self.settings.history_delay_ms / 1000)
        await self.store.insert_many(
            [StoredMessage(m.channel_id, m.id, m.author_id, m.payload) for m in accepted]
        )
        for m in accepted:
            trace.stamp(m.trace, "history_write")
        # the search indexer's input (the stored stream) is fed with the ack: ``_ack``

    @metrics.timed("fanout")
    async def _fan_out(
        self, batch: Batch, accepted: list[IngestMessage], rejected: list[tuple[IngestMessage, str]]
    ) -> None:
        maxlen = self.settings.delivery_maxlen
        if self.cluster:
            await self._fan_out_by_slot(batch, accepted, rejected)
            if self.settings.fanout_mode == "inbox":
                await self._inbox(accepted)
            return
        # one node: the fan-out script reads the guild's routes and checks the lease itself
        lease = self.keys.lease(batch.shard)
        async with self.redis.pipeline(transaction=False) as pipe:
            for m in accepted:
                trace.stamp(m.trace, "fanout")
                entry = Delivery(
                    t="MESSAGE_CREATE",
                    guild_id=m.guild_id,
                    channel_id=m.channel_id,
                    payload=m.payload,
                    trace=m.trace,
                )
                keys, args = routed_fanout(
                    self.keys,
                    marker=self.keys.fanned_out(m.id),
                    lease=lease,
                    guild_id=m.guild_id,
                    entry=encode_entry(entry)["e"],
                    maxlen=maxlen,
                    fenced=self.fenced,
                    consumer=self.consumer,
                )
                # EVALSHA straight into the pipeline: a registered script in a pipeline costs a
                # SCRIPT EXISTS round trip per batch (``_execute_fanout`` loads it when missing).
                pipe.evalsha(self._fanout.sha, len(keys), *keys, *args)
            self._queue_rejections(pipe, rejected, maxlen)
            results = await self._execute_fanout(pipe)
        for written in results[: len(accepted)]:
            if written == -1:
                raise LeaseLost(batch.stream)
            if written == 0:
                self.stats.fanout_skipped += 1
            self.stats.gateway_writes += max(0, int(written))
        if self.settings.fanout_mode == "inbox":
            await self._inbox(accepted)

    async def _fan_out_by_slot(
        self,
        batch: Batch,
        accepted: list[IngestMessage],
        rejected: list[tuple[IngestMessage, str]],
    ) -> None:
        """``_fan_out`` on a Redis Cluster: the guilds' routes and the lease fence (a GET)
        first, then one ``FANOUT_GATEWAY`` per (message, gateway), each atomic in its
        gateway's slot (storage/scripts.py)."""
        guilds = sorted({m.guild_id for m in accepted})
        routes: dict[int, list[bytes]] = {}
        fence = self.fenced and bool(accepted)
        if guilds:
            async with self.redis.pipeline(transaction=False) as pipe:
                for guild_id in guilds:
                    pipe.smembers(self.keys.route(guild_id))
                if fence:
                    pipe.get(self.keys.lease(batch.shard))
                replies = await pipe.execute()
                for guild_id, members in zip(guilds, replies, strict=False):
                    routes[guild_id] = sorted(members)
            if fence and replies[-1] != self.consumer.encode():
                raise LeaseLost(batch.stream)
        maxlen = self.settings.delivery_maxlen
        spans: list[int] = []  # how many scripts each accepted message queued
        async with self.redis.pipeline(transaction=False) as pipe:
            for m in accepted:
                trace.stamp(m.trace, "fanout")
                entry = encode_entry(
                    Delivery(
                        t="MESSAGE_CREATE",
                        guild_id=m.guild_id,
                        channel_id=m.channel_id,
                        payload=m.payload,
                        trace=m.trace,
                    )
                )["e"]
                for gw in routes[m.guild_id]:
                    gateway = gw.decode()
                    queue_fanout_gateway(
                        pipe,
                        self.keys.fanned_to(gateway, m.id),
                        self.keys.gateway_alive(gateway),
                        self.keys.deliver(gateway),
                        entry,
                        maxlen,
                    )
                spans.append(len(routes[m.guild_id]))
            self._queue_rejections(pipe, rejected, maxlen)
            results = await pipe.execute() if len(pipe) else []
        at = 0
        for span in spans:
            mine = [int(r) for r in results[at : at + span]]
            at += span
            if mine and all(r == 0 for r in mine):
                self.stats.fanout_skipped += 1  # every gateway had it: a redelivery
            self.stats.gateway_writes += sum(1 for r in mine if r == 1)

    def _queue_rejections(
        self, pipe: Any, rejected: list[tuple[IngestMessage, str]], maxlen: int
    ) -> None:
        """MESSAGE_REJECTED to each refused message's sender, on its gateway's stream."""
        for m, code in rejected:
            reply = Delivery(
                t="MESSAGE_REJECTED",
                session_id=m.session_id,
                payload=dumps(
                    {
                        "id": str(m.id),
                        "channel_id": str(m.channel_id),
                        "nonce": m.nonce,
                        "code": code,
                    }
                ),
            )
            pipe.xadd(
                self.keys.deliver(m.gateway_id),
                encode_entry(reply),
                maxlen=maxlen,
                approximate=True,
            )

    async def _execute_fanout(self, pipe: Any) -> list[Any]:
        """Run the fan-out pipeline; if Valkey lost the script (a restart flushes the script
        cache) load it and run the pipeline again — every command in it is idempotent (the
        fan-out marker), and with the script missing no fan-out in it ran."""
        if not self._fanout_loaded:
            await self.redis.script_load(FANOUT)
            self._fanout_loaded = True
        commands = list(pipe.command_stack)
        try:
            return await pipe.execute()
        except NoScriptError:
            await self.redis.script_load(FANOUT)
            pipe.command_stack = commands
            return await pipe.execute()

    async def _inbox(self, accepted: list[IngestMessage]) -> None:
        """``fanout_mode=inbox``: the naive fan-out on write, kept to measure what it costs.

        Besides the gateway delivery above (online members still get the message in real
        time), append a pointer ``{c: channel id, m: message id}`` to the inbox stream of every
        member of the guild except the author, online or not, capped at ``inbox_maxlen``.
        Nothing reads the inboxes. A per-message marker (set before the writes) keeps a
        redelivery from writing them twice; a worker that dies between the marker and the
        writes leaves those inboxes short — this arm is for measuring, not for serving.
        """
        if not accepted:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for m in accepted:
                pipe.set(self.keys.inboxed(m.id), b"1", nx=True, ex=FANOUT_MARKER_TTL_S)
            fresh = [m for m, new in zip(accepted, await pipe.execute(), strict=True) if new]
        if self.auth.version != self._inbox_version:  # members change with the version
            self._inbox_version = self.auth.version
            self._inbox_members.clear()
        maxlen = self.settings.inbox_maxlen
        queued = 0
        pipe = self.redis.pipeline(transaction=False)
        try:
            for m in fresh:
                if m.guild_id not in self._inbox_members:
                    self._inbox_members[m.guild_id] = await self.store.guild_members(m.guild_id)
                entry = {b"c": str(m.channel_id).encode(), b"m": str(m.id).encode()}
                for user_id in self._inbox_members[m.guild_id]:
                    if user_id == m.author_id:
                        continue
                    pipe.xadd(self.keys.inbox(user_id), entry, maxlen=maxlen, approximate=True)
                    queued += 1
                    if len(pipe) >= INBOX_PIPELINE:
                        await pipe.execute()
            if len(pipe):
                await pipe.execute()
        finally:
            await pipe.reset()
        self.stats.inbox_writes += queued

    @metrics.timed("index_write")
    async def _index_at_write(self, accepted: list[IngestMessage]) -> None:
        """``search_indexing=write``: commit the batch to the search index before its fan-out,
        so the message's latency carries the commit and a search once it is delivered finds
        it. Idempotent (documents keyed by id; a deleted id stays deleted), so a retried batch
        or the indexer process also indexing it leaves one document."""
        if self.settings.search_indexing != "write" or not self.settings.search_url:
            return
        if not accepted:
            return
        if self.index is None:
            self.index = await SearchIndex.open(self.settings.search_url)
        await self.index.add([to_doc(e) for e in stored_entries(accepted)])

    async def _deletes(self, batch: Batch) -> None:
        """DELETE_MESSAGE entries of the batch: check, remove from the hot cache and history,
        fan MESSAGE_DELETE out once (a per-message marker), and leave the applied ones for the
        ack's round trip, which feeds their deletion entries to the stored stream before the
        ack. Every step is idempotent, so a retried batch or a second deletion is harmless.

        The gateway checked the request; this re-checks under the current metadata (a
        permission revoked in between wins: the deletion is dropped and counted as rejected).
        An entry whose ``author_id`` is not the stored message's author is forged (some other
        Redis client wrote it): dead-lettered, as forged messages are."""
        if not batch.deletes:
            return
        await self.auth.refresh()
        allowed: list[IngestDelete] = []
        for entry_id, d in list(batch.deletes):
            author = await stored_author(self.hot, self.store, d.channel_id, d.id)
            if author is not None and author != d.author_id:
                fields = dict(batch.entries)[entry_id]
                reason = f"forged: deletion names author {d.author_id}, the message's is {author}"
                await self.dead_letter(batch.stream, entry_id, fields, reason)
                batch.deletes = [(e, x) for e, x in batch.deletes if e != entry_id]
                continue
            code = await _may_delete(self.auth, d)
            if code is not None:
                log.info("deletion of %s by %s refused: %s", d.id, d.deleter_id, code)
                self.stats.rejected += 1
                continue
            allowed.append(d)
        if not allowed:
            return
        await self.hot.remove_many([(d.channel_id, d.id) for d in allowed])
        await self.store.delete_messages([(d.channel_id, d.id) for d in allowed])
        if self.cluster:
            routes: dict[int, list[bytes]] = {}
            for guild_id in {d.guild_id for d in allowed}:
                routes[guild_id] = sorted(await self.redis.smembers(self.keys.route(guild_id)))
            await self._delete_fan_out_by_slot(batch, allowed, routes)
            batch.deleted = allowed
            return
        if not self._fanout_loaded:
            await self.redis.script_load(FANOUT)
            self._fanout_loaded = True
        for d in allowed:
            entry = _delete_delivery(d)
            keys, args = routed_fanout(
                self.keys,
                marker=self.keys.delete_fanned_out(d.channel_id, d.id),
                lease=self.keys.lease(batch.shard),
                guild_id=d.guild_id,
                entry=encode_entry(entry)["e"],
                maxlen=self.settings.delivery_maxlen,
                fenced=self.fenced,
                consumer=self.consumer,
            )
            if await self._fanout(keys=keys, args=args) == -1:
                raise LeaseLost(batch.stream)
        batch.deleted = allowed

    async def _delete_fan_out_by_slot(
        self, batch: Batch, allowed: list[IngestDelete], routes: dict[int, list[bytes]]
    ) -> None:
        """``_deletes``' fan-out on a Redis Cluster: the lease checked by a GET first (as
        ``_fan_out`` does there), then one ``FANOUT_GATEWAY`` per (deletion, gateway)."""
        if self.fenced and await self.redis.get(self.keys.lease(batch.shard)) != (
            self.consumer.encode()
        ):
            raise LeaseLost(batch.stream)
        async with self.redis.pipeline(transaction=False) as pipe:
            for d in allowed:
                entry = encode_entry(_delete_delivery(d))["e"]
                for gw in routes[d.guild_id]:
                    gateway = gw.decode()
                    queue_fanout_gateway(
                        pipe,
                        self.keys.delete_fanned_to(gateway, d.id),
                        self.keys.gateway_alive(gateway),
                        self.keys.deliver(gateway),
                        entry,
                        self.settings.delivery_maxlen,
                    )
            if len(pipe):
                await pipe.execute()

    async def close(self) -> None:
        if self.index is not None:
            await self.index.close()
            self.index = None


def _delete_delivery(d: IngestDelete) -> Delivery:
    """MESSAGE_DELETE as the channel's viewers get it."""
    return Delivery(
        t="MESSAGE_DELETE",
        guild_id=d.guild_id,
        channel_id=d.channel_id,
        payload=dumps(
            {"id": str(d.id), "channel_id": str(d.channel_id), "guild_id": str(d.guild_id)}
        ),
    )
