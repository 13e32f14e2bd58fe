"""The moderation experiments: the pure parts (shares, the conclusion from made-up medians), and
``moderation-down`` once at size tiny on real processes (the fail modes' guarantees: open
delivers everything, closed refuses everything with AUTOMOD_UNAVAILABLE)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab import runner
from lab.experiment import Outcome
from lab.experiments import by_name
from lab.experiments.moderation import Tally, shares


def test_shares_are_per_label():
    t = Tally()
    t.sent = {True: 10, False: 30}
    t.delivered = {True: 4, False: 29}
    t.rejected = {"AUTOMOD_BLOCKED": {True: 6, False: 1}}
    s = shares(t)
    assert s["spam_blocked_pct"] == 60.0 and s["ham_blocked_pct"] == pytest.approx(3.33)
    assert s["delivered_pct"] == 82.5 and s["rejected_pct"] == 17.5
    assert s["spam_delivered_pct"] == 40.0 and t.processed() == 40


def test_moderation_arms_turn_the_knobs_and_the_conclusion_reads_the_medians():
    exp = by_name("moderation")
    assert {a.name for a in exp.arms} == {"off", "shadow", "enforce", "slow", "model"}
    assert exp.arm("slow").settings["CHATSCALE_MODERATION_DELAY_MS"] == "30"
    assert exp.arm("model").settings["CHATSCALE_MODERATION_CLASSIFIER"] == "rules+model"
    base = {"p99_ms": 10.0, "burst_msgs_per_s": 500.0, "worker_cpu_us_per_msg": 100.0,
            "spam_blocked_pct": 0.0, "ham_blocked_pct": 0.0}  # fmt: skip
    runs = {a.name: [dict(base)] for a in exp.arms}
    runs["slow"][0].update(p99_ms=45.0, burst_msgs_per_s=100.0)
    runs["enforce"][0].update(spam_blocked_pct=20.0)
    text = exp.conclude(Outcome(exp, runs))
    assert "caps the worker's throughput" in text and "20.0 % with the rules enforced" in text
    assert "a classifier taking 30 ms a batch added latency" in text
    runs["off"][0].update(p99_ms=40.0)  # slower without moderation: said, not hidden
    assert "enforcing the rules came out faster" in exp.conclude(Outcome(exp, runs))
    runs["slow"][0].update(burst_msgs_per_s=500.0)
    assert "batching hides" in exp.conclude(Outcome(exp, runs))


@pytest.mark.slow  # two topology starts and stops
async def test_moderation_down_tiny_follows_the_fail_modes(tmp_path: Path):
    exp = by_name("moderation-down")
    result = await runner.run(exp, size="tiny", repeat=1, out=tmp_path, say=lambda _t: None)
    arms = {a["name"]: a for a in result["arms"]}
    assert set(arms) == {"open", "closed"} and result["conclusion"]
    for arm in arms.values():
        assert arm["unavailable"] is None and len(arm["runs"]) == 1
    opened, closed = arms["open"]["metrics"], arms["closed"]["metrics"]
    assert opened["delivered_pct"] == 100 and opened["rejected_pct"] == 0
    assert closed["delivered_pct"] == 0 and closed["unavailable_pct"] == 100
    assert closed["p99_ms"] is None  # nothing was delivered: no latency, not 0
