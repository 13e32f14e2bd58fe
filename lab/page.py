"""The lab's pages: one self-contained HTML page per experiment run, and an index of a results
folder (``lab report DIR``). Inline SVG and CSS only: no script, no CDN, nothing fetched, so a
page opens offline.

An experiment page shows the claim, the conclusion computed from the numbers, a small picture
of the architecture with the hop the knob changes highlighted, one chart per metric with every
arm on the same axis (bar = median, dots = the runs, whisker = min–max), the arms' series
(timelines) on shared axes, the terminal table and the command that reproduces it.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from lab.experiment import fmt
from lab.tables import table, wrap
from loadtest.report import COLORS, Series, line_chart

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 960px; color: #111; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 28px 0 8px; }
.sub { color: #555; } .claim { border-left: 3px solid #9ca3af; padding-left: 10px; color: #374151; }
.conclusion { border-left: 3px solid #2563eb; padding-left: 10px; }
figure { margin: 18px 0; } figcaption { font-weight: 600; margin-bottom: 4px; }
svg { width: 100%; height: auto; font-size: 11px; } svg text { fill: #374151; }
.grid { stroke: #e5e7eb; } .frame { fill: none; stroke: #9ca3af; }
.lab { font-size: 11px; fill: #6b7280; } .legend { font-size: 11px; } .small { font-size: 9px; }
.hop rect { fill: #f9fafb; stroke: #9ca3af; } .hop.on rect { fill: #dbeafe; stroke: #2563eb; stroke-width: 2.5; }
.hop.on text { font-weight: 700; fill: #1e3a8a; } .arrow { stroke: #6b7280; fill: none; marker-end: url(#tip); }
pre { background: #f9fafb; border: 1px solid #e5e7eb; padding: 12px; overflow-x: auto; font-size: 12px; }
table { border-collapse: collapse; } td, th { padding: 4px 10px; border-bottom: 1px solid #e5e7eb; text-align: left; }
.na { color: #b91c1c; }
"""

# (key, label, x, y): the boxes of the architecture picture
_BOXES = [
    ("client", "clients", 10, 60),
    ("gateway", "gateway", 150, 60),
    ("log", "ingest stream", 290, 60),
    ("worker", "worker", 430, 60),
    ("hot", "hot cache (Redis)", 570, 10),
    ("history", "history store", 570, 60),
    ("fanout", "delivery streams", 290, 130),
    ("presence", "presence service", 150, 190),
    ("control", "control plane", 430, 190),
]
_ARROWS = [
    ("client", "gateway"),
    ("gateway", "log"),
    ("log", "worker"),
    ("worker", "hot"),
    ("worker", "history"),
    ("worker", "fanout"),
    ("fanout", "gateway"),
    ("gateway", "presence"),
    ("control", "gateway"),
]
_W, _H = 130, 36


def architecture(hop: str) -> str:
    """The topology as boxes and arrows; the box ``hop`` is highlighted."""
    pos = {k: (x, y) for k, _, x, y in _BOXES}
    parts = [
        '<svg viewBox="0 0 720 240" role="img" aria-label="architecture, highlighting '
        f'{html.escape(hop)}"><defs><marker id="tip" viewBox="0 0 10 10" refX="9" refY="5" '
        'markerWidth="7" markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" '
        'fill="#6b7280"/></marker></defs>'
    ]
    for a, b in _ARROWS:
        (ax, ay), (bx, by) = pos[a], pos[b]
        x1, y1 = ax + _W / 2, ay + _H / 2
        x2, y2 = bx + _W / 2, by + _H / 2
        # from the edge of one box towards the edge of the other
        dx, dy = x2 - x1, y2 - y1
        sx = min(abs((_W / 2) / dx) if dx else 9e9, abs((_H / 2) / dy) if dy else 9e9)
        parts.append(
            f'<line class="arrow" x1="{x1 + dx * sx:.0f}" y1="{y1 + dy * sx:.0f}" '
            f'x2="{x2 - dx * sx:.0f}" y2="{y2 - dy * sx:.0f}" />'
        )
    for key, label, x, y in _BOXES:
        on = " on" if key == hop else ""
        parts.append(
            f'<g class="hop{on}" data-hop="{key}"><rect x="{x}" y="{y}" width="{_W}" '
            f'height="{_H}" rx="5"/><text x="{x + _W / 2}" y="{y + 22}" text-anchor="middle">'
            f"{html.escape(label)}</text></g>"
        )
    parts.append("</svg>")
    return "".join(parts)


