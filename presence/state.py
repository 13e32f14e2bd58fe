"""Per-user, per-device presence: the pure rules, with no I/O.

Each gateway session (one WebSocket from one device) reports events: online with a status,
heartbeat, status change, voice join/leave, offline. ``PresenceState`` keeps one record per
session and derives the rest: a user's aggregate is the most relevant status across their
sessions (``PRECEDENCE``), ``client_status`` is the same rule per device kind, and other users
see ``invisible`` as ``offline``. Silent sessions go only when the caller runs ``expire(now)``;
``Offline`` removes one at once. Callers get back only what others could notice
(``StatusChange``, ``VoiceChange``), netted over a batch: heartbeats and in-tick flaps cost
nothing downstream. Events arrive at-least-once (Redis Streams), so each is idempotent, and
events for unknown sessions are ignored: a stray heartbeat must not resurrect an invisible user.

Time is an argument (``now``): pass wall-clock seconds (``time.time()``), not
``time.monotonic()``, because the state outlives the process (``to_dict`` into Redis) and a
monotonic clock restarts at every boot.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, TypeAlias

DEVICES = ("desktop", "mobile", "web")
STATUSES = ("online", "idle", "dnd", "invisible", "offline")

#: Settable statuses, most relevant first. Explicit choices beat automatic ones. ``invisible``
#: wins because a session that has not yet heard the user went invisible must not leak them as
#: online (failing towards hidden is a glitch, failing towards shown is a privacy bug); ``dnd``
#: next, a choice about notifications others should respect; then the most active automatic
#: state, ``online`` over ``idle``: a phone idle in a pocket must not hide an active desktop.
#: ``offline`` is not settable: it is what no live session means (clients pick ``invisible``).
PRECEDENCE = ("invisible", "dnd", "online", "idle")
ONLINE_ISH = frozenset({"online", "idle", "dnd"})
_RANK = {status: rank for rank, status in enumerate(PRECEDENCE)}


def aggregate_status(statuses: Iterable[str]) -> str:
    """The most relevant of ``statuses`` by ``PRECEDENCE``; ``offline`` when there are none."""
    return min(statuses, key=_RANK.__getitem__, default="offline")


def visible_status(aggregate: str) -> str:
    """What users other than the owner see: invisible is indistinguishable from offline."""
    return "offline" if aggregate == "invisible" else aggregate


def _validate(event: object) -> None:
    # Our own API misused: the gateway validates client input before it gets here.
    if not isinstance(event, _EVENT_CLASSES):
        raise TypeError(f"not a presence event: {event!r}")
    if isinstance(event, Online) and event.device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {event.device!r}")
    if isinstance(event, Online | SetStatus | SetUserStatus) and event.status not in PRECEDENCE:
        raise ValueError(f"status must be one of {PRECEDENCE}, got {event.status!r}")


@dataclass(frozen=True)
class Online:
    """A session identified, or resumed after a presence restart; replays just refresh it."""

    type: ClassVar[str] = "online"
    session_id: str
    user_id: int
    device: str
    status: str = "online"


@dataclass(frozen=True)
class Heartbeat:
    """A live session's periodic proof of life. A gateway also sends who the session is, so a
    session this service expired while its gateway still held it (a timeout shorter than a
    stall) comes back on the next heartbeat instead of staying offline for good."""

    type: ClassVar[str] = "heartbeat"
    session_id: str
    user_id: int | None = None
    device: str = "desktop"
    status: str = "online"


@dataclass(frozen=True)
class SetStatus:
    """One session's status, e.g. that client's AFK detector turning it idle."""

    type: ClassVar[str] = "set_status"
    session_id: str
    status: str


@dataclass(frozen=True)
class SetUserStatus:
    """A status the user chose applies to all their sessions (none kept while offline: the
    client sends it again when it identifies)."""

    type: ClassVar[str] = "set_user_status"
    user_id: int
    status: str


@dataclass(frozen=True)
class Offline:
    type: ClassVar[str] = "offline"
    session_id: str


@dataclass(frozen=True)
class VoiceUpdate:
    """Join, move or leave (``channel_id=None``) voice. Tied to the session that joined, so the
    user leaves voice when that session dies, and one user is in at most one voice channel."""

    type: ClassVar[str] = "voice"
    session_id: str
    guild_id: int
    channel_id: int | None


Event: TypeAlias = Online | Heartbeat | SetStatus | SetUserStatus | Offline | VoiceUpdate
_EVENT_CLASSES = (Online, Heartbeat, SetStatus, SetUserStatus, Offline, VoiceUpdate)
_EVENT_TYPES = {c.type: c for c in _EVENT_CLASSES}


def event_to_dict(event: Event) -> dict[str, Any]:
    """JSON-able form, as a gateway writes it to a stream entry."""
    return {"type": event.type, **asdict(event)}


def event_from_dict(data: Mapping[str, Any]) -> Event:
    fields = dict(data)
    kind = fields.pop("type", None)
    if kind not in _EVENT_TYPES:
        raise ValueError(f"unknown presence event type {kind!r}")
    return _EVENT_TYPES[kind](**fields)


@dataclass(frozen=True)
class StatusChange:
    """What others see of one user changed: status, or which devices show it.

    The old client_status travels too so that a coalescer can net a flap back to zero."""

    user_id: int
    old_visible: str
    new_visible: str
    client_status: dict[str, str]
    old_client_status: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class VoiceChange:
    """A user's voice channel in one guild changed (None: not in voice in that guild)."""

    user_id: int
    guild_id: int
    old_channel_id: int | None
    new_channel_id: int | None


