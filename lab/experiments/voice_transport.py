"""Voice over UDP vs TCP at 2 % loss and 30 ms jitter (claims 18, 19).

A few speakers and listeners join one voice channel through the gateway (signaling) and talk
through the relay (media). Each sender's network is impaired in-process (``voice/sim.py``):
2 % of packets lost, up to 30 ms of jitter. Arm ``udp`` (``CHATSCALE_VOICE_TRANSPORT=udp``,
the default): a lost packet is gone and concealed, the rest play on time. Arm ``tcp``: the
relay's TCP arm; a lost packet is retransmitted 200 ms later (Linux's minimum RTO) and holds
every packet behind it (head-of-line blocking, modelled at the sender, carried over a real TCP
connection). Both receivers run the same adaptive jitter buffer.

Measured at the listeners: the share of packets that arrived after their playout time
(late: useless), the share concealed (lost or late), mouth-to-ear latency (capture to
playout, p50 and p99), and stall time (playout paused while the buffer grew, plus gaps of 60 ms
or more) per minute of each stream.
"""

from __future__ import annotations

from lab import harness
from lab.experiment import Arm, Experiment, Measurement, Metric, Outcome
from lab.voice_util import voice_round
from voice.sim import Impairment


async def measure(trial: harness.Trial) -> Measurement:
    p = trial.params
    transport = trial.arm.params["transport"]
    impairment = Impairment(loss=p["loss"], jitter_ms=p["jitter_ms"])
    r = await voice_round(trial, impairment=impairment, transport=transport, adapt=False)
    return Measurement(
        {
            "late_pct": r["late_share"] * 100,
            "concealed_pct": r["concealed_share"] * 100,
            "m2e_p50_ms": r["mouth_to_ear_p50_ms"],
            "m2e_p99_ms": r["mouth_to_ear_p99_ms"],
            "stall_ms_per_min": r["stall_ms_per_min"],
            "packets": r["sent"],
        },
        notes=[f"{r['streams']} streams, {r['sent']} packets sent to listeners in all"],
    )


def conclude(o: Outcome) -> str:
    m2e = o.verdict("m2e_p99_ms", "udp", "tcp")
    late = o.compare("late_pct", "udp", "tcp")
    p50 = o.compare("m2e_p50_ms", "udp", "tcp")
    p99 = o.compare("m2e_p99_ms", "udp", "tcp")
    stall = o.compare("stall_ms_per_min", "udp", "tcp")
    concealed = o.compare("concealed_pct", "udp", "tcp")
    if m2e == "holds":
        first = (
            f"UDP keeps voice on time: {p99}; {p50}. Over TCP nothing is lost, but every lost "
            "segment holds the packets behind it for a retransmission, so the jitter buffer "
            f"either plays them late ({late}) or grows to wait for them ({stall})"
        )
    elif m2e == "reversed":
        first = f"Against the guide, TCP had the lower tail latency here ({p99})"
    elif m2e == "tie":
        first = f"Tail latency did not clearly differ here ({p99})"
    else:
        first = "One of the arms produced no numbers, so nothing can be concluded"
    return (
        first
        + f". What UDP pays instead is concealment of the lost packets ({concealed}): a short "
        "glitch each, which a codec's loss concealment hides. UDP's own late packets are the "
        "simulated jitter's tail plus this machine's scheduling delays, which both arms share."
    )


EXPERIMENT = Experiment(
    name="voice-transport",
    title="Voice over UDP vs TCP at 2 % loss and 30 ms jitter",
    claim=(
        "Voice uses UDP: a late packet is useless, a lost one is a small glitch; TCP's "
        "reliability hurts real-time audio."
    ),
    claim_ids=(18, 19),
    hop="client",
    knob="CHATSCALE_VOICE_TRANSPORT (udp or tcp: the arm VOICE_SERVER_UPDATE points at)",
    arms=(
        Arm(
            "udp",
            "datagrams: a lost packet is gone and concealed",
            settings={"CHATSCALE_VOICE_TRANSPORT": "udp"},
            params={"transport": "udp"},
        ),
        Arm(
            "tcp",
            "the relay's TCP arm: a lost segment is retransmitted after 200 ms, in order",
            settings={"CHATSCALE_VOICE_TRANSPORT": "tcp"},
            params={"transport": "tcp"},
        ),
    ),
    metrics=(
        Metric("late_pct", "packets after their playout time", "%"),
        Metric("concealed_pct", "slots concealed (lost or late)", "%"),
        Metric("m2e_p50_ms", "mouth-to-ear p50", "ms"),
        Metric("m2e_p99_ms", "mouth-to-ear p99", "ms"),
        Metric("stall_ms_per_min", "stall time per stream-minute", "ms"),
        Metric("packets", "packets sent to listeners", "count", better="none"),
    ),
    sizes={
        "tiny": {"speakers": 1, "listeners": 1, "loss": 0.02, "jitter_ms": 30, "duration_s": 2.0},
        "quick": {"speakers": 2, "listeners": 3, "loss": 0.02, "jitter_ms": 30, "duration_s": 10.0},
        "full": {"speakers": 4, "listeners": 8, "loss": 0.02, "jitter_ms": 30, "duration_s": 30.0},
    },
    quick_seconds=40,
    measure=measure,
    conclude=conclude,
)
