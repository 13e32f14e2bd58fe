"""Simulated communities: who is in a guild and how they behave, generated from one seed.

A ``seeds/NAME.toml`` behaviour file (see ``seeds/study-group.toml`` for a commented example)
says how many members a community has, what share is online, which devices they use, its
channels and how messages spread over them, how fast people chat and how skewed that is (a few
talkative members, many lurkers), how often statuses change (presence churn), how often
connections drop and how clients come back, and optionally an *arrival* (members connecting
within a few seconds, as when a streamer goes live) followed by a chat *burst*.

``generate(spec)`` turns that into a ``SimCommunity``: a ``guilds.community.Community`` (the
structure the control plane loads with ``community.apply``) plus one ``SimMember`` per member
(online or not, device, how much they talk, when they arrive) and the schedules a scenario
replays (messages, status changes, drops). Everything comes from ``random.Random(seed)``, so a
seed gives the same members, the same talkers and the same messages at the same offsets on
every machine; the schedules take their own seed so a scenario can vary them independently.

This module is pure: no I/O beyond reading the TOML file, no clock.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from guilds import community

SEEDS = community.SEEDS
DEVICES = ("desktop", "mobile", "web")
STATUSES = ("online", "idle", "dnd", "invisible")
WORDS = (
    "gg wp lol nice one anyone up for a round tonight? that boss fight was brutal did you see "
    "the patch notes queue is long again who is streaming later thanks for the help my build "
    "finally works the exam is on friday can someone explain question three again let's meet "
    "in voice at eight pog hype clip that"
).split()


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MembersSpec(_Spec):
    count: int = Field(ge=2, description="members of the guild, owner included")
    online: float = Field(gt=0, le=1, description="share of members online during a run")
    devices: dict[Literal["desktop", "mobile", "web"], float] = Field(
        default_factory=lambda: {"desktop": 1.0},  # type: ignore[arg-type]
        description="share of each device",
    )


class ChannelSpec(_Spec):
    name: str
    share: float = Field(default=1.0, gt=0, description="relative share of the messages")


class ChatSpec(_Spec):
    messages_per_minute: float = Field(ge=0, description="whole community, steady state")
    talkers: float = Field(
        gt=0, le=1, description="share of online members who post at all; the rest lurk"
    )
    skew: float = Field(
        default=1.0,
        ge=0,
        description="Zipf exponent: the k-th talker posts in proportion to 1/k^skew",
    )
    words: tuple[int, int] = (2, 16)


class PresenceSpec(_Spec):
    changes_per_hour: float = Field(
        default=2.0, ge=0, description="status changes per online member per hour"
    )
    statuses: dict[Literal["online", "idle", "dnd", "invisible"], float] = Field(
        default_factory=lambda: {"online": 0.5, "idle": 0.4, "dnd": 0.1}  # type: ignore[arg-type]
    )
    storm_seconds: float = Field(
        default=2.0,
        gt=0,
        description="presence-storm scenario: every online member changes status within this window",
    )


class ReconnectSpec(_Spec):
    drops_per_hour: float = Field(
        default=0.5,
        ge=0,
        description="connection drops per online member per hour (flaky networks)",
    )
    resume: float = Field(
        default=0.95,
        ge=0,
        le=1,
        description="share of drops that RESUME; the rest start a new session",
    )
    delay_s: tuple[float, float] = Field(
        default=(0.1, 2.0),
        description="a dropped client reconnects after a uniform delay in this range",
    )
    storm_share: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="reconnect-storm scenario: share of clients that drop at once",
    )


class ArrivalSpec(_Spec):
    seconds: float = Field(gt=0, description="the online members arrive within this many seconds")
    already_online: float = Field(
        default=0.02,
        ge=0,
        le=1,
        description="share of the online members connected before the arrival",
    )


class BurstSpec(_Spec):
    at_s: float = Field(ge=0, description="seconds after the arrival starts")
    seconds: float = Field(gt=0)
    messages_per_minute: float = Field(gt=0)
    talkers: float = Field(gt=0, le=1, description="share of online members who post in the burst")


class BehaviourSpec(_Spec):
    """One ``seeds/NAME.toml`` behaviour file."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,30}$")
    seed: int
    description: str = ""
    members: MembersSpec
    channels: list[ChannelSpec] = Field(min_length=1, max_length=64)
    chat: ChatSpec
    presence: PresenceSpec = PresenceSpec()
    reconnect: ReconnectSpec = ReconnectSpec()
    arrival: ArrivalSpec | None = None
    burst: BurstSpec | None = None

    @model_validator(mode="after")
    def _check(self) -> BehaviourSpec:
        if len({c.name for c in self.channels}) != len(self.channels):
            raise ValueError("channel names must be unique")
        if not self.members.devices or min(self.members.devices.values()) < 0:
            raise ValueError("members.devices needs at least one non-negative share")
        return self


