"""Per-guild coalescing of presence changes, and typing throttling: pure, clock injected.

Why: one raw status change in a guild with N online members is N deliveries, and users flap
(idle after a few minutes away, back on a key press, a phone reconnecting at every cell
handover), so raw broadcast costs changes x members for every guild they share. ``Coalescer``
holds changes per guild and emits at most one batched ``GuildUpdate`` per guild per
``interval``, netting each user over that window: online -> idle -> online sends nothing.
Guilds above ``large_guild_threshold`` members are lazy: their updates say ``large`` and
gateways pass each listed user only to the sessions that watch that user (GUILD_SUBSCRIPTIONS,
``gateway/lazy.py``), so everyone who changed is listed, offline included — a watcher must
see a watched user leave. ``enabled=False`` is raw
broadcast: every change goes out at once as its own update, so both can be measured on the same
input through ``CoalescerStats``.

The pending window is serialisable (``to_dict``): persist it together with ``PresenceState``,
or a restart would drop changes that were applied to the state but never sent.

Typing (``TypingThrottle``) is throttled per (user, channel) and never persisted: losing it
costs at most one extra TYPING_START.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from presence.state import PresenceChange, StatusChange, VoiceChange


@dataclass(frozen=True)
class GuildUpdate:
    """One batched presence dispatch for one guild.

    ``went_offline`` counts users whose visible status became offline; ``online_delta`` is the net change in online-ish users carried by this update;
    ``online_count``/``member_count`` are the totals at flush time when known."""

    guild_id: int
    presences: tuple[StatusChange, ...] = ()
    voice: tuple[VoiceChange, ...] = ()
    large: bool = False
    went_offline: int = 0
    online_delta: int = 0
    online_count: int | None = None
    member_count: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The payload gateways dispatch: receivers need only the new state of each user."""
        return {
            "guild_id": self.guild_id,
            "presences": [
                {"user_id": c.user_id, "status": c.new_visible, "client_status": c.client_status}
                for c in self.presences
            ],
            "voice": [{"user_id": v.user_id, "channel_id": v.new_channel_id} for v in self.voice],
            "large": self.large,
            "went_offline": self.went_offline,
            "online_delta": self.online_delta,
            "online_count": self.online_count,
            "member_count": self.member_count,
        }


@dataclass
class CoalescerStats:
    """Cost counters. ``raw_deliveries`` is what raw broadcast would have cost for the same
    input; it is counted in both modes, so one run shows the saving."""

    changes_in: int = 0  # (change, guild) pairs submitted
    updates_out: int = 0  # GuildUpdates emitted
    entries_out: int = 0  # presence + voice entries across those updates
    deliveries_out: int = 0  # sum of recipients(guild) over emitted updates
    raw_deliveries: int = 0  # sum of recipients(guild) over changes_in
    net_zero: int = 0  # per-user entries dropped because they flapped back

    @property
    def amplification(self) -> float:
        """Deliveries per raw change: about the recipients per guild when raw, far less when
        coalesced."""
        return self.deliveries_out / self.changes_in if self.changes_in else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "amplification": self.amplification}


def _is_on(status: str) -> bool:
    return status != "offline"


