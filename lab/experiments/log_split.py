"""A log between connections and processing (claim 2): the gateway acks after one XADD.

Arms: ``log`` (today: the gateway XADDs to the ingest stream and answers MESSAGE_ACK; a worker
authorizes, writes the hot cache and history and fans out) and ``inline``
(``CHATSCALE_PROCESSING=inline``: the gateway does all of that itself before the ack,
``gateway/inline.py``), each once with a healthy store and once with a slow one
(``CHATSCALE_HISTORY_DELAY_MS``, the lab's fault: every history write waits that long first,
as a remote store that answers slowly).

Senders post at a steady pace, each awaiting its ack, and heartbeat on the same connection
while they do; an idle member heartbeats on its own connection. Measured: ack latency,
heartbeat latency on the senders' connections and on the idle one (what the store does to the
connection layer), delivery latency to the other members, and the gateway's CPU per message.
"""

from __future__ import annotations

import asyncio
import time

from lab import harness
from lab.experiment import Arm, Experiment, Measurement, Metric, Outcome, fmt
from lab.ingest_util import Reader, stop_all
from loadtest.latency import LatencyRecorder


async def measure(trial: harness.Trial) -> Measurement:
    p = trial.params
    senders, receivers, duration = p["senders"], p["receivers"], p["duration_s"]
    spec = harness.lab_community(senders + receivers + 1)
    async with trial.topology() as topo:
        seeded = await harness.seed(topo.settings, spec)
        [channel] = seeded.channel_ids
        clients = await harness.connect(topo.settings, topo.urls, seeded.user_ids)
        send_clients = clients[:senders]
        idle_client = clients[senders]
        ack, beat, idle_beat, delivery = (LatencyRecorder() for _ in range(4))

        def on_create(d: dict, now: float) -> None:
            head = d["content"].split(" ", 1)[0]
            if head.isdigit():
                delivery.record(now - int(head) / 1e9)

        readers = [Reader(c).start() for c in send_clients]
        readers.append(idle := Reader(idle_client).start())
        readers += [Reader(c, on_create).start() for c in clients[senders + 1 :]]
        sent = 0
        stop_at = time.monotonic() + duration

        async def send(i: int) -> None:
            nonlocal sent
            c = send_clients[i]
            await asyncio.sleep(p["interval_s"] * i / senders)
            while time.monotonic() < stop_at:
                started = time.time()
                await c.send_message(channel, f"{time.time_ns()} m", timeout=30)
                ack.record(time.time() - started)
                sent += 1
                await asyncio.sleep(p["interval_s"])

        async def heartbeats(reader: Reader, into: LatencyRecorder) -> None:
            while time.monotonic() < stop_at:
                into.record(await reader.heartbeat_s())
                await asyncio.sleep(p["heartbeat_every_s"])

        cpu = harness.Cpu(topo).start()
        try:
            await harness.bounded(
                asyncio.gather(
                    *(send(i) for i in range(senders)),
                    *(heartbeats(r, beat) for r in readers[:senders]),
                    heartbeats(idle, idle_beat),
                ),
                duration + 60,
                "the senders and heartbeats",
            )
            await asyncio.sleep(0.5)  # the last deliveries
            spent = cpu.stop()
        finally:
            await stop_all(readers)
            await harness.close_all(clients)
    gateway_s = sum(v for k, v in spent.items() if k.startswith("gateway"))
    return Measurement(
        {
            "ack_p50_ms": ack.percentile_ms(50),
            "ack_p99_ms": ack.percentile_ms(99),
            "sender_heartbeat_p99_ms": beat.percentile_ms(99),
            "idle_heartbeat_p99_ms": idle_beat.percentile_ms(99),
            "delivery_p99_ms": delivery.percentile_ms(99),
            "gateway_cpu_ms_per_msg": gateway_s * 1000 / sent if sent else None,
            "messages": float(sent),
        }
    )


def _pair(o: Outcome, key: str, log: str, inline: str) -> str:
    return o.compare(key, inline, log)


