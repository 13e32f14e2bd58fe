"""A load test's report three ways: a table for the terminal, JSON with everything, and one
self-contained HTML page whose charts are inline SVG (no script, no CDN, nothing fetched).

Charts: deliveries and messages per second over time, latency p50/p99 over time (by intended
send time, so a stall shows where it began), the latency histogram and percentile curve, CPU
of every process over time, consumer lag and pending entries, connections per second (storms).
Faults are drawn as vertical lines on every time chart.
"""

from __future__ import annotations

import html
import json
import math
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
            f" seen by observers p50 {_n(pl['p50_ms'], 0)} / p99 {_n(pl['p99_ms'], 0)} ms (n={pl['measured']})"
        )
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


def line_chart(
    title: str,
    series: list[tuple[str, list[tuple[float, float | None]]]],
    *,
    x_label: str = "seconds since start",
    y_label: str = "",
    markers: list[tuple[float, str]] | None = None,
    log_y: bool = False,
    width: int = 900,
    height: int = 260,
) -> str:
    pts = [(x, y) for _, s in series for x, y in s if y is not None]
    if not pts:
        return f"<figure><figcaption>{html.escape(title)}</figcaption><p class='empty'>no data</p></figure>"
    left, right, top, bottom = 64, 16, 16, 36
    xs = [x for x, _ in pts] + [x for x, _ in (markers or [])]
    x0, x1 = min(xs), max(xs)
    x1 = x1 if x1 > x0 else x0 + 1
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

    parts = [f'<svg viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">']
    yticks = [10**e for e in range(math.floor(y0), math.ceil(y1) + 1)] if log_y else _ticks(y0, y1)
    for t in yticks:
        y = sy(t)
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="grid" />'
        )
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    for t in _ticks(x0, x1, 8):
        x = sx(t)
        parts.append(
            f'<text x="{x:.1f}" y="{height - bottom + 16}" text-anchor="middle">{_fmt(t)}</text>'
        )
    parts.append(
        f'<text x="{(left + width) / 2}" y="{height - 4}" text-anchor="middle" class="lab">{html.escape(x_label)}</text>'
    )
    parts.append(f'<text x="12" y="{top + 4}" class="lab">{html.escape(y_label)}</text>')
    for i, (mx, label) in enumerate(markers or []):
        x = sx(mx)
        parts.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{height - bottom}" class="fault" />'
        )
        y = height - bottom - 5 - 12 * (len(markers or []) - 1 - i)  # staggered, above the axis
        parts.append(
            f'<text x="{x + 3:.1f}" y="{y}" class="faultlab">{html.escape(label[:48])}</text>'
        )
    for i, (name, s) in enumerate(series):
        color = COLORS[i % len(COLORS)]
        path, pen = [], "M"
        for k, (x, y) in enumerate(s):
            if y is None:
                pen = "M"
                continue
            path.append(f"{pen}{sx(x):.1f},{sy(y):.1f}")
            before = s[k - 1][1] if k > 0 else None
            after = s[k + 1][1] if k + 1 < len(s) else None
            if before is None and after is None:  # an isolated point: a line would not show it
                parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{color}" />')
            pen = "L"
        parts.append(
            f'<path d="{" ".join(path)}" stroke="{color}" fill="none" stroke-width="1.6" />'
        )
        lx = left + 8 + (i % 4) * 200
        ly = top + 14 + (i // 4) * 14
        parts.append(f'<rect x="{lx}" y="{ly - 8}" width="10" height="3" fill="{color}" />')
        parts.append(f'<text x="{lx + 14}" y="{ly - 3}" class="legend">{html.escape(name)}</text>')
    parts.append(
        f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" class="frame" />'
    )
    parts.append("</svg>")
    return f"<figure><figcaption>{html.escape(title)}</figcaption>{''.join(parts)}</figure>"


def bar_chart(
    title: str,
    bars: list[tuple[str, float]],
    *,
    y_label: str = "",
    width: int = 900,
    height: int = 240,
) -> str:
    if not bars or not any(v for _, v in bars):
        return f"<figure><figcaption>{html.escape(title)}</figcaption><p class='empty'>no data</p></figure>"
    left, right, top, bottom = 64, 16, 16, 48
    top_v = max(v for _, v in bars) * 1.08
    bw = (width - left - right) / len(bars)
    parts = [f'<svg viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">']
    for t in _ticks(0, top_v):
        y = height - bottom - t / top_v * (height - top - bottom)
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="grid" />'
        )
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    for i, (label, v) in enumerate(bars):
        h = v / top_v * (height - top - bottom)
        x = left + i * bw
        parts.append(
            f'<rect x="{x + 1:.1f}" y="{height - bottom - h:.1f}" width="{max(1, bw - 2):.1f}" height="{h:.1f}" fill="{COLORS[0]}"><title>≤ {html.escape(label)} ms: {v:,.0f}</title></rect>'
        )
        parts.append(
            f'<text x="{x + bw / 2:.1f}" y="{height - bottom + 14}" text-anchor="middle" class="small">{html.escape(label)}</text>'
        )
    parts.append(
        f'<text x="{(left + width) / 2}" y="{height - 6}" text-anchor="middle" class="lab">latency ≤ ms (log₂ buckets)</text>'
    )
    parts.append(f'<text x="12" y="{top + 4}" class="lab">{html.escape(y_label)}</text>')
    parts.append("</svg>")
    return f"<figure><figcaption>{html.escape(title)}</figcaption>{''.join(parts)}</figure>"


