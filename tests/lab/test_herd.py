"""The thundering-herd experiment: one tiny run on real processes (shape, the connection cap's
behaviour, the mitigated arm's) and the conclusion's branches on made-up numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab import runner
from lab.experiment import Outcome
from lab.experiments import by_name
from lab.experiments.thundering_herd import EXPERIMENT, community_file, conclude
from loadtest import communities


def test_community_file_is_a_herd(tmp_path: Path) -> None:
    p = EXPERIMENT.sizes["quick"]
    sim = communities.load(community_file(p, tmp_path))
    assert len(sim.online) == p["viewers"]
    arriving = [m for m in sim.online if m.arrive_at is not None]
    assert len(arriving) >= 0.9 * p["viewers"]
    assert max(m.arrive_at for m in arriving) <= p["arrival_s"]
    assert sim.spec.chat.messages_per_minute == 0  # every chat message is the burst's
    assert sim.spec.burst is not None and sim.spec.burst.at_s == p["burst_at_s"]


async def test_tiny_run(tmp_path: Path) -> None:
    exp = by_name("thundering-herd")
    result = await runner.run(exp, size="tiny", repeat=1, out=tmp_path, say=lambda _t: None)
    arms = {a["name"]: a for a in result["arms"]}
    viewers = exp.sizes["tiny"]["viewers"]
    for name in ("unmitigated", "capped"):
        m = arms[name]["metrics"]
        assert arms[name]["unavailable"] is None
        for key in (
            "viewers_ready",
            "viewers_not_ready",
            "refused_4014",
            "deliveries_lost",
            "presence_kib",
            "server_cpu_s",
        ):
            assert m[key] is not None, (name, key)
        assert m["viewers_ready"] + m["viewers_not_ready"] == viewers
        assert m["ready_p99_s"] is not None and m["ready_p50_s"] <= m["ready_p99_s"]
    # the cap is a cap: no more sessions than it allows, the rest refused with 4014
    cap = round(viewers * exp.arm("capped").params["cap_share"])
    capped = arms["capped"]["metrics"]
    assert capped["viewers_ready"] <= cap
    assert capped["refused_4014"] > 0
    assert arms["unmitigated"]["metrics"]["refused_4014"] == 0
    assert any(f"CHATSCALE_MAX_CONNECTIONS={cap}" in n for n in arms["capped"]["notes"])
    mitigated = arms["mitigated"]
    assert mitigated["unavailable"] is None
    assert mitigated["metrics"]["viewers_ready"] == viewers  # admission refuses, never sheds
    assert mitigated["metrics"]["closed_4000"] == 0
    assert result["conclusion"]


def _outcome(capped_p99: float, capped_burst: float, *, mitigated: bool = True) -> Outcome:
    base = {
        "ready_p50_s": 0.5,
        "ready_p99_s": 2.0,
        "viewers_ready": 100.0,
        "viewers_not_ready": 0.0,
        "refused_4014": 0.0,
        "burst_p99_ms": 400.0,
        "deliveries_lost": 0.0,
    }
    cap = {
        **base,
        "ready_p99_s": capped_p99,
        "burst_p99_ms": capped_burst,
        "viewers_ready": 60.0,
        "viewers_not_ready": 40.0,
        "refused_4014": 300.0,
    }
    mit = {**base, "ready_p99_s": 1.0, "refused_4017": 250.0, "closed_4000": 0.0}
    base = {**base, "closed_4000": 120.0}
    runs = {"unmitigated": [base], "capped": [cap]}
    if mitigated:
        runs["mitigated"] = [mit]
    return Outcome(EXPERIMENT, runs, {})


@pytest.mark.parametrize(
    ("p99", "burst", "words"),
    [
        (1.0, 100.0, ["READY sooner", "reached fewer viewers faster"]),
        (4.0, 800.0, ["waited longer", "burst was slower"]),
        (2.05, 410.0, ["did not clearly change", "did not clearly change"]),
    ],
)
def test_conclusion_branches(p99: float, burst: float, words: list[str]) -> None:
    text = conclude(_outcome(p99, burst))
    for w in words:
        assert w in text
    assert "left 40 viewers outside" in text and "shedding, not smoothing" in text
    assert "250 IDENTIFYs were refused with 4017" in text
    assert "0 connections closed with 4000 (unmitigated: 120)" in text
    assert "mitigated arm was not measured" in conclude(_outcome(p99, burst, mitigated=False))


def test_conclusion_without_the_baseline() -> None:
    assert "nothing can be concluded" in conclude(Outcome(EXPERIMENT, {"unmitigated": []}))
