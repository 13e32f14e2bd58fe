"""The load-test HTML report: each scenario's headline figure has its chart, no chart mixes units.

Reports are built the way ``loadtest.engine.build_report`` builds them — latency summaries from
real ``LatencyRecorder`` histograms (``engine._ms``), time series from real ``TimeSeries``,
the verdict from ``engine.verdict`` — with samples drawn from one seed, so each scenario's
shape (a celebrity's fan-out, a connect storm's connection series, a reconnect storm's
drops, a presence storm's propagation) is there without running a topology. One tiny real
run checks that this hand-built report has exactly the real one's shape.
"""

from __future__ import annotations

import itertools
import random
import re
from html.parser import HTMLParser
from typing import Any

import pytest

from loadtest import report
from loadtest.engine import _ms, verdict
from loadtest.latency import LatencyRecorder, TimeSeries
from tests.conftest import Stack
from tests.loadtest.test_loadtest_engine import _config, _run, consuming  # noqa: F401 (fixture)

T0 = 1_000_000.0


def _recorder(rng: random.Random, n: int, lo_s: float, hi_s: float) -> LatencyRecorder:
    rec = LatencyRecorder()
    for _ in range(n):
        rec.record(rng.uniform(lo_s, hi_s))
    return rec


def synthetic(scenario: str, seed: int = 7) -> dict[str, Any]:
    """A report of ``scenario`` with the keys and value kinds of a real one."""
    rng = random.Random(seed)
    online = 16
    posts = {"celebrity": 10}.get(scenario, 40)
    series, connects = TimeSeries(start=T0), TimeSeries(start=T0)
    latency, fanout = LatencyRecorder(), LatencyRecorder()
    for k in range(posts):
        sent = T0 + k * 0.5
        series.record_send(sent)
        last = 0.0
        for _ in range(online):
            took = rng.uniform(0.002, 0.030) + (0.2 if scenario == "celebrity" else 0.0)
            latency.record(took)
            series.record_delivery(sent, sent + took)
            last = max(last, took)
        fanout.record(last)
    storm = scenario == "connect-storm"
    ready = LatencyRecorder()
    for k in range(online):
        at = T0 + k * 0.2 if storm else T0 - 1.0
        took = rng.uniform(0.01, 0.4)
        ready.record(took)
        if storm:
            connects.record_send(at)
            connects.record_delivery(at, at + took)
    drops = online if scenario == "reconnect-storm" else 0
    resumed = drops * 3 // 4
    resume = _recorder(rng, resumed, 0.005, 0.05)
    new = _recorder(rng, drops - resumed, 0.02, 0.2)
    gap = _recorder(rng, drops, 0.2, 3.0)
    changes = 2 * online if scenario == "presence-storm" else 0
    propagation = _recorder(rng, changes * 3, 0.3, 1.6)
    empty = _ms(LatencyRecorder())
    delivered = posts * online
    r: dict[str, Any] = {
        "scenario": scenario,
        "description": f"{scenario} (synthetic)",
        "command": f"chatscale loadtest {scenario} --community study-group",
        "ready_bound_s": 10.0,
        "cpu_hog": False,
        "started_at": "2026-01-11 20:00:00",
        "machine": {
            "cpus": 2,
            "cpu_model": "test",
            "memory_gib": 4,
            "os": "test",
            "python": "3",
            "load_average_at_start": [0.0, 0.0, 0.0],
        },
        "community": {
            "name": "study-group",
            "seed": 20260111,
            "members": 20,
            "online": online,
            "talkers": 5,
            "lurkers_online": 11,
            "top_10pct_talkers_share": 0.5,
            "messages_per_minute": 120,
            "arrival_s": None,
            "devices_online": {"desktop": online},
            "channels": ["general"],
        },
        "topology": {
            "kind": "given",
            "gateways": ["ws://127.0.0.1:1"],
            "storage_url": "sqlite:///x.db",
            "ingest_shards": 4,
        },
        "load": {"members": 20},
        "plan": {
            "duration_s": 20.0,
            "notes": [],
            "processes": 0,
            "messages": posts,
            "messages_per_s": posts / 20,
            "connections_before_run": 0 if storm else online,
            "connections_during_run": online if storm else 0,
            "connections_per_s": 5.0 if storm else None,
            "status_changes": changes,
            "drops": drops,
            "fault": None,
        },
        "timings": {"setup_s": 1.0, "run_s": 20.0, "drain_s": 1.0},
        "connections": {
            "clients": online,
            "ready": online,
            "attempts_failed": {},
            "refused": {},
            "refused_retried": {"closed 4017 too many IDENTIFYs at once": online // 10}
            if storm
            else {},
            "clients_refused": online // 10 if storm else 0,
            "refused_share": 0.1 if storm else 0.0,
            "dropped_by_server": 0,
            "gave_up": 0,
            "ready_latency_ms": _ms(ready),
            "accepted_per_s": 4.8 if storm else None,
            "close_codes": {},
            "reconnects": drops,
            "drops": drops,
            "resumed": resumed,
            "invalid_session": 0,
            "new_sessions": drops - resumed,
            "resume_latency_ms": _ms(resume),
            "new_session_latency_ms": _ms(new),
            "offline_gap_ms": _ms(gap),
            "ready_at_end": online,
        },
        "messages": {
            "scheduled": posts,
            "acknowledged": posts,
            "offered_per_s": posts / 20,
            "achieved_per_s": posts / 20,
            "send_span_s": 19.5,
            "send_errors": {},
            "not_acknowledged": 0,
            "unsent_at_end": 0,
            "rejected": 0,
            "ack_timeouts": 0,
            "retries": 0,
            "resent_after_new_session": 0,
            "ack_latency_ms": _ms(_recorder(rng, posts, 0.001, 0.01)),
            "in_flight_per_client": 1,
            "send_lag_ms": _ms(_recorder(rng, posts, 0.0, 0.002)),
            "stored": {
                "acknowledged": posts,
                "missing_from_history": 0,
                "stored_twice": 0,
                "read_back_s": 0.1,
                "missing_examples": [],
                "stored_twice_examples": [],
            },
        },
        "deliveries": {
            "received": delivered,
            "per_s": delivered / 21,
            "peak_per_s": 2.0 * online,
            "latency_ms": _ms(latency),
            "expected": delivered,
            "delivered": delivered,
            "lost": 0,
            "duplicated": 0,
            "reordered": 0,
            "unexpected": 0,
            "unknown": 0,
            "early": 0,
            "recovered_from_history": 0,
            "recovered_age_ms": empty,
            "foreign": 0,
            "distinct_audiences": 1,
            "time_to_last_delivery_ms": _ms(fanout),
            "injected": {},
            "examples": {},
        },
        "presence": {
            "status_changes_sent": changes,
            "updates_received": changes * online,
            "bytes_received": changes * online * 200,
            "updates_per_s": changes * online / 21,
            "propagation_ms": _ms(propagation),
            "bytes_per_arrival": changes * 200,
        },
        "faults": [],
        "processes": {
            name: {
                "cpu_avg_pct": 10.0,
                "cpu_max_pct": 20.0,
                "rss_max_mib": 50.0,
                "rss_end_mib": 50.0,
                "samples": 20,
            }
            for name in ("gateway-0", "worker-0", "generator-0")
        },
        "generator": {
            "processes": 1,
            "cpu_s": 1.0,
            "cpu_us_per_delivery": 10.0,
            "in_process": True,
        },
        "machine_load": {
            "machine_cpu_avg_pct": 40.0,
            "ours_cpu_avg_pct": 30.0,
            "others_cpu_avg_pct": 10.0,
        },
        "streams": {
            "ingest_lag_max": 0,
            "ingest_pending_max": 1,
            "ingest_pending_end": 0,
            "presence_lag_max": 0,
            "unreachable_samples": 0,
        },
        "series": {
            "deliveries": series.rows(),
            "connects": connects.rows(),
            "processes": [
                {
                    "t": t + 0.5,
                    "cpu": {"gateway-0": 10.0, "worker-0": 5.0},
                    "rss_mib": {"gateway-0": 50.0, "worker-0": 50.0},
                    "machine_cpu": 40.0,
                }
                for t in range(20)
            ],
            "streams": [
                {"t": t + 0.5, "ingest_lag": 0, "ingest_pending": t % 3, "presence_lag": 0}
                for t in range(20)
            ],
        },
        "latency_histogram": latency.buckets(),
        "latency_percentiles": latency.percentile_curve(),
        "ready_latency_histogram": ready.buckets(),
    }
    r["verdict"] = verdict(r)
    return r


class Figures(HTMLParser):
    """Each <figure>'s data-chart and class, its SVG's unit, and every series' unit in it."""

    def __init__(self) -> None:
        super().__init__()
        self.figures: list[dict[str, Any]] = []
        self.open: dict[str, Any] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "figure":
            self.open = {
                "key": a.get("data-chart"),
                "class": a.get("class") or "",
                "svg_unit": None,
                "series": {},
                "titles": [],
                "text": "",
            }
            self.figures.append(self.open)
        elif self.open is not None and tag == "svg":
            self.open["svg_unit"] = a.get("data-unit")
        elif self.open is not None and "data-series" in a:
            self.open["series"][a["data-series"]] = a.get("data-unit")

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self.open = None

    def handle_data(self, data: str) -> None:
        if self.open is not None:
            self.open["text"] += data


def figures(page: str) -> list[dict[str, Any]]:
    parser = Figures()
    parser.feed(page)
    return parser.figures


# Per scenario: the headline chart's key, and the series (by name prefix) that must plot the
# headline figure, with the report's value that figure's "max" bar or line must carry.
HEADLINES = {
    "steady": ("latency", ["p50", "p99"]),
    "celebrity": ("time-to-last-delivery", ["time to last delivery (n=10)"]),
    "connect-storm": ("connections-per-s", ["attempts/s (scheduled)", "READY/s"]),
    "presence-storm": ("presence-propagation", ["seen by observers (n=96)"]),
    "reconnect-storm": ("reconnect", ["RESUMED (n=12)", "new session READY (n=4)"]),
    "kill-worker": ("latency", ["p50", "p99"]),
}


@pytest.mark.parametrize("scenario", list(HEADLINES))
def test_each_scenario_charts_its_headline_figure_first(scenario: str):
    r = synthetic(scenario)
    page = report.page(r)
    figs = figures(page)
    headline = [f for f in figs if "headline" in f["class"]]
    assert len(headline) == 1, [f["key"] for f in figs]
    key, series = HEADLINES[scenario]
    (lead,) = headline
    assert lead["key"] == key == report.headline_chart(scenario)
    assert lead is next(f for f in figs if f["key"]), "the headline chart comes first"
    assert lead["svg_unit"], f"{key}: no chart drawn ({lead['text'][:80]!r})"
    for name in series:
        assert name in lead["series"], (name, list(lead["series"]))
    assert [f["key"] for f in figs].count(key) == 1  # shown once, as the headline


def test_the_celebrity_chart_carries_the_time_to_last_delivery_values():
    r = synthetic("celebrity")
    t = r["deliveries"]["time_to_last_delivery_ms"]
    html_page = report.page(r)
    lead = next(f for f in figures(html_page) if f["key"] == "time-to-last-delivery")
    assert lead["svg_unit"] == "ms"
    # each bar's tooltip holds its value; the headline is the max and the percentiles
    for label, k in [("p50", "p50_ms"), ("p99", "p99_ms"), ("max", "max_ms")]:
        assert f"time to last delivery (n=10) {label}: {t[k]:,.1f} ms" in lead["text"]


@pytest.mark.parametrize("scenario", list(HEADLINES))
def test_no_chart_mixes_units_on_one_axis(scenario: str):
    page = report.page(synthetic(scenario))
    drawn = [f for f in figures(page) if f["svg_unit"] is not None]
    assert len(drawn) >= 6
    for f in drawn:
        units = set(f["series"].values()) or {f["svg_unit"]}
        assert units == {f["svg_unit"]}, (f["key"], f["series"], f["svg_unit"])
    connect = [f for f in drawn if f["key"] in ("connections-per-s", "ready-latency")]
    if scenario == "connect-storm":  # counts per second and milliseconds: two charts
        assert {f["key"]: f["svg_unit"] for f in connect} == {
            "connections-per-s": "per s",
            "ready-latency": "ms",
        }


def test_a_chart_refuses_two_units():
    with pytest.raises(ValueError, match="mixes units"):
        report.line_chart(
            "bad",
            [report.Series("READY/s", "per s", [(0, 1)]), report.Series("p99", "ms", [(0, 5)])],
        )


def test_x_labels_are_thinned_so_they_do_not_touch():
    bars = [(f"{2**k / 8:g}", float(k + 1)) for k in range(40)]  # 40 buckets on 536 px
    svg = report.bar_chart("h", bars, unit="deliveries", width=600)
    shown = re.findall(r'<text x="([\d.]+)" [^>]*class="small">([^<]+)</text>', svg)
    assert 3 < len(shown) < len(bars)
    for (xa, a), (xb, b) in itertools.pairwise(shown):
        room = (len(a) + len(b)) / 2 * report.CHAR_PX * 0.85  # half of each label, 9 px font
        assert float(xb) - float(xa) >= room, (a, b)


def _missing(real: Any, fake: Any, path: str = "") -> list[str]:
    """Keys of ``real`` (recursively, and in the first row of lists of rows) not in ``fake``."""
    if isinstance(real, list) and real and isinstance(real[0], dict):
        return _missing(real[0], fake[0] if fake else {}, path + "[0]")
    if not isinstance(real, dict):
        return []
    out = []
    for k, v in real.items():
        if k not in fake:
            out.append(f"{path}.{k}")
        elif f"{path}.{k}" not in (
            ".processes",
            ".load",
            ".deliveries.examples",
            ".community.devices_online",
            ".series.processes[0].cpu",
            ".series.processes[0].rss_mib",
        ):
            out += _missing(v, fake[k], f"{path}.{k}")
    return out


async def test_the_synthetic_report_has_the_shape_of_a_real_run(consuming: Stack):  # noqa: F811
    real = await _run(consuming, _config("celebrity", "study-group", duration=1.0, rate=4))
    missing = _missing(real, synthetic("celebrity"))
    assert missing == [], missing
    # and the real run's page leads with its headline chart, drawn
    lead = next(f for f in figures(report.page(real)) if "headline" in f["class"])
    assert lead["key"] == "time-to-last-delivery" and lead["svg_unit"] == "ms"
