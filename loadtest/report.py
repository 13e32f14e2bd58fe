"""A load test's report three ways: a table for the terminal, JSON with everything, and one
self-contained HTML page whose charts are inline SVG (no script, no CDN, nothing fetched).

Each scenario's headline figure comes first, with its chart (``HEADLINE_CHART``): delivery
latency over time (steady, faults), time to last delivery per post (celebrity), connections
per second (connect-storm), presence propagation (presence-storm), time back after a drop
(reconnect-storm). Then: deliveries and messages per second over time, latency p50/p99 over
time (by intended send time, so a stall shows where it began), the latency histogram and
percentile curve, READY latency over time (storms), CPU of every process over time, consumer
lag and pending entries. Faults are drawn as vertical lines on every time chart. A chart has
one unit on its one y axis (counts per second and milliseconds are never drawn together).
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COLORS = [
    "#2563eb",
    "#dc2626",
    "#16a34a",
    "#9333ea",
    "#ea580c",
    "#0891b2",
    "#be185d",
    "#65a30d",
    "#4b5563",
    "#ca8a04",
    "#7c3aed",
    "#0f766e",
]


# ---- terminal ------------------------------------------------------------------------------------


def _n(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _codes(d: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v:,}" for k, v in d.items()) or "none"


def _stored(m: dict[str, Any]) -> str:
    s = m.get("stored")
    if not s:
        return "not checked"
    return (
        f"{s['acknowledged'] - s['missing_from_history']:,} of {s['acknowledged']:,} in history"
        f" ({s['missing_from_history']:,} missing, {s['stored_twice']:,} stored twice)"
    )


def presence_per_arrival(report: dict[str, Any]) -> dict[str, float] | None:
    """Presence received by all clients, divided by the clients that reached READY: what one
    arrival cost in presence traffic (every arrival is one status change that others may be
    told about). None when nobody arrived. Lazy guilds make it flat; without them it grows
    with the crowd (docs/benchmarks.md, *Lazy guilds*)."""
    arrivals = report["connections"]["ready"]
    if not arrivals:
        return None
    p = report["presence"]
    return {
        "arrivals": arrivals,
        "bytes": round(p["bytes_received"] / arrivals, 1),
        "frames": round(p["updates_received"] / arrivals, 2),
    }


def presence_per_arrival_line(per: dict[str, float]) -> str:
    return (
        f"presence per arrival       {per['bytes']:,.0f} bytes in {per['frames']:,.2f} updates"
        f" received ({per['arrivals']:,.0f} arrivals)"
    )


def text(report: dict[str, Any]) -> str:
    c, m, d, conn = (
        report["community"],
        report["messages"],
        report["deliveries"],
        report["connections"],
    )
    lat = d["latency_ms"]
    lines = [
        f"chatscale loadtest {report['scenario']} — {report['description']}",
        f"community {c['name']} (seed {c['seed']}): {c['members']:,} members, {c['online']:,} online, "
        f"{c['talkers']:,} talkers; topology {report['topology']['kind']} "
        f"({len(report['topology']['gateways'])} gateways, {report['topology']['storage_url']})",
        f"phases: setup {report['timings'].get('setup_s', 0):.1f}s, run {report['timings'].get('run_s', 0):.1f}s, "
        f"drain {report['timings'].get('drain_s', 0):.1f}s; {report['plan']['processes']} generator process(es)",
        "",
        f"{'':28}{'offered':>14}{'achieved':>14}",
        f"{'messages/s':28}{_n(m['offered_per_s'], 2):>14}{_n(m['achieved_per_s'], 2):>14}",
        f"{'messages':28}{_n(m['scheduled']):>14}{_n(m['acknowledged']):>14}   (acknowledged)",
        f"{'connections':28}{_n(conn['clients']):>14}{_n(conn['ready']):>14}   (READY; {_n(conn['ready_at_end'])} at the end)",
    ]
    if conn["accepted_per_s"] is not None:
        lines.append(
            f"{'connections/s':28}{_n(report['plan']['connections_per_s']):>14}{_n(conn['accepted_per_s']):>14}"
        )
    rl = conn["ready_latency_ms"]
    lines += [
        f"{'deliveries/s':28}{'':>14}{_n(d['per_s']):>14}   (peak {_n(d['peak_per_s'], 0)}/s; {_n(d['received'])} received)",
        "",
        f"latency send→receive ms    p50 {_n(lat['p50_ms'], 2)}  p90 {_n(lat['p90_ms'], 2)}  p99 {_n(lat['p99_ms'], 2)}"
        f"  p99.9 {_n(lat['p999_ms'], 2)}  max {_n(lat['max_ms'], 2)}  (n={_n(lat['measured'])})",
        f"time to last delivery ms   p50 {_n(d['time_to_last_delivery_ms']['p50_ms'], 1)}  p99 {_n(d['time_to_last_delivery_ms']['p99_ms'], 1)}"
        f"  max {_n(d['time_to_last_delivery_ms']['max_ms'], 1)}  (per message: its whole audience served; n={_n(d['time_to_last_delivery_ms']['measured'])})",
        f"READY latency ms           p50 {_n(rl['p50_ms'], 1)}  p90 {_n(rl['p90_ms'], 1)}  p99 {_n(rl['p99_ms'], 1)}"
        f"  max {_n(rl['max_ms'], 1)}  (n={_n(rl['measured'])})",
        f"deliveries lost/dup/reord  {d['lost']:,} / {d['duplicated']:,} / {d['reordered']:,}"
        f"   (expected {d['expected']:,}; unexpected {d['unexpected']:,}; unknown {d['unknown']:,})",
        f"acknowledged, stored       {_stored(m)}",
        f"recovered from history     {d['recovered_from_history']:,}   (early, before READY: {d['early']:,};"
        f" delivered but never acknowledged: {d.get('delivered_not_acknowledged', 0):,})",
        f"connect failures           {_codes(conn['attempts_failed'])}; gave up {conn['gave_up']:,}",
        f"close codes seen           {_codes(conn['close_codes'])}",
        f"refused, retried later     {_codes(conn.get('refused_retried', {}))}; clients refused at least"
        f" once {conn.get('clients_refused', 0):,} ({conn.get('refused_share', 0):.1%}); READY sessions"
        f" closed by the server {conn.get('dropped_by_server', 0):,}",
        f"reconnects                 {conn['reconnects']:,} (drops {conn['drops']:,}, RESUMED {conn['resumed']:,},"
        f" INVALID_SESSION {conn['invalid_session']:,}, new sessions {conn['new_sessions']:,})",
        f"reconnect ms (attempt →)   RESUMED p50 {_n(conn['resume_latency_ms']['p50_ms'])} max {_n(conn['resume_latency_ms']['max_ms'])};"
        f" new session READY p50 {_n(conn['new_session_latency_ms']['p50_ms'])} max {_n(conn['new_session_latency_ms']['max_ms'])};"
        f" offline (loss → back) p50 {_n(conn['offline_gap_ms']['p50_ms'])} max {_n(conn['offline_gap_ms']['max_ms'])}",
        f"send lag (actual−intended) p50 {_n(m['send_lag_ms']['p50_ms'], 2)}  p99 {_n(m['send_lag_ms']['p99_ms'], 2)}"
        f"  max {_n(m['send_lag_ms']['max_ms'], 2)} ms; ack p50 {_n(m['ack_latency_ms']['p50_ms'], 2)}"
        f" p99 {_n(m['ack_latency_ms']['p99_ms'], 2)} ms; {m['in_flight_per_client']} in flight per client",
        f"send errors                {_codes(m['send_errors'])}; not acknowledged {m['not_acknowledged']:,};"
        f" unsent {m['unsent_at_end']:,}; retries {m['retries']:,}; ack timeouts {m['ack_timeouts']:,};"
        f" sent again unchanged after a new session {m['resent_after_new_session']:,}",
    ]
    p = report["presence"]
    if p["status_changes_sent"] or p["updates_received"]:
        pl = p["propagation_ms"]
        lines.append(
            f"presence                   {p['status_changes_sent']:,} changes sent; {p['updates_received']:,} updates"
            f" received ({_n(p['updates_per_s'])}/s, {p['bytes_received'] / 2**20:,.1f} MiB);"
            f" seen by observers p50 {_n(pl['p50_ms'], 0)} / p99 {_n(pl['p99_ms'], 0)} ms (n={pl['measured']});"
            f" {_n(p.get('bytes_per_arrival', 0))} bytes per arrival"
        )
    per_arrival = presence_per_arrival(report)
    if per_arrival is not None:
        lines.append(presence_per_arrival_line(per_arrival))
    s = report["streams"]
    lines.append(
        f"streams                    ingest lag max {_n(s['ingest_lag_max'])}, pending max {_n(s['ingest_pending_max'])},"
        f" pending at end {_n(s['ingest_pending_end'])}; presence lag max {_n(s['presence_lag_max'])};"
        f" Redis unreachable for {s['unreachable_samples']} sample(s)"
    )
    for f in report["faults"]:
        lines.append(f"fault/event  t={f['t']:6.1f}s  {f['what']}")
    lines += [
        "",
        f"{'process':24}{'cpu avg %':>10}{'cpu max %':>10}{'rss max MiB':>13}{'rss end MiB':>13}",
    ]
    for name, row in report["processes"].items():
        lines.append(
            f"{name:24}{row['cpu_avg_pct']:>10.1f}{row['cpu_max_pct']:>10.1f}{row['rss_max_mib']:>13.1f}{row['rss_end_mib']:>13.1f}"
        )
    g = report["generator"]
    lines.append(
        f"generator CPU {g['cpu_s']:.1f}s = {g['cpu_us_per_delivery']:.1f} µs per delivery (whole run)"
    )
    lines.append("")
    lines.append(
        ("CLEAN" if report["verdict"]["clean"] else "NOT CLEAN")
        + ": "
        + "; ".join(report["verdict"]["notes"])
    )
    return "\n".join(lines)


# ---- files ---------------------------------------------------------------------------------------


def write(report: dict[str, Any], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    j = out / "report.json"
    h = out / "report.html"
    j.write_text(json.dumps(report, indent=1, default=str))
    h.write_text(page(report))
    return j, h


# ---- SVG charts ---------------------------------------------------------------------------------
#
# Every plotted series carries its unit, and a chart draws one unit on its one y axis (line_chart
# and percentile_bars refuse a mix: two units on one axis make one of them unreadable). The unit
# is the axis title and travels in the SVG as data-unit, on the <svg> and on every series, so a
# test can check it. Legends sit above the plot, the axis title is turned along the y axis, and
# x labels are thinned to fit: no text is drawn over a tick label.

CHAR_PX = 7.0  # width of a character at the 11 px chart font (capitals included), generous
PERCENTILES = [("p50", "p50_ms"), ("p90", "p90_ms"), ("p99", "p99_ms"), ("p99.9", "p999_ms")]


@dataclass(frozen=True)
class Series:
    name: str
    unit: str  # of the y values: "ms", "per s", "%", "entries", ...
    points: list[tuple[float, float | None]]  # (x, y); None: a gap


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((s * mag for s in (1, 2, 2.5, 5, 10) if s * mag >= raw), default=raw)
    first = math.ceil(lo / step) * step
    out, v = [], first
    while v <= hi + 1e-9:
        out.append(round(v, 10))
        v += step
    return out


def _fmt(v: float) -> str:
    if abs(v) >= 1000:
        return f"{v / 1000:g}k"
    return f"{v:g}"


def _one_unit(title: str, series: list[Series]) -> str:
    units = {s.unit for s in series}
    if len(units) != 1:
        raise ValueError(f"chart {title!r} mixes units on one axis: {sorted(units)}")
    return units.pop()


def _legend(names: list[str], width: int, left: int) -> tuple[list[str], int]:
    """Legend entries laid out left to right above the plot; returns (SVG parts, height)."""
    parts, x, row = [], left, 0
    for i, name in enumerate(names):
        w = 24 + len(name) * CHAR_PX
        if x + w > width and x > left:
            x, row = left, row + 1
        y = 12 + row * 15
        color = COLORS[i % len(COLORS)]
        parts.append(f'<rect x="{x:.0f}" y="{y - 5}" width="12" height="4" fill="{color}" />')
        parts.append(f'<text x="{x + 16:.0f}" y="{y}" class="legend">{html.escape(name)}</text>')
        x += w
    return parts, 15 * (row + 1) + 6 if names else 8


def _axis_title(unit: str, top: int, bottom_y: float) -> str:
    cy = (top + bottom_y) / 2
    return (
        f'<text x="14" y="{cy:.0f}" transform="rotate(-90 14 {cy:.0f})" text-anchor="middle"'
        f' class="lab">{html.escape(unit)}</text>'
    )


def _figure(title: str, svg: str, key: str | None) -> str:
    attr = f' data-chart="{html.escape(key)}"' if key else ""
    return f"<figure{attr}><figcaption>{html.escape(title)}</figcaption>{svg}</figure>"


def _empty(title: str, key: str | None) -> str:
    return _figure(title, "<p class='empty'>no data</p>", key)


def line_chart(
    title: str,
    series: list[Series],
    *,
    key: str | None = None,
    x_label: str = "seconds since start",
    x_ticks: list[tuple[float, str]] | None = None,
    markers: list[tuple[float, str]] | None = None,
    log_y: bool = False,
    width: int = 900,
    height: int = 260,
) -> str:
    """Lines over x, one unit on the y axis (``ValueError`` for a mix); ``key`` names the
    chart in the page (``data-chart``)."""
    unit = _one_unit(title, series)
    pts = [(x, y) for s in series for x, y in s.points if y is not None]
    if not pts:
        return _empty(title, key)
    left, right, bottom = 64, 16, 40
    legend, top = _legend([s.name for s in series], width - right, left)
    height += top
    xs = [x for x, _ in pts] + [x for x, _ in (markers or [])]
    x0, x1 = min(xs), max(xs)
    if x1 <= x0:  # one x (a storm within one second): centre it instead of on the frame
        x0, x1 = x0 - 0.5, x0 + 0.5
    ys = [y for _, y in pts]
    if log_y:
        floor = max(min(y for y in ys if y > 0) if any(y > 0 for y in ys) else 0.01, 0.01)
        y0 = math.floor(math.log10(floor))  # whole decades: ticks on the axis ends
        y1 = max(y0 + 1, math.ceil(math.log10(max(ys))))
    else:
        y0, y1 = 0.0, max(ys) * 1.08 or 1.0

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def sy(y: float) -> float:
        v = math.log10(max(y, 10**y0)) if log_y else y
        return height - bottom - (v - y0) / (y1 - y0) * (height - top - bottom)

    parts = [
        f'<svg viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}"'
        f' data-unit="{html.escape(unit)}">',
        *legend,
    ]
    yticks = [10**e for e in range(math.floor(y0), math.ceil(y1) + 1)] if log_y else _ticks(y0, y1)
    for t in yticks:
        y = sy(t)
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="grid" />'
        )
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    lowest = min(xs)
    xt = x_ticks
    if xt is None:  # no negative ticks added by the padding of a single x
        xt = [(t, _fmt(t)) for t in _ticks(x0, x1, 8) if t >= min(lowest, 0)]
    last_end = -math.inf
    for t, label in xt:
        x = sx(t)
        half = len(label) * CHAR_PX / 2
        if x - half < last_end + 4:
            continue  # would touch the previous label
        last_end = x + half
        parts.append(
            f'<text x="{x:.1f}" y="{height - bottom + 16}" text-anchor="middle">{html.escape(label)}</text>'
        )
    parts.append(
        f'<text x="{(left + width) / 2}" y="{height - 4}" text-anchor="middle" class="lab">{html.escape(x_label)}</text>'
    )
    parts.append(_axis_title(unit, top, height - bottom))
    for i, (mx, label) in enumerate(markers or []):
        x = sx(mx)
        parts.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{height - bottom}" class="fault" />'
        )
        y = top + 12 + 12 * i  # staggered from the top of the plot, clear of the x labels
        anchor = "end" if x > width * 0.6 else "start"
        dx = -3 if anchor == "end" else 3
        parts.append(
            f'<text x="{x + dx:.1f}" y="{y}" text-anchor="{anchor}" class="faultlab">{html.escape(label[:48])}</text>'
        )
    for i, s in enumerate(series):
        color = COLORS[i % len(COLORS)]
        path, pen = [], "M"
        for k, (x, y) in enumerate(s.points):
            if y is None:
                pen = "M"
                continue
            path.append(f"{pen}{sx(x):.1f},{sy(y):.1f}")
            before = s.points[k - 1][1] if k > 0 else None
            after = s.points[k + 1][1] if k + 1 < len(s.points) else None
            if before is None and after is None:  # an isolated point: a line would not show it
                parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{color}" />')
                parts.append(  # and its value, right of it (series stacked: no overprint)
                    f'<text x="{sx(x) + 6:.1f}" y="{sy(y) + 4 + 13 * i:.1f}" class="value"'
                    f' fill="{color}">{html.escape(s.name)}: {_fmt(round(y, 1))}</text>'
                )
            pen = "L"
        parts.append(
            f'<path d="{" ".join(path)}" stroke="{color}" fill="none" stroke-width="1.6"'
            f' data-series="{html.escape(s.name)}" data-unit="{html.escape(s.unit)}" />'
        )
    parts.append(
        f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" class="frame" />'
    )
    parts.append("</svg>")
    return _figure(title, "".join(parts), key)


def bar_chart(
    title: str,
    bars: list[tuple[str, float]],
    *,
    key: str | None = None,
    unit: str = "",
    x_label: str = "",
    width: int = 900,
    height: int = 240,
) -> str:
    """One bar per (label, value): a histogram. Labels are thinned to fit."""
    if not bars or not any(v for _, v in bars):
        return _empty(title, key)
    left, right, top, bottom = 64, 16, 16, 48
    top_v = max(v for _, v in bars) * 1.08
    bw = (width - left - right) / len(bars)
    parts = [
        f'<svg viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}"'
        f' data-unit="{html.escape(unit)}">'
    ]
    for t in _ticks(0, top_v):
        y = height - bottom - t / top_v * (height - top - bottom)
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="grid" />'
        )
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    widest = max(len(label) for label, _ in bars) * CHAR_PX * 0.85 + 4  # the 9 px font
    every = max(1, math.ceil(widest / bw))
    for i, (label, v) in enumerate(bars):
        h = v / top_v * (height - top - bottom)
        x = left + i * bw
        parts.append(
            f'<rect x="{x + 1:.1f}" y="{height - bottom - h:.1f}" width="{max(1, bw - 2):.1f}" height="{h:.1f}" fill="{COLORS[0]}" data-unit="{html.escape(unit)}"><title>≤ {html.escape(label)}: {v:,.0f}</title></rect>'
        )
        if i % every == 0:
            parts.append(
                f'<text x="{x + bw / 2:.1f}" y="{height - bottom + 14}" text-anchor="middle" class="small">{html.escape(label)}</text>'
            )
    parts.append(
        f'<text x="{(left + width) / 2}" y="{height - 6}" text-anchor="middle" class="lab">{html.escape(x_label)}</text>'
    )
    parts.append(_axis_title(unit, top, height - bottom))
    parts.append("</svg>")
    return _figure(title, "".join(parts), key)


def percentile_bars(
    title: str,
    groups: list[tuple[str, dict[str, Any]]],
    *,
    key: str | None = None,
    unit: str = "ms",
    width: int = 900,
    height: int = 240,
) -> str:
    """p50/p90/p99/p99.9/max of latency summaries (``LatencyRecorder.summary()``), one bar
    per summary in each group, the value written above each bar. All in ``unit``."""
    series = [
        Series(
            f"{name} (n={s.get('measured') or s.get('count'):,})",
            unit,
            [(i, s.get(k)) for i, (_, k) in enumerate(PERCENTILES)] + [(4, s.get("max_ms"))],
        )
        for name, s in groups
        if s.get("measured") or s.get("count")
    ]
    if not series:
        return _empty(title, key)
    _one_unit(title, series)
    values = [y for s in series for _, y in s.points if y is not None]
    left, right, bottom = 64, 16, 40
    legend, top = _legend([s.name for s in series], width - right, left)
    height += top
    top_v = (max(values) or 1.0) * 1.15  # room for the value labels
    cats = [label for label, _ in PERCENTILES] + ["max"]
    slot = (width - left - right) / len(cats)
    bw = slot * 0.8 / len(series)

    def sy(v: float) -> float:
        return height - bottom - v / top_v * (height - top - bottom)

    parts = [
        f'<svg viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}"'
        f' data-unit="{html.escape(unit)}">',
        *legend,
    ]
    for t in _ticks(0, top_v):
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" class="grid" />'
        )
        parts.append(f'<text x="{left - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    for c, label in enumerate(cats):
        cx = left + (c + 0.5) * slot
        parts.append(
            f'<text x="{cx:.1f}" y="{height - bottom + 16}" text-anchor="middle">{label}</text>'
        )
    for i, s in enumerate(series):
        color = COLORS[i % len(COLORS)]
        parts.append(f'<g data-series="{html.escape(s.name)}" data-unit="{html.escape(s.unit)}">')
        for c, v in s.points:
            if v is None:
                continue
            x = left + c * slot + slot * 0.1 + i * bw
            parts.append(
                f'<rect x="{x:.1f}" y="{sy(v):.1f}" width="{max(1.0, bw - 2):.1f}" height="{sy(0) - sy(v):.1f}" fill="{color}"><title>{html.escape(s.name)} {cats[int(c)]}: {v:,.1f} {html.escape(unit)}</title></rect>'
            )
            text = _fmt(round(v, 1) if v < 100 else round(v))
            if len(text) * CHAR_PX * 0.9 <= bw + 6:  # the value fits over its bar
                parts.append(
                    f'<text x="{x + (bw - 2) / 2:.1f}" y="{sy(v) - 4:.1f}" text-anchor="middle" class="value">{text}</text>'
                )
        parts.append("</g>")
    parts.append(
        f'<text x="{(left + width) / 2}" y="{height - 4}" text-anchor="middle" class="lab">percentile</text>'
    )
    parts.append(_axis_title(unit, top, height - bottom))
    parts.append(
        f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" class="frame" />'
    )
    parts.append("</svg>")
    return _figure(title, "".join(parts), key)


def percentile_chart(
    curve: list[tuple[float, float]], *, width: int = 900, height: int = 260
) -> str:
    """Latency by percentile with the x axis stretched towards the tail (1 / (1 - p))."""
    if not curve:
        return ""
    pts = [(math.log10(1 / max(1e-6, 1 - p / 100)) if p < 100 else None, v) for p, v in curve]
    finite = [(x, v) for x, v in pts if x is not None]
    xmax = max(x for x, _ in finite) + 0.5
    labels = [(0.0, "p0"), (1.0, "p90"), (2.0, "p99"), (3.0, "p99.9"), (4.0, "p99.99")]
    labels = [(k, v) for k, v in labels if k < xmax - 0.4] + [(xmax, "max")]
    return line_chart(
        "Latency by percentile (log scale; right edge = max)",
        [Series("latency", "ms", [(x if x is not None else xmax, v) for x, v in pts])],
        key="latency-percentiles",
        x_label="percentile (stretched towards the tail)",
        x_ticks=labels,
        log_y=True,
        width=width,
        height=height,
    )


# ---- the page -------------------------------------------------------------------------------------

# The chart (data-chart key) that shows each scenario's headline figure; faults: latency over time,
# with the fault marked, and the deliveries it may have cost.
HEADLINE_CHART = {
    "steady": "latency",
    "celebrity": "time-to-last-delivery",
    "connect-storm": "connections-per-s",
    "presence-storm": "presence-propagation",
    "reconnect-storm": "reconnect",
}


def headline_chart(scenario: str) -> str:
    return HEADLINE_CHART.get(scenario, "latency")


def _headline(r: dict[str, Any]) -> str:
    """The scenario's headline figure in words (above its chart)."""
    d, c, p = r["deliveries"], r["connections"], r["presence"]
    scenario = r["scenario"]
    if scenario == "celebrity":
        t = d["time_to_last_delivery_ms"]
        return (
            f"time to last delivery (a post reaching its whole audience of up to "
            f"{c['ready']:,}): p50 {t['p50_ms']:,.1f} ms · p99 {t['p99_ms']:,.1f} ms · "
            f"max {t['max_ms']:,.1f} ms over {t['measured']:,} posts"
        )
    if scenario == "connect-storm":
        rl = c["ready_latency_ms"]
        return (
            f"{c['ready']:,} of {c['clients']:,} READY · {_n(c['accepted_per_s'])} accepted/s "
            f"(offered {_n(r['plan']['connections_per_s'])}/s) · READY p50 {rl['p50_ms']:,.1f} ms · "
            f"p99 {rl['p99_ms']:,.1f} ms"
        )
    if scenario == "presence-storm":
        pl = p["propagation_ms"]
        return (
            f"{p['status_changes_sent']:,} status changes · {p['updates_received']:,} updates "
            f"received ({_n(p['updates_per_s'])}/s) · seen by observers p50 {pl['p50_ms']:,.0f} ms · "
            f"p99 {pl['p99_ms']:,.0f} ms"
        )
    if scenario == "reconnect-storm":
        return (
            f"{c['drops']:,} drops · {c['resumed']:,} RESUMED (p50 "
            f"{c['resume_latency_ms']['p50_ms']:,.0f} ms) · {c['new_sessions']:,} new sessions "
            f"(p50 {c['new_session_latency_ms']['p50_ms']:,.0f} ms) · INVALID_SESSION "
            f"{c['invalid_session']:,} · offline max {c['offline_gap_ms']['max_ms']:,.0f} ms"
        )
    lat = d["latency_ms"]
    return (
        f"{r['messages']['achieved_per_s']:,} msg/s → {d['per_s']:,.0f} deliveries/s · "
        f"p50 {lat['p50_ms']:.1f} ms · p99 {lat['p99_ms']:.1f} ms · max {lat['max_ms']:.1f} ms"
    )


