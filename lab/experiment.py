"""What an experiment is, and the pure part of judging one (no I/O).

An experiment tests one claim of the design guide (``../shared/GUIDE-CLAIMS.md``) by running
two or more *arms* — the same workload with one knob turned — and measuring the same metrics
in each. Adding one is one module in ``lab/experiments/`` that defines ``EXPERIMENT``:

- ``arms``: each has ``settings`` (``CHATSCALE_*`` variables the lab gives the topology's
  processes: documented knobs) and ``params`` (what the lab's own clients do differently);
- ``metrics``: what ``measure`` returns, with a unit and which direction is better;
- ``sizes``: ``tiny`` (the test suite), ``quick`` (``lab run --quick``) and ``full``;
- ``measure(trial)``: runs one arm once and returns a ``Measurement``; it may raise
  ``ArmUnavailable`` to say why an arm cannot run (the result says so; never a silent skip);
- ``conclude(outcome)``: the "what this shows" paragraph, computed from the medians: if the
  numbers come out against the claim, the paragraph must say so (``Outcome.verdict``).

Guarantees of ``Outcome``: medians and spreads are over the runs of one arm; a metric missing
from a run (or an unavailable arm) is ``None``, never 0.
"""

from __future__ import annotations

import statistics
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

SIZES = ("tiny", "quick", "full")
#: The hops of the architecture picture an experiment can highlight (``page.py`` draws them).
HOPS = (
    "client",
    "gateway",
    "log",
    "worker",
    "hot",
    "history",
    "fanout",
    "presence",
    "control",
)


class ArmUnavailable(Exception):
    """This arm cannot run here; the message says why (it goes into the result and the table)."""


@dataclass(frozen=True)
class Arm:
    name: str
    about: str
    settings: dict[str, str] = field(default_factory=dict)  # CHATSCALE_* for the topology
    params: dict[str, Any] = field(default_factory=dict)  # for the lab's clients


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    better: Literal["lower", "higher", "none"] = "lower"


@dataclass
class Measurement:
    """One run of one arm: numbers, and optionally series to draw (chart title -> points)."""

    metrics: dict[str, float]
    series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Experiment:
    name: str
    title: str
    claim: str  # the guide's claim, in its words
    claim_ids: tuple[int, ...]  # numbers in GUIDE-CLAIMS.md
    hop: str  # one of HOPS: where the knob acts
    arms: tuple[Arm, ...]
    metrics: tuple[Metric, ...]
    sizes: dict[str, dict[str, Any]]
    quick_seconds: int  # what `lab run NAME --quick` takes here, measured
    measure: Callable[[Any], Awaitable[Measurement]]  # takes a lab.harness.Trial
    conclude: Callable[[Outcome], str]
    knob: str = ""  # how a user turns the knob outside the lab (the setting, the flag)
    series_unit: dict[str, str] = field(default_factory=dict)  # chart title -> y unit

    def __post_init__(self) -> None:
        if self.hop not in HOPS:
            raise ValueError(f"{self.name}: hop {self.hop!r} is not one of {HOPS}")
        if len(self.arms) < 2:
            raise ValueError(f"{self.name}: an experiment has at least two arms")
        missing = [s for s in SIZES if s not in self.sizes]
        if missing:
            raise ValueError(f"{self.name}: no parameters for size(s) {missing}")

    def arm(self, name: str) -> Arm:
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise KeyError(name)

    def metric(self, key: str) -> Metric:
        for m in self.metrics:
            if m.key == key:
                return m
        raise KeyError(key)


# ---- statistics and phrasing (pure) ------------------------------------------------------------


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def spread(values: list[float]) -> dict[str, float] | None:
    """min, max and the half-range relative to the median (0.05 = ±5 %)."""
    if not values:
        return None
    lo, hi, mid = min(values), max(values), statistics.median(values)
    rel = (hi - lo) / 2 / abs(mid) if mid else 0.0
    return {"min": lo, "max": hi, "relative": round(rel, 4)}


def fmt(value: float | None, unit: str = "") -> str:
    """A number as a person reads it: 3 significant figures, thousands separated."""
    if value is None:
        return "n/a"
    a = abs(value)
    if a >= 1000:
        text = f"{value:,.0f}"
    elif a >= 100:
        text = f"{value:.0f}"
    elif a >= 10:
        text = f"{value:.1f}"
    elif a >= 1 or a == 0:
        text = f"{value:.2f}".rstrip("0").rstrip(".") if a else "0"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".strip() if unit and unit != "count" else text


@dataclass
class Outcome:
    """Every arm's runs of one experiment, and questions about them."""

    experiment: Experiment
    runs: dict[str, list[dict[str, float]]]  # arm -> one dict of metrics per run
    unavailable: dict[str, str] = field(default_factory=dict)  # arm -> why

    def values(self, arm: str, key: str) -> list[float]:
        return [r[key] for r in self.runs.get(arm, []) if r.get(key) is not None]

    def median(self, arm: str, key: str) -> float | None:
        return median(self.values(arm, key))

    def spread(self, arm: str, key: str) -> dict[str, float] | None:
        return spread(self.values(arm, key))

    def ratio(self, key: str, arm: str, base: str) -> float | None:
        """median(arm) / median(base); None when either is missing or base is 0."""
        a, b = self.median(arm, key), self.median(base, key)
        if a is None or b is None or b == 0:
            return None
        return a / b

    def verdict(self, key: str, expected_winner: str, other: str, margin: float = 1.1) -> str:
        """``"holds"`` when ``expected_winner`` is better on ``key`` by at least ``margin``×,
        ``"reversed"`` when ``other`` is, ``"tie"`` in between, ``"missing"`` without numbers.
        For a metric where lower is better, better by 2× means half the value."""
        a, b = self.median(expected_winner, key), self.median(other, key)
        if a is None or b is None:
            return "missing"
        better = self.experiment.metric(key).better
        if better == "none":
            raise ValueError(f"{key} has no better direction")
        if better == "higher":
            a, b = b, a  # compare as "lower is better"
        if a != b and a * margin <= b:
            return "holds"
        if a != b and b * margin <= a:
            return "reversed"
        return "tie"

    def compare(self, key: str, a: str, b: str) -> str:
        """ "p99 delivery latency: 12 ms with push vs 1,020 ms with polling (85× less)"."""
        m = self.experiment.metric(key)
        va, vb = self.median(a, key), self.median(b, key)
        text = f"{m.label}: {fmt(va, m.unit)} with {a} vs {fmt(vb, m.unit)} with {b}"
        if va is None or vb is None:
            return text
        if va == vb:
            return text + " (the same)"
        if va and vb:
            r = max(va, vb) / min(va, vb) if min(va, vb) > 0 else None
            if r is not None:
                word = "less" if va < vb else "more"
                return text + f" ({r:.3g}× {word})"
        return text


def factor(a: float | None, b: float | None) -> str:
    """ "3.2×" for a/b, or "n/a"."""
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.3g}×"
