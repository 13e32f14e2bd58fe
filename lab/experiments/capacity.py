"""Capacity from per-machine costs (claim 26): does the back-of-envelope predict a real load?

Arm ``predicted``: on a fresh topology (one gateway, one worker, presence, Valkey), measure the
per-unit costs one at a time with short runs — each process unloaded, idle connections, inbound
messages to a guild of one, deliveries to a guild of ``calib_clients``, presence changes seen
by them, memory per connection — and predict from them (``lab.capacity``, the same arithmetic
``chatscale capacity`` uses for millions) the server CPU of a small *check load*: ``clients``
connections in one guild, ``messages_per_s`` from a few senders, ``presence_per_s`` status
changes. Arm ``measured``: on another fresh topology, run that check load and measure the CPU
each server process spends over a steady window. The conclusion is the ratio, per tier.

The idle cost is measured and applied at a short heartbeat (``heartbeat_s``, set on both arms'
topologies) so that a window of seconds sees every connection's heartbeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chatscale.client import ChatClient
from chatscale.wire import Op
from guilds import community
from lab import harness
from lab.capacity import (
    TIERS,
    Costs,
    Load,
    Machine,
    plan,
    tier_cores,
)
from lab.experiment import Arm, Experiment, Measurement, Metric, Outcome, fmt

PROCESSES = {"gateway": 1, "worker": 1, "presence": 1, "valkey": 1}  # the lab's topology


def _tier(process_name: str) -> str:
    return process_name.split("-", 1)[0]


def by_tier(cpu: dict[str, float]) -> dict[str, float]:
    out = dict.fromkeys(TIERS, 0.0)
    for name, seconds in cpu.items():
        tier = _tier(name)
        if tier in out:
            out[tier] += seconds
    return out


class Tally:
    """Dispatches received by a set of clients, by type; ``wait`` for a total without polling."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._want: list[tuple[str, int, asyncio.Event]] = []

    def add(self, t: str) -> None:
        self.counts[t] += 1
        for want in self._want:
            if want[0] == t and self.counts[t] >= want[1]:
                want[2].set()

    async def wait(self, t: str, total: int, seconds: float) -> bool:
        """True when ``total`` dispatches of type ``t`` arrived within ``seconds``."""
        if self.counts[t] >= total:
            return True
        want = (t, total, asyncio.Event())
        self._want.append(want)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(want[2].wait(), seconds)
            return self.counts[t] >= total
        finally:
            self._want.remove(want)


@contextlib.asynccontextmanager
async def reading(clients: list[ChatClient], tally: Tally):  # noqa: ANN201
    """Drain every client's events into ``tally`` (a ChatClient queues every dispatch)."""

    async def drain(c: ChatClient) -> None:
        while True:
            msg = await c.events.get()
            tally.add(str(msg.get("t")))

    tasks = [asyncio.create_task(drain(c)) for c in clients]
    try:
        yield tally
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _timed(topo: Any, work: Callable[[], Any]) -> tuple[dict[str, float], float]:
    """CPU seconds per tier and wall seconds spent while ``work()`` runs."""
    cpu = harness.Cpu(topo).start()
    t0 = time.monotonic()
    await work()
    return by_tier(cpu.stop()), time.monotonic() - t0


def _spec(p: dict[str, Any]) -> community.Community:
    names = [f"cap-{i:05d}" for i in range(p["calib_clients"])]
    return community.Community(
        name="cap",
        guilds=[
            community.GuildSpec(name="cap", owner=names[0], channels=["load"], members=names),
            community.GuildSpec(
                name="solo", owner="solo-0", channels=["alone"], members=["solo-0"]
            ),
        ],
    )


def _hb_env(p: dict[str, Any]) -> dict[str, str]:
    return {"CHATSCALE_HEARTBEAT_INTERVAL_MS": str(round(p["heartbeat_s"] * 1000))}


