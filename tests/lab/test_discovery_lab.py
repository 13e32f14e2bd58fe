"""The discovery experiments (topk-sketch, suggest-bias) run once each at size tiny and give a
number for every metric of every arm; the facts their arms guarantee hold."""

from __future__ import annotations


async def test_topk_sketch_tiny(run_tiny) -> None:
    m = await run_tiny("topk-sketch")
    assert m["exact"]["max_rel_error"] == 0 and m["exact"]["recall_at_k"] == 1
    assert m["exact"]["memory_bytes"] > 0 and m["sketch"]["memory_bytes"] > 0


async def test_suggest_bias_tiny(run_tiny) -> None:
    m = await run_tiny("suggest-bias")
    assert 0 <= m["raw"]["recall_at_10"] <= 1 and 0 < m["corrected"]["coverage"] <= 1
