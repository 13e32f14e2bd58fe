"""The lab's experiments and past load tests, listed from their folders and served as they are.

A lab result is ``FOLDER/NAME/result.json`` with its page ``index.html`` next to it (what
``chatscale lab run`` writes); a load-test report is ``FOLDER/NAME/report.json`` with
``report.html``. Only names found by the listing are served, and only those two files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

KINDS = {"lab": ("result.json", "index.html"), "loadtest": ("report.json", "report.html")}


def listing(kind: str, folder: Path) -> list[dict[str, Any]]:
    data_name, page_name = KINDS[kind]
    out = []
    for path in sorted(folder.glob(f"*/{data_name}")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        row: dict[str, Any] = {
            "name": path.parent.name,
            "page": (path.parent / page_name).is_file(),
        }
        if kind == "lab":
            row.update(
                title=doc.get("title", path.parent.name),
                conclusion=doc.get("conclusion", ""),
                size=doc.get("size", ""),
                finished=doc.get("finished", ""),
            )
        else:
            verdict = doc.get("verdict") or {}
            row.update(
                title=f"{doc.get('scenario', '?')} — {doc.get('community', '')}".strip(" —"),
                conclusion=("clean" if verdict.get("clean") else "not clean")
                + (": " + "; ".join(verdict.get("notes", [])) if verdict.get("notes") else ""),
                finished=doc.get("finished", doc.get("started", "")),
            )
        out.append(row)
    return out


def page(kind: str, folder: Path, name: str) -> Path | None:
    """The HTML page of a listed result, or None (never a path outside ``folder``)."""
    if kind not in KINDS or not name or "/" in name or name.startswith("."):
        return None
    data_name, page_name = KINDS[kind]
    base = folder / name
    if not (base / data_name).is_file():
        return None
    target = base / page_name
    return target if target.is_file() else None
