"""``chatscale voice``: the media relay. One UDP port (and a TCP arm on the same number).

Picture: clients -> UDP -> ``Router`` (pure, ``voice/router.py``) -> UDP -> clients. Redis is
consulted only to admit a client and, once a second, to re-check its sessions' grants; never
per packet. What may change a session in between arrives on the voice pub/sub channel
(revoke, speak), is applied at once and acknowledged, which is what lets a ban wait for it.

Admission, in this order: the token's signature and expiry (``chatscale/voice.py``); the
grant in Redis must be the one the token names (same channel, gateway session and nonce: a
token of an earlier join is dead); the session is installed and READY sent; only then is the
member reported to presence as in the channel (one entry on the presence stream). So a member
shown in voice can already send.

Never waiting for a receiver: UDP ``sendto`` does not block (the kernel drops when its buffer
is full); on the TCP arm a receiver whose transport buffer holds more than ``TCP_BUFFER_LIMIT``
bytes misses that packet. Fencing: if this relay did not ack an event in time, a gateway
deleted its liveness key; the once-a-second check sees that, ends every session (ENDED_RELAY)
and registers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import Callable

import orjson

from chatscale import voice
from chatscale.cancel import cancel_and_wait
from chatscale.config import Settings
from chatscale.keys import Keys, presence_partition
from chatscale.redisconn import TRANSIENT, connect, ready
from presence.state import VoiceUpdate, event_to_dict
from voice import packet
from voice.metrics import watch_relay
from voice.router import Peer, RelaySession, Router

log = logging.getLogger("chatscale.voice")

ALIVE_TTL_S = 10
#: HDEL the member's grant only if it still names this join (a newer join keeps its own).
_DELETE_IF_NONCE = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if raw and cjson.decode(raw)['n'] == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""
CHECK_EVERY_S = 1.0
TCP_BUFFER_LIMIT = 64 * 1024  # ~3 s of 128 kbit/s audio: beyond it the receiver misses packets


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.relay.received(("udp", addr), data)

    def error_received(self, exc: Exception) -> None:  # e.g. ICMP port unreachable
        log.debug("udp error: %s", exc)


class Relay:
    def __init__(
        self,
        settings: Settings,
        *,
        relay_id: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.id = relay_id or f"relay-{secrets.token_hex(4)}"
        self.clock = clock
        self.redis = connect(settings)
        self._sub_redis = connect(settings)
        self._pubsub = self._sub_redis.pubsub(ignore_subscribe_messages=True)
        self.router = Router(max_behind=settings.voice_max_behind)
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tcp_peers: dict[Peer, asyncio.StreamWriter] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.udp_address: tuple[str, int] = ("", 0)
        self.tcp_address: tuple[str, int] = ("", 0)
        self.stopping = False
        self.admitted = 0  # sessions admitted and reported to presence (a metric)
        self.refused = 0  # AUTH packets refused
        self._admissions = asyncio.Condition()
        watch_relay(self)  # sessions and packet counters, read at scrape time

    async def wait_admitted(self, count: int, timeout: float = 10.0) -> None:
        """Until ``admitted`` reaches ``count`` (tests; TimeoutError after ``timeout``)."""
        async with asyncio.timeout(timeout), self._admissions:
            await self._admissions.wait_for(lambda: self.admitted >= count)

    # ---- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        host = self.settings.voice_host
        for attempt in range(20):
            self._udp, _ = await loop.create_datagram_endpoint(
                lambda: _Udp(self), local_addr=(host, self.settings.voice_port)
            )
            port = self._udp.get_extra_info("sockname")[1]
            try:  # the TCP arm on the same number: free for UDP need not mean free for TCP
                self._tcp = await asyncio.start_server(self._tcp_client, host, port)
                break
            except OSError:
                self._udp.close()
                if self.settings.voice_port or attempt == 19:
                    raise
        public = self.settings.voice_public_host or host
        self.udp_address = (public, port)
        self.tcp_address = (public, port)
        await ready(self._sub_redis)  # a cluster client reads its slot map first
        await self._pubsub.subscribe(self.keys.voice_events())  # hear every event before live
        await self._register()
        self._spawn(self._events())
        self._spawn(self._housekeeping())
        log.info("voice relay %s on udp+tcp %s:%d", self.id, public, port)

    async def _register(self) -> None:
        info = {"udp": list(self.udp_address), "tcp": list(self.tcp_address), "pid": os.getpid()}
        await self.redis.hset(self.keys.voice_relays(), self.id, orjson.dumps(info))
        await self.redis.set(self.keys.voice_relay_alive(self.id), b"1", ex=ALIVE_TTL_S)

    async def stop(self) -> None:
        self.stopping = True
        for peer in list(self.router.sessions):
            self._send_all(self.router.end(peer, packet.ENDED_RELAY))
        await cancel_and_wait(self._tasks, 5.0, f"voice relay {self.id}")
        with contextlib.suppress(*TRANSIENT):
            await self.redis.hdel(self.keys.voice_relays(), self.id)
            await self.redis.delete(self.keys.voice_relay_alive(self.id))
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            for writer in list(self._tcp_peers.values()):
                writer.transport.abort()
        with contextlib.suppress(*TRANSIENT):
            await self._pubsub.aclose()
        await self._sub_redis.aclose()
        await self.redis.aclose()

    def _spawn(self, coro) -> None:  # noqa: ANN001
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- packets ----------------------------------------------------------------------------

    def received(self, peer: Peer, data: bytes) -> None:
        if not data or len(data) > packet.MAX_PACKET + packet.MAX_TOKEN:
            self.router.counters.dropped_unknown += 1
            return
        if data[0] == packet.AUTH:
            self._spawn(self._admit(peer, data[1:]))
            return
        self._send_all(self.router.receive(peer, data, self.clock()))

    def _send_all(self, sends: list[tuple[Peer, bytes]]) -> None:
        for peer, data in sends:
            kind, where = peer  # type: ignore[misc]
            if kind == "udp":
                if self._udp is not None:
                    self._udp.sendto(data, where)
                continue
            writer = self._tcp_peers.get(peer)
            if writer is None or writer.transport.is_closing():
                continue
            if writer.transport.get_write_buffer_size() > TCP_BUFFER_LIMIT:
                self.router.counters.dropped_slow_receiver += 1  # never wait for a receiver
                continue
            writer.write(packet.frame(data))

    async def _admit(self, peer: Peer, raw: bytes) -> None:
        try:
            claims = voice.verify(
                raw.decode("ascii", "replace")[: packet.MAX_TOKEN],
                secret=self.settings.token_secret,
                now=time.time(),
            )
        except voice.VoiceTokenError:
            self.refused += 1
            self._send_all([(peer, packet.ended(packet.ENDED_BAD_TOKEN))])
            return
        try:
            raw_grant = await self.redis.hget(
                self.keys.voice_grant(claims.guild_id), str(claims.user_id)
            )
        except TRANSIENT:
            return  # the client retries its AUTH
        grant = voice.Grant.from_json(raw_grant)
        if grant is None or not grant.admits(claims):
            self.refused += 1
            self._send_all([(peer, packet.ended(packet.ENDED_NO_GRANT))])
            return
        session = RelaySession(
            peer,
            claims.user_id,
            claims.guild_id,
            claims.channel_id,
            claims.session_id,
            claims.nonce,
            0,
            grant.speak,
            self.clock(),
        )
        self._send_all(self.router.admit(session))
        # Only now is the member shown in the channel: their packets are forwarded from here.
        event = event_to_dict(VoiceUpdate(claims.session_id, claims.guild_id, claims.channel_id))
        batch = {"gw": self.id, "events": [event], "typing": []}
        with contextlib.suppress(*TRANSIENT):
            await self.redis.xadd(self._presence_in(claims.user_id), {"e": orjson.dumps(batch)})
        self.admitted += 1  # admitted and reported to presence
        async with self._admissions:
            self._admissions.notify_all()

    # ---- TCP arm ------------------------------------------------------------------------------

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer: Peer = ("tcp", id(writer))
        self._tcp_peers[peer] = writer
        try:
            while not self.stopping:
                head = await reader.readexactly(2)
                data = await reader.readexactly(int.from_bytes(head, "big"))
                self.received(peer, data)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._tcp_peers.pop(peer, None)
            self.router.end(peer, packet.ENDED_RELAY)
            writer.close()

    # ---- events and housekeeping ---------------------------------------------------------------

    async def _events(self) -> None:
        while not self.stopping:
            try:
                message = await self._pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=1.0
                )
            except TRANSIENT as exc:
                log.warning("voice event subscription failed (%s)", exc)
                await asyncio.sleep(0.5)
                continue
            if message is None or message.get("type") != "message":
                continue
            try:
                event = voice.VoiceEvent.from_json(message["data"])
            except ValueError:
                log.error("undecodable voice event: %r", message["data"][:200])
                continue
            self.apply(event)
            if event.reply:
                with contextlib.suppress(*TRANSIENT):
                    async with self.redis.pipeline(transaction=False) as pipe:
                        pipe.rpush(event.reply, self.id)
                        pipe.expire(event.reply, 60)
                        await pipe.execute()

    def apply(self, event: voice.VoiceEvent) -> None:
        if event.kind == "revoke":
            self._send_all(
                self.router.end_member(event.guild_id, event.user_id, packet.ENDED_REVOKED)
            )
        elif event.kind == "speak":
            self._send_all(self.router.set_speak(event.guild_id, event.user_id, event.speak))

    async def _housekeeping(self) -> None:
        while not self.stopping:
            await asyncio.sleep(CHECK_EVERY_S)
            with contextlib.suppress(*TRANSIENT):
                await self.check()

    async def check(self) -> None:
        """Fenced? Re-check every session's grant (a missed event), end idle sessions."""
        alive = self.keys.voice_relay_alive(self.id)
        if not await self.redis.set(alive, b"1", ex=ALIVE_TTL_S, xx=True):
            log.warning(
                "voice relay %s was fenced: ending %d sessions", self.id, len(self.router.sessions)
            )
            for peer in list(self.router.sessions):
                self._send_all(self.router.end(peer, packet.ENDED_RELAY))
            await self._register()
        sessions = list(self.router.sessions.values())
        if sessions:
            async with self.redis.pipeline(transaction=False) as pipe:
                for s in sessions:
                    pipe.hget(self.keys.voice_grant(s.guild_id), str(s.user_id))
                grants = await pipe.execute()
            for s, raw in zip(sessions, grants, strict=True):
                grant = voice.Grant.from_json(raw)
                if self.router.sessions.get(s.peer) is not s:
                    continue
                if grant is None or (grant.session_id, grant.nonce) != (s.session_id, s.nonce):
                    self._send_all(self.router.end(s.peer, packet.ENDED_REVOKED))
                elif grant.speak != s.speak:
                    self._send_all(self.router.set_speak(s.guild_id, s.user_id, grant.speak))
        for s in self.router.idle(self.clock(), self.settings.voice_idle_timeout_s):
            self._send_all(self.router.end(s.peer, packet.ENDED_IDLE))
            await self._left(s)

    def _presence_in(self, user_id: int) -> str:
        """The input stream of the presence partition that aggregates this user."""
        return self.keys.presence_in_of(
            presence_partition(user_id, self.settings.presence_partitions)
        )

    async def _left(self, s: RelaySession) -> None:
        """A session this relay ended on its own (idle): its grant goes (only if it is still
        this join's) and presence is told the member left, so nobody is shown in voice who
        can no longer send."""
        key = self.keys.voice_grant(s.guild_id)
        if await self.redis.eval(_DELETE_IF_NONCE, 1, key, str(s.user_id), s.nonce):
            event = event_to_dict(VoiceUpdate(s.session_id, s.guild_id, None))
            batch = {"gw": self.id, "events": [event], "typing": []}
            await self.redis.xadd(self._presence_in(s.user_id), {"e": orjson.dumps(batch)})
