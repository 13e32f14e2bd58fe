"""A gateway that does the work itself (``CHATSCALE_PROCESSING=inline``): the lab's other arm.

By default (``processing=log``) a SEND_MESSAGE costs the gateway one XADD: workers authorize,
accept into the hot cache, store and fan out, and the gateway answers MESSAGE_ACK as soon as
the entry is in the log. Inline, the gateway runs those same steps on the sender's connection
*before* it answers, and nothing goes to the ingest stream:

authorize (membership, bans, channel permissions, as the worker: ``guilds.access``, cached
per metadata version) -> accept into the hot cache if that version still holds (the same
``storage/lua/hot_add.lua``) -> history and fan-out (the same ``storage/lua/fanout.lua``,
one entry per live gateway, at most once per id), history first unless ``history_mode`` is
``defer`` -> MESSAGE_ACK.

What changes for a client: a refusal the worker would send as MESSAGE_REJECTED after the ack
is an ERROR instead of the ack; a store that is slow makes the ack (and every later frame of
that connection, heartbeats included, since a connection's frames are handled in order) wait;
a store that fails answers UNAVAILABLE, and a retry with the same nonce gets the same id,
whose hot-cache member, history row and fan-out marker make the retry idempotent. A message
whose history write failed after its hot-cache write (or after its fan-out, with ``defer``)
stays visible without being stored until such a retry: inline there is no pending entry for
anyone to finish it — the weaker guarantee that is part of this arm.

The worker's pipeline is not imported (gateway and workers are one layer); what both need —
the Lua scripts — lives in ``storage.scripts``.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from chatscale import trace
from chatscale.config import Settings
from chatscale.keys import Keys
from chatscale.redisconn import is_cluster
from chatscale.wire import Delivery, IngestMessage, encode_entry
from guilds.access import GuildSnapshot, authorize_send, load_guild, load_member
from storage import StorageUnavailable, Store, StoredMessage
from storage.hot import member_bytes
from storage.scripts import (
    FANOUT,
    HOT_ADD,
    queue_fanout_gateway,
    queue_hot_add_channel,
    routed_fanout,
    version_holds,
)

#: How many times the metadata version may move under one message before it is UNAVAILABLE.
MAX_REAUTHORIZE = 10


class InlineProcessor:
    """Authorize, accept, store and fan out one message on the gateway (see the module)."""

    def __init__(self, settings: Settings, *, redis: aioredis.Redis, keys: Keys, store: Store):
        self.settings = settings
        self.redis = redis
        self.keys = keys
        self.store = store
        self.gateway_id = ""  # the fan-out script's consumer name (unused: not fenced)
        self._hot_add = redis.register_script(HOT_ADD)
        self._fanout = redis.register_script(FANOUT)
        self._version: bytes | None = None
        self.cluster = is_cluster(redis)  # per-slot steps instead of the two scripts
        self._guilds: dict[int, GuildSnapshot | None] = {}
        self._members: dict[tuple[int, int], frozenset[int] | None] = {}

    async def process(self, m: IngestMessage) -> str | None:
        """None once the message is accepted, stored and fanned out; else the rejection code.
        Raises ``StorageUnavailable`` or a Redis error when a step could not be done."""
        for _ in range(MAX_REAUTHORIZE):
            version = await self.redis.get(self.keys.metadata_version())
            if version != self._version:
                self._version = version
                self._guilds.clear()
                self._members.clear()
            code = await self._check(m)
            if code is not None:
                return code
            if await self._accept(m, version):
                trace.stamp(m.trace, "hot_write")
                break
        else:
            raise StorageUnavailable("metadata version kept moving while the message was checked")
        if self.settings.history_mode == "sync":
            await self._history(m)
            await self._fan_out(m)
        else:
            await self._fan_out(m)
            await self._history(m)
        return None

    async def _accept(self, m: IngestMessage, version: bytes | None) -> bool:
        member = member_bytes(m.id, m.payload)
        if not self.cluster:
            return bool(
                await self._hot_add(
                    keys=[self.keys.metadata_version(), self.keys.hot(m.channel_id)],
                    args=[version or b"", self.settings.hot_size, member],
                )
            )
        # Redis Cluster: check, then write the channel's slot (storage/scripts.py)
        if not await version_holds(self.redis, self.keys.metadata_version(), version):
            return False
        if self.settings.hot_size > 0:
            async with self.redis.pipeline(transaction=False) as pipe:
                queue_hot_add_channel(
                    pipe, self.keys.hot(m.channel_id), [member], self.settings.hot_size
                )
                await pipe.execute()
        return True

    async def _check(self, m: IngestMessage) -> str | None:
        if m.guild_id not in self._guilds:
            self._guilds[m.guild_id] = await load_guild(self.store, m.guild_id)
        snapshot = self._guilds[m.guild_id]
        if snapshot is None or m.channel_id not in snapshot.channels:
            return "UNKNOWN_CHANNEL"
        key = (m.guild_id, m.author_id)
        if key not in self._members:
            self._members[key] = await load_member(self.store, m.guild_id, m.author_id)
        return authorize_send(snapshot, m.author_id, self._members[key], m.channel_id)

    async def _history(self, m: IngestMessage) -> None:
        if self.settings.history_delay_ms:  # fault injection: a slow store (off by default)
            await asyncio.sleep(self.settings.history_delay_ms / 1000)
        await self.store.insert_many([StoredMessage(m.channel_id, m.id, m.author_id, m.payload)])
        trace.stamp(m.trace, "history_write")

    async def _fan_out(self, m: IngestMessage) -> None:
        trace.stamp(m.trace, "fanout")
        entry = Delivery(
            t="MESSAGE_CREATE",
            guild_id=m.guild_id,
            channel_id=m.channel_id,
            payload=m.payload,
            trace=m.trace,
        )
        if self.cluster:  # one script per gateway, each in its gateway's slot
            gateways = sorted(await self.redis.smembers(self.keys.route(m.guild_id)))
            if gateways:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for gw in gateways:
                        queue_fanout_gateway(
                            pipe,
                            self.keys.fanned_to(gw.decode(), m.id),
                            self.keys.gateway_alive(gw.decode()),
                            self.keys.deliver(gw.decode()),
                            encode_entry(entry)["e"],
                            self.settings.delivery_maxlen,
                        )
                    await pipe.execute()
            return
        shard = m.channel_id % self.settings.ingest_shards
        keys, args = routed_fanout(
            self.keys,
            marker=self.keys.fanned_out(m.id),
            lease=self.keys.lease(shard),
            guild_id=m.guild_id,
            entry=encode_entry(entry)["e"],
            maxlen=self.settings.delivery_maxlen,
            fenced=False,  # no shard lease to check: this gateway is the only one with this message
            consumer=self.gateway_id,
        )
        await self._fanout(keys=keys, args=args)