PresenceChange: TypeAlias = StatusChange | VoiceChange
Changes: TypeAlias = list[PresenceChange]
_View: TypeAlias = tuple[str, dict[str, str], tuple[int, int] | None]


@dataclass
class _Session:
    session_id: str
    user_id: int
    device: str
    status: str
    last_seen: float
    voice: tuple[int, int] | None = None  # (guild_id, channel_id)
    gen: int = 0  # tells this session's expiry-heap entry from one left by an earlier session

    def to_dict(self) -> dict[str, Any]:
        rec = {**asdict(self), "voice": list(self.voice) if self.voice else None}
        del rec["gen"]  # process-local
        return rec

    @classmethod
    def from_dict(cls, rec: Mapping[str, Any]) -> _Session:
        voice = (rec["voice"][0], rec["voice"][1]) if rec.get("voice") else None
        return cls(**{**rec, "voice": voice})


class PresenceState:
    """All live sessions and the rules above. ``timeout``: seconds without a heartbeat after
    which ``expire`` drops a session; set it above the heartbeat interval plus jitter so that
    one late heartbeat does not flap a user offline and back."""

    def __init__(self, *, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self._sessions: dict[str, _Session] = {}
        self._by_user: dict[int, set[str]] = {}
        # Min-heap of (earliest possible expiry, session id, gen). Heartbeats do not touch it;
        # an entry popped early is pushed back with its real deadline, so a heartbeat stays
        # O(1) and expire() costs only the sessions that are actually due.
        self._heap: list[tuple[float, str, int]] = []
        self._gen = 0

    # -- events ----------------------------------------------------------------------------

    def online(
        self, session_id: str, user_id: int, device: str, status: str, now: float
    ) -> Changes:
        return self.apply_batch([Online(session_id, user_id, device, status)], now)

    def heartbeat(self, session_id: str, now: float) -> bool:
        """Refresh a session. False means presence does not know it (expired, or state lost); a
        bare heartbeat never makes anyone visible — only a ``Heartbeat`` event that says whose
        session it is revives it (``apply_batch``)."""
        return self._touch(session_id, now) is not None

    def set_status(self, session_id: str, status: str, now: float) -> Changes:
        return self.apply_batch([SetStatus(session_id, status)], now)

    def set_user_status(self, user_id: int, status: str, now: float) -> Changes:
        return self.apply_batch([SetUserStatus(user_id, status)], now)

    def offline(self, session_id: str, now: float) -> Changes:
        return self.apply_batch([Offline(session_id)], now)

    def voice(self, session_id: str, guild_id: int, channel_id: int | None, now: float) -> Changes:
        return self.apply_batch([VoiceUpdate(session_id, guild_id, channel_id)], now)

    def apply_batch(self, events: Iterable[Event], now: float) -> Changes:
        """Apply one gateway tick in order; return only net changes others can see."""
        events = list(events)
        for event in events:  # all or nothing: a bad event must not half-apply a tick
            _validate(event)
        before: dict[int, _View] = {}
        for event in events:
            self._apply(event, now, before)
        return self._diff(before)

    def expire(self, now: float) -> Changes:
        """Drop sessions silent for more than ``timeout`` seconds (``now - last_seen > timeout``)."""
        before: dict[int, _View] = {}
        later: list[tuple[float, str, int]] = []
        while self._heap and self._heap[0][0] <= now:
            _, sid, gen = heapq.heappop(self._heap)
            session = self._sessions.get(sid)
            if session is None or session.gen != gen:
                continue  # left by a session that is gone
            if now - session.last_seen > self.timeout:
                self._remember(session.user_id, before)
                self._remove(sid)
            else:  # heartbeated since it was queued (or exactly at the limit): re-queue
                later.append((session.last_seen + self.timeout, sid, gen))
        for entry in later:
            heapq.heappush(self._heap, entry)
        return self._diff(before)

    def next_expiry(self) -> float | None:
        """No session can expire before this time; a caller may sleep until then."""
        return self._heap[0][0] if self._heap else None

    # -- reading ---------------------------------------------------------------------------

    def status(self, user_id: int) -> str:
        """The aggregate as the user's own sessions see it (may be ``invisible``)."""
        return aggregate_status(self._sessions[s].status for s in self._by_user.get(user_id, ()))

    def client_status(self, user_id: int) -> dict[str, str]:
        """Aggregate per device kind, like Discord's client_status: {"desktop": "online", ...}."""
        per_device: dict[str, list[str]] = {}
        for sid in self._by_user.get(user_id, ()):
            session = self._sessions[sid]
            per_device.setdefault(session.device, []).append(session.status)
        return {d: aggregate_status(per_device[d]) for d in DEVICES if d in per_device}

    def view(self, user_id: int, viewer_id: int | None = None) -> dict[str, Any]:
        """A user's presence as ``viewer_id`` sees it: the truth for the user themself, else
        the visible form (invisible shows as offline with no devices)."""
        status, devices = self.status(user_id), self.client_status(user_id)
        if viewer_id != user_id and visible_status(status) == "offline":
            return {"status": "offline", "client_status": {}}
        return {"status": status, "client_status": devices}

    def voice_channel(self, user_id: int) -> tuple[int, int] | None:
        """(guild_id, channel_id) the user is connected to, if any."""
        sessions = (self._sessions[sid] for sid in self._by_user.get(user_id, ()))
        return next((s.voice for s in sessions if s.voice), None)

    # -- persistence -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-able snapshot of every session (typing and coalescing state are not in it)."""
        sessions = [s.to_dict() for s in self._sessions.values()]
        return {"version": 1, "timeout": self.timeout, "sessions": sessions}

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, now: float | None = None, grace: float = 0.0
    ) -> PresenceState:
        """Restore a snapshot. With ``now``, no session expires before ``now + grace``: while
        presence was down nobody could heartbeat it, and without this every user would be
        swept offline at once and flood every guild on the first ``expire`` after a restart."""
        if data.get("version") != 1:
            raise ValueError(f"unsupported presence snapshot version {data.get('version')!r}")
        state = cls(timeout=data["timeout"])
        floor = None if now is None else now + grace - state.timeout
        for rec in data["sessions"]:
            session = _Session.from_dict(rec)
            if floor is not None:
                session.last_seen = max(session.last_seen, floor)
            state._add(session)
        return state

    # -- internals -------------------------------------------------------------------------

    def _apply(self, event: Event, now: float, before: dict[int, _View]) -> None:
        if isinstance(event, Online):
            self._remember(event.user_id, before)
            session = self._sessions.get(event.session_id)
            if session is not None and session.user_id != event.user_id:
                self._remember(session.user_id, before)
                self._remove(event.session_id)
                session = None
            if session is None:
                self._add(
                    _Session(event.session_id, event.user_id, event.device, event.status, now)
                )
            else:
                session.device, session.status = event.device, event.status
                session.last_seen = max(session.last_seen, now)
        elif isinstance(event, Heartbeat):
            if self._touch(event.session_id, now) is None and event.user_id is not None:
                self._remember(event.user_id, before)  # expired but alive: revive it
                self._add(
                    _Session(event.session_id, event.user_id, event.device, event.status, now)
                )
        elif isinstance(event, SetStatus):
            if session := self._touch(event.session_id, now):
                self._remember(session.user_id, before)
                session.status = event.status
        elif isinstance(event, SetUserStatus):
            self._remember(event.user_id, before)
            for sid in self._by_user.get(event.user_id, ()):
                self._sessions[sid].status = event.status
        elif isinstance(event, Offline):
            if session := self._sessions.get(event.session_id):
                self._remember(session.user_id, before)
                self._remove(event.session_id)
        elif isinstance(event, VoiceUpdate):
            if session := self._touch(event.session_id, now):
                self._remember(session.user_id, before)
                if event.channel_id is None:
                    if session.voice and session.voice[0] == event.guild_id:
                        session.voice = None
                else:
                    for sid in self._by_user[session.user_id]:
                        self._sessions[sid].voice = None
                    session.voice = (event.guild_id, event.channel_id)

    def _touch(self, session_id: str, now: float) -> _Session | None:
        session = self._sessions.get(session_id)
        if session is not None:
            session.last_seen = max(session.last_seen, now)  # replays may arrive late
        return session

    def _add(self, session: _Session) -> None:
        self._gen += 1
        session.gen = self._gen
        self._sessions[session.session_id] = session
        self._by_user.setdefault(session.user_id, set()).add(session.session_id)
        heapq.heappush(
            self._heap, (session.last_seen + self.timeout, session.session_id, self._gen)
        )

    def _remove(self, sid: str) -> None:
        session = self._sessions.pop(sid)
        sids = self._by_user[session.user_id]
        sids.discard(sid)
        if not sids:
            del self._by_user[session.user_id]

    def _snapshot(self, user_id: int) -> _View:
        shown = self.view(user_id)
        return shown["status"], shown["client_status"], self.voice_channel(user_id)

    def _remember(self, user_id: int, before: dict[int, _View]) -> None:
        if user_id not in before:
            before[user_id] = self._snapshot(user_id)

    def _diff(self, before: dict[int, _View]) -> Changes:
        out: list[PresenceChange] = []
        for uid, (old_status, old_devices, old_voice) in before.items():
            new_status, new_devices, new_voice = self._snapshot(uid)
            if (old_status, old_devices) != (new_status, new_devices):
                out.append(StatusChange(uid, old_status, new_status, new_devices, old_devices))
            if old_voice == new_voice:
                continue
            same_guild = old_voice and new_voice and old_voice[0] == new_voice[0]
            if old_voice and not same_guild:
                out.append(VoiceChange(uid, old_voice[0], old_voice[1], None))
            if new_voice:
                old_channel = old_voice[1] if same_guild and old_voice else None
                out.append(VoiceChange(uid, new_voice[0], old_channel, new_voice[1]))
        return out
