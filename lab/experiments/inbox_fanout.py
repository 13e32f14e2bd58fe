"""Fan-out on write to gateways vs per-user inboxes (claim 3).

One guild of ``members`` members, of whom only ``online`` are connected (over two gateways);
the rest are seeded only — offline members never connect. One member sends ``messages``
messages, one at a time; each is awaited until every online member has it.

- arm ``gateway`` (chatscale today, ``CHATSCALE_FANOUT_MODE=gateway``): the worker writes one
  delivery entry per *gateway* holding members of the guild (``cs:route:{guild}``); each gateway
  hands it to its local sessions. Offline members cost nothing at send time: they read the
  channel's history (hot cache, then storage) when they open it — lazy loading.
- arm ``inbox`` (``CHATSCALE_FANOUT_MODE=inbox``): the naive per-user fan-out on write. The
  worker does the same gateway delivery (so online members are still served in real time) and
  *also* appends one entry to the inbox stream of every member but the author, online or not
  (``cs:inbox:{u<id>}``, capped at ``CHATSCALE_INBOX_MAXLEN``). So this arm's cost is the
  gateway arm's plus what per-user inboxes add. The entries are pointers (channel id, message
  id), not the message: the cheapest form of an inbox, so the gap measured is a floor.

Measured per message, over the sending phase: Redis commands (Valkey's own
``total_commands_processed``; it counts the commands inside Lua scripts too, and includes the
topology's background traffic — heartbeats, presence ticks — which both arms share), stream
entries written (XADD calls), Redis memory growth, worker and Valkey CPU, and the time until
the last online member has the message. The seeding time of the offline members is in the
notes.
"""

from __future__ import annotations

import asyncio
import time

from lab import data_util, harness
from lab.experiment import Arm, Experiment, Measurement, Metric, Outcome, fmt
from loadtest.latency import LatencyRecorder


async def _xadds(redis) -> float:  # noqa: ANN001
    stats = await redis.info("commandstats")
    return float(stats.get("cmdstat_xadd", {}).get("calls", 0))


async def measure(trial: harness.Trial) -> Measurement:
    p = trial.params
    members, online, messages = p["members"], p["online"], p["messages"]
    everyone = harness.lab_community(members)
    connected = harness.lab_community(online)  # the same guild and ids for its first members
    notes: list[str] = []
    async with trial.topology(gateways=2, workers=1) as topo:
        redis = harness.redis_for(topo)
        clients = []
        try:
            t0 = time.monotonic()
            seeded = await harness.seed(topo.settings, connected)
            bulk_s = await data_util.add_offline_members(topo.settings, redis, everyone, online)
            seed_s = time.monotonic() - t0
            notes.append(
                f"seeded {members:,} members in {seed_s:.1f} s ({online:,} through the metadata "
                f"interface, {members - online:,} offline ones in bulk in {bulk_s:.1f} s)"
            )
            t0 = time.monotonic()
            clients = await harness.connect(
                topo.settings, topo.urls, seeded.user_ids, timeout=60 + online / 20
            )
            notes.append(f"connected {online:,} members in {time.monotonic() - t0:.1f} s")
            (channel,) = seeded.channel_ids
            sender, receivers = clients[0], clients[1:]
            latency = LatencyRecorder()

            async def one(text: str) -> None:
                t_send = time.perf_counter()
                sent = await sender.send_message(channel, text, timeout=60)

                async def got(c) -> None:  # noqa: ANN001
                    ev = await c.next_event("MESSAGE_CREATE", timeout=120)
                    if ev["d"]["id"] != sent["id"]:
                        raise RuntimeError(f"expected message {sent['id']}, got {ev['d']['id']}")

                await asyncio.gather(*(got(c) for c in receivers))
                latency.record(time.perf_counter() - t_send)

            cpu = harness.Cpu(topo).start()
            before = await harness.redis_counters(redis)
            xadds = await _xadds(redis)
            t0 = time.monotonic()
            for i in range(messages):
                await harness.bounded(one(f"message {i}"), 180, f"message {i} to every member")
            await data_util.workers_done(redis, topo.settings)  # the last inbox writes too
            wall = time.monotonic() - t0
            after = await harness.redis_counters(redis)
            xadds = await _xadds(redis) - xadds
            spent = cpu.stop()
        finally:
            await harness.close_all(clients)
            await redis.aclose()
    worker_s = sum(v for k, v in spent.items() if k.startswith("worker"))
    return Measurement(
        {
            "commands_per_msg": (after["commands"] - before["commands"]) / messages,
            "entries_per_msg": xadds / messages,
            "memory_kb_per_msg": (after["used_memory"] - before["used_memory"]) / 1024 / messages,
            "worker_cpu_ms_per_msg": worker_s * 1000 / messages,
            "valkey_cpu_ms_per_msg": spent.get("valkey", 0.0) * 1000 / messages,
            "deliver_all_p50_ms": latency.percentile_ms(50),
            "msgs_per_s": messages / wall,
            "members": float(members),
            "online": float(online),
        },
        notes=notes,
    )