@dataclass(frozen=True, slots=True)
class SimMember:
    index: int  # position in the sorted member list; the load generator's client id
    username: str
    online: bool
    device: str
    talk_weight: float  # 0 for lurkers
    arrive_at: float | None  # seconds into the arrival, None: online before it (or offline)


@dataclass(frozen=True, slots=True)
class ScheduledMessage:
    at: float  # seconds after the run starts
    sender: int  # member index
    channel: int  # index into the community's channels
    content: str


@dataclass(frozen=True, slots=True)
class ScheduledStatus:
    at: float
    member: int
    status: str


@dataclass(frozen=True, slots=True)
class ScheduledDrop:
    at: float
    member: int
    resume: bool  # True: reconnect and RESUME; False: a fresh session (IDENTIFY + history)
    delay: float  # seconds offline before reconnecting


class SimCommunity:
    """A generated community: the structure to load plus every member's behaviour."""

    def __init__(self, spec: BehaviourSpec, members: list[SimMember]) -> None:
        self.spec = spec
        self.members = members
        self.channel_names = [c.name for c in spec.channels]
        self.owner = members[0].username
        channels: list[str | community.ChannelSpec] = list(self.channel_names)
        self.community = community.Community(
            name=spec.name,
            guilds=[
                community.GuildSpec(
                    name=spec.name,
                    owner=self.owner,
                    channels=channels,
                    members=[m.username for m in members],
                )
            ],
        )

    @property
    def online(self) -> list[SimMember]:
        return [m for m in self.members if m.online]

    def talkers(self, *, arrived_by: float | None = None) -> list[SimMember]:
        return [
            m
            for m in self.members
            if m.online
            and m.talk_weight > 0
            and (arrived_by is None or m.arrive_at is None or m.arrive_at <= arrived_by)
        ]

    def summary(self) -> dict[str, object]:
        online = self.online
        devices: dict[str, int] = {}
        for m in online:
            devices[m.device] = devices.get(m.device, 0) + 1
        talkers = self.talkers()
        weights = sorted((m.talk_weight for m in talkers), reverse=True)
        top = max(1, len(weights) // 10)
        return {
            "name": self.spec.name,
            "seed": self.spec.seed,
            "members": len(self.members),
            "online": len(online),
            "devices_online": devices,
            "channels": self.channel_names,
            "talkers": len(talkers),
            "lurkers_online": len(online) - len(talkers),
            "top_10pct_talkers_share": round(sum(weights[:top]) / max(1e-9, sum(weights)), 3),
            "messages_per_minute": self.spec.chat.messages_per_minute,
            "arrival_s": self.spec.arrival.seconds if self.spec.arrival else 0,
        }

    # ---- schedules -------------------------------------------------------------------------

    def messages(
        self,
        *,
        start: float,
        seconds: float,
        per_second: float,
        seed: int,
        senders: list[tuple[SimMember, float]] | None = None,
        channel: int | None = None,
    ) -> list[ScheduledMessage]:
        """Messages at a fixed total rate (one every 1/per_second s) from ``start``; each sender
        drawn by weight (talk weight by default: the skew), each channel by its share, unless
        ``channel`` is fixed."""
        if per_second <= 0 or seconds <= 0:
            return []
        rng = random.Random(seed)
        if senders is None:
            senders = [(m, m.talk_weight) for m in self.talkers()]
        if not senders:
            return []
        cum = list(itertools.accumulate(w for _, w in senders))
        shares = list(itertools.accumulate(c.share for c in self.spec.channels))
        lo, hi = self.spec.chat.words
        out = []
        count = int(math.floor(seconds * per_second + 1e-9))
        for k in range(count):
            who = senders[bisect.bisect_left(cum, rng.random() * cum[-1])][0]
            where = (
                channel
                if channel is not None
                else bisect.bisect_left(shares, rng.random() * shares[-1])
            )
            words = rng.choices(WORDS, k=rng.randint(lo, hi))
            out.append(ScheduledMessage(start + k / per_second, who.index, where, " ".join(words)))
        return out

    def burst_senders(self, *, seed: int) -> list[tuple[SimMember, float]]:
        """Who posts in the burst: ``burst.talkers`` of the online members, Zipf-weighted with
        the community's skew (the steady talkers first: they are the loudest)."""
        if self.spec.burst is None:
            return []
        rng = random.Random(seed)
        steady = sorted(self.talkers(), key=lambda m: -m.talk_weight)
        rest = [m for m in self.online if m.talk_weight == 0]
        rng.shuffle(rest)
        ranked = steady + rest
        n = max(1, round(len(self.online) * self.spec.burst.talkers))
        return [(m, 1.0 / (k + 1) ** self.spec.chat.skew) for k, m in enumerate(ranked[:n])]

    def status_churn(
        self, *, start: float, seconds: float, per_member_hour: float, seed: int
    ) -> list[ScheduledStatus]:
        """Poisson status changes of online members (each to a status other than the last)."""
        rng = random.Random(seed)
        rate = per_member_hour / 3600 * len(self.online)
        return _poisson(
            rng,
            start,
            seconds,
            rate,
            lambda at: self._status_change(rng, at, rng.choice(self.online).index),
        )

    def status_storm(self, *, start: float, seed: int) -> list[ScheduledStatus]:
        """Every online member changes status once within ``presence.storm_seconds``."""
        rng = random.Random(seed)
        window = self.spec.presence.storm_seconds
        out = [
            self._status_change(rng, start + rng.random() * window, m.index) for m in self.online
        ]
        return sorted(out, key=lambda s: s.at)

    def _status_change(self, rng: random.Random, at: float, member: int) -> ScheduledStatus:
        choices = {k: v for k, v in self.spec.presence.statuses.items() if k != "online"}
        choices = choices or {"idle": 1.0}
        status = rng.choices(list(choices), weights=list(choices.values()))[0]
        return ScheduledStatus(at, member, status)

    def drops(
        self, *, start: float, seconds: float, per_member_hour: float, seed: int
    ) -> list[ScheduledDrop]:
        """Poisson connection drops of online members (flaky networks)."""
        rng = random.Random(seed)
        rate = per_member_hour / 3600 * len(self.online)
        return _poisson(
            rng, start, seconds, rate, lambda at: self._drop(rng, at, rng.choice(self.online).index)
        )

    def drop_storm(self, *, at: float, seed: int) -> list[ScheduledDrop]:
        """``reconnect.storm_share`` of the online members drop at the same instant."""
        rng = random.Random(seed)
        online = self.online
        chosen = rng.sample(online, max(1, round(len(online) * self.spec.reconnect.storm_share)))
        return [self._drop(rng, at, m.index) for m in sorted(chosen, key=lambda m: m.index)]

    def _drop(self, rng: random.Random, at: float, member: int) -> ScheduledDrop:
        lo, hi = self.spec.reconnect.delay_s
        return ScheduledDrop(
            at, member, rng.random() < self.spec.reconnect.resume, lo + rng.random() * (hi - lo)
        )


def _poisson(rng: random.Random, start: float, seconds: float, rate: float, make):  # noqa: ANN001, ANN202
    out: list = []
    if rate <= 0:
        return out
    at = start + rng.expovariate(rate)
    while at < start + seconds:
        out.append(make(at))
        at += rng.expovariate(rate)
    return out


def generate(spec: BehaviourSpec, *, online: int | None = None) -> SimCommunity:
    """Members and their behaviour from ``spec.seed``; ``online`` overrides the online count."""
    rng = random.Random(spec.seed)
    count = spec.members.count
    width = max(5, len(str(count - 1)))
    names = [f"{spec.name}-{i:0{width}d}" for i in range(count)]
    n_online = online if online is not None else round(count * spec.members.online)
    n_online = max(1, min(count, n_online))
    # The owner (index 0) is always online: the celebrity, the streamer, the group's organiser.
    online_set = {0, *rng.sample(range(1, count), n_online - 1)}
    order = sorted(online_set)
    rng.shuffle(order)
    n_talkers = max(1, round(len(order) * spec.chat.talkers))
    talk = {idx: 1.0 / (rank + 1) ** spec.chat.skew for rank, idx in enumerate(order[:n_talkers])}
    devices = list(spec.members.devices)
    weights = list(spec.members.devices.values())
    arrive: dict[int, float] = {}
    if spec.arrival is not None:
        # Everyone who talks in the steady state plus a share of the rest are there already
        # (the streamer, the moderators, the regulars); the others arrive.
        early = max(1, round(len(order) * spec.arrival.already_online))
        late = [i for i in order if i != 0][early - 1 :]
        for idx in late:
            arrive[idx] = rng.random() * spec.arrival.seconds
    members = []
    for i, name in enumerate(names):
        is_online = i in online_set
        members.append(
            SimMember(
                index=i,
                username=name,
                online=is_online,
                device=rng.choices(devices, weights=weights)[0] if is_online else "desktop",
                talk_weight=talk.get(i, 0.0),
                arrive_at=arrive.get(i),
            )
        )
    return SimCommunity(spec, members)


def load_spec(name_or_path: str | Path) -> BehaviourSpec:
    """A behaviour file by path, or by name in ``seeds/`` (``gaming-50k``)."""
    path = Path(name_or_path)
    if not path.exists():
        path = SEEDS / f"{name_or_path}.toml"
    if not path.exists():
        known = sorted(p.stem for p in SEEDS.glob("*.toml") if _is_behaviour(p))
        raise FileNotFoundError(f"no community {name_or_path!r}; known: {', '.join(known)}")
    with open(path, "rb") as f:
        return BehaviourSpec.model_validate(tomllib.load(f))


def load(name_or_path: str | Path, *, online: int | None = None) -> SimCommunity:
    return generate(load_spec(name_or_path), online=online)


def _is_behaviour(path: Path) -> bool:
    with open(path, "rb") as f:
        return "members" in tomllib.load(f)
