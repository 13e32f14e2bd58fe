"""The presence service process: heartbeats in, coalesced per-guild updates out.

Gateways send one batch per tick (``gateway/presence.py``): sessions coming online, going
offline, status and voice changes, heartbeats of every live session (every third of the
timeout, not every client heartbeat), typing. This service applies them to ``PresenceState``
(per user, per device), expires devices whose heartbeats stopped, feeds the visible changes to
the ``Coalescer`` (at most one update per guild per tick; large guilds get online members and
counts only) and writes each update once to every gateway that holds members of the guild.
Typing goes through ``TypingThrottle`` and is never persisted.

State (sessions and pending coalescer windows) is saved to Redis and restored on start, so the
service can be restarted mid-run: after every step that changed something others can see (or a
pending coalescer window), and otherwise at most every ``save_every`` seconds — an idle
topology's steps only refresh heartbeat times, and rewriting the whole snapshot every tick for
that was most of an idle topology's CPU. Entries are acked only after the state that includes
them is saved (at-least-once; replaying a batch is harmless: the events are idempotent state
assignments), so the entries of steps that did not save stay pending until the next save and
are read again after a restart, which also refreshes the heartbeats they carry. A service killed between reading a batch and acking it finds that batch
pending on restart: its first steps re-read its own pending entries (XREADGROUP id 0), after
taking over those another consumer name left idle (XAUTOCLAIM), before reading new ones.

The input stream is a queue, not a log: after each ack it is trimmed (XTRIM MINID) to the
oldest entry still pending, or to the last one acked, so it holds only what is in flight. Time comes from an injected clock; ``step(now=...)`` processes what is
queued without blocking, which is how tests drive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from chatscale import metrics
from chatscale.config import Settings
from chatscale.keys import PRESENCE_GROUP, Keys
from chatscale.redisconn import TRANSIENT, connect
from chatscale.wire import Delivery, dumps, encode_entry
from presence import metrics as presence_metrics
from presence.coalesce import Coalescer, GuildUpdate, TypingThrottle
from presence.state import (
    PresenceChange,
    PresenceState,
    StatusChange,
    VoiceChange,
    event_from_dict,
)
from storage import Store

log = logging.getLogger("chatscale.presence")

#: Longest time between two saves when nothing visible changed (heartbeat times only).
SAVE_EVERY_S = 5.0


class PresenceService:
    def __init__(
        self,
        settings: Settings,
        *,
        store: Store,
        clock: Callable[[], float] = time.time,
        consumer: str = "presence-1",
        save_every: float | None = None,
        partition: int = 0,
        takeover_idle_ms: int | None = None,
    ) -> None:
        """
        settings: timeout, tick, coalescing switch and large-guild threshold come from here.
        store: metadata (which guilds a user is in, member counts).
        clock: wall-clock seconds (the saved state holds timestamps, so not a monotonic clock).
        consumer: name in the PRESENCE_GROUP consumer group.
        save_every: seconds between two saves when nothing visible changed (default: a quarter
            of the presence timeout, at most 5 s; 0 saves after every step).
        partition: which of ``presence_partitions`` this instance aggregates (its own input
            stream, snapshot and counters; ``presence/partitions.py`` runs one per leased
            partition).
        takeover_idle_ms: on start, take over entries other consumers left pending this long
            (default ``reclaim_idle_ms``; a process that has just leased a partition passes 0:
            the lease says the previous owner is gone).
        """
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.store = store
        self.clock = clock
        self.consumer = consumer
        self.partition = partition
        self.partitions = settings.presence_partitions
        self.takeover_idle_ms = (
            settings.reclaim_idle_ms if takeover_idle_ms is None else takeover_idle_ms
        )
        self._stream = self.keys.presence_in_of(partition)
        self.redis: aioredis.Redis = connect(settings, block_ms=settings.presence_tick_ms)
        self.state = PresenceState(timeout=settings.presence_timeout_s)
        self.typing = TypingThrottle(window=settings.typing_window_s, ttl=settings.typing_window_s)
        self.coalescer = self._new_coalescer()
        self._guilds: dict[int, list[int]] = {}  # user -> guilds (cache)
        self._members: dict[int, int] = {}  # guild -> member count (cache)
        self._online: dict[int, set[int]] = {}  # guild -> users others see as not offline
        # guild -> online users of that guild aggregated by the other partitions (read per step
        # for the guilds about to flush; always empty with one partition)
        self._others_online: dict[int, int] = {}
        self._online_dirty: set[int] = set()  # guilds whose online count this step changed
        self._meta_version: bytes | None = None
        self._reclaiming = True  # re-read our own pending entries before new ones
        self._stopping = asyncio.Event()
        if save_every is None:
            save_every = min(SAVE_EVERY_S, settings.presence_timeout_s / 4)
        self.save_every = save_every
        self._saved_at = -math.inf  # clock() of the last save
        self._saved_coalescer = b""  # the coalescer's part of the last save
        self._unacked: list[bytes] = []  # applied, not yet in a saved snapshot
        presence_metrics.watch_presence(self)  # amplification counters, read at scrape time

    def _new_coalescer(self, saved: dict[str, Any] | None = None) -> Coalescer:
        options: dict[str, Any] = {
            "interval": self.settings.presence_tick_ms / 1000,
            "large_guild_threshold": self.settings.large_guild_threshold,
            "enabled": self.settings.presence_coalesce,
            "recipients": lambda g: len(self._online.get(g, ())),
            "member_count": lambda g: self._members.get(g, 0),
            "online_count": lambda g: len(self._online.get(g, ())) + self._others_online.get(g, 0),
        }
        return Coalescer.from_dict(saved, **options) if saved else Coalescer(**options)

    # ---- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists
            await self.redis.xgroup_create(self._stream, PRESENCE_GROUP, id="0", mkstream=True)
        raw = await self.redis.get(self.keys.presence_state_of(self.partition))
        if raw:
            saved = orjson.loads(raw)
            self.state = PresenceState.from_dict(saved["state"], now=self.clock(), grace=0.0)
            self.coalescer = self._new_coalescer(saved.get("coalescer"))
            self._online = {int(g): set(users) for g, users in saved.get("online", {}).items()}
            log.info("presence state restored: %d sessions", len(saved["state"]["sessions"]))
        # Entries another consumer name read and never acked (a renamed or dead instance).
        claimed = await self.redis.xautoclaim(
            self._stream,
            PRESENCE_GROUP,
            self.consumer,
            self.takeover_idle_ms,
            start_id="0-0",
            count=1000,
        )
        if claimed[1]:
            log.info("presence took over %d entries left pending by others", len(claimed[1]))
        self._reclaiming = True

    def stop(self) -> None:
        self._stopping.set()

    async def close(self) -> None:
        await self.redis.aclose()

    async def run(self) -> None:
        await self.start()
        while not self._stopping.is_set():
            try:
                await self.step(block_ms=self.settings.presence_tick_ms)
            except TRANSIENT as exc:
                log.warning("presence step failed (%s); retrying", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 1.0)
        if self._unacked:  # a clean stop leaves nothing to re-read
            with contextlib.suppress(*TRANSIENT):
                await self._save([])
                await self._ack()

    # ---- one tick -------------------------------------------------------------------------

    @presence_metrics.presence_step
    async def step(self, *, now: float | None = None, block_ms: int | None = None) -> int:
        """Apply what is queued, expire, flush due guild updates, save, ack. Returns entries read.

        Right after ``start`` this reads the entries still pending on this consumer (read but
        never acked by a previous life of the service) until there are none, then new ones.
        """
        stream = self._stream
        entries: list[tuple[bytes, dict[bytes, bytes]]] = []
        reread = self._reclaiming
        if self._reclaiming:
            reply = await self.redis.xreadgroup(
                PRESENCE_GROUP, self.consumer, {stream: "0"}, count=256
            )
            entries = [e for _, es in reply or [] for e in es]
            if entries:
                log.info("presence re-reading %d entries pending since a restart", len(entries))
            else:
                self._reclaiming = False
        if not self._reclaiming:
            reply = await self.redis.xreadgroup(
                PRESENCE_GROUP, self.consumer, {stream: ">"}, count=256, block=block_ms
            )
            entries = [e for _, es in reply or [] for e in es]
        # An entry trimmed while pending comes back without fields: ack it, nothing to apply.
        entries = [(eid, fields or {}) for eid, fields in entries]
        now = self.clock() if now is None else now
        await self._refresh_metadata()
        changes: list[PresenceChange] = []
        typing: list[dict[str, Any]] = []
        for _, fields in entries:
            if b"e" not in fields:
                continue
            batch = orjson.loads(fields[b"e"])
            changes += self.state.apply_batch(
                [event_from_dict(e) for e in batch.get("events", [])], now
            )
            typing += batch.get("typing", [])
        changes += self.state.expire(now)
        await self._load_guilds({c.user_id for c in changes if isinstance(c, StatusChange)})
        await self._load_counts({c.guild_id for c in changes if isinstance(c, VoiceChange)})
        self._track_online(changes)
        updates = self.coalescer.submit(changes, lambda user: self._guilds.get(user, ()))
        # Changes queued before a metadata change are flushed after it emptied the counts.
        await self._load_counts(self.coalescer.pending_guilds())
        await self._load_others_online(self.coalescer.pending_guilds())
        updates += self.coalescer.flush(now)
        await self._publish(updates, typing, now)
        self._unacked += [eid for eid, _ in entries]
        coalescer = orjson.dumps(self.coalescer.to_dict())
        if (
            changes
            or coalescer != self._saved_coalescer
            or reread  # re-read pending entries must be acked, or the re-reading never ends
            or (self._unacked and now - self._saved_at >= self.save_every)
        ):
            await self._save(changes)
            self._saved_at, self._saved_coalescer = now, coalescer
            await self._ack()
        self.typing.expire(now)
        return len(entries)

    async def _ack(self) -> None:
        """Ack every entry the last save included, then trim the input stream."""
        if not self._unacked:
            return
        unacked, self._unacked = self._unacked, []
        await self.redis.xack(self._stream, PRESENCE_GROUP, *unacked)
        await self._trim(unacked[-1])

    async def _trim(self, last_acked: bytes) -> None:
        """Drop entries every consumer has acked: keep from the oldest pending one, or from the
        last one just acked when nothing is pending (all older ones were delivered and acked,
        because a group delivers in id order)."""
        summary = await self.redis.xpending(self._stream, PRESENCE_GROUP)
        floor = summary["min"] if summary["pending"] else last_acked
        # Exact, not `~`: one entry per gateway per tick is cheap to trim, and `~` would keep a
        # whole node (100 entries) of every small stream.
        await self.redis.xtrim(self._stream, minid=floor, approximate=False)

    async def _refresh_metadata(self) -> None:
        version = await self.redis.get(self.keys.metadata_version())
        if version != self._meta_version:
            self._meta_version = version
            self._guilds.clear()
            self._members.clear()

    async def _load_guilds(self, users: set[int]) -> None:
        for user in users - self._guilds.keys():
            self._guilds[user] = [g.id for g in await self.store.user_guilds(user)]
            await self._load_counts(self._guilds[user])

    async def _load_others_online(self, guilds: set[int]) -> None:
        """With several partitions, a guild's online total is this partition's users plus the
        counts the others saved (as of their last save: at most a tick or so old)."""
        self._others_online.clear()
        if self.partitions <= 1 or not guilds:
            return
        order = sorted(guilds)
        fields = [str(g) for g in order]
        others = [p for p in range(self.partitions) if p != self.partition]
        async with self.redis.pipeline(transaction=False) as pipe:
            for p in others:
                pipe.hmget(self.keys.presence_online_of(p), fields)
            replies = await pipe.execute()
        for reply in replies:
            for guild, count in zip(order, reply, strict=True):
                if count is not None:
                    self._others_online[guild] = self._others_online.get(guild, 0) + int(count)

    async def _load_counts(self, guilds: Iterable[int]) -> None:
        """Member counts of these guilds, for the coalescer (emptied when metadata moves)."""
        for guild in guilds:
            if guild not in self._members:
                self._members[guild] = len(await self.store.guild_members(guild))

    def _track_online(self, changes: list[PresenceChange]) -> None:
        for c in changes:
            if isinstance(c, StatusChange):
                for guild in self._guilds.get(c.user_id, ()):
                    online = self._online.setdefault(guild, set())
                    self._online_dirty.add(guild)
                    if c.new_visible == "offline":
                        online.discard(c.user_id)
                    else:
                        online.add(c.user_id)

    @metrics.timed("presence_publish")
    async def _publish(
        self, updates: list[GuildUpdate], typing: list[dict[str, Any]], now: float
    ) -> None:
        deliveries: list[tuple[int, Delivery]] = []
        for update in updates:
            if update.presences or update.went_offline or update.online_delta or not update.voice:
                d = Delivery(
                    t="PRESENCE_UPDATE",
                    guild_id=update.guild_id,
                    payload=dumps(_wire(update.to_dict())),
                )
                deliveries.append((update.guild_id, d))
            deliveries += [(update.guild_id, v) for v in _voice_deliveries(update)]
        for t in typing:
            if self.typing.typing(int(t["user_id"]), int(t["channel_id"]), now):
                payload = {
                    "user_id": str(t["user_id"]),
                    "channel_id": str(t["channel_id"]),
                    "guild_id": str(t["guild_id"]),
                    "timestamp": int(now),
                }
                d = Delivery(
                    t="TYPING_START",
                    guild_id=int(t["guild_id"]),
                    channel_id=int(t["channel_id"]),
                    payload=dumps(payload),
                )
                deliveries.append((int(t["guild_id"]), d))
        if not deliveries:
            return
        guilds = sorted({g for g, _ in deliveries})
        async with self.redis.pipeline(transaction=False) as pipe:
            for g in guilds:
                pipe.smembers(self.keys.route(g))
            routes = dict(zip(guilds, await pipe.execute(), strict=True))
        async with self.redis.pipeline(transaction=False) as pipe:
            for guild, delivery in deliveries:
                entry = encode_entry(delivery)
                for gw in sorted(routes[guild]):
                    pipe.xadd(
                        self.keys.deliver(gw.decode()),
                        entry,
                        maxlen=self.settings.delivery_maxlen,
                        approximate=True,
                    )
            await pipe.execute()

    @metrics.timed("presence_save")
    async def _save(self, changes: list[PresenceChange]) -> None:
        snapshot = {
            "state": self.state.to_dict(),
            "coalescer": self.coalescer.to_dict(),
            "online": {str(g): sorted(u) for g, u in self._online.items() if u},
        }
        views: list[tuple[str, str | None]] = [  # (user, visible presence JSON or None: offline)
            (
                str(c.user_id),
                None
                if c.new_visible == "offline"
                else dumps({"status": c.new_visible, "client_status": c.client_status}),
            )
            for c in changes
            if isinstance(c, StatusChange)
        ]
        # The users view is every partition's (tagged {presence}); a partition p > 0 keeps its
        # own keys in its slot ({p<p>}), so it writes the view first, then its MULTI. A crash in
        # between re-reads the unacked entries after a restore that lacks their changes, which
        # applies and writes them again: the view is idempotent assignments.
        separate = self.partition != 0
        if separate and views:
            async with self.redis.pipeline(transaction=False) as pipe:
                _write_views(pipe, self.keys.presence_users(), views)
                await pipe.execute()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.presence_state_of(self.partition), orjson.dumps(snapshot))
            if not separate:
                _write_views(pipe, self.keys.presence_users(), views)
            pipe.set(
                self.keys.presence_stats_of(self.partition),
                dumps(self.coalescer.stats.to_dict()),
            )
            if self.partitions > 1 and self._online_dirty:
                counts = {str(g): len(self._online.get(g, ())) for g in self._online_dirty}
                pipe.hset(self.keys.presence_online_of(self.partition), mapping=counts)
            await pipe.execute()
        self._online_dirty.clear()


def _write_views(pipe: Any, key: str, views: list[tuple[str, str | None]]) -> None:
    for user, view in views:
        if view is None:
            pipe.hdel(key, user)
        else:
            pipe.hset(key, user, view)


def _wire(update: dict[str, Any]) -> dict[str, Any]:
    """Ids as strings on the wire, like every other payload. Voice is not in it: it goes only
    to members who can see the channel (``_voice_deliveries``)."""
    update = dict(update)
    update["guild_id"] = str(update["guild_id"])
    update["presences"] = [{**p, "user_id": str(p["user_id"])} for p in update["presences"]]
    del update["voice"]
    return update


def _voice_deliveries(update: GuildUpdate) -> list[Delivery]:
    """VOICE_STATE_UPDATEs scoped to one channel each, so gateways deliver them only to
    sessions that can VIEW that channel: a private voice channel's id and who is in it never
    reach anyone else. Who left a channel is told to that channel's viewers as
    ``channel_id: null``; who joined, to the new channel's viewers. Every "left" delivery is
    written before every "joined" one: a viewer of both channels of a move ends with the
    user in the new one."""
    left: dict[int, list[dict[str, Any]]] = {}
    joined: dict[int, list[dict[str, Any]]] = {}
    for v in update.voice:
        if v.old_channel_id is not None:
            left.setdefault(v.old_channel_id, []).append(
                {"user_id": str(v.user_id), "channel_id": None}
            )
        if v.new_channel_id is not None:
            joined.setdefault(v.new_channel_id, []).append(
                {"user_id": str(v.user_id), "channel_id": str(v.new_channel_id)}
            )
    return [
        Delivery(
            t="VOICE_STATE_UPDATE",
            guild_id=update.guild_id,
            channel_id=channel_id,
            payload=dumps(
                {"guild_id": str(update.guild_id), "channel_id": str(channel_id), "voice": entries}
            ),
        )
        for scoped in (left, joined)
        for channel_id, entries in scoped.items()
    ]
