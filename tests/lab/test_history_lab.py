"""The history experiments (scroll-jump-search, cold-tier) run once each at size tiny and give
a number for every metric of every arm; the facts their arms guarantee hold."""

from __future__ import annotations

import pytest


async def test_scroll_jump_search_tiny(run_tiny) -> None:
    m = await run_tiny("scroll-jump-search")
    # a jump is one page; search is the query then that page; scrolling ~30 of 40 days is many
    assert m["jump"]["round_trips"] == 1 and m["search"]["round_trips"] == 2
    assert m["jump"]["rows_read"] <= 50 < m["scroll"]["rows_read"]
    assert m["scroll"]["round_trips"] > 10


async def test_cold_tier_tiny(run_tiny) -> None:
    m = await run_tiny("cold-tier")
    assert m["history"]["bytes_per_message"] > 0 and m["cold"]["bytes_per_message"] > 0
    assert m["cold"]["page_p50_ms"] > 0 and m["history"]["page_p50_ms"] > 0


@pytest.mark.slow  # two topology starts (with the indexer process) plus ~1.2 s of chat each
async def test_index_at_write_tiny(run_tiny) -> None:
    m = await run_tiny("index-at-write")
    for arm in ("async", "write"):  # every probe found its message (none hit the bound)
        assert m[arm]["probes"] >= 1 and m[arm]["freshness_p99_ms"] < 5000, m