def charts(r: dict[str, Any]) -> dict[str, str]:
    """Every chart of the page by its key, in page order."""
    markers = [(f["t"], f["what"]) for f in r["faults"]]
    rows = r["series"]["deliveries"]
    d, c, p = r["deliveries"], r["connections"], r["presence"]
    out: dict[str, str] = {}
    out["deliveries-per-s"] = line_chart(
        "Deliveries per second (by receive time)",
        [Series("deliveries/s", "per s", [(x["t"], x["deliveries"]) for x in rows])],
        key="deliveries-per-s",
        markers=markers,
    )
    out["messages-per-s"] = line_chart(
        "Messages per second (acknowledged, by intended send time)",
        [Series("messages/s", "per s", [(x["t"], x["sends"]) for x in rows])],
        key="messages-per-s",
        markers=markers,
    )
    out["latency"] = line_chart(
        "Latency send → receive over time (by intended send time; log scale)",
        [
            Series("p50", "ms", [(x["t"], x["p50_ms"]) for x in rows]),
            Series("p99", "ms", [(x["t"], x["p99_ms"]) for x in rows]),
        ],
        key="latency",
        markers=markers,
        log_y=True,
    )
    out["latency-histogram"] = bar_chart(
        "Latency histogram (send → receive)",
        [(_fmt(upper), float(count)) for upper, count in r["latency_histogram"]],
        key="latency-histogram",
        unit="deliveries",
        x_label="latency ≤ ms (log₂ buckets)",
    )
    out["latency-percentiles"] = percentile_chart(
        [tuple(x) for x in r["latency_percentiles"]]  # type: ignore[misc]
    )
    if r["scenario"] == "celebrity" or d["time_to_last_delivery_ms"].get("measured"):
        out["time-to-last-delivery"] = percentile_bars(
            "Time to last delivery: from a post's intended send time until its last recipient"
            " had it (per post), beside one delivery's latency",
            [
                ("time to last delivery", d["time_to_last_delivery_ms"]),
                ("send → receive, per delivery", d["latency_ms"]),
            ],
            key="time-to-last-delivery",
        )
    connects = r["series"]["connects"]
    if any(x["deliveries"] or x["sends"] for x in connects):
        out["connections-per-s"] = line_chart(
            "Connections per second: attempts scheduled and READY received",
            [
                Series("attempts/s (scheduled)", "per s", [(x["t"], x["sends"]) for x in connects]),
                Series("READY/s", "per s", [(x["t"], x["deliveries"]) for x in connects]),
            ],
            key="connections-per-s",
            markers=markers,
        )
        out["ready-latency"] = line_chart(
            "READY latency over time (by first attempt; retries included; log scale)",
            [
                Series("p50", "ms", [(x["t"], x["p50_ms"]) for x in connects]),
                Series("p99", "ms", [(x["t"], x["p99_ms"]) for x in connects]),
            ],
            key="ready-latency",
            markers=markers,
            log_y=True,
        )
    if c["drops"] or r["scenario"] == "reconnect-storm":
        out["reconnect"] = percentile_bars(
            "Back after a dropped connection: RESUMED and new-session READY (from the first"
            " attempt), and the whole time offline",
            [
                ("RESUMED", c["resume_latency_ms"]),
                ("new session READY", c["new_session_latency_ms"]),
                ("offline (loss → back)", c["offline_gap_ms"]),
            ],
            key="reconnect",
        )
    if (
        p["status_changes_sent"]
        or p["propagation_ms"]["measured"]
        or r["scenario"] == "presence-storm"
    ):
        out["presence-propagation"] = percentile_bars(
            "Presence: from a status change until an observer saw it",
            [("seen by observers", p["propagation_ms"])],
            key="presence-propagation",
        )
    procs = r["series"]["processes"]
    names = sorted({n for row in procs for n in row["cpu"]})
    out["cpu"] = line_chart(
        "CPU per process (% of one core)",
        [Series(n, "%", [(row["t"], row["cpu"].get(n)) for row in procs]) for n in names]
        + [Series("whole machine", "%", [(row["t"], row.get("machine_cpu")) for row in procs])],
        key="cpu",
        markers=markers,
    )
    st = r["series"]["streams"]
    out["streams"] = line_chart(
        "Consumer groups: ingest lag and pending entries (XINFO GROUPS)",
        [
            Series("ingest lag", "entries", [(s["t"], s.get("ingest_lag")) for s in st]),
            Series("ingest pending", "entries", [(s["t"], s.get("ingest_pending")) for s in st]),
            Series("presence lag", "entries", [(s["t"], s.get("presence_lag")) for s in st]),
        ],
        key="streams",
        markers=markers,
    )
    return out