def metric_chart(label: str, unit: str, arms: list[dict[str, Any]], key: str) -> str:
    """Horizontal bars on one axis: one per arm (its median), its runs as dots, min–max."""
    rows = [a for a in arms if a["metrics"].get(key) is not None]
    values = [
        v
        for a in rows
        for v in [a["metrics"][key], *(r.get(key) for r in a["runs"])]
        if v is not None
    ]
    title = f"{label} ({unit})" if unit and unit != "count" else label
    if not values:
        return f"<figure><figcaption>{html.escape(title)}</figcaption><p class='na'>no numbers</p></figure>"
    top = max(values) * 1.1 or 1.0
    left, width, bar_h, gap = 140, 860, 22, 10
    height = 20 + len(arms) * (bar_h + gap)
    parts = [f'<svg viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">']
    for i, arm in enumerate(arms):
        y = 10 + i * (bar_h + gap)
        color = COLORS[i % len(COLORS)]
        parts.append(
            f'<text x="{left - 8}" y="{y + 15}" text-anchor="end">{html.escape(arm["name"])}</text>'
        )
        v = arm["metrics"].get(key)
        if v is None:
            why = arm.get("unavailable") or "not measured"
            parts.append(
                f'<text x="{left + 4}" y="{y + 15}" class="na">n/a: {html.escape(why)}</text>'
            )
            continue
        scale = (width - left - 90) / top
        parts.append(
            f'<rect x="{left}" y="{y}" width="{max(1.0, v * scale):.1f}" height="{bar_h}" '
            f'fill="{color}" fill-opacity="0.75"><title>median {fmt(v, unit)}</title></rect>'
        )
        s = (arm.get("spread") or {}).get(key)
        if s and s["max"] != s["min"]:
            parts.append(
                f'<line x1="{left + s["min"] * scale:.1f}" x2="{left + s["max"] * scale:.1f}" '
                f'y1="{y + bar_h / 2}" y2="{y + bar_h / 2}" stroke="#111" />'
            )
        for run in arm["runs"]:
            if run.get(key) is not None:
                parts.append(
                    f'<circle cx="{left + run[key] * scale:.1f}" cy="{y + bar_h / 2}" r="3" fill="#111" />'
                )
        parts.append(
            f'<text x="{left + v * scale + 8:.1f}" y="{y + 15}">{html.escape(fmt(v, unit))}</text>'
        )
    parts.append("</svg>")
    return f"<figure><figcaption>{html.escape(title)}</figcaption>{''.join(parts)}</figure>"


def series_charts(result: dict[str, Any], units: dict[str, str]) -> list[str]:
    """One chart per series title, every arm's line on the same axes (the first run's)."""
    titles: list[str] = []
    for arm in result["arms"]:
        for run in arm.get("series") or []:
            titles.extend(t for t in run if t not in titles)
    out = []
    for title in titles:
        lines = []
        for arm in result["arms"]:
            for run in (arm.get("series") or [])[:1]:
                if title in run:
                    for sub, pts in _split(run[title]):
                        name = arm["name"] + (f" · {sub}" if sub else "")
                        lines.append(Series(name, units.get(title, ""), [tuple(p) for p in pts]))
        if lines:
            out.append(line_chart(title, lines, key=title, x_label="seconds since start"))
    return out


def _split(points: Any) -> list[tuple[str, list[Any]]]:
    """A series is a list of points, or {line name: points} for several lines per arm."""
    if isinstance(points, dict):
        return list(points.items())
    return [("", points)]


