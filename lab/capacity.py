"""Capacity from per-machine costs (claim 26): the back-of-envelope, with its numbers measured.

"Millions of concurrent connections and billions of messages a day" becomes machines per tier
by one sum: for each tier (gateway, worker, presence, Valkey), the CPU it spends per unit of
work times how many units the stated load asks for per second. The units:

- an **idle connection** for one second (its heartbeats; at the heartbeat interval of the load),
- an **inbound message** (the gateway's checks and XADD, the worker's pipeline, Valkey's share),
- a **delivery** (one message reaching one online session: the gateway's fan-out to a socket),
- a **presence change** (a status change seen by the online members of its guild; coalesced
  per guild per tick),

plus memory per connection (gateway RSS, Valkey's used memory). The per-unit costs are measured
on the real topology here (``lab/experiments/capacity.py``: short runs, one unit at a time) or
read from a previous lab run's ``result.json``; ``chatscale lab run capacity`` also checks the
model at a load this machine can run: the predicted server CPU against the measured one.

This module is the arithmetic (pure, no I/O) and the ``chatscale capacity`` command; the lead
wires ``add_commands(sub)`` into ``chatscale lab``'s parser.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

TIERS = ("gateway", "worker", "presence", "valkey")
UNITS = ("idle_conn_s", "message", "delivery", "presence_change")
UNIT_WORDS = {
    "idle_conn_s": "idle connection-second (heartbeats)",
    "message": "inbound message",
    "delivery": "delivery (message to one session)",
    "presence_change": "presence change",
}
#: Where each tier keeps per-connection memory (Valkey: sessions, routes, presence state).
MEMORY_TIERS = ("gateway", "valkey")


@dataclass(frozen=True)
class Costs:
    """Per-unit costs measured on one machine.

    ``cpu_us[unit][tier]``: µs of one core that ``tier`` spends per ``unit``; ``baseline_cores
    [tier]``: what one process of the tier spends with no load at all (polling, ticks);
    ``bytes_per_conn[tier]``; ``heartbeat_s``: the heartbeat interval the idle cost was measured
    at (the gateway's idle cost is scaled to the load's interval, all of it taken as heartbeat
    cost);
    ``presence_watchers``: online members of the guild when the presence cost was measured (the
    gateway's share scales with the audience)."""

    cpu_us: dict[str, dict[str, float]]
    baseline_cores: dict[str, float]
    bytes_per_conn: dict[str, float]
    heartbeat_s: float
    presence_watchers: int
    source: str = "measured"

    def flat(self) -> dict[str, float]:
        """One number per key (``cpu_us.delivery.gateway``), as a lab measurement stores them."""
        out: dict[str, float] = {}
        for unit in UNITS:
            for tier in TIERS:
                out[f"cpu_us.{unit}.{tier}"] = float(self.cpu_us.get(unit, {}).get(tier, 0.0))
        for tier in TIERS:
            out[f"baseline_cores.{tier}"] = float(self.baseline_cores.get(tier, 0.0))
        for tier in MEMORY_TIERS:
            out[f"bytes_per_conn.{tier}"] = float(self.bytes_per_conn.get(tier, 0.0))
        out["heartbeat_s"] = float(self.heartbeat_s)
        out["presence_watchers"] = float(self.presence_watchers)
        return out

    @classmethod
    def from_flat(cls, flat: dict[str, float], *, source: str = "measured") -> Costs:
        missing = [k for k in cls.keys() if flat.get(k) is None]
        if missing:
            raise ValueError(f"per-unit costs missing: {', '.join(missing)}")
        return cls(
            cpu_us={u: {t: flat[f"cpu_us.{u}.{t}"] for t in TIERS} for u in UNITS},
            baseline_cores={t: flat[f"baseline_cores.{t}"] for t in TIERS},
            bytes_per_conn={t: flat[f"bytes_per_conn.{t}"] for t in MEMORY_TIERS},
            heartbeat_s=flat["heartbeat_s"],
            presence_watchers=round(flat["presence_watchers"]),
            source=source,
        )

    @staticmethod
    def keys() -> list[str]:
        return [
            *(f"cpu_us.{u}.{t}" for u in UNITS for t in TIERS),
            *(f"baseline_cores.{t}" for t in TIERS),
            *(f"bytes_per_conn.{t}" for t in MEMORY_TIERS),
            "heartbeat_s",
            "presence_watchers",
        ]

    def per_unit_total(self, unit: str) -> float:
        return sum(self.cpu_us.get(unit, {}).values())


@dataclass(frozen=True)
class Load:
    """A stated load. ``recipients``: online sessions one message reaches on average (most
    messages go to small servers and DMs; a message in the largest guild reaches
    ``largest_online``); ``presence_audience``: online members who see one status change."""

    connections: int = 2_000_000
    messages_per_s: float = 25_000.0  # ≈ 2.2 billion a day
    recipients: float = 50.0
    presence_per_s: float = 1_000.0  # ≈ 2M online × 1.8 changes per hour
    presence_audience: float = 50.0
    largest_guild: int = 50_000
    largest_online: int = 5_000
    heartbeat_s: float = 20.0

    @property
    def deliveries_per_s(self) -> float:
        return self.messages_per_s * self.recipients


@dataclass(frozen=True)
class Machine:
    cores: int = 32
    memory_gib: float = 128.0
    target_cpu: float = 0.6  # keep this share of the cores busy at most: headroom for a herd
    target_memory: float = 0.7


@dataclass
class Plan:
    load: Load
    machine: Machine
    costs: Costs
    cores: dict[str, float]  # tier -> cores of CPU the load needs
    memory_bytes: dict[str, float]
    machines: dict[str, int]
    bound_by: dict[str, str]  # tier -> "cpu" | "memory"
    worst_message: dict[str, float]
    assumptions: list[str] = field(default_factory=list)


def rates(load: Load) -> dict[str, float]:
    """Units per second the load asks for."""
    return {
        "idle_conn_s": float(load.connections),
        "message": load.messages_per_s,
        "delivery": load.deliveries_per_s,
        "presence_change": load.presence_per_s,
    }


def unit_cost(costs: Costs, unit: str, tier: str, load: Load) -> float:
    """µs per unit for ``tier`` under ``load``: the measured cost, with the idle cost scaled to
    the load's heartbeat interval and the gateway's presence cost to the load's audience."""
    us = costs.cpu_us.get(unit, {}).get(tier, 0.0)
    if unit == "idle_conn_s" and tier == "gateway":
        return us * costs.heartbeat_s / load.heartbeat_s
    if unit == "presence_change" and tier == "gateway" and costs.presence_watchers:
        return us * load.presence_audience / costs.presence_watchers
    return us


def tier_cores(
    costs: Costs, load: Load, processes: dict[str, int] | None = None
) -> dict[str, float]:
    """Cores each tier needs for ``load``; with ``processes`` (tier -> count) the unloaded cost
    of that many processes is added (it matters at a small check load, not at millions)."""
    r = rates(load)
    out = {}
    for tier in TIERS:
        us = sum(r[u] * unit_cost(costs, u, tier, load) for u in UNITS)
        out[tier] = us / 1e6 + (processes or {}).get(tier, 0) * costs.baseline_cores.get(tier, 0.0)
    return out


def plan(costs: Costs, load: Load, machine: Machine) -> Plan:
    cores = tier_cores(costs, load)
    memory = {t: load.connections * costs.bytes_per_conn.get(t, 0.0) for t in MEMORY_TIERS}
    usable_cores = machine.cores * machine.target_cpu
    usable_bytes = machine.memory_gib * 2**30 * machine.target_memory
    machines, bound = {}, {}
    for tier in TIERS:
        by_cpu = math.ceil(cores[tier] / usable_cores) if cores[tier] > 0 else 0
        by_mem = math.ceil(memory.get(tier, 0.0) / usable_bytes) if memory.get(tier) else 0
        machines[tier] = max(1, by_cpu, by_mem)
        bound[tier] = "memory" if by_mem > by_cpu else "cpu"
    deliver_us = unit_cost(costs, "delivery", "gateway", load)
    worst = {
        "deliveries": float(load.largest_online),
        "gateway_core_ms": load.largest_online * deliver_us / 1000,
        "gateway_core_ms_spread": load.largest_online
        * deliver_us
        / 1000
        / max(1, machines["gateway"] * machine.cores),
    }
    return Plan(
        load,
        machine,
        costs,
        cores,
        memory,
        machines,
        bound,
        worst,
        assumptions(costs, load, machine),
    )


def assumptions(costs: Costs, load: Load, machine: Machine) -> list[str]:
    return [
        f"per-unit costs: {costs.source}; every cost is linear in its unit (no batching gains, "
        "no contention losses at scale)",
        f"deliveries/s = messages/s × mean online recipients per message = "
        f"{load.messages_per_s:,.0f} × {load.recipients:g} = {load.deliveries_per_s:,.0f}",
        f"an idle connection costs the gateway its heartbeats: the gateway's idle cost "
        f"measured at a {costs.heartbeat_s:g} s heartbeat is scaled to {load.heartbeat_s:g} s "
        "(any other per-connection periodic work of the gateway is counted with it); the other "
        "tiers' idle cost (the gateways' presence heartbeats) is taken as measured",
        f"a presence change is seen by {load.presence_audience:g} online members; the gateway's "
        f"share of its cost scales from the {costs.presence_watchers} watchers it was measured "
        "with, the other tiers' share does not (coalescing per guild per tick)",
        "one single-threaded process per core (gateways, workers and presence are Python "
        "processes; a Valkey shard is one core): cores needed = processes needed",
        f"machines of {machine.cores} cores and {machine.memory_gib:g} GiB, run at most "
        f"{machine.target_cpu:.0%} CPU and {machine.target_memory:.0%} memory busy",
        "memory per connection: gateway RSS and Valkey used memory grown per READY session; "
        "history storage (SQLite/Cassandra), the hot cache's size and the network are not "
        "in the model",
        "unloaded processes' own cost (polling, ticks) is left out at this scale",
        "the inbound-message cost is measured one message at a time (a worker batch of one, "
        "one SQLite transaction each): at thousands per second batching makes a message "
        "cheaper, so the worker and Valkey counts lean high",
    ]


# ---- text ------------------------------------------------------------------------------------------


def _n(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 1:
        return f"{x:.2f}".rstrip("0").rstrip(".")
    return f"{x:.3g}"


def _bytes(b: float) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if b >= size:
            return f"{b / size:,.1f} {unit}"
    return f"{b:,.0f} B"


def render(p: Plan) -> str:
    load, costs = p.load, p.costs
    lines = [
        "stated load",
        f"  concurrent connections   {load.connections:,}",
        f"  messages per second      {load.messages_per_s:,.0f}  (≈ {load.messages_per_s * 86400 / 1e9:.2f} billion a day)",
        f"  online recipients/msg    {load.recipients:g}  → deliveries/s {load.deliveries_per_s:,.0f}",
        f"  presence changes/s       {load.presence_per_s:,.0f}  (audience {load.presence_audience:g})",
        f"  largest guild            {load.largest_guild:,} members, {load.largest_online:,} online",
        f"  heartbeat interval       {load.heartbeat_s:g} s",
        "",
        f"per-unit costs ({costs.source}), µs of one core",
        "  " + "unit".ljust(38) + "".join(t.rjust(10) for t in TIERS),
    ]
    for unit in UNITS:
        row = [unit_cost(costs, unit, t, load) for t in TIERS]
        lines.append("  " + UNIT_WORDS[unit].ljust(38) + "".join(_n(v).rjust(10) for v in row))
    lines.append(
        "  memory per connection: "
        + ", ".join(f"{t} {_bytes(costs.bytes_per_conn.get(t, 0.0))}" for t in MEMORY_TIERS)
    )
    lines += [
        "",
        "machines per tier",
        "  tier       cores needed   memory       machines  bound by",
    ]
    for tier in TIERS:
        mem = p.memory_bytes.get(tier)
        lines.append(
            f"  {tier:<10} {_n(p.cores[tier]):>12}   {(_bytes(mem) if mem else '-'):<12} "
            f"{p.machines[tier]:>8}  {p.bound_by[tier]}"
        )
    lines.append(
        f"  total      {_n(sum(p.cores.values())):>12}   {'':<12} {sum(p.machines.values()):>8}"
    )
    w = p.worst_message
    lines += [
        "",
        f"one message in the largest guild: {w['deliveries']:,.0f} deliveries, "
        f"{_n(w['gateway_core_ms'])} ms of one gateway core ({_n(w['gateway_core_ms_spread'])} ms "
        "each when its members are spread over every gateway core)",
        "",
        "assumptions",
        *(f"  - {a}" for a in p.assumptions),
    ]
    return "\n".join(lines)


# ---- reading a lab result ------------------------------------------------------------------------


def costs_from_result(path: Path) -> Costs:
    """The per-unit costs of a ``chatscale lab run capacity`` result: the median over the
    ``predicted`` arm's runs of every cost key."""
    doc = json.loads(path.read_text())
    arm = next((a for a in doc.get("arms", []) if a.get("name") == "predicted"), None)
    if arm is None or not arm.get("runs"):
        raise ValueError(f"{path}: no runs of the 'predicted' arm of the capacity experiment")
    flat = {}
    for key in Costs.keys():
        values = [r[key] for r in arm["runs"] if r.get(key) is not None]
        if values:
            flat[key] = statistics.median(values)
    return Costs.from_flat(flat, source=f"from {path} ({doc.get('finished', '?')})")


def plan_json(p: Plan) -> dict[str, Any]:
    return {
        "load": asdict(p.load),
        "machine": asdict(p.machine),
        "costs": {**p.costs.flat(), "source": p.costs.source},
        "cores": p.cores,
        "memory_bytes": p.memory_bytes,
        "machines": p.machines,
        "bound_by": p.bound_by,
        "worst_message": p.worst_message,
        "assumptions": p.assumptions,
    }
