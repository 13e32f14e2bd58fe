"""Scenarios: what a load test does with a simulated community, as a plan made up front.

A plan is the whole run, decided before any socket opens: which members connect (before the
run, or at given offsets into it), who sends which message when, who changes status when, who
drops and comes back how, and which fault hits when. Making it up front from the community's
seed keeps runs repeatable and keeps the generator processes dumb: each replays its share.

Scenarios (``SCENARIOS``):

- ``steady``: the community's everyday behaviour — chat at its rate and skew, presence churn,
  connection drops with RESUME (or a new session and history).
- ``celebrity``: the owner posts in the first channel every few seconds and nothing else
  happens: fan-out to every online member, time to the last delivery.
- ``connect-storm``: the online members connect within the community's arrival window (or as
  fast as ``--rate`` connections/s, or all at once); with a ``[burst]`` the chat bursts after it
  (a streamer going live).
- ``presence-storm``: every online member changes status within ``presence.storm_seconds``,
  then everyone comes back online; a few observers measure how fast others see it; chat goes
  on at the steady rate.
- ``reconnect-storm``: ``reconnect.storm_share`` of the clients drop at once mid-chat and come
  back (RESUME, or a new session and history for the ``1 - resume`` share).
- ``kill-worker``, ``kill-gateway``, ``pause-redis``, ``pause-cassandra``: steady chat, and the
  fault at ``--fault-at`` (default a third of the run); what was lost must be nothing
  acknowledged.
- ``voice``: not a chat plan; ``loadtest/voice.py`` runs it (speakers, listeners, impairment).
- ``spam-raid``: not a plan of this module: ``loadtest/raid.py`` runs it (accounts are created
  during the run, so the schedule cannot be made up front).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loadtest.communities import ScheduledMessage, SimCommunity

SCENARIOS: dict[str, str] = {
    "steady": "everyday chat: the community's rate and skew, presence churn, dropped connections",
    "celebrity": "the owner posts to the whole guild every few seconds: time to last delivery",
    "connect-storm": "the online members connect within seconds (then the chat burst, if any)",
    "presence-storm": "every online member changes status within seconds, then comes back",
    "reconnect-storm": "a share of the clients drop at once mid-chat and reconnect",
    "kill-worker": "steady chat; one worker is SIGKILLed mid-run",
    "kill-gateway": "steady chat; one gateway is SIGKILLed mid-run (its clients move)",
    "pause-redis": "steady chat; Valkey is SIGSTOPped for --pause seconds mid-run",
    "pause-cassandra": "steady chat; the Cassandra node (--storage-url cassandra://...) is SIGSTOPped for --pause seconds",
    "voice": "N speakers, M listeners in one voice channel through the relay; impaired senders "
    "(--loss, --jitter, --burst, --bandwidth); no --community needed (loadtest/voice.py)",
    "spam-raid": "bot accounts created, joined and spamming among members (SPAM_DETECT on): time to action",
}
FAULTS = {"kill-worker", "kill-gateway", "pause-redis", "pause-cassandra"}
DEFAULT_DURATION = {
    "steady": 30.0,
    "celebrity": 20.0,
    "connect-storm": 20.0,
    "presence-storm": 15.0,
    "reconnect-storm": 20.0,
    "kill-worker": 30.0,
    "kill-gateway": 30.0,
    "pause-redis": 30.0,
    "pause-cassandra": 30.0,
    "voice": 20.0,
    "spam-raid": 40.0,
}


@dataclass
class Options:
    """What the command line decides about a plan (see ``chatscale loadtest --help``)."""

    scenario: str
    duration: float | None = None
    rate: float | None = None  # messages/s (connect-storm: connections/s)
    seed: int | None = None  # schedule seed; default: the community's
    fault_at: float | None = None
    pause_s: float = 5.0
    observers: int = 6


@dataclass
class Plan:
    scenario: str
    duration: float
    online: list[int]  # member indices that take part
    connect_at: dict[int, float]  # member index -> offset; absent: connected before the run
    sends: list[ScheduledMessage] = field(default_factory=list)
    statuses: list[tuple[float, int, str]] = field(default_factory=list)
    drops: list[tuple[float, int, bool, float]] = field(default_factory=list)
    observers: set[int] = field(default_factory=set)
    fault: tuple[str, float, float] | None = None  # kind, at, seconds
    notes: list[str] = field(default_factory=list)

    def offered(self) -> dict[str, Any]:
        span = self.duration
        storm = sorted(self.connect_at.values())
        return {
            "messages": len(self.sends),
            "messages_per_s": round(len(self.sends) / span, 2) if span else 0,
            "connections_before_run": len(self.online) - len(self.connect_at),
            "connections_during_run": len(storm),
            "connections_per_s": (
                round(len(storm) / max(storm[-1] - storm[0], 1e-3), 1) if len(storm) > 1 else None
            ),
            "status_changes": len(self.statuses),
            "drops": len(self.drops),
            "fault": list(self.fault) if self.fault else None,
        }


def build(opts: Options, sim: SimCommunity) -> Plan:
    if opts.scenario == "spam-raid":
        raise ValueError("spam-raid is run by loadtest.raid, not planned here")
    if opts.scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {opts.scenario!r}; one of {', '.join(SCENARIOS)}")
    spec = sim.spec
    seed = spec.seed if opts.seed is None else opts.seed
    duration = opts.duration or DEFAULT_DURATION[opts.scenario]
    online = [m.index for m in sim.online]
    steady_rate = opts.rate if opts.rate is not None else spec.chat.messages_per_minute / 60
    plan = Plan(opts.scenario, duration, online, {})

    def chat(rate: float = steady_rate) -> list[ScheduledMessage]:
        return sim.messages(start=0.0, seconds=duration, per_second=rate, seed=seed + 1)

    def observers() -> set[int]:
        step = max(1, len(online) // max(1, opts.observers))
        return set(online[::step][: opts.observers])

    if opts.scenario == "steady":
        plan.sends = chat()
        plan.statuses = [
            (s.at, s.member, s.status)
            for s in sim.status_churn(
                start=0.0,
                seconds=duration,
                per_member_hour=spec.presence.changes_per_hour,
                seed=seed + 2,
            )
        ]
        plan.drops = [
            (d.at, d.member, d.resume, d.delay)
            for d in sim.drops(
                start=0.0,
                seconds=duration,
                per_member_hour=spec.reconnect.drops_per_hour,
                seed=seed + 3,
            )
        ]
        plan.observers = observers()
    elif opts.scenario == "celebrity":
        owner = sim.members[0]
        rate = opts.rate if opts.rate is not None else 0.5
        plan.sends = sim.messages(
            start=0.0,
            seconds=duration,
            per_second=rate,
            seed=seed + 1,
            senders=[(owner, 1.0)],
            channel=0,
        )
        plan.notes.append(
            f"{owner.username} posts in #{sim.channel_names[0]} {rate:g} times a second"
        )
    elif opts.scenario == "connect-storm":
        arrivals = {m.index: m.arrive_at for m in sim.online if m.arrive_at is not None}
        if not arrivals:  # no arrival in the file: everyone but the owner arrives now
            arrivals = {i: 0.0 for i in online if i != 0}
        if opts.rate:  # a fixed connection rate instead of the file's arrival
            plan.connect_at = {i: k / opts.rate for k, i in enumerate(sorted(arrivals))}
        else:
            plan.connect_at = dict(arrivals)
        last = max(plan.connect_at.values(), default=0.0)
        plan.sends = sim.messages(
            start=0.0,
            seconds=duration,
            per_second=spec.chat.messages_per_minute / 60,
            seed=seed + 1,
        )
        if spec.burst is not None:
            b = spec.burst
            plan.sends += sim.messages(
                start=b.at_s,
                seconds=min(b.seconds, max(0.0, duration - b.at_s)),
                per_second=b.messages_per_minute / 60,
                seed=seed + 4,
                senders=sim.burst_senders(seed=seed + 5),
            )
            plan.sends.sort(key=lambda m: m.at)
            plan.notes.append(
                f"chat burst at {b.at_s:g}s for {b.seconds:g}s at {b.messages_per_minute / 60:g} msg/s"
            )
        plan.notes.append(f"{len(plan.connect_at)} clients connect within {last:.1f}s")
    elif opts.scenario == "presence-storm":
        window = spec.presence.storm_seconds
        first = sim.status_storm(start=1.0, seed=seed + 2)
        back = [(1.0 + window + 2.0 + (s.at - 1.0), s.member, "online") for s in first]
        plan.statuses = sorted([(s.at, s.member, s.status) for s in first] + back)
        plan.sends = chat()
        plan.observers = observers()
        plan.notes.append(
            f"{len(first)} status changes within {window:g}s at 1s, everyone back online from {3 + window:g}s"
        )
    elif opts.scenario == "reconnect-storm":
        at = opts.fault_at if opts.fault_at is not None else duration / 3
        plan.sends = chat()
        plan.drops = [
            (d.at, d.member, d.resume, d.delay) for d in sim.drop_storm(at=at, seed=seed + 3)
        ]
        resumes = sum(d[2] for d in plan.drops)
        plan.notes.append(
            f"{len(plan.drops)} clients drop at {at:g}s: {resumes} RESUME, {len(plan.drops) - resumes} start a new session"
        )
    else:  # faults
        at = opts.fault_at if opts.fault_at is not None else duration / 3
        plan.sends = chat()
        plan.fault = (opts.scenario, at, opts.pause_s)
    return plan
