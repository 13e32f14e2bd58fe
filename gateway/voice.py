"""The gateway's side of voice: signaling (VOICE_STATE_UPDATE in, VOICE_SERVER_UPDATE out).

Picture. The gateway is voice's control plane; the relay (``voice/``) is its media plane, and
the grant in Redis (``chatscale/voice.py``) is what they agree on. A join, in this order:

1. check (``GatewayControl.voice_refusal``): a visible voice channel with CONNECT, else ERROR;
   no live relay: ERROR ``VOICE_UNAVAILABLE``;
2. end the member's earlier voice session if any (revoke, below);
3. write the grant ``{channel, session, nonce, speak}`` (SPEAK decides ``speak``);
4. flush this gateway's presence batch (the session's *online* is queued ahead of anything
   the relay reports about it);
5. send VOICE_SERVER_UPDATE to the joiner only: the relay's endpoint and a voice token.

The guild is **not** told here. The relay tells presence once the client authenticated with
it and can send (``voice/relay.py``), so nobody sees a member in voice who cannot yet speak.

A revoke (leave, switch, the gateway session ends, a ban or kick, lost VIEW or CONNECT) deletes
the grant, announces it to the relays and waits until each live relay ended the session (a
relay that does not answer within ``voice_ack_timeout_s`` is fenced), and only then tells
presence the member left. ``enforce`` runs inside the control plane's strong path, before the
gateway confirms a change: so a ban call returns only after the relay dropped the member.
Losing SPEAK keeps the member in the channel; the grant's ``speak`` flips and relays stop
forwarding what they send.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from chatscale import voice
from chatscale.redisconn import TRANSIENT, connect
from chatscale.wire import dumps
from gateway.host import Client, GatewayHost
from gateway.session import Session
from guilds.permissions import Permission

log = logging.getLogger("chatscale.gateway.voice")

_P = Permission


@dataclass
class Joined:
    guild_id: int
    channel_id: int
    speak: bool


class VoiceSignaling:
    def __init__(self, gateway: GatewayHost, control) -> None:  # noqa: ANN001 - GatewayControl
        self.gw = gateway
        self.control = control
        self.joined: dict[str, Joined] = {}  # gateway session id -> its voice channel
        self._lock = asyncio.Lock()  # voice requests and revocations, one at a time
        timeout = gateway.settings.voice_ack_timeout_s
        self._waiter = connect(gateway.settings, block_ms=int(timeout * 1000) + 1000)

    async def close(self) -> None:
        await self._waiter.aclose()

    # ---- requests --------------------------------------------------------------------------

    async def request(
        self, client: Client, session: Session, guild_id: int, channel_id: int | None
    ) -> None:
        async with self._lock:
            refusal = self.control.voice_refusal(session, guild_id, channel_id)
            if refusal is not None:  # visible, a voice channel, CONNECT
                self.gw.send_error(client, refusal.code, refusal.message)
                return
            try:
                await self._request(client, session, guild_id, channel_id)
            except TRANSIENT:
                self.gw.send_error(
                    client, "UNAVAILABLE", "voice state unavailable; retry", retry_after=1.0
                )

    async def _request(
        self, client: Client, session: Session, guild_id: int, channel_id: int | None
    ) -> None:
        current = self.joined.get(session.session_id)
        if channel_id is None:
            if current is not None and current.guild_id == guild_id:
                await self._revoke(session)
            else:  # not in voice there: nothing to end, but presence may still hold an old state
                self.gw.presence.voice(session, guild_id, None)
            return
        relays = await voice.live_relays(self.gw.redis, self.gw.keys)
        if not relays:
            self.gw.send_error(
                client,
                "VOICE_UNAVAILABLE",
                "no voice relay is running; retry later",
                retry_after=5.0,
            )
            return
        if current is not None:  # a switch: the old session ends first
            await self._revoke(session)
        speak = bool(session.perms.get(channel_id, 0) & _P.SPEAK)
        grant = voice.Grant(channel_id, session.session_id, secrets.token_hex(8), speak)
        await self.gw.redis.hset(
            self.gw.keys.voice_grant(guild_id), str(session.user_id), grant.to_json()
        )
        self.joined[session.session_id] = Joined(guild_id, channel_id, speak)
        await self.gw.presence.flush([], self.gw.clock())  # our ONLINE goes before the relay's join
        relay_id = sorted(relays)[0]
        endpoint = relays[relay_id][self.gw.settings.voice_transport]
        token = voice.mint(
            voice.VoiceClaims(
                session.user_id, guild_id, channel_id, session.session_id, grant.nonce
            ),
            secret=self.gw.settings.token_secret,
            ttl_s=self.gw.settings.voice_token_ttl_s,
            now=self.gw.wall_clock(),
        )
        d = {
            "guild_id": str(guild_id),
            "channel_id": str(channel_id),
            "endpoint": f"{endpoint[0]}:{endpoint[1]}",
            "transport": self.gw.settings.voice_transport,
            "token": token,
            "speak": speak,
        }
        self._dispatch(session, "VOICE_SERVER_UPDATE", dumps(d))

    # ---- revocations -------------------------------------------------------------------------

    async def _revoke(self, session: Session) -> None:
        """End the session's voice: grant gone, every relay confirmed, then presence told."""
        joined = self.joined.pop(session.session_id, None)
        if joined is None:
            return
        key = self.gw.keys.voice_grant(joined.guild_id)
        current = voice.Grant.from_json(await self.gw.redis.hget(key, str(session.user_id)))
        if current is not None and current.session_id == session.session_id:
            await self.gw.redis.hdel(key, str(session.user_id))
        await self._announce(voice.VoiceEvent("revoke", joined.guild_id, session.user_id))
        self.gw.presence.voice(session, joined.guild_id, None)

    async def _announce(self, event: voice.VoiceEvent) -> None:
        fenced = await voice.announce(
            self.gw.redis,
            self._waiter,
            self.gw.keys,
            event,
            timeout_s=self.gw.settings.voice_ack_timeout_s,
        )
        if fenced:
            log.warning("voice relays %s did not apply %s in time: fenced", fenced, event.kind)

    async def enforce(self, sessions: Iterable[Session]) -> None:
        """After a permission change was applied to ``sessions``' views (and before the gateway
        confirms it): end the voice of those who lost the guild, the channel or CONNECT, and
        flip ``speak`` for those whose SPEAK changed."""
        async with self._lock:
            for session in sessions:
                joined = self.joined.get(session.session_id)
                if joined is None:
                    continue
                perms = session.perms.get(joined.channel_id, 0)
                visible = session.channels.get(joined.channel_id) == joined.guild_id
                if not visible or not perms & _P.CONNECT:
                    await self._revoke(session)
                    continue
                speak = bool(perms & _P.SPEAK)
                if speak == joined.speak:
                    continue
                joined.speak = speak
                key = self.gw.keys.voice_grant(joined.guild_id)
                grant = voice.Grant.from_json(await self.gw.redis.hget(key, str(session.user_id)))
                if grant is not None and grant.session_id == session.session_id:
                    flipped = voice.Grant(grant.channel_id, grant.session_id, grant.nonce, speak)
                    await self.gw.redis.hset(key, str(session.user_id), flipped.to_json())
                await self._announce(
                    voice.VoiceEvent("speak", joined.guild_id, session.user_id, speak)
                )

    async def forget(self, session: Session) -> None:
        """The gateway session ended: its voice ends with it."""
        if session.session_id not in self.joined:
            return
        async with self._lock:
            await self._revoke(session)

    def _dispatch(self, session: Session, t: str, d: str) -> None:
        text = session.dispatch(t, d)
        client = self.gw.fanout.attached.get(session)
        if client is not None:
            self.gw.send(client, text)
