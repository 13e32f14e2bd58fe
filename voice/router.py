"""The relay's forwarding logic, pure (no sockets, no Redis): who is in which channel, who may
send, what one received packet turns into. ``voice/relay.py`` feeds it and sends what it says.

A *peer* is whatever identifies a client's transport to the I/O layer (a UDP address, a TCP
connection); the router only uses it as a dict key. Forwarding is an SFU's: each media packet
goes, unchanged but for its SSRC, to every other session of the sender's channel — no mixing,
no transcoding, no waiting: the router returns the list of sends and the I/O layer writes each
without awaiting (a full TCP buffer drops that receiver's copy, never delays the others).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

from voice import packet

Peer = Hashable


@dataclass
class RelaySession:
    peer: Peer
    user_id: int
    guild_id: int
    channel_id: int
    session_id: str
    nonce: str
    ssrc: int
    speak: bool
    last_seen: float
    newest_seq: int | None = None


@dataclass
class Counters:
    forwarded: int = 0  # copies sent (one packet to three listeners: three)
    dropped_not_speaking: int = 0
    dropped_too_old: int = 0
    dropped_unknown: int = 0  # from a peer without a session, or not a packet at all
    dropped_slow_receiver: int = 0  # copies a TCP receiver with a full buffer missed
    reports: int = 0


@dataclass
class Router:
    max_behind: int = 25
    sessions: dict[Peer, RelaySession] = field(default_factory=dict)
    by_channel: dict[int, set[Peer]] = field(default_factory=dict)
    by_member: dict[tuple[int, int], Peer] = field(default_factory=dict)  # (guild, user)
    by_ssrc: dict[int, Peer] = field(default_factory=dict)
    counters: Counters = field(default_factory=Counters)
    _next_ssrc: int = 1

    def admit(self, session: RelaySession) -> list[tuple[Peer, bytes]]:
        """A client authenticated: its session (replacing the member's earlier one in the
        guild, and any earlier session of the same peer). Returns what to send."""
        out: list[tuple[Peer, bytes]] = []
        old = self.by_member.get((session.guild_id, session.user_id))
        if old is not None and old != session.peer:
            out += self.end(old, packet.ENDED_REVOKED)
        if session.peer in self.sessions:
            self._remove(session.peer)
        session.ssrc = self._next_ssrc
        self._next_ssrc = self._next_ssrc % 0xFFFFFFFF + 1
        self.sessions[session.peer] = session
        self.by_channel.setdefault(session.channel_id, set()).add(session.peer)
        self.by_member[(session.guild_id, session.user_id)] = session.peer
        self.by_ssrc[session.ssrc] = session.peer
        out.append((session.peer, packet.ready(session.ssrc, session.speak)))
        return out

    def end(self, peer: Peer, reason: int) -> list[tuple[Peer, bytes]]:
        if self._remove(peer) is None:
            return []
        return [(peer, packet.ended(reason))]

    def end_member(self, guild_id: int, user_id: int, reason: int) -> list[tuple[Peer, bytes]]:
        peer = self.by_member.get((guild_id, user_id))
        return self.end(peer, reason) if peer is not None else []

    def set_speak(self, guild_id: int, user_id: int, allowed: bool) -> list[tuple[Peer, bytes]]:
        peer = self.by_member.get((guild_id, user_id))
        if peer is None or self.sessions[peer].speak == allowed:
            return []
        self.sessions[peer].speak = allowed
        return [(peer, packet.speak(allowed))]

    def _remove(self, peer: Peer) -> RelaySession | None:
        session = self.sessions.pop(peer, None)
        if session is None:
            return None
        members = self.by_channel.get(session.channel_id)
        if members is not None:
            members.discard(peer)
            if not members:
                del self.by_channel[session.channel_id]
        if self.by_member.get((session.guild_id, session.user_id)) == peer:
            del self.by_member[(session.guild_id, session.user_id)]
        self.by_ssrc.pop(session.ssrc, None)
        return session

    def receive(self, peer: Peer, data: bytes, now: float) -> list[tuple[Peer, bytes]]:
        """A packet from an authenticated peer (AUTH is the I/O layer's: it needs Redis)."""
        session = self.sessions.get(peer)
        if session is None or not data:
            self.counters.dropped_unknown += 1
            return []
        session.last_seen = now
        kind = data[0]
        if kind & 0xC0 == packet.MEDIA_VERSION:
            return self._media(session, data)
        if kind == packet.REPORT:
            report = packet.parse_report(data)
            target = self.by_ssrc.get(report.ssrc) if report else None
            if target is None:
                self.counters.dropped_unknown += 1
                return []
            self.counters.reports += 1
            return [(target, data)]
        if kind != packet.KEEP:
            self.counters.dropped_unknown += 1
        return []

    def _media(self, session: RelaySession, data: bytes) -> list[tuple[Peer, bytes]]:
        if not session.speak:  # the grant says no SPEAK: nobody hears it
            self.counters.dropped_not_speaking += 1
            return []
        media = packet.parse_media(data)
        if media is None:
            self.counters.dropped_unknown += 1
            return []
        if session.newest_seq is None or packet.seq_behind(session.newest_seq, media.seq) < 0:
            session.newest_seq = media.seq
        elif packet.seq_behind(session.newest_seq, media.seq) > self.max_behind:
            self.counters.dropped_too_old += 1  # it would miss its playout time anyway
            return []
        out = packet.with_ssrc(data, session.ssrc)
        receivers = [p for p in self.by_channel.get(session.channel_id, ()) if p != session.peer]
        self.counters.forwarded += len(receivers)
        return [(p, out) for p in receivers]

    def idle(self, now: float, timeout: float) -> list[RelaySession]:
        """Sessions that sent nothing for ``timeout`` seconds (the caller ends them)."""
        return [s for s in self.sessions.values() if now - s.last_seen > timeout]