def percentile_chart(
    curve: list[tuple[float, float]], *, width: int = 900, height: int = 260
) -> str:
    """Latency by percentile with the x axis stretched towards the tail (1 / (1 - p))."""
    if not curve:
        return ""
    pts = [(math.log10(1 / max(1e-6, 1 - p / 100)) if p < 100 else None, v) for p, v in curve]
    finite = [(x, v) for x, v in pts if x is not None]
    xmax = max(x for x, _ in finite) + 0.5
    series = [("latency", [(x if x is not None else xmax, v) for x, v in pts])]
    labels = {0.0: "p0", 1.0: "p90", 2.0: "p99", 3.0: "p99.9", 4.0: "p99.99", 5.0: "p99.999"}
    chart = line_chart(
        "Latency by percentile (ms, log scale; right edge = max)",
        series,
        x_label="percentile: " + ", ".join(f"{k:g}→{v}" for k, v in labels.items() if k <= xmax),
        y_label="ms",
        log_y=True,
        width=width,
        height=height,
    )
    return chart


def page(report: dict[str, Any]) -> str:
    r = report
    markers = [(f["t"], f["what"]) for f in r["faults"]]
    rows = r["series"]["deliveries"]
    throughput = line_chart(
        "Deliveries per second (by receive time)",
        [("deliveries/s", [(x["t"], x["deliveries"]) for x in rows])],
        y_label="per s",
        markers=markers,
    )
    sends = line_chart(
        "Messages per second (acknowledged, by intended send time)",
        [("messages/s", [(x["t"], x["sends"]) for x in rows])],
        y_label="per s",
        markers=markers,
    )
    latency = line_chart(
        "Latency over time (by intended send time; ms, log scale)",
        [
            ("p50", [(x["t"], x["p50_ms"]) for x in rows]),
            ("p99", [(x["t"], x["p99_ms"]) for x in rows]),
        ],
        y_label="ms",
        markers=markers,
        log_y=True,
    )
    hist = bar_chart(
        "Latency histogram (send → receive)",
        [(_fmt(upper), float(count)) for upper, count in r["latency_histogram"]],
        y_label="deliveries",
    )
    curve = percentile_chart([tuple(p) for p in r["latency_percentiles"]])  # type: ignore[misc]
    procs = r["series"]["processes"]
    names = sorted({n for row in procs for n in row["cpu"]})
    cpu = line_chart(
        "CPU per process (% of one core)",
        [(n, [(row["t"], row["cpu"].get(n)) for row in procs]) for n in names]
        + [("whole machine", [(row["t"], row.get("machine_cpu")) for row in procs])],
        y_label="%",
        markers=markers,
    )
    st = r["series"]["streams"]
    streams = line_chart(
        "Consumer groups: ingest lag and pending entries (XINFO GROUPS)",
        [
            ("ingest lag", [(s["t"], s.get("ingest_lag")) for s in st]),
            ("ingest pending", [(s["t"], s.get("ingest_pending")) for s in st]),
            ("presence lag", [(s["t"], s.get("presence_lag")) for s in st]),
        ],
        y_label="entries",
        markers=markers,
    )
    connects = r["series"]["connects"]
    conn_chart = ""
    if any(x["deliveries"] for x in connects):
        conn_chart = line_chart(
            "Connections: attempts started and READY per second; READY latency p50/p99 (ms)",
            [
                ("attempts/s", [(x["t"], x["sends"]) for x in connects]),
                ("READY/s", [(x["t"], x["deliveries"]) for x in connects]),
                ("READY p50 ms", [(x["t"], x["p50_ms"]) for x in connects]),
                ("READY p99 ms", [(x["t"], x["p99_ms"]) for x in connects]),
            ],
            markers=markers,
        )
    table = html.escape(text(report))
    lat = r["deliveries"]["latency_ms"]
    d = r["deliveries"]
    headline = (
        f"{r['messages']['achieved_per_s']:,} msg/s → {d['per_s']:,.0f} deliveries/s · "
        f"p50 {lat['p50_ms']:.1f} ms · p99 {lat['p99_ms']:.1f} ms · max {lat['max_ms']:.1f} ms · "
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
svg {{ width: 100%; height: auto; font-size: 11px; }} svg text {{ fill: #374151; }}
.grid {{ stroke: #e5e7eb; }} .frame {{ fill: none; stroke: #9ca3af; }}
.fault {{ stroke: #dc2626; stroke-dasharray: 4 3; }} .faultlab {{ fill: #b91c1c; font-size: 10px; }}
.lab {{ font-size: 11px; fill: #6b7280; }} .legend {{ font-size: 11px; }} .small {{ font-size: 9px; }}
pre {{ background: #f9fafb; border: 1px solid #e5e7eb; padding: 12px; overflow-x: auto; font-size: 12px; }}
.empty {{ color: #9ca3af; }}
</style></head><body>
<h1>chatscale loadtest: {html.escape(r["scenario"])} on {html.escape(r["community"]["name"])}</h1>
<div class="sub">{html.escape(r["description"])} · started {html.escape(r["started_at"])} ·
{r["machine"]["cpus"]} CPUs ({html.escape(r["machine"]["cpu_model"])}), {r["machine"]["memory_gib"]} GiB</div>
<p><b>{html.escape(headline)}</b> · <span class="{"clean" if r["verdict"]["clean"] else "notclean"}">{status}</span></p>
<ul>{"".join(f"<li>{html.escape(n)}</li>" for n in r["verdict"]["notes"])}</ul>
<h2>Throughput</h2>{throughput}{sends}
<h2>Latency</h2>{latency}{hist}{curve}
{("<h2>Connections</h2>" + conn_chart) if conn_chart else ""}
<h2>Processes</h2>{cpu}{streams}
<h2>Summary</h2><pre>{table}</pre>
<h2>Command</h2><pre>{html.escape(r.get("command") or "")}</pre>
<p class="sub">The full data is in report.json next to this file.</p>
</body></html>
"""
