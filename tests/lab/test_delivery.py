"""The delivery experiments (``serialize``, ``backpressure``): one tiny run each against real
processes, and their conclusions for every verdict (pure).

The runs assert shape and the guarantees the arms must keep (every delivery counted, no fast
member loses one), never which arm is faster: that is what the experiment reports.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lab import runner
from lab.experiment import Outcome
from lab.experiments import by_name


async def run_tiny(name: str, out: Path) -> dict:
    result = await runner.run(by_name(name), size="tiny", repeat=1, out=out, say=lambda _t: None)
    assert json.loads((out / name / "result.json").read_text())["experiment"] == name
    assert [a["name"] for a in result["arms"]] == [a.name for a in by_name(name).arms]
    for arm in result["arms"]:
        assert arm["unavailable"] is None, arm["unavailable"]
        assert len(arm["runs"]) == 1
        for key, value in arm["metrics"].items():
            assert isinstance(value, float | int), (arm["name"], key, value)
    assert result["conclusion"].strip()
    return result


async def test_serialize_tiny_run_has_numbers_for_both_arms(tmp_path: Path):
    result = await run_tiny("serialize", tmp_path)
    p = by_name("serialize").sizes["tiny"]
    for arm in result["arms"]:
        m = arm["metrics"]
        # every member got every message (and the sender its own copies)
        assert m["deliveries"] == p["messages"] * (p["members"] + 1)
        assert m["gw_cpu_us_per_delivery"] >= 0 and m["fanout_code_us"] > 0
        assert m["send_to_last_ms"] > 0 and m["deliveries_per_s"] > 0
        assert arm["settings"]["CHATSCALE_FANOUT_SERIALIZE"] == arm["name"]


async def test_backpressure_tiny_run_has_numbers_and_loses_nothing(tmp_path: Path):
    result = await run_tiny("backpressure", tmp_path)
    for arm in result["arms"]:
        m = arm["metrics"]
        assert m["fast_lost"] == 0, arm["name"]  # a guarantee in both arms, not a trade-off
        assert m["slow_closed"] in (0, 1)
        assert m["fast_p99_ms"] >= m["fast_p50_ms"] > 0
        assert arm["settings"]["CHATSCALE_SLOW_CLIENT"] == arm["name"]
        assert arm["series"] and arm["series"][0]["gateway memory growth during the burst"]
    # the unbounded arm never closes anyone, whatever the burst
    assert result["arms"][1]["metrics"]["slow_closed"] == 0


# ---- conclusions for every verdict (pure) -------------------------------------------------------


def outcome(name: str, a: dict[str, float], b: dict[str, float]) -> Outcome:
    exp = by_name(name)
    return Outcome(exp, {exp.arms[0].name: [a], exp.arms[1].name: [b]})


SER = {
    "gw_cpu_us_per_delivery": 20.0,
    "send_to_last_ms": 100.0,
    "send_to_last_max_ms": 150.0,
    "deliveries_per_s": 10000.0,
    "gateway_cpu_s": 1.0,
    "fanout_code_us": 2.0,
    "deliveries": 30100.0,
}


@pytest.mark.parametrize(
    ("once", "per", "words"),
    [
        ({}, {"fanout_code_us": 4.0, "gw_cpu_us_per_delivery": 40.0}, "as the guide says"),
        ({}, {"fanout_code_us": 4.0, "gw_cpu_us_per_delivery": 40.0}, "The whole gateway shows"),
        ({}, {"fanout_code_us": 1.0}, "Against the guide"),
        ({}, {"fanout_code_us": 2.1}, "no clear difference"),
        ({}, {"gw_cpu_us_per_delivery": 21.0}, "barely moved"),
        ({}, {"gw_cpu_us_per_delivery": 10.0}, "run-to-run noise"),
        ({}, {"send_to_last_ms": 200.0}, "sooner with one serialization"),
        ({}, {"send_to_last_ms": 50.0}, "did not favour"),
    ],
)
def test_serialize_conclusion_follows_the_numbers(once: dict, per: dict, words: str):
    text = by_name("serialize").conclude(outcome("serialize", {**SER, **once}, {**SER, **per}))
    assert words in text


BP = {
    "fast_p50_ms": 50.0,
    "fast_p99_ms": 100.0,
    "gateway_rss_growth_mib": 1.0,
    "slow_closed": 1.0,
    "fast_lost": 0.0,
}


@pytest.mark.parametrize(
    ("close", "unbounded", "words"),
    [
        ({}, {"gateway_rss_growth_mib": 10.0, "slow_closed": 0.0}, "bounds the gateway's memory"),
        ({"gateway_rss_growth_mib": 10.0}, {"slow_closed": 0.0}, "Against the guide"),
        ({"slow_closed": 0.0}, {"slow_closed": 0.0}, "did not differ clearly"),
        ({}, {"fast_lost": 3.0}, "that is a bug"),
    ],
)
def test_backpressure_conclusion_follows_the_numbers(close: dict, unbounded: dict, words: str):
    text = by_name("backpressure").conclude(
        outcome("backpressure", {**BP, **close}, {**BP, **unbounded})
    )
    assert words in text
