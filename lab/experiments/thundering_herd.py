"""A streamer goes live (claim 4): a thundering herd of viewers, then a burst of chat.

``V`` viewers of one guild arrive within a short window (full: 3,000 in 10 s, as
``seeds/streamer-live.toml``), and as the last ones arrive the stream starts and chat bursts.
The clients are the load tester's (``loadtest.engine`` running its ``connect-storm`` scenario:
lean sans-I/O clients that retry a failed connection attempt with jittered exponential
backoff, 0.25 s doubling to 5 s, × 0.5–1.5, at most 8 attempts) against the lab's topology of
one gateway, one worker and the presence service.

Arms:

- ``unmitigated``: the gateway without its herd mitigations (``CHATSCALE_STORM_MITIGATIONS=off``);
  every viewer is let in as fast as it can IDENTIFY.
- ``capped``: the only admission control the gateway has today, a hard connection cap:
  ``CHATSCALE_MAX_CONNECTIONS`` set to ``cap_share`` of the viewers. Connections above it are
  closed 4014 GATEWAY_FULL before HELLO and the clients back off and retry; nobody leaves during
  the run, so the viewers above the cap are *shed*, not queued. It is load shedding by a fixed
  cap — not a rate- or queue-based admission controller.
- ``mitigated``: ``CHATSCALE_STORM_MITIGATIONS=on`` (the default): IDENTIFY admission
  (``IDENTIFY_CONCURRENCY`` at once, ``IDENTIFY_QUEUE`` waiting, beyond that ERROR
  ``GATEWAY_BUSY`` with ``retry_after`` and close 4017, which the clients honour with jitter),
  transient IDENTIFY timeouts answered 4017 instead of 4000, a degrade mode that sheds presence
  and typing while the loop lags, liveness renewed off the event loop. Lazy guild loading in
  READY is another change (its own knob, ``LARGE_GUILD_THRESHOLD``), in force in every arm that
  has it.

Metrics: READY latency p50/p99 of the viewers who got in (retries included), viewers who never
reached READY, failed connection attempts by close code (4014 and the rest), closes after
READY, chat delivery p99 during the burst (the only chat of the run), deliveries lost, presence
bytes received and the servers' CPU during the run.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from lab import harness
from lab.experiment import (
    Arm,
    Experiment,
    Measurement,
    Metric,
    Outcome,
    fmt,
)
from loadtest import engine


class StartedTopology:
    """A topology the lab already started, handed to the load engine, which must neither start
    nor stop it (the lab's ``Trial.topology()`` does both)."""

    def __init__(self, topo: Any) -> None:
        self.topo = topo
        self.kind = topo.kind
        self.timed_events: list[tuple[float, str]] = topo.timed_events

    @property
    def settings(self) -> Any:
        return self.topo.settings

    @property
    def urls(self) -> list[str]:
        return self.topo.urls

    async def start(self, say: Any = print) -> None:
        return None

    async def stop(self) -> None:
        return None

    def processes(self) -> dict[str, Any]:
        return self.topo.processes()


def community_file(p: dict[str, Any], folder: Path) -> Path:
    """The herd as a load-test behaviour file (``docs/communities.md``): no chat before the
    stream starts, so every delivery measured is one of the burst."""
    viewers = p["viewers"]
    members = max(viewers + 1, round(viewers * p["members_per_viewer"]))
    text = f"""\
name = "herd"
seed = {p.get("seed", 20260404)}
description = "{viewers} viewers arrive within {p["arrival_s"]:g} s, then chat bursts"

[members]
count = {members}
online = {viewers / members:.6f}
devices = {{ desktop = 0.35, mobile = 0.5, web = 0.15 }}

[[channels]]
name = "stream-chat"
share = 0.85
[[channels]]
name = "clips"
share = 0.15

[chat]
messages_per_minute = 0
talkers = 0.02
skew = 1.1
words = [1, 8]

[presence]
changes_per_hour = 0

[reconnect]
drops_per_hour = 0

[arrival]
seconds = {p["arrival_s"]:g}
already_online = {p["already_online"]:g}

[burst]
at_s = {p["burst_at_s"]:g}
seconds = {p["burst_s"]:g}
messages_per_minute = {p["burst_per_s"] * 60:g}
talkers = 0.2
"""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "herd.toml"
    path.write_text(text)
    return path


def _count(codes: dict[str, int], prefix: str) -> int:
    return sum(n for label, n in codes.items() if label.startswith(prefix))


async def measure(trial: harness.Trial) -> Measurement:
    p = trial.params
    viewers = p["viewers"]
    env: dict[str, str] = {"CHATSCALE_STORM_MITIGATIONS": "on" if p.get("mitigated") else "off"}
    notes: list[str] = []
    if p.get("cap_share"):
        cap = max(1, round(viewers * p["cap_share"]))
        env["CHATSCALE_MAX_CONNECTIONS"] = str(cap)
        notes.append(
            f"CHATSCALE_MAX_CONNECTIONS={cap} ({p['cap_share']:.0%} of {viewers} viewers) on "
            "the one gateway; refused clients back off 0.25 s doubling to 5 s (× 0.5–1.5 "
            "jitter), at most 8 attempts"
        )
    path = community_file(p, trial.workdir / "community")
    duration = p["burst_at_s"] + p["burst_s"]
    async with trial.topology(env=env) as topo:
        cfg = engine.RunConfig(
            scenario="connect-storm",
            community=str(path),
            duration=duration,
            processes=p["processes"],
            drain_s=p["drain_s"],
            quiet_s=p.get("quiet_s", 1.0),
            ready_timeout=p.get("ready_timeout_s", 30.0),
            history_wait_s=p.get("history_wait_s", 5.0),
            report_s=0.25,
            storage_url=topo.settings.storage_url,
            workdir=trial.workdir,
            out=trial.workdir,
            command=f"lab thundering-herd ({trial.arm.name})",
        )
        report = await engine.run(cfg, topology=StartedTopology(topo), say=lambda _t: None)
    c, d, m = report["connections"], report["deliveries"], report["messages"]
    failed: dict[str, int] = c["attempts_failed"]
    ready_ms = c["ready_latency_ms"]
    run_s = report["timings"].get("run_s", duration)
    servers = {
        n: row
        for n, row in report["processes"].items()
        if not n.startswith(("generator", "loadtest"))
    }
    server_cpu_s = sum(row["cpu_avg_pct"] for row in servers.values()) / 100 * run_s
    if failed:
        notes.append(
            "failed connection attempts: "
            + ", ".join(f"{label} ×{n}" for label, n in sorted(failed.items()))
        )
    if c["close_codes"]:
        notes.append(
            "closed after READY: "
            + ", ".join(f"{label} ×{n}" for label, n in sorted(c["close_codes"].items()))
        )
    for note in report["verdict"]["notes"]:
        if note.startswith(("NOT MEASURED", "saturated")):
            notes.append(note)
    metrics = {
        "ready_p50_s": ready_ms["p50_ms"] / 1000 if c["ready"] else None,
        "ready_p99_s": ready_ms["p99_ms"] / 1000 if c["ready"] else None,
        "viewers_ready": float(c["ready"]),
        "viewers_not_ready": float(c["clients"] - c["ready"]),
        "refused_4014": float(_count(failed, "closed 4014")),
        "refused_4017": float(sum(c.get("refused_retried", {}).values())),
        "attempts_failed_other": float(sum(failed.values()) - _count(failed, "closed 4014")),
        "closed_4000": float(_count(failed, "closed 4000") + _count(c["close_codes"], "4000")),
        "closed_after_ready": float(sum(c["close_codes"].values())),
        "burst_p99_ms": d["latency_ms"]["p99_ms"] if d["latency_ms"]["count"] else None,
        "deliveries": float(d["received"]),
        "deliveries_lost": float(d["lost"]),
        "messages_acked": float(m["acknowledged"]),
        "presence_kib": c_presence_kib(report),
        "server_cpu_s": round(server_cpu_s, 3),
    }
    series = {}
    with contextlib.suppress(KeyError, TypeError):
        series["READY per second"] = [
            (float(row["t"]), float(row["deliveries"])) for row in report["series"]["connects"]
        ]
    return Measurement(
        {k: v for k, v in metrics.items() if v is not None}, series=series, notes=notes
    )


def c_presence_kib(report: dict[str, Any]) -> float:
    return report["presence"]["bytes_received"] / 1024


def count(value: float | None) -> str:
    """A count as a person reads it (medians of counts may be halves: one decimal then)."""
    if value is None:
        return "n/a"
    return f"{value:,.0f}" if value == int(value) else f"{value:,.1f}"


def conclude(o: Outcome) -> str:
    base, cap = "unmitigated", "capped"
    if not o.runs.get(base):
        return "The unmitigated herd was not measured, so nothing can be concluded."
    shed_n = o.median(base, "viewers_not_ready") or 0
    ready = o.median(base, "viewers_ready")
    first = (
        f"Unmitigated, {count(ready)} viewers reached READY with p50 "
        f"{fmt(o.median(base, 'ready_p50_s'), 's')} and p99 "
        f"{fmt(o.median(base, 'ready_p99_s'), 's')}"
    )
    first += (f"; {count(shed_n)} never got in" if shed_n else "; every viewer got in") + (
        f", chat during the burst was delivered with p99 "
        f"{fmt(o.median(base, 'burst_p99_ms'), 'ms')} and "
        f"{count(o.median(base, 'deliveries_lost'))} deliveries were lost."
    )
    if not o.runs.get(cap):
        second = " The connection cap was not measured."
    else:
        refused = o.median(cap, "refused_4014") or 0
        shed = o.median(cap, "viewers_not_ready") or 0
        latency = o.verdict("ready_p99_s", cap, base)
        burst = o.verdict("burst_p99_ms", cap, base)
        parts = []
        if latency == "holds":
            parts.append(
                "the viewers it let in were READY sooner ("
                + o.compare("ready_p99_s", cap, base)
                + ")"
            )
        elif latency == "reversed":
            parts.append(
                "even the viewers it let in waited longer ("
                + o.compare("ready_p99_s", cap, base)
                + "), the retries of the refused ones competing with them"
            )
        else:
            parts.append(
                "READY latency of those let in did not clearly change ("
                + o.compare("ready_p99_s", cap, base)
                + ")"
            )
        if burst == "holds":
            parts.append(
                "the chat burst reached fewer viewers faster ("
                + o.compare("burst_p99_ms", cap, base)
                + ")"
            )
        elif burst == "reversed":
            parts.append("the chat burst was slower (" + o.compare("burst_p99_ms", cap, base) + ")")
        else:
            parts.append(
                "chat delivery p99 did not clearly change ("
                + o.compare("burst_p99_ms", cap, base)
                + ")"
            )
        second = (
            f" The only admission control the gateway has today, a hard connection cap "
            f"(4014 GATEWAY_FULL, clients backing off with jitter), refused {count(refused)} "
            f"attempts and left {count(shed)} viewers outside: " + "; ".join(parts) + "."
        )
        if shed > shed_n:
            second += (
                " That is shedding, not smoothing: a cap protects those inside by turning the "
                "rest away, while the guide's admission control would admit everyone at a pace "
                "the gateway can serve."
            )
    third = ""
    mit = "mitigated"
    if "mitigated" in o.unavailable or not o.runs.get(mit):
        third = " The mitigated arm was not measured."
    else:
        refused = o.median(mit, "refused_4017") or 0
        third = (
            f" With the herd mitigations on, {count(o.median(mit, 'viewers_ready'))} viewers "
            f"reached READY (p99 {fmt(o.median(mit, 'ready_p99_s'), 's')}; "
            + o.compare("ready_p99_s", mit, base)
            + f"), {count(refused)} IDENTIFYs were refused with 4017 and a retry_after the "
            f"clients honoured, {count(o.median(mit, 'closed_4000'))} connections closed "
            f"with 4000 (unmitigated: {count(o.median(base, 'closed_4000'))}) and "
            f"{count(o.median(mit, 'deliveries_lost'))} deliveries were lost."
        )
    return first + second + third


EXPERIMENT = Experiment(
    name="thundering-herd",
    title="A streamer goes live: the thundering herd",
    claim=(
        "A popular streamer going live is a thundering herd: rate limiting, admission control "
        "and graceful degradation keep the system up."
    ),
    claim_ids=(4,),
    hop="gateway",
    knob="`CHATSCALE_STORM_MITIGATIONS=on|off` (admission 4017 with retry_after, degrade mode; "
    "`IDENTIFY_CONCURRENCY`, `IDENTIFY_QUEUE`, `DEGRADE_*`); `CHATSCALE_MAX_CONNECTIONS` for "
    "the capped arm (4014 above it)",
    arms=(
        Arm("unmitigated", "today's gateway: every viewer admitted as fast as it IDENTIFYs"),
        Arm(
            "capped",
            "a hard connection cap (CHATSCALE_MAX_CONNECTIONS = cap_share of the viewers): "
            "4014 above it, clients back off with jitter and retry; sheds, does not pace",
            params={"cap_share": 0.6},
        ),
        Arm(
            "mitigated",
            "CHATSCALE_STORM_MITIGATIONS=on: IDENTIFY admission (4017 with retry_after, clients "
            "back off with jitter), degrade mode shedding presence/typing",
            params={"mitigated": True},
        ),
    ),
    metrics=(
        Metric("ready_p50_s", "READY p50 (viewers let in)", "s"),
        Metric("ready_p99_s", "READY p99 (viewers let in)", "s"),
        Metric("viewers_ready", "viewers READY", "count", better="higher"),
        Metric("viewers_not_ready", "viewers never READY", "count"),
        Metric("refused_4014", "attempts refused 4014 GATEWAY_FULL", "count", better="none"),
        Metric(
            "refused_4017",
            "attempts refused 4017 GATEWAY_BUSY (retry_after honoured)",
            "count",
            better="none",
        ),
        Metric("closed_4000", "closes with 4000 (before or after READY)", "count"),
        Metric("attempts_failed_other", "attempts failed otherwise", "count"),
        Metric("closed_after_ready", "connections closed after READY", "count"),
        Metric("burst_p99_ms", "chat delivery p99 during the burst", "ms"),
        Metric("deliveries", "deliveries received", "count", better="none"),
        Metric("deliveries_lost", "deliveries lost", "count"),
        Metric("messages_acked", "chat messages acknowledged", "count", better="none"),
        Metric("presence_kib", "presence bytes received", "KiB", better="none"),
        Metric("server_cpu_s", "server CPU during the run", "s", better="none"),
    ),
    sizes={
        "tiny": {
            "viewers": 40,
            "members_per_viewer": 1.5,
            "already_online": 0.05,
            "arrival_s": 0.6,
            "burst_at_s": 0.6,
            "burst_s": 0.6,
            "burst_per_s": 5.0,
            "processes": 0,
            "drain_s": 1.0,
            "quiet_s": 0.5,
            "history_wait_s": 2.0,
            "ready_timeout_s": 10.0,
        },
        "quick": {
            "viewers": 600,
            "members_per_viewer": 2.0,
            "already_online": 0.03,
            "arrival_s": 5.0,
            "burst_at_s": 5.0,
            "burst_s": 6.0,
            "burst_per_s": 10.0,
            "processes": 0,
            "drain_s": 4.0,
            "quiet_s": 1.0,
        },
        "full": {
            "viewers": 3000,
            "members_per_viewer": 2.0,
            "already_online": 0.03,
            "arrival_s": 10.0,
            "burst_at_s": 10.0,
            "burst_s": 20.0,
            "burst_per_s": 30.0,
            "processes": 2,
            "drain_s": 15.0,
            "quiet_s": 2.0,
        },
    },
    quick_seconds=50,
    measure=measure,
    conclude=conclude,
)
