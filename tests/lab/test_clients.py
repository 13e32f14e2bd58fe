"""The polling and bans experiments, once each at size tiny, on real processes.

Shape: every arm ran, every metric has a number, the conclusion was computed; and the
guarantees each arm must keep (polling: every message reaches every reader; bans: the strong
path leaks nothing). No performance outcome is asserted (which arm wins is what the lab is for).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lab import runner
from lab.experiments import by_name


@pytest.mark.slow  # 12-14 s each here: two topology starts (~3.6 s) and stops (~1 s) per run
@pytest.mark.parametrize("name", ["polling", "bans"])
async def test_tiny_run_has_numbers_for_every_arm(name: str, tmp_path: Path):
    exp = by_name(name)
    result = await runner.run(exp, size="tiny", repeat=1, out=tmp_path, say=lambda _t: None)
    assert [a["name"] for a in result["arms"]] == [a.name for a in exp.arms]
    for arm in result["arms"]:
        assert arm["unavailable"] is None
        missing = [k for k, v in arm["metrics"].items() if v is None]
        assert not missing, f"{name}/{arm['name']}: no number for {missing}"
        assert len(arm["runs"]) == 1
    assert result["conclusion"]
    assert (tmp_path / name / "result.json").exists()
    arms = {a["name"]: a["metrics"] for a in result["arms"]}
    if name == "polling":  # the knob shapes what each arm does; nothing is lost in either
        assert arms["push"]["requests_per_delivery"] == 0
        assert arms["poll"]["requests_per_delivery"] > 0
        assert arms["push"]["delivered_pct"] == arms["poll"]["delivered_pct"] == 100
    else:  # the strong path's promise: nothing after the call returned, in any run
        assert arms["strong"]["leaked_received"] == arms["strong"]["leaked_sent"] == 0
