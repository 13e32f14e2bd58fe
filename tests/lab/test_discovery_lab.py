"""The discovery experiments (topk-sketch, suggest-bias) run once each at size tiny and give a
number for every metric of every arm; the facts their arms guarantee hold."""

from __future__ import annotations

from pathlib import Path

from lab import runner
from lab.experiments import by_name


async def _run(name: str, out: Path) -> dict:
    result = await runner.run(by_name(name), size="tiny", repeat=1, out=out, say=lambda _t: None)
    assert result["conclusion"]
    for arm in result["arms"]:
        assert arm["unavailable"] is None, arm
        assert all(v is not None for v in arm["metrics"].values()), arm
    return {a["name"]: a["metrics"] for a in result["arms"]}


async def test_topk_sketch_tiny(tmp_path: Path) -> None:
    m = await _run("topk-sketch", tmp_path)
    assert m["exact"]["max_rel_error"] == 0 and m["exact"]["recall_at_k"] == 1
    assert m["exact"]["memory_bytes"] > 0 and m["sketch"]["memory_bytes"] > 0


async def test_suggest_bias_tiny(tmp_path: Path) -> None:
    m = await _run("suggest-bias", tmp_path)
    assert 0 <= m["raw"]["recall_at_10"] <= 1 and 0 < m["corrected"]["coverage"] <= 1
