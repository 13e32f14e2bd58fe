"""The ingest experiments (log-split, ordering, history-mode) run once at size tiny on real
processes: every arm yields a number for every metric, and the conclusion is a paragraph.
No assertion about which arm wins: that is what the experiment measures."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab import runner
from lab.experiments import by_name

#: Metrics that may be None in a tiny run (nothing was sent during a short stall).
MAY_BE_EMPTY = {"stall_delivery_p99_ms", "delivered_in_stall_pct"}


@pytest.mark.slow  # four (log-split) or two topology starts plus the workload: 13-20 s here
@pytest.mark.parametrize("name", ["log-split", "ordering", "history-mode"])
async def test_tiny_run_has_numbers_for_every_arm(name: str, tmp_path: Path):
    exp = by_name(name)
    result = await runner.run(exp, size="tiny", repeat=1, out=tmp_path, say=lambda _t: None)
    arms = {a["name"]: a for a in result["arms"]}
    assert set(arms) == {a.name for a in exp.arms}
    for arm in exp.arms:
        assert arms[arm.name]["unavailable"] is None, arms[arm.name]["unavailable"]
        [run] = arms[arm.name]["runs"]
        for metric in exp.metrics:
            if metric.key in MAY_BE_EMPTY and run.get(metric.key) is None:
                continue
            assert isinstance(run.get(metric.key), float | int), (arm.name, metric.key, run)
    assert len(result["conclusion"]) > 80
    assert (tmp_path / name / "result.json").exists()