def experiment_page(result: dict[str, Any], exp: Any = None) -> str:
    r = result
    units = dict(getattr(exp, "series_unit", {}) or {})
    charts = [metric_chart(m["label"], m["unit"], r["arms"], m["key"]) for m in r["metric_defs"]]
    arms = "".join(
        f"<tr><td><b>{html.escape(a['name'])}</b></td><td>{html.escape(a['about'])}</td>"
        f"<td><code>{html.escape(' '.join(f'{k}={v}' for k, v in a['settings'].items()) or '(defaults)')}</code></td>"
        f"<td>{'<span class=na>not run: ' + html.escape(a['unavailable']) + '</span>' if a['unavailable'] else len(a['runs'])}</td></tr>"
        for a in r["arms"]
    )
    notes = "".join(
        f"<li><b>{html.escape(a['name'])}</b>: {html.escape(n)}</li>"
        for a in r["arms"]
        for n in a["notes"]
    )
    claims = ", ".join(str(c) for c in r["claim_ids"])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>chatscale lab · {html.escape(r["experiment"])}</title>
<style>{CSS}</style></head><body>
<h1>{html.escape(r["title"])} <span class="sub">({html.escape(r["experiment"])})</span></h1>
<div class="sub">size {html.escape(r["size"])} · {r["repeat"]} round(s), arms alternating · {html.escape(r["finished"])} · {r.get("seconds", "?")} s</div>
<p class="claim">The guide (claim {claims}): “{html.escape(r["claim"])}”</p>
<h2>What this shows</h2>
<p class="conclusion">{html.escape(r["conclusion"])}</p>
<h2>Where the knob acts</h2>
{architecture(r["hop"])}
<p class="sub">Knob: {html.escape(r.get("knob") or "see the arms below")}</p>
<h2>Arms</h2>
<table><tr><th>arm</th><th>what it does</th><th>settings</th><th>runs</th></tr>{arms}</table>
<h2>Measured</h2>
{"".join(charts)}
{"".join(series_charts(r, units))}
<h2>Table</h2><pre>{html.escape(table(r))}</pre>
<pre>{html.escape(wrap(r["conclusion"]))}</pre>
{f"<h2>Notes</h2><ul>{notes}</ul>" if notes else ""}
<h2>Command</h2><pre>{html.escape(r["command"])}</pre>
<p class="sub">Every number is in result.json next to this file.</p>
</body></html>
"""


def report_page(folder: Path) -> tuple[str, int]:
    """An index of every ``*/result.json`` under ``folder``: claim, conclusion, link."""
    results = []
    for path in sorted(folder.glob("*/result.json")):
        try:
            results.append((path, json.loads(path.read_text())))
        except (OSError, ValueError):
            continue
    rows = []
    for path, r in results:
        link = html.escape(f"{path.parent.name}/index.html")
        medians = "; ".join(
            f"{m['label']}: "
            + " vs ".join(
                f"{a['name']} {fmt(a['metrics'].get(m['key']), m['unit'])}" for a in r["arms"]
            )
            for m in r["metric_defs"][:2]
        )
        rows.append(
            f'<tr><td><a href="{link}">{html.escape(r["title"])}</a><br><span class=sub>'
            f"{html.escape(r['experiment'])} · claim {', '.join(map(str, r['claim_ids']))} · "
            f"{html.escape(r['size'])}</span></td><td>{html.escape(medians)}</td>"
            f"<td>{html.escape(r['conclusion'])}</td></tr>"
        )
    body = (
        "<table><tr><th>experiment</th><th>medians</th><th>what it shows</th></tr>"
        + "".join(rows)
        + "</table>"
        if rows
        else "<p class=na>no lab results in this folder</p>"
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>chatscale lab report</title>
<style>{CSS} td {{ vertical-align: top; }}</style></head><body>
<h1>chatscale lab: {len(rows)} experiment(s)</h1>
<p class="sub">{html.escape(str(folder))} · each link opens the experiment's page</p>
{body}
</body></html>
"""
    return page, len(rows)
