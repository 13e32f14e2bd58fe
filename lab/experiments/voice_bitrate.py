"""Bitrate adaptation on vs off under a bandwidth squeeze (claim 19).

Speakers start at 64 kbit/s behind a 40 kbit/s bottleneck with a 100 ms queue (``voice/sim.py``:
a packet that would wait longer is dropped, as a router's tail drop). Arm ``fixed``: they keep
sending 64 kbit/s, so the queue stays full (every packet waits ~100 ms) and a third of the
packets are dropped. Arm ``aimd``: listeners report their loss+late share each second and each
speaker follows the worst report — down by a quarter above 2 %, up by 8 kbit/s below — so it
settles just under the bottleneck.

Measured at the listeners, over UDP: the share of slots concealed, mouth-to-ear p99, stall time
per stream-minute, and the speakers' mean bitrate (the cost: lower audio quality).
"""

from __future__ import annotations

from lab import harness
from lab.experiment import Arm, Experiment, Measurement, Metric, Outcome
from lab.voice_util import voice_round
from voice.sim import Impairment


async def measure(trial: harness.Trial) -> Measurement:
    p = trial.params
    impairment = Impairment(bandwidth_kbps=p["bandwidth_kbps"], queue_ms=100)
    r = await voice_round(
        trial, impairment=impairment, transport="udp", adapt=trial.arm.params["adapt"]
    )
    timeline = [(t / 1000, kbps) for t, kbps in r["bitrate_timeline"]]
    return Measurement(
        {
            "concealed_pct": r["concealed_share"] * 100,
            "m2e_p99_ms": r["mouth_to_ear_p99_ms"],
            "stall_ms_per_min": r["stall_ms_per_min"],
            "bitrate_kbps": r["bitrate_kbps_mean"],
        },
        series={"speaker bitrate": timeline} if timeline else {},
        notes=[f"bottleneck {p['bandwidth_kbps']} kbit/s per speaker, start 64 kbit/s"],
    )


def conclude(o: Outcome) -> str:
    verdict = o.verdict("concealed_pct", "aimd", "fixed")
    concealed = o.compare("concealed_pct", "aimd", "fixed")
    rate = o.compare("bitrate_kbps", "aimd", "fixed")
    p99 = o.compare("m2e_p99_ms", "aimd", "fixed")
    if verdict == "holds":
        first = (
            f"Adapting to the path loses far less audio: {concealed}. The price is a lower "
            f"bitrate ({rate}): the speaker sends what the path carries instead of overfilling "
            "the bottleneck's queue and losing what overflows"
        )
    elif verdict == "reversed":
        first = f"Against the guide, adaptation concealed more here ({concealed}; {rate})"
    elif verdict == "tie":
        first = f"Adaptation made no clear difference here ({concealed}; {rate})"
    else:
        return "One of the arms produced no numbers, so nothing can be concluded."
    if o.verdict("m2e_p99_ms", "aimd", "fixed") == "holds":
        return first + f"; the tail latency fell too ({p99})."
    return (
        first + f". The tail latency did not improve ({p99}): additive increase keeps probing "
        "until the queue fills again, and a full queue is what it backs off from, so some "
        "packets still wait the whole queue and some are still lost at each probe."
    )


EXPERIMENT = Experiment(
    name="voice-bitrate",
    title="Voice bitrate adaptation on vs off under a bandwidth squeeze",
    claim="Bitrate adapts to network conditions.",
    claim_ids=(19,),
    hop="client",
    knob="chatscale loadtest voice --adapt --bandwidth KBPS",
    arms=(
        Arm(
            "fixed",
            "speakers keep 64 kbit/s whatever the receivers report",
            params={"adapt": False},
        ),
        Arm(
            "aimd", "speakers follow receiver reports (AIMD, 16-128 kbit/s)", params={"adapt": True}
        ),
    ),
    metrics=(
        Metric("concealed_pct", "slots concealed (lost or late)", "%"),
        Metric("m2e_p99_ms", "mouth-to-ear p99", "ms"),
        Metric("stall_ms_per_min", "stall time per stream-minute", "ms"),
        Metric("bitrate_kbps", "speaker bitrate (mean)", "kbit/s", better="higher"),
    ),
    sizes={
        "tiny": {"speakers": 1, "listeners": 1, "bandwidth_kbps": 40, "duration_s": 3.0},
        "quick": {"speakers": 1, "listeners": 2, "bandwidth_kbps": 40, "duration_s": 15.0},
        "full": {"speakers": 2, "listeners": 4, "bandwidth_kbps": 40, "duration_s": 30.0},
    },
    quick_seconds=45,
    measure=measure,
    conclude=conclude,
    series_unit={"speaker bitrate": "kbit/s"},
)
