"""Run an experiment: every arm, alternating (A B A B ...), then medians, spreads, a table,
the conclusion, ``result.json`` and the HTML page.

Alternating puts machine noise (another process, a GC, thermal throttling) on both arms
instead of on whichever ran second. An arm that raises ``ArmUnavailable`` is recorded with its
reason and skipped in later rounds; any other exception in a run fails the experiment.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lab.experiment import Arm, ArmUnavailable, Experiment, Outcome, fmt
from lab.harness import Trial
from lab.tables import table, wrap

Say = Callable[[str], None]


def default_repeat(size: str) -> int:
    return 3 if size == "full" else 1


async def run(
    exp: Experiment,
    *,
    size: str = "full",
    repeat: int | None = None,
    out: Path = Path("lab-results"),
    say: Say = print,
    arms: tuple[Arm, ...] | None = None,
) -> dict[str, Any]:
    """Run ``exp`` and write ``out/NAME/result.json`` and ``out/NAME/index.html``; returns the
    result. ``arms`` overrides the experiment's arms (a test swaps their settings to force an
    inverted outcome)."""
    from lab import page

    repeat = repeat or default_repeat(size)
    arms = arms or exp.arms
    runs: dict[str, list[dict[str, float]]] = {a.name: [] for a in arms}
    series: dict[str, list[dict[str, list[tuple[float, float]]]]] = {a.name: [] for a in arms}
    notes: dict[str, list[str]] = {a.name: [] for a in arms}
    unavailable: dict[str, str] = {}
    scratch = out / exp.name / "work"
    started = time.monotonic()
    say(f"[{exp.name}] {exp.title} — {len(arms)} arms × {repeat} round(s), size {size}")
    for r in range(repeat):
        for arm in arms:
            if arm.name in unavailable:
                continue
            params = {**exp.sizes[size], **arm.params}
            trial = Trial(
                experiment=exp,
                arm=arm,
                size=size,
                params=params,
                workdir=scratch / f"{arm.name}-{r}",
                say=lambda text, _a=arm.name: say(f"  [{exp.name}/{_a}] {text}"),
                round=r,
            )
            t0 = time.monotonic()
            say(f"  round {r + 1}/{repeat}, arm {arm.name}: {arm.about}")
            try:
                m = await exp.measure(trial)
            except ArmUnavailable as why:
                unavailable[arm.name] = str(why)
                say(f"  arm {arm.name} cannot run here: {why}")
                continue
            runs[arm.name].append(m.metrics)
            series[arm.name].append(m.series)
            notes[arm.name].extend(n for n in m.notes if n not in notes[arm.name])
            shown = ", ".join(
                f"{k}={fmt(v, exp.metric(k).unit)}" for k, v in m.metrics.items() if k in _keys(exp)
            )
            say(f"    {time.monotonic() - t0:.1f}s: {shown}")
    shutil.rmtree(scratch, ignore_errors=True)
    outcome = Outcome(exp, runs, unavailable)
    conclusion = exp.conclude(outcome)
    result = to_result(exp, outcome, arms, conclusion, size, repeat, series, notes)
    result["seconds"] = round(time.monotonic() - started, 1)
    folder = out / exp.name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    (folder / "index.html").write_text(page.experiment_page(result, exp))
    say(table(result))
    say("")
    say(wrap(conclusion))
    say(f"\n  {folder / 'result.json'}\n  {folder / 'index.html'}")
    return result


def _keys(exp: Experiment) -> set[str]:
    return {m.key for m in exp.metrics}


def to_result(
    exp: Experiment,
    outcome: Outcome,
    arms: tuple[Arm, ...],
    conclusion: str,
    size: str,
    repeat: int,
    series: dict[str, list[dict[str, list[tuple[float, float]]]]],
    notes: dict[str, list[str]],
) -> dict[str, Any]:
    """The result document (``docs/lab.md`` describes it)."""
    out_arms = []
    for arm in arms:
        metrics = {m.key: outcome.median(arm.name, m.key) for m in exp.metrics}
        out_arms.append(
            {
                "name": arm.name,
                "about": arm.about,
                "settings": {**arm.settings, **{f"client.{k}": v for k, v in arm.params.items()}},
                "metrics": metrics,
                "spread": {m.key: outcome.spread(arm.name, m.key) for m in exp.metrics},
                "runs": outcome.runs.get(arm.name, []),
                "series": series.get(arm.name, [])[:1],  # the first run's, for the charts
                "notes": notes.get(arm.name, []),
                "unavailable": outcome.unavailable.get(arm.name),
            }
        )
    return {
        "experiment": exp.name,
        "title": exp.title,
        "claim": exp.claim,
        "claim_ids": list(exp.claim_ids),
        "hop": exp.hop,
        "knob": exp.knob,
        "size": size,
        "repeat": repeat,
        "metric_defs": [
            {"key": m.key, "label": m.label, "unit": m.unit, "better": m.better}
            for m in exp.metrics
        ],
        "arms": out_arms,
        "conclusion": conclusion,
        "command": f"chatscale lab run {exp.name}" + (" --quick" if size == "quick" else ""),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