def conclude(o: Outcome) -> str:
    parts = []
    healthy = o.verdict("ack_p99_ms", "log", "inline")
    cmp = _pair(o, "ack_p99_ms", "log", "inline")
    if healthy == "holds":
        parts.append(
            f"With a healthy store the log keeps acks short ({cmp}): the gateway's answer "
            "costs one XADD, not the whole pipeline"
        )
    elif healthy == "reversed":
        parts.append(
            f"With a healthy store the inline gateway acked faster ({cmp}): at this size "
            "one XADD plus a worker hop costs more than doing the work in place"
        )
    else:
        parts.append(f"With a healthy store the ack latency barely differs ({cmp})")
    slow = o.verdict("ack_p99_ms", "log-slow-store", "inline-slow-store")
    cmp = _pair(o, "ack_p99_ms", "log-slow-store", "inline-slow-store")
    delay = o.experiment.arm("inline-slow-store").settings["CHATSCALE_HISTORY_DELAY_MS"]
    if slow == "holds":
        parts.append(
            f"With history writes {delay} ms slow the split shows: {cmp}; the log absorbs the "
            "slow store, the inline gateway passes it to every sender"
        )
    elif slow == "reversed":
        parts.append(
            f"Against the guide, with history writes {delay} ms slow the inline gateway still "
            f"acked faster ({cmp})"
        )
    else:
        parts.append(f"With history writes {delay} ms slow the acks did not separate ({cmp})")
    sent = o.compare("messages", "inline-slow-store", "log-slow-store")
    parts[-1] += f" (what senders who wait for each ack got through: {sent})"
    hb = o.verdict("sender_heartbeat_p99_ms", "log-slow-store", "inline-slow-store")
    cmp = _pair(o, "sender_heartbeat_p99_ms", "log-slow-store", "inline-slow-store")
    idle = (
        f"an idle connection on the same gateway: "
        f"{fmt(o.median('log-slow-store', 'idle_heartbeat_p99_ms'), 'ms')} with the log vs "
        f"{fmt(o.median('inline-slow-store', 'idle_heartbeat_p99_ms'), 'ms')} inline"
    )
    if hb == "holds":
        parts.append(
            f"The connection layer feels it too: a sender's heartbeat waits behind its "
            f"message's store write inline ({cmp}; {idle}), so a slow store looks like a "
            "slow gateway to the client"
        )
    elif hb == "reversed":
        parts.append(f"Heartbeats on the senders' connections were slower with the log ({cmp})")
    else:
        parts.append(f"Heartbeats on the senders' connections barely moved ({cmp}; {idle})")
    deliver = o.compare("delivery_p99_ms", "log-slow-store", "log")
    if o.verdict("delivery_p99_ms", "log", "log-slow-store") == "holds":
        parts.append(
            f"The log does not hide the slow store from recipients ({deliver}): with "
            "history_mode=sync a worker stores before it fans out; it only keeps the store "
            "out of the sender's ack and the gateway"
        )
    cpu = o.compare("gateway_cpu_ms_per_msg", "inline", "log")
    costly = o.verdict("gateway_cpu_ms_per_msg", "log", "inline")
    if costly == "holds":
        parts.append(
            f"And the gateway tier pays for the processing inline ({cpu}), so it can no longer "
            "be sized for connections alone"
        )
    elif costly == "reversed":
        parts.append(f"The inline gateway spent less CPU per message here ({cpu})")
    else:
        parts.append(
            f"The gateway's CPU per message barely moved ({cpu}): at this rate the "
            "connections (frames, heartbeats) cost the gateway more than the processing"
        )
    return ". ".join(parts) + "."


DELAY_MS = "200"
EXPERIMENT = Experiment(
    name="log-split",
    title="A log between gateways and workers",
    claim=(
        "Keep stateful connections (gateways) apart from stateless processing (workers), "
        "joined by a log, so each scales on its own; a gateway that does the work becomes "
        "the bottleneck."
    ),
    claim_ids=(2,),
    hop="log",
    knob="`CHATSCALE_PROCESSING=log|inline` (default log); the slow store is the fault "
    "`CHATSCALE_HISTORY_DELAY_MS`",
    arms=(
        Arm("log", "gateway XADDs and acks; a worker does the rest"),
        Arm(
            "inline",
            "gateway authorizes, stores and fans out before acking",
            settings={"CHATSCALE_PROCESSING": "inline"},
        ),
        Arm(
            "log-slow-store",
            f"as log, every history write {DELAY_MS} ms slow",
            settings={"CHATSCALE_HISTORY_DELAY_MS": DELAY_MS},
        ),
        Arm(
            "inline-slow-store",
            f"as inline, every history write {DELAY_MS} ms slow",
            settings={"CHATSCALE_PROCESSING": "inline", "CHATSCALE_HISTORY_DELAY_MS": DELAY_MS},
        ),
    ),
    metrics=(
        Metric("ack_p50_ms", "ack p50", "ms"),
        Metric("ack_p99_ms", "ack p99", "ms"),
        Metric("sender_heartbeat_p99_ms", "senders' heartbeat p99", "ms"),
        Metric("idle_heartbeat_p99_ms", "idle connection's heartbeat p99", "ms"),
        Metric("delivery_p99_ms", "delivery p99", "ms"),
        Metric("gateway_cpu_ms_per_msg", "gateway CPU per message", "ms"),
        Metric("messages", "messages sent", "count", better="none"),
    ),
    sizes={
        "tiny": {
            "senders": 2,
            "receivers": 2,
            "duration_s": 0.6,
            "interval_s": 0.1,
            "heartbeat_every_s": 0.1,
        },
        "quick": {
            "senders": 10,
            "receivers": 20,
            "duration_s": 6.0,
            "interval_s": 0.1,
            "heartbeat_every_s": 0.1,
        },
        "full": {
            "senders": 20,
            "receivers": 50,
            "duration_s": 20.0,
            "interval_s": 0.1,
            "heartbeat_every_s": 0.1,
        },
    },
    quick_seconds=50,  # measured: 4 arms of ~12 s
    measure=measure,
    conclude=conclude,
)