async def calibrate(trial: harness.Trial) -> tuple[Costs, list[str]]:
    """Every per-unit cost of ``lab.capacity`` on one fresh topology, one unit at a time."""
    p = trial.params
    n, window = p["calib_clients"], p["window_s"]
    notes: list[str] = []
    spec = _spec(p)
    async with trial.topology(env=_hb_env(p)) as topo:
        await harness.seed(topo.settings, spec)
        users, _guilds, channels, _ = spec.plan()
        ids = {u.username: u.id for u in users}
        lab_ids = [ids[f"cap-{i:05d}"] for i in range(n)]
        load_channel, solo_channel = channels[0].id, channels[1].id
        redis = harness.redis_for(topo)
        clients: list[ChatClient] = []
        try:
            # 0. every process with no load: its polling and ticks
            base, t = await _timed(topo, lambda: asyncio.sleep(window))
            baseline = {tier: base[tier] / t for tier in TIERS}

            def unloaded(seconds: float) -> dict[str, float]:
                return {tier: baseline[tier] * seconds for tier in TIERS}

            # memory per connection: the gateway's RSS and Valkey's used memory, per session
            gw = next(proc for name, proc in topo.processes().items() if name.startswith("gateway"))
            rss0, vk0 = gw.memory_info().rss, (await harness.redis_counters(redis))["used_memory"]
            clients = await harness.connect(topo.settings, topo.urls, [ids["solo-0"], *lab_ids])
            # the connect's tail (sessions online at the presence service, its next ticks)
            # must not count as idle cost
            await asyncio.sleep(p["settle_s"])
            rss1, vk1 = gw.memory_info().rss, (await harness.redis_counters(redis))["used_memory"]
            conns = len(clients)
            solo, crowd = clients[0], clients[1:]
            mem = {
                "gateway": max(0.0, (rss1 - rss0) / conns),
                "valkey": max(0.0, (vk1 - vk0) / conns),
            }
            solo_tally, crowd_tally = Tally(), Tally()
            async with reading([solo], solo_tally), reading(crowd, crowd_tally):
                # 1. idle connections for a window (their heartbeats)
                idle, t = await _timed(topo, lambda: asyncio.sleep(window))
                idle_us = {
                    tier: max(0.0, idle[tier] - unloaded(t)[tier]) / (conns * t) * 1e6
                    for tier in TIERS
                }

                def background(seconds: float) -> dict[str, float]:
                    return {
                        tier: unloaded(seconds)[tier] + idle_us[tier] * conns * seconds / 1e6
                        for tier in TIERS
                    }

                # 2. inbound messages to a guild of one: the whole pipeline, one delivery each
                m_in = p["inbound_messages"]

                async def inbound() -> None:
                    for k in range(m_in):
                        await solo.send_message(solo_channel, f"cap in {k}", timeout=10)
                    if not await solo_tally.wait("MESSAGE_CREATE", m_in, 10):
                        notes.append("inbound: not every message came back within 10 s")

                spent, t = await _timed(topo, inbound)
                per_msg = {
                    tier: max(0.0, spent[tier] - background(t)[tier]) / m_in * 1e6 for tier in TIERS
                }

                # 3. deliveries: one sender, every member of the guild receives
                m_d = p["delivery_messages"]
                sender = crowd[0]

                async def deliveries() -> None:
                    for k in range(m_d):
                        await sender.send_message(load_channel, f"cap out {k}", timeout=10)
                    if not await crowd_tally.wait("MESSAGE_CREATE", m_d * n, 15):
                        notes.append("deliveries: not every delivery arrived within 15 s")

                spent, t = await _timed(topo, deliveries)
                got = crowd_tally.counts["MESSAGE_CREATE"]
                per_delivery = {
                    tier: max(0.0, spent[tier] - background(t)[tier] - per_msg[tier] * m_d / 1e6)
                    / max(1, got - m_d)  # the sender's own copy is the message's one delivery
                    * 1e6
                    for tier in TIERS
                }

                # 4. presence changes, paced over the window, seen by every member
                k_p = p["presence_changes"]
                tick_s = topo.settings.presence_tick_ms / 1000

                async def presence() -> None:
                    start = time.monotonic()
                    for k in range(k_p):
                        c = crowd[k % n]
                        status = "idle" if (k // n) % 2 == 0 else "online"
                        await asyncio.sleep(max(0.0, start + window * k / k_p - time.monotonic()))
                        await c.send_op(Op.PRESENCE_UPDATE, {"status": status})
                    before = crowd_tally.counts["PRESENCE_UPDATE"]
                    # the last tick's updates: one more PRESENCE_UPDATE per member, or two ticks
                    await crowd_tally.wait("PRESENCE_UPDATE", before + n, 2 * tick_s + 0.5)

                spent, t = await _timed(topo, presence)
                per_change = {
                    tier: max(0.0, spent[tier] - background(t)[tier]) / k_p * 1e6 for tier in TIERS
                }
        finally:
            await harness.close_all(clients)
            await redis.aclose()
    costs = Costs(
        cpu_us={
            "idle_conn_s": idle_us,
            "message": per_msg,
            "delivery": per_delivery,
            "presence_change": per_change,
        },
        baseline_cores=baseline,
        bytes_per_conn=mem,
        heartbeat_s=p["heartbeat_s"],
        presence_watchers=n,
    )
    return costs, notes


def check_load(p: dict[str, Any]) -> Load:
    """The small load both arms are about: everyone online in one guild and channel."""
    return Load(
        connections=p["clients"],
        messages_per_s=p["messages_per_s"],
        recipients=p["clients"],
        presence_per_s=p["presence_per_s"],
        presence_audience=p["clients"],
        largest_guild=p["clients"],
        largest_online=p["clients"],
        heartbeat_s=p["heartbeat_s"],
    )


async def run_check(trial: harness.Trial) -> tuple[dict[str, float], dict[str, float], list[str]]:
    """The check load on a fresh topology: CPU cores per tier over a steady window, and the
    load actually achieved in it."""
    p = trial.params
    n, seconds, warmup = p["clients"], p["seconds"], p["warmup_s"]
    spec = harness.lab_community(n, name="chk", channels=("load",))
    notes: list[str] = []
    async with trial.topology(env=_hb_env(p)) as topo:
        seeded = await harness.seed(topo.settings, spec)
        channel = seeded.channel_ids[0]
        clients = await harness.connect(topo.settings, topo.urls, seeded.user_ids)
        tally = Tally()
        sent = changes = 0
        try:
            async with reading(clients, tally):
                stop = asyncio.Event()
                senders = clients[: p["senders"]]

                async def send(i: int, c: ChatClient) -> None:
                    nonlocal sent
                    interval = len(senders) / p["messages_per_s"]
                    at = time.monotonic() + interval * i / len(senders)
                    k = 0
                    while not stop.is_set():
                        await asyncio.sleep(max(0.0, at - time.monotonic()))
                        await c.send_message(channel, f"chk {i}.{k}", timeout=10)
                        sent += 1
                        k += 1
                        at += interval

                async def churn() -> None:
                    nonlocal changes
                    interval = 1 / p["presence_per_s"]
                    at, k = time.monotonic(), 0
                    while not stop.is_set():
                        await asyncio.sleep(max(0.0, at - time.monotonic()))
                        status = "idle" if (k // n) % 2 == 0 else "online"
                        await clients[k % n].send_op(Op.PRESENCE_UPDATE, {"status": status})
                        changes += 1
                        k += 1
                        at += interval

                tasks = [asyncio.create_task(send(i, c)) for i, c in enumerate(senders)]
                tasks.append(asyncio.create_task(churn()))
                try:
                    # the connect's tail settles and the load reaches its steady state
                    await asyncio.sleep(warmup)
                    s0, c0, d0 = sent, changes, tally.counts["MESSAGE_CREATE"]
                    spent, t = await _timed(topo, lambda: asyncio.sleep(seconds))
                    achieved = {
                        "messages_per_s": (sent - s0) / t,
                        "presence_per_s": (changes - c0) / t,
                        "deliveries_per_s": (tally.counts["MESSAGE_CREATE"] - d0) / t,
                    }
                finally:
                    stop.set()
                    for task in tasks:
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await harness.close_all(clients)
    cores = {tier: spent[tier] / t for tier in TIERS}
    wanted = p["messages_per_s"] * n
    if achieved["deliveries_per_s"] < 0.9 * wanted:
        notes.append(
            f"the check fell short: {achieved['deliveries_per_s']:,.0f} deliveries/s of "
            f"{wanted:,.0f} asked (the lab's own clients or the servers could not keep up)"
        )
    return cores, achieved, notes


def _metrics(cores: dict[str, float]) -> dict[str, float]:
    out = {f"{tier}_cores": cores[tier] for tier in TIERS}
    out["server_cores"] = sum(cores.values())
    return out


async def measure(trial: harness.Trial) -> Measurement:
    p = trial.params
    if trial.arm.name == "predicted":
        costs, notes = await calibrate(trial)
        cores = tier_cores(costs, check_load(p), PROCESSES)
        metrics = {
            **_metrics(cores),
            "us_per_delivery": costs.per_unit_total("delivery"),
            "us_per_message": costs.per_unit_total("message"),
            "us_per_idle_conn_s": costs.per_unit_total("idle_conn_s"),
            "us_per_presence_change": costs.per_unit_total("presence_change"),
            "kib_per_conn": sum(costs.bytes_per_conn.values()) / 1024,
            **costs.flat(),  # every per-tier cost, for `chatscale capacity --from`
        }
        notes.append(
            f"check load: {p['clients']} connections in one guild, {p['messages_per_s']:g} "
            f"msg/s, {p['presence_per_s']:g} presence changes/s, heartbeat {p['heartbeat_s']:g} s"
        )
        return Measurement(metrics, notes=notes)
    cores, achieved, notes = await run_check(trial)
    notes.append(
        f"achieved: {achieved['messages_per_s']:.1f} msg/s, {achieved['deliveries_per_s']:,.0f} "
        f"deliveries/s, {achieved['presence_per_s']:.1f} presence changes/s"
    )
    return Measurement(
        {**_metrics(cores), **{f"achieved_{k}": v for k, v in achieved.items()}}, notes=notes
    )


def costs_of(o: Outcome) -> Costs | None:
    """The per-unit costs of the predicted arm (medians over its runs)."""
    flat = {}
    for key in Costs.keys():
        values = o.values("predicted", key)
        if values:
            flat[key] = statistics.median(values)
    try:
        return Costs.from_flat(flat, source="this run")
    except ValueError:
        return None


def conclude(o: Outcome) -> str:
    r = o.ratio("server_cores", "predicted", "measured")
    if r is None:
        return "The check did not produce both a prediction and a measurement: no conclusion."
    head = o.compare("server_cores", "predicted", "measured")
    off = abs(r - 1)
    if off <= 0.2:
        first = f"The per-unit model holds within {off:.0%} at the check load: {head}."
    elif r < 1:
        first = (
            f"The per-unit model underestimates the check load by {1 - r:.0%} ({head}): "
            "costs measured one at a time do not add up to what they cost together here."
        )
    else:
        first = (
            f"The per-unit model overestimates the check load by {r - 1:.0%} ({head}): "
            "together the units cost less than one at a time (batching, a busier loop "
            "amortising its wake-ups)."
        )
    tiers = []
    for tier in TIERS:
        tr = o.ratio(f"{tier}_cores", "predicted", "measured")
        if tr is not None:
            tiers.append((abs(tr - 1), tier, tr))
    second = ""
    if tiers:
        second = " Per tier, predicted/measured: " + ", ".join(
            f"{t} {x:.2f}" for _, t, x in sorted(tiers, key=lambda e: TIERS.index(e[1]))
        )
        # a tier spending a sliver of the total is within the CPU clock's resolution: not judged
        total = o.median("measured", "server_cores") or 0.0
        judged = [e for e in tiers if (o.median("measured", f"{e[1]}_cores") or 0) >= 0.1 * total]
        small = [e[1] for e in tiers if e not in judged]
        if judged:
            worst = max(judged)[1]
            second += (
                f"; of the tiers that carry at least a tenth of the load, the {worst} is where "
                "the model is furthest off"
            )
        if small:
            second += f" ({', '.join(small)} spent too little here to judge)"
        second += "."
    third = ""
    costs = costs_of(o)
    if costs is not None:
        big = plan(costs, Load(), Machine())
        load = big.load
        third = (
            f" At the guide's scale ({load.connections:,} connections, "
            f"{load.messages_per_s:,.0f} messages/s to {load.recipients:g} online recipients on "
            f"average, {load.presence_per_s:,.0f} presence changes/s) these costs come to "
            + ", ".join(f"{big.machines[t]} {t}" for t in TIERS)
            + f" machine(s) of {big.machine.cores} cores (gateway bound by {big.bound_by['gateway']}; "
            f"a delivery costs {fmt(costs.per_unit_total('delivery'), 'µs')} of CPU): "
            "`chatscale capacity` prints the sum with every assumption."
        )
    return first + second + third


def _unit_metrics() -> tuple[Metric, ...]:
    return (
        Metric("us_per_delivery", "CPU per delivery (all tiers)", "µs", better="none"),
        Metric("us_per_message", "CPU per inbound message (all tiers)", "µs", better="none"),
        Metric("us_per_idle_conn_s", "CPU per idle connection-second", "µs", better="none"),
        Metric("us_per_presence_change", "CPU per presence change", "µs", better="none"),
        Metric("kib_per_conn", "memory per connection (gateway + Valkey)", "KiB", better="none"),
    )


EXPERIMENT = Experiment(
    name="capacity",
    title="Capacity from per-machine costs",
    claim=(
        "Millions of concurrent connections and billions of messages a day: capacity follows "
        "from per-machine costs (connections, deliveries, messages, presence changes) — a "
        "back-of-envelope estimate that the measured costs here can check."
    ),
    claim_ids=(26,),
    hop="gateway",
    knob="`chatscale capacity --connections N --messages-per-s R ...` (machines per tier)",
    arms=(
        Arm("predicted", "per-unit costs measured one at a time, summed for the check load"),
        Arm("measured", "the check load run on the topology, CPU measured per process"),
    ),
    metrics=(
        Metric("server_cores", "server CPU at the check load", "cores", better="none"),
        *(Metric(f"{t}_cores", f"{t} CPU", "cores", better="none") for t in TIERS),
        *_unit_metrics(),
    ),
    sizes={
        "tiny": {
            "heartbeat_s": 2.0,
            "calib_clients": 10,
            "window_s": 0.4,
            "inbound_messages": 20,
            "delivery_messages": 5,
            "presence_changes": 10,
            "settle_s": 0.3,
            "clients": 15,
            "seconds": 0.8,
            "warmup_s": 0.2,
            "senders": 2,
            "messages_per_s": 10.0,
            "presence_per_s": 5.0,
        },
        "quick": {
            "heartbeat_s": 2.0,
            "calib_clients": 100,
            "window_s": 2.0,
            "inbound_messages": 200,
            "delivery_messages": 20,
            "presence_changes": 100,
            "settle_s": 2.5,
            "clients": 150,
            "seconds": 5.0,
            "warmup_s": 2.5,
            "senders": 4,
            "messages_per_s": 20.0,
            "presence_per_s": 10.0,
        },
        "full": {
            "heartbeat_s": 2.0,
            "calib_clients": 300,
            "window_s": 5.0,
            "inbound_messages": 1000,
            "delivery_messages": 50,
            "presence_changes": 300,
            "settle_s": 2.5,
            "clients": 400,
            "seconds": 15.0,
            "warmup_s": 3.0,
            "senders": 8,
            "messages_per_s": 25.0,
            "presence_per_s": 20.0,
        },
    },
    quick_seconds=30,
    measure=measure,
    conclude=conclude,
)


async def measure_costs(*, size: str = "quick", say: Callable[[str], None] = print) -> Costs:
    """Per-unit costs for ``chatscale capacity``: the predicted arm's calibration, on its own."""
    arm = EXPERIMENT.arm("predicted")
    with tempfile.TemporaryDirectory(prefix="chatscale-capacity-") as tmp:
        trial = harness.Trial(
            experiment=EXPERIMENT,
            arm=arm,
            size=size,
            params={**EXPERIMENT.sizes[size], **arm.params},
            workdir=Path(tmp) / "work",
            say=say,
        )
        costs, notes = await calibrate(trial)
    for note in notes:
        say(f"note: {note}")
    return costs
