"""The history experiments (scroll-jump-search, cold-tier) run once each at size tiny and give
a number for every metric of every arm; the facts their arms guarantee hold."""

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


async def test_scroll_jump_search_tiny(tmp_path: Path) -> None:
    m = await _run("scroll-jump-search", tmp_path)
    # a jump is one page; search is the query then that page; scrolling ~30 of 40 days is many
    assert m["jump"]["round_trips"] == 1 and m["search"]["round_trips"] == 2
    assert m["jump"]["rows_read"] <= 50 < m["scroll"]["rows_read"]
    assert m["scroll"]["round_trips"] > 10


async def test_cold_tier_tiny(tmp_path: Path) -> None:
    m = await _run("cold-tier", tmp_path)
    assert m["history"]["bytes_per_message"] > 0 and m["cold"]["bytes_per_message"] > 0
    assert m["cold"]["page_p50_ms"] > 0 and m["history"]["page_p50_ms"] > 0
