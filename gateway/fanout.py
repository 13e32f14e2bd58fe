"""Local delivery: one entry from this gateway's delivery stream to every local recipient.

Workers write one entry per gateway that holds members of a guild (not one per user); here the
entry's payload, serialized once by the gateway that accepted the message, is wrapped in each
session's dispatch envelope (only the sequence number differs) and queued on each socket
without awaiting any of them (``fanout_serialize=per_recipient``, a lab arm, re-encodes each
recipient's whole frame instead: the naive design the lab compares against). Detached sessions (dropped, not yet expired) still get the
dispatch into their replay buffer, which is what makes RESUME gap-free.

The routing table is a Redis set per guild of gateway ids. This gateway adds itself when its
first session of a member of the guild arrives and removes itself when the last one expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import orjson
import redis.asyncio as aioredis

from chatscale import trace
from chatscale.redisconn import TRANSIENT
from chatscale.wire import INTENT_OF, Delivery, Op, dumps
from gateway import metrics
from gateway.host import Client, GatewayHost
from gateway.lazy import Watchers, deliver_watched, is_lazy
from gateway.session import Session
from gateway.wsframe import DispatchBytes

log = logging.getLogger("chatscale.gateway.fanout")

EARLY_LIMIT = 1024  # guild-wide deliveries held per identifying session (oldest dropped beyond)
# Recipients served before the reader yields to the event loop: a read of 512 entries to a
# streamer's 1,500 local viewers is ~750k writes, seconds of CPU in one callback, during which
# no ack, IDENTIFY or heartbeat would be handled (senders fell behind by p99 16 s). One
# delivery to a big audience is split too (``_deliver_yielding``): a sender's message waits
# for several loop turns (its Redis round trips, then its ack), each as long as one chunk.
# 100 sessions are ~1-3 ms of writes (200: a streamer's talkers' acks p50 ~250 ms, 100: ~165 ms).
YIELD_EVERY = 100


class LocalFanout:
    def __init__(self, gateway: GatewayHost, *, serialize: str = "once") -> None:
        self.gateway = gateway
        # ``fanout_serialize``: "per_recipient" re-encodes every recipient's whole frame (a lab arm)
        self.per_recipient = serialize == "per_recipient"
        self.attached: dict[Session, Client] = {}
        self.by_guild: dict[int, set[Session]] = {}
        # Guild-wide deliveries (presence) that reached a session between its attach and its
        # READY, released in order right after READY: READY's presences are read after the
        # attach, so snapshot + these miss nothing (a member coming online meanwhile included).
        self.early: dict[Session, list[Delivery]] = {}
        self.delivered = 0  # frames queued to sockets or replay buffers (a metric)
        # Degrade mode (gateway/storm.py sets these when STORM_MITIGATIONS=on): shed(t, n) says
        # whether to drop a presence/typing dispatch; observe_age(s) gets each batch's age.
        self.shed: Callable[[str, int], bool] | None = None
        self.observe_age: Callable[[float], None] | None = None
        self.watchers = Watchers()  # lazy guilds: whose presence each session watches

    async def attach(self, session: Session, client: Client) -> None:
        keys = self.gateway.keys
        new_guilds = [g for g in session.guilds if not self.by_guild.get(g)]
        for guild_id in session.guilds:
            self.by_guild.setdefault(guild_id, set()).add(session)
        self.attached[session] = client
        if not session.seq:  # identifying: hold guild-wide deliveries until READY (release)
            self.early[session] = []
        if new_guilds:
            async with self.gateway.redis.pipeline(transaction=False) as pipe:
                for guild_id in new_guilds:
                    pipe.sadd(keys.route(guild_id), self.gateway.id)
                await pipe.execute()

    def release(self, session: Session) -> int:
        """After READY: dispatch what ``deliver`` held for this session, in order."""
        held = self.early.pop(session, None)
        if not held or not session.seq:
            return 0
        client = self.attached.get(session)
        sent = 0
        for delivery in held:
            need = INTENT_OF.get(delivery.t, 0)
            if need and not session.intents & need:
                continue
            text = session.dispatch(delivery.t, delivery.payload, "")
            if client is not None:
                self.gateway.send(client, text)
            sent += 1
        self.delivered += sent
        return sent

    async def detach(self, session: Session) -> None:
        self.early.pop(session, None)
        self.attached.pop(session, None)
        self.watchers.forget(session)
        gone = []
        for guild_id in session.guilds:
            members = self.by_guild.get(guild_id)
            if members is not None:
                members.discard(session)
                if not members:
                    del self.by_guild[guild_id]
                    gone.append(guild_id)
        if gone:
            async with self.gateway.redis.pipeline(transaction=False) as pipe:
                for guild_id in gone:
                    pipe.srem(self.gateway.keys.route(guild_id), self.gateway.id)
                await pipe.execute()

    async def drop_all_routes(self) -> None:
        async with self.gateway.redis.pipeline(transaction=False) as pipe:
            for guild_id in self.by_guild:
                pipe.srem(self.gateway.keys.route(guild_id), self.gateway.id)
            await pipe.execute()

    async def run(self, redis: aioredis.Redis, start_id: bytes | None = None) -> None:
        """Read this gateway's delivery stream until the gateway stops (new entries only: a
        fresh gateway has no sessions that could be owed older ones).

        The start is a concrete entry id (the stream's last, or 0-0), never ``$``: ``$`` means
        "what arrives during this call", so entries written between two calls — while the loop
        was busy after an empty read — would be skipped for good."""
        stream = self.gateway.keys.deliver(self.gateway.id)
        last = start_id if start_id is not None else await self.start_id(redis)
        while not self.gateway.stopping:
            try:
                reply = await redis.xread({stream: last}, count=512, block=1000)
            except TRANSIENT as exc:
                log.warning("delivery stream read failed (%s); retrying", exc)
                await asyncio.sleep(0.5)
                continue
            for _, entries in reply or []:
                if entries and self.observe_age is not None:  # the batch's oldest entry
                    ms = int(entries[0][0].split(b"-", 1)[0])
                    self.observe_age(max(0.0, time.time() - ms / 1000))
                since_yield = 0
                for entry_id, fields in entries:
                    last = entry_id
                    with contextlib.suppress(ValueError):
                        since_yield += await self._deliver_yielding(
                            Delivery.model_validate(orjson.loads(fields[b"e"]))
                        )
                    if since_yield >= YIELD_EVERY:  # let acks, IDENTIFYs and heartbeats in
                        since_yield = 0
                        await asyncio.sleep(0)

    async def start_id(self, redis: aioredis.Redis) -> bytes:
        """The delivery stream's newest entry id now (0-0 when it has none)."""
        stream = self.gateway.keys.deliver(self.gateway.id)
        while True:
            try:
                newest = await redis.xrevrange(stream, "+", "-", count=1)
            except TRANSIENT as exc:
                log.warning("delivery stream unreadable (%s); retrying", exc)
                await asyncio.sleep(0.5)
                continue
            return newest[0][0] if newest else b"0-0"

    def deliver(self, delivery: Delivery) -> int:
        """Dispatch one delivery to every local session that may see it; returns how many."""
        prepared = self._prepare(delivery)
        if isinstance(prepared, int):
            return prepared
        dispatch, targets = prepared
        self.gateway.send_dispatches(dispatch, targets, self.attached)
        self._count(delivery, len(targets))
        return len(targets)

    async def _deliver_yielding(self, delivery: Delivery) -> int:
        """``deliver`` for the delivery reader: a big audience is served ``YIELD_EVERY``
        sessions at a time, with the event loop's other work (a sender's Redis replies and ack,
        IDENTIFYs, heartbeats) between the chunks, not after all of them. Each session still
        gets its frames in delivery order: the reader is the only one dispatching them."""
        prepared = self._prepare(delivery)
        if isinstance(prepared, int):
            return prepared
        dispatch, targets = prepared
        for start in range(0, len(targets), YIELD_EVERY):
            if start:
                await asyncio.sleep(0)
            self.gateway.send_dispatches(
                dispatch, targets[start : start + YIELD_EVERY], self.attached
            )
        self._count(delivery, len(targets))
        return len(targets) % YIELD_EVERY  # served since the last yield

    def _count(self, delivery: Delivery, n: int) -> None:
        self.delivered += n
        metrics.delivered(delivery, n)

    def _prepare(self, delivery: Delivery) -> int | tuple[DispatchBytes, list[Session]]:
        """Whom ``delivery`` goes to and its shared bytes; or, when it was handled here
        already (shed, a lazy guild's watchers, per-recipient encoding, nobody), how many got
        it."""
        if self.shed is not None and self.shed(
            delivery.t, len(self.by_guild.get(delivery.guild_id, ()))
        ):
            return 0  # degrade mode: presence and typing only (gateway/storm.py)
        if not delivery.session_id and is_lazy(delivery):  # a lazy guild: to its watchers only
            return deliver_watched(self, self.watchers, delivery)
        if delivery.session_id:
            session = self.gateway.sessions.get(delivery.session_id)
            targets: list[Session] = [session] if session is not None else []
        else:
            members = self.by_guild.get(delivery.guild_id, ())
            channel_id = delivery.channel_id
            # IDENTIFY's intents: a session without this event group does not get it
            need = INTENT_OF.get(delivery.t, 0)
            if channel_id:  # one pass: the channel visible, and the intent
                targets = [
                    s
                    for s in members
                    if channel_id in s.channels and (s.intents & need or not need)
                ]
            else:  # guild-wide (presence): every member session of the guild that is READY
                # (one still identifying is in ``by_guild`` for routing, but READY must be its
                # first dispatch; it carries the guild's presences as of then).
                targets = [s for s in members if s.seq]
                for s, held in self.early.items():  # the few sessions still identifying
                    if not s.seq and delivery.guild_id in s.guilds:
                        if len(held) >= EARLY_LIMIT:  # bounded: IDENTIFY itself is bounded
                            del held[0]
                        held.append(delivery)
                if need:
                    targets = [s for s in targets if s.intents & need]
        if not targets:
            return 0
        suffix = ""
        if delivery.trace is not None:
            tr = list(delivery.trace)
            trace.stamp(tr, "gateway_deliver")
            suffix = orjson.dumps(tr).decode()
        if self.per_recipient:
            self._deliver_per_recipient(delivery, targets, suffix)
            return len(targets)
        # the bytes every recipient shares, numbered and written per session by the gateway
        return DispatchBytes(delivery.t, delivery.payload, suffix), targets

    def _deliver_per_recipient(
        self, delivery: Delivery, targets: list[Session], suffix: str
    ) -> None:
        """The naive design (``fanout_serialize=per_recipient``): the payload is parsed once and
        each recipient's whole dispatch frame is encoded from objects, with the project's own
        encoder. The bytes on the wire are the same as ``deliver``'s; only the work differs."""
        d_obj = orjson.loads(delivery.payload)
        tr_obj = orjson.loads(suffix) if suffix else None
        send = self.gateway.send
        for session in targets:
            seq = session.number(delivery.t, delivery.payload, suffix)
            frame = {"op": int(Op.DISPATCH), "t": delivery.t, "s": seq, "d": d_obj}
            if tr_obj is not None:
                frame["trace"] = tr_obj
            client = self.attached.get(session)
            if client is not None:
                send(client, dumps(frame))
        self.delivered += len(targets)
        metrics.delivered(delivery, len(targets))