def conclude(o: Outcome) -> str:
    cmds = o.verdict("commands_per_msg", "gateway", "inbox")
    if cmds == "missing":
        return "Not every arm produced numbers, so nothing can be concluded from this run."
    c = o.compare("commands_per_msg", "gateway", "inbox")
    mem = o.compare("memory_kb_per_msg", "gateway", "inbox")
    cpu = o.compare("worker_cpu_ms_per_msg", "gateway", "inbox")
    if cmds == "holds":
        first = (
            "Writing to every member's inbox makes each message cost in proportion to the "
            f"guild's size, online or not: {c}; {mem}; {cpu}. Fanning out to gateways costs "
            "one entry per gateway holding online members, and offline members nothing until "
            "they open the channel and read its history"
        )
    elif cmds == "reversed":
        first = f"Against the claim, fan-out to gateways cost more Redis commands here ({c})"
    else:
        first = (
            f"The two designs cost about the same here ({c}; {mem}): with this few offline "
            "members the inbox writes are lost in the background traffic"
        )
    late = o.verdict("deliver_all_p50_ms", "gateway", "inbox")
    lat = o.compare("deliver_all_p50_ms", "gateway", "inbox")
    if late == "holds":
        second = (
            f". The online members waited longer too ({lat}): each message reaches the gateways "
            "before its inbox writes start, but the next one queues behind them — the worker is "
            "still writing inboxes of members who are not there."
        )
    elif late == "reversed":
        second = (
            f". The online members did not wait longer with inboxes ({lat}); the cost shows in "
            "Redis and the worker, not in this delivery time."
        )
    else:
        second = (
            f". Delivery to the online members took about as long either way ({lat}): each "
            "message is delivered before its inbox writes start; the price is paid in Redis "
            "and worker capacity."
        )
    return first + second + _offline(o) + _per_s(o)


def _offline(o: Outcome) -> str:
    """What one offline member adds to one message in the inbox design (difference of arms)."""
    members, online = o.median("inbox", "members"), o.median("inbox", "online")
    d_cmd = _diff(o, "commands_per_msg")
    d_mem = _diff(o, "memory_kb_per_msg")
    d_cpu = _diff(o, "worker_cpu_ms_per_msg")
    if not members or not online or members <= online or None in (d_cmd, d_mem, d_cpu):
        return ""
    offline = members - online
    return (
        f" With {fmt(members)} members of whom {fmt(online)} online, each of the {fmt(offline)} "
        f"offline members added to every message about {d_cmd / offline:.2f} Redis commands, "
        f"{d_mem * 1024 / offline:.0f} bytes of Redis memory (stream creation included: these "
        f"inboxes were new) and {d_cpu * 1000 / offline:.1f} µs of worker CPU — for a message "
        "they may never read."
    )


def _diff(o: Outcome, key: str) -> float | None:
    a, b = o.median("inbox", key), o.median("gateway", key)
    return None if a is None or b is None else a - b


def _per_s(o: Outcome) -> str:
    g, i = o.median("gateway", "worker_cpu_ms_per_msg"), o.median("inbox", "worker_cpu_ms_per_msg")
    if not g or not i:
        return ""
    return (
        f" One worker core would sustain about {fmt(1000 / g)} msg/s with gateway fan-out and "
        f"{fmt(1000 / i)} msg/s with inboxes at this guild size."
    )


EXPERIMENT = Experiment(
    name="inbox-fanout",
    title="Fan-out to gateways vs per-user inboxes",
    claim="Reads dwarf writes: one message in a big server goes to tens of thousands of users. "
    "Fan-out on write needs backpressure, and lazy loading for offline users.",
    claim_ids=(3,),
    hop="fanout",
    knob="`CHATSCALE_FANOUT_MODE=gateway|inbox` (worker; `CHATSCALE_INBOX_MAXLEN` caps inboxes)",
    arms=(
        Arm(
            "gateway",
            "one delivery entry per gateway; offline members read history later",
            {"CHATSCALE_FANOUT_MODE": "gateway"},
        ),
        Arm(
            "inbox",
            "the same, plus one inbox entry per member, online or not",
            {"CHATSCALE_FANOUT_MODE": "inbox"},
        ),
    ),
    metrics=(
        Metric("commands_per_msg", "Redis commands per message", "count"),
        Metric("entries_per_msg", "stream entries written per message", "count"),
        Metric("memory_kb_per_msg", "Redis memory growth per message", "KiB"),
        Metric("worker_cpu_ms_per_msg", "worker CPU per message", "ms"),
        Metric("valkey_cpu_ms_per_msg", "Valkey CPU per message", "ms"),
        Metric("deliver_all_p50_ms", "send → last online member, p50", "ms"),
        Metric("msgs_per_s", "messages per second, one at a time", "msg/s", better="higher"),
        Metric("members", "guild members", "count", better="none"),
        Metric("online", "of them online", "count", better="none"),
    ),
    # Seeding 50,000 members takes ~1-3 s (offline ones in bulk), so every size but tiny has the
    # guide's 50k; connecting is what limits quick: ~13-15 ms per member on this 2-core machine
    # (2,000 online took 26-31 s per arm), so quick connects 300 and full the guide's 5,000.
    sizes={
        "tiny": {"members": 2000, "online": 20, "messages": 5},
        "quick": {"members": 50_000, "online": 300, "messages": 8},
        "full": {"members": 50_000, "online": 5000, "messages": 50},
    },
    quick_seconds=32,
    measure=measure,
    conclude=conclude,
)
