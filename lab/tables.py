"""The terminal view of a result: the side-by-side table and the wrapped conclusion (pure)."""

from __future__ import annotations

from typing import Any

from lab.experiment import fmt


def table(result: dict[str, Any]) -> str:
    """Metric rows, one column per arm (median, and the range when there are several runs),
    and the ratio of every other arm to the first."""
    arms = result["arms"]
    base = arms[0]["name"]
    head = ["metric", *[a["name"] for a in arms], *[f"{a['name']}/{base}" for a in arms[1:]]]
    rows = [head]
    for m in result["metric_defs"]:
        row = [f"{m['label']} ({m['unit']})" if m["unit"] != "count" else m["label"]]
        for a in arms:
            if a["unavailable"]:
                row.append("n/a")
                continue
            v, s = a["metrics"][m["key"]], a["spread"][m["key"]]
            cell = fmt(v)
            if s and len(a["runs"]) > 1 and s["max"] != s["min"]:
                cell += f" ({fmt(s['min'])}–{fmt(s['max'])})"
            row.append(cell)
        b = arms[0]["metrics"][m["key"]]
        for a in arms[1:]:
            v = a["metrics"][m["key"]]
            row.append(f"{v / b:.3g}×" if v is not None and b else "n/a")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [
        "  "
        + "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    lines.insert(1, "  " + "  ".join("-" * w for w in widths))
    for a in arms:
        if a["unavailable"]:
            lines.append(f"  {a['name']}: not run — {a['unavailable']}")
    return "\n".join(lines)


def wrap(text: str, width: int = 96) -> str:
    import textwrap

    return "\n".join(
        textwrap.fill(p, width, initial_indent="  ", subsequent_indent="  ")
        for p in text.split("\n\n")
    )


def markdown(results: list[dict[str, Any]]) -> str:
    """Every result as a Markdown section: its table (medians, ratio to the first arm), the
    conclusion and the command — what ``lab report DIR --markdown`` prints for the docs."""
    out = []
    for r in results:
        arms = r["arms"]
        base = arms[0]["name"]
        others = arms[1:]
        out.append(f"### `{r['experiment']}` — {r['title']}\n")
        out.append(
            f"Claim {', '.join(map(str, r['claim_ids']))}: {r['claim']} "
            f"(`{r['command']}`, size {r['size']}, {r['repeat']} round(s) per arm)\n"
        )
        head = ["metric", *[a["name"] for a in arms], *[f"{a['name']}/{base}" for a in others]]
        out.append("| " + " | ".join(head) + " |")
        out.append("|---|" + "---:|" * (len(head) - 1))
        for m in r["metric_defs"]:
            label = m["label"] + (f" ({m['unit']})" if m["unit"] and m["unit"] != "count" else "")
            cells = [
                "not run" if a["unavailable"] else fmt(a["metrics"].get(m["key"])) for a in arms
            ]
            b = arms[0]["metrics"].get(m["key"])
            for a in others:
                v = a["metrics"].get(m["key"])
                cells.append(f"{v / b:.3g}×" if v is not None and b else "n/a")
            out.append("| " + " | ".join([label.replace("|", "\\|"), *cells]) + " |")
        for a in arms:
            if a["unavailable"]:
                out.append(f"\n`{a['name']}` not run: {a['unavailable']}")
        out.append(f"\n{r['conclusion']}\n")
    return "\n".join(out)
