"""Fail-open vs fail-closed while the classifier is down (issue 19).

The same workload as ``moderation`` (labelled chat at a fixed rate, then a burst) with
``MODERATION_MODE=enforce`` and ``MODERATION_DOWN=true``: every scoring call raises, so
``MODERATION_FAIL`` decides every batch. ``open`` delivers everything unscored (spam included);
``closed`` refuses everything with ``AUTOMOD_UNAVAILABLE`` (chat stops). Measured: the share
delivered and refused, the spam that got through, and the latency of what was delivered.
"""

from __future__ import annotations

from lab import harness
from lab.experiment import Arm, Experiment, Measurement, Metric, Outcome, fmt
from lab.experiments.moderation import SIZES, run_chat, shares


async def measure(trial: harness.Trial) -> Measurement:
    tally, _cpu = await run_chat(trial)
    total = sum(tally.sent.values())
    unavailable = sum(tally.rejected.get("AUTOMOD_UNAVAILABLE", {}).values())
    s = shares(tally)
    return Measurement(
        {
            "delivered_pct": s["delivered_pct"],
            "rejected_pct": s["rejected_pct"],
            "unavailable_pct": round(100 * unavailable / total, 2) if total else 0.0,
            "spam_delivered_pct": s["spam_delivered_pct"],
            "p99_ms": tally.latency.percentile_ms(99) if tally.latency.count else None,
        }
    )


def conclude(o: Outcome) -> str:
    d_open, d_closed = o.median("open", "delivered_pct"), o.median("closed", "delivered_pct")
    r_closed = o.median("closed", "unavailable_pct")
    spam_open = o.median("open", "spam_delivered_pct")
    if d_open is None or d_closed is None:
        return "An arm has no numbers, so nothing can be said about the fail modes here."
    return (
        f"With the classifier down, fail-open delivered {fmt(d_open, '%')} of the messages — "
        f"spam included ({fmt(spam_open, '%')} of the spam got through unscored) — and "
        f"fail-closed delivered {fmt(d_closed, '%')}, refusing {fmt(r_closed, '%')} with "
        "AUTOMOD_UNAVAILABLE: an outage of the classifier is either a spam window or a chat "
        "outage, and which one is a product decision (MODERATION_FAIL), not a technical one. "
        "A budget (MODERATION_BUDGET_MS) turns a slow classifier into the same choice."
    )


DOWN = {"CHATSCALE_MODERATION_MODE": "enforce", "CHATSCALE_MODERATION_DOWN": "true"}
EXPERIMENT = Experiment(
    name="moderation-down",
    title="Fail-open vs fail-closed while the classifier is down",
    claim="Shadow mode and fail-open/closed are product choices.",
    claim_ids=(21,),
    hop="worker",
    knob="`CHATSCALE_MODERATION_FAIL` open|closed",
    arms=(
        Arm(
            "open",
            "classifier down, fail open",
            settings={**DOWN, "CHATSCALE_MODERATION_FAIL": "open"},
        ),
        Arm(
            "closed",
            "classifier down, fail closed",
            settings={**DOWN, "CHATSCALE_MODERATION_FAIL": "closed"},
        ),
    ),  # fmt: skip
    metrics=(
        Metric("delivered_pct", "delivered", "%", better="higher"),
        Metric("rejected_pct", "refused", "%"),
        Metric("unavailable_pct", "refused AUTOMOD_UNAVAILABLE", "%"),
        Metric("spam_delivered_pct", "spam delivered", "%"),
        Metric("p99_ms", "delivery p99", "ms"),
    ),
    sizes={  # moderation's chat, smaller bursts
        size: {**SIZES[size], "burst": burst}
        for size, burst in (("tiny", 10), ("quick", 50), ("full", 200))
    },
    quick_seconds=50,
    measure=measure,
    conclude=conclude,
)