class Coalescer:
    """Per-guild batching of ``PresenceChange``s.

    Parameters (keyword-only):
    - ``interval``: seconds between two updates of one guild; the first change in a quiet
      guild goes out at the next ``flush`` (leading edge), later ones wait for the window.
    - ``large_guild_threshold``: member count above which a guild gets the reduced payload.
    - ``large_interval``: window for large guilds (default ``interval``): they cost the most
      per update, so a longer window is the cheapest lever.
    - ``enabled``: False is raw broadcast, for comparison.
    - ``recipients(guild_id)``: deliveries one update costs (gateways holding members, or
      online members); only counted, never used to route.
    - ``member_count(guild_id)`` and ``online_count(guild_id)``: totals the caller keeps.
      ``member_count`` must know every guild of ``pending_guilds()`` when ``flush`` runs: it
      decides ``large`` and the window, and is sent as ``member_count``.
    """

    def __init__(
        self,
        *,
        interval: float = 1.0,
        large_guild_threshold: int = 1000,
        large_interval: float | None = None,
        enabled: bool = True,
        recipients: Callable[[int], int] = lambda guild_id: 1,
        member_count: Callable[[int], int] = lambda guild_id: 0,
        online_count: Callable[[int], int] | None = None,
    ) -> None:
        self.interval = interval
        self.large_guild_threshold = large_guild_threshold
        self.large_interval = interval if large_interval is None else large_interval
        self.enabled = enabled
        self.recipients = recipients
        self.member_count = member_count
        self.online_count = online_count
        self.stats = CoalescerStats()
        self._status: dict[int, dict[int, StatusChange]] = {}  # guild -> user -> merged change
        self._voice: dict[int, dict[int, VoiceChange]] = {}
        self._last_emit: dict[int, float] = {}

    def submit(
        self, changes: Iterable[PresenceChange], guilds_of: Callable[[int], Iterable[int]]
    ) -> list[GuildUpdate]:
        """Queue changes for every guild they concern: a status change for each guild of the
        user (``guilds_of(user_id)``), a voice change for its own guild. Returns updates only
        in raw mode (at once, so ``member_count`` must know those guilds already); coalesced
        updates come from ``flush``."""
        out: list[GuildUpdate] = []
        for change in changes:
            if isinstance(change, VoiceChange):
                guilds: Iterable[int] = (change.guild_id,)
                statuses: list[StatusChange] = []
                voices = [change]
            else:
                guilds = guilds_of(change.user_id)
                statuses, voices = [change], []
            for guild_id in guilds:
                cost = self.recipients(guild_id)
                self.stats.changes_in += 1
                self.stats.raw_deliveries += cost
                if self.enabled:
                    self._merge(guild_id, change)
                else:  # the same payload as a coalesced update of one change (counts, large)
                    out.append(self._build(guild_id, statuses, voices))
                    self._count(out[-1], cost)
        return out

    def flush(self, now: float) -> list[GuildUpdate]:
        """Emit one update for each guild whose window has passed and whose changes did not all
        cancel out. Call it once per tick; ``next_flush_at`` says when it is next useful."""
        out: list[GuildUpdate] = []
        for guild_id in sorted(self._status.keys() | self._voice.keys()):
            if now < self._last_emit.get(guild_id, -math.inf) + self._window(guild_id):
                continue
            pending = self._status.pop(guild_id, {}).values()
            statuses = [
                c
                for c in pending
                if (c.old_visible, c.old_client_status) != (c.new_visible, c.client_status)
            ]
            voices = [
                v
                for v in self._voice.pop(guild_id, {}).values()
                if v.old_channel_id != v.new_channel_id
            ]
            self.stats.net_zero += len(pending) - len(statuses)
            if not statuses and not voices:
                continue
            update = self._build(guild_id, statuses, voices)
            self._last_emit[guild_id] = now
            self._count(update, self.recipients(guild_id))
            out.append(update)
        longest = max(self.interval, self.large_interval)
        for guild_id in [g for g, t in self._last_emit.items() if now - t >= longest]:
            del self._last_emit[guild_id]  # due anyway: forget, so memory follows active guilds
        return out

    def pending_guilds(self) -> set[int]:
        """Guilds with changes waiting for their window: the next ``flush`` may ask
        ``member_count`` for any of them, so a caller with a cache fills it for these first."""
        return self._status.keys() | self._voice.keys()

    def next_flush_at(self) -> float | None:
        """Earliest time a ``flush`` could emit something, or None when nothing is pending."""
        pending = self._status.keys() | self._voice.keys()
        times = [self._last_emit.get(g, -math.inf) + self._window(g) for g in pending]
        return min(times, default=None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able pending window (stats are process metrics and are not kept)."""
        return {
            "version": 1,
            "status": [[g, [asdict(c) for c in p.values()]] for g, p in self._status.items()],
            "voice": [[g, [asdict(v) for v in p.values()]] for g, p in self._voice.items()],
            "last_emit": [[g, t] for g, t in self._last_emit.items()],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], **options: Any) -> Coalescer:
        """Restore a pending window; ``options`` are the constructor's (callables don't persist)."""
        if data.get("version") != 1:
            raise ValueError(f"unsupported coalescer snapshot version {data.get('version')!r}")
        coalescer = cls(**options)
        for guild_id, changes in data["status"]:
            coalescer._status[guild_id] = {c["user_id"]: StatusChange(**c) for c in changes}
        for guild_id, changes in data["voice"]:
            coalescer._voice[guild_id] = {v["user_id"]: VoiceChange(**v) for v in changes}
        coalescer._last_emit = {guild_id: t for guild_id, t in data["last_emit"]}
        return coalescer

    def _window(self, guild_id: int) -> float:
        return self.large_interval if self._is_large(guild_id) else self.interval

    def _is_large(self, guild_id: int) -> bool:
        return self.member_count(guild_id) > self.large_guild_threshold

    def _merge(self, guild_id: int, change: PresenceChange) -> None:
        # Keep the first "old" and the latest "new": the window's net effect per user.
        if isinstance(change, VoiceChange):
            voice = self._voice.setdefault(guild_id, {})
            first = voice.get(change.user_id)
            voice[change.user_id] = (
                change if first is None else replace(change, old_channel_id=first.old_channel_id)
            )
        else:
            status = self._status.setdefault(guild_id, {})
            first_s = status.get(change.user_id)
            status[change.user_id] = (
                change
                if first_s is None
                else replace(
                    change,
                    old_visible=first_s.old_visible,
                    old_client_status=first_s.old_client_status,
                )
            )

    def _build(
        self, guild_id: int, statuses: list[StatusChange], voices: list[VoiceChange]
    ) -> GuildUpdate:
        went_offline = sum(
            1 for c in statuses if _is_on(c.old_visible) and not _is_on(c.new_visible)
        )
        came_online = sum(
            1 for c in statuses if not _is_on(c.old_visible) and _is_on(c.new_visible)
        )
        members = self.member_count(guild_id)
        large = members > self.large_guild_threshold  # lazy: gateways filter per watcher
        return GuildUpdate(
            guild_id,
            tuple(statuses),
            tuple(voices),
            large,
            went_offline,
            came_online - went_offline,
            self.online_count(guild_id) if self.online_count else None,
            members,
        )

    def _count(self, update: GuildUpdate, cost: int) -> None:
        self.stats.updates_out += 1
        self.stats.entries_out += len(update.presences) + len(update.voice)
        self.stats.deliveries_out += cost


class TypingThrottle:
    """At most one TYPING_START per (user, channel) per ``window`` seconds.

    Clients repeat "typing" every few seconds while keys are pressed, and an indicator on other
    screens lasts ``ttl`` seconds by itself (there is no TYPING_STOP, as in Discord), so
    forwarding more than one per window only adds deliveries nobody can see.
    """

    def __init__(self, *, window: float = 10.0, ttl: float = 10.0) -> None:
        self.window = window
        self.ttl = ttl
        self.received = 0
        self.emitted = 0
        self._last: dict[int, dict[int, float]] = {}  # channel -> user -> time of last emit

    def typing(self, user_id: int, channel_id: int, now: float) -> bool:
        """Record a typing signal; True when a TYPING_START should be dispatched."""
        self.received += 1
        users = self._last.setdefault(channel_id, {})
        last = users.get(user_id)
        if last is not None and now - last < self.window:
            return False
        users[user_id] = now
        self.emitted += 1
        return True

    def stop(self, user_id: int, channel_id: int) -> None:
        """The user sent the message: clients clear the indicator, and the next keystroke
        should show it again at once instead of waiting out the window."""
        self._last.get(channel_id, {}).pop(user_id, None)

    def typing_in(self, channel_id: int, now: float) -> list[int]:
        """Users whose indicator is still showing in a channel (e.g. for a client joining it)."""
        users = self._last.get(channel_id, {})
        return sorted(u for u, t in users.items() if now - t < self.ttl)

    def expire(self, now: float) -> int:
        """Forget entries that neither show nor throttle any more; returns how many."""
        horizon = max(self.window, self.ttl)
        dropped = 0
        for channel_id in list(self._last):
            users = self._last[channel_id]
            for user_id in [u for u, t in users.items() if now - t >= horizon]:
                del users[user_id]
                dropped += 1
            if not users:
                del self._last[channel_id]
        return dropped