SECTIONS = [
    ("Throughput", ["deliveries-per-s", "messages-per-s"]),
    ("Latency", ["latency", "latency-histogram", "latency-percentiles", "time-to-last-delivery"]),
    ("Connections", ["connections-per-s", "ready-latency", "reconnect"]),
    ("Presence", ["presence-propagation"]),
    ("Processes", ["cpu", "streams"]),
]


def page(report: dict[str, Any]) -> str:
    r = report
    figures = charts(r)
    key = headline_chart(r["scenario"])
    lead = figures.pop(key, None) or _empty(f"{key}: not measured", key)
    lead = lead.replace("<figure", '<figure class="headline"', 1)
    body = []
    for title, keys in SECTIONS:
        shown = [figures[k] for k in keys if k in figures]
        if shown:
            body.append(f"<h2>{title}</h2>{''.join(shown)}")
    table = html.escape(text(report))
    d = r["deliveries"]
    losses = (
        f"deliveries lost {d['lost']:,} · dup {d['duplicated']:,} · reordered {d['reordered']:,}"
    )
    status = "clean" if r["verdict"]["clean"] else "not clean"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>chatscale loadtest {html.escape(r["scenario"])} · {html.escape(r["community"]["name"])}</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 960px; color: #111; }}
h1 {{ font-size: 20px; margin: 0 0 4px; }} h2 {{ font-size: 16px; margin: 28px 0 8px; }}
.sub {{ color: #555; }} .clean {{ color: #15803d; }} .notclean {{ color: #b91c1c; }}
figure {{ margin: 18px 0; }} figcaption {{ font-weight: 600; margin-bottom: 4px; }}
figure.headline {{ border-left: 3px solid #2563eb; padding-left: 10px; margin-left: -13px; }}
svg {{ width: 100%; height: auto; font-size: 11px; }} svg text {{ fill: #374151; }}
.grid {{ stroke: #e5e7eb; }} .frame {{ fill: none; stroke: #9ca3af; }}
.fault {{ stroke: #dc2626; stroke-dasharray: 4 3; }} .faultlab {{ fill: #b91c1c; font-size: 10px; }}
.lab {{ font-size: 11px; fill: #6b7280; }} .legend {{ font-size: 11px; }} .small {{ font-size: 9px; }}
.value {{ font-size: 10px; }}
pre {{ background: #f9fafb; border: 1px solid #e5e7eb; padding: 12px; overflow-x: auto; font-size: 12px; }}
.empty {{ color: #9ca3af; }}
</style></head><body>
<h1>chatscale loadtest: {html.escape(r["scenario"])} on {html.escape(r["community"]["name"])}</h1>
<div class="sub">{html.escape(r["description"])} · started {html.escape(r["started_at"])} ·
{r["machine"]["cpus"]} CPUs ({html.escape(r["machine"]["cpu_model"])}), {r["machine"]["memory_gib"]} GiB</div>
<p><b>{html.escape(_headline(r))}</b><br>{html.escape(losses)} · <span class="{"clean" if r["verdict"]["clean"] else "notclean"}">{status}</span></p>
<ul>{"".join(f"<li>{html.escape(n)}</li>" for n in r["verdict"]["notes"])}</ul>
{lead}
{"".join(body)}
<h2>Summary</h2><pre>{table}</pre>
<h2>Command</h2><pre>{html.escape(r.get("command") or "")}</pre>
<p class="sub">The full data is in report.json next to this file.</p>
</body></html>
"""
