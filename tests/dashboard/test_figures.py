"""The dashboard's pure parts: its quick /metrics parser agrees with ``ops.top``'s full one on
every sample it keeps, and a result's page is served only for a listed name."""

from __future__ import annotations

import json
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from dashboard import results
from dashboard.figures import SHOWN, figures, parse
from ops import top


def _page() -> str:
    reg = CollectorRegistry()
    Gauge("chatscale_gateway_connections", "c", registry=reg).set(1000)
    frames = Counter("chatscale_gateway_frames_in", "f", registry=reg)
    frames.inc(42)
    deliveries = Counter("chatscale_gateway_deliveries", "d", ["type"], registry=reg)
    deliveries.labels(type="MESSAGE_CREATE").inc(7)
    deliveries.labels(type='odd "quoted" {type}').inc(1)
    stage = Histogram("chatscale_stage_seconds", "s", ["stage"], registry=reg)
    for v in (0.001, 0.004, 0.2):
        stage.labels(stage="hot_write").observe(v)
    Gauge("chatscale_not_shown", "x", registry=reg).set(3)
    return generate_latest(reg).decode()


def test_quick_parser_agrees_with_the_full_one() -> None:
    text = _page()
    full, quick = top.parse(text), parse(text)
    assert set(quick) == {n for n in full if n in SHOWN}
    for name, samples in quick.items():
        assert samples == full[name], name
    assert top.total(quick, "chatscale_gateway_deliveries_total", type="MESSAGE_CREATE") == 7
    hist = top.buckets(quick, "chatscale_stage_seconds", stage="hot_write")
    assert hist[float("inf")] == 3


def test_result_pages_are_served_only_for_listed_names(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "result.json").write_text(json.dumps({"title": "A", "conclusion": "c"}))
    (tmp_path / "a" / "index.html").write_text("<p>a</p>")
    (tmp_path / "b").mkdir()  # a page without its result: not listed, not served
    (tmp_path / "b" / "index.html").write_text("<p>b</p>")
    assert [r["name"] for r in results.listing("lab", tmp_path)] == ["a"]
    assert results.page("lab", tmp_path, "a") == tmp_path / "a" / "index.html"
    for name in ("b", "..", "../a", ".", "", "a/../a"):
        assert results.page("lab", tmp_path, name) is None, name
    assert results.page("nope", tmp_path, "a") is None


def test_scraped_figures_use_the_scrapes_interval_and_redis_figures_their_own() -> None:
    """The dashboard reads Valkey every second and scrapes /metrics every few seconds: rates
    from the scrapes are over the interval between the two scrapes, the workers' over the
    interval between the two Redis reads."""

    def snap(at: float, frames: int, processed: int, scraped: bool) -> top.Snapshot:
        s = top.Snapshot(at=at, wall=1000 + at)
        s.gateways = {"gw-0": {"url": "ws://x", "alive": True}}
        s.workers = {"w-0": {"processed": processed, "shards": [0]}}
        if scraped:
            text = f"chatscale_gateway_frames_in_total {frames}\nchatscale_gateway_connections 7\n"
            s.scrapes = {"gw-0": top.Scrape("gateway", "gw-0", "u", parse(text))}
        return s

    scraped_prev, scraped = snap(0, 100, 0, True), snap(5, 600, 50, True)
    prev, cur = snap(6, 0, 60, False), snap(7, 0, 70, False)
    f = figures(cur, prev, scraped, scraped_prev)
    assert f["gateways"][0]["frames_in_s"] == 100.0  # 500 frames over the 5 s between scrapes
    assert f["gateways"][0]["connections"] == 7
    assert f["workers"][0]["messages_s"] == 10.0  # 10 messages over the 1 s between reads
    assert f["interval_s"] == 1.0 and f["metrics_interval_s"] == 5.0
    assert f["metrics_at"] == 1005
    # without separate scrapes (chatscale top's way) both come from cur/prev
    assert figures(scraped, scraped_prev)["gateways"][0]["frames_in_s"] == 100.0
