"""Top-K active servers over a sliding window of minutes: the pure part (no I/O).

Two ways to count the same stream of (guild, messages, time):

- **exact**: one counter per guild per minute (in Redis: one sorted set per minute, merged at
  query time with ZUNIONSTORE; here ``ExactWindow``, the same arithmetic in a dict). Memory
  grows with the number of *distinct* active guilds per minute.
- **approximate**: one frequent-items sketch per minute (Apache DataSketches'
  ``frequent_strings_sketch``, the Misra–Gries / "SpaceSaving"-family algorithm with a proven
  bound), merged at query time. Memory is fixed by ``lg_k`` whatever the number of guilds;
  an estimate is off by at most ``epsilon * total`` of the window, and the library reports
  each item's lower and upper bound. DataSketches is used rather than a hand-written
  Count-Min because it is a maintained Apache project with published error guarantees, its
  sketches are mergeable (so per-minute and per-worker sketches add up) and serializable (so
  they can sit in Redis), and its Python wheels are prebuilt.

The window slides by whole minutes: a query at minute ``m`` counts minutes ``m-N+1 .. m``.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import datasketches


def _ds():  # noqa: ANN202 - the module
    """datasketches, imported on first use: it loads numpy and a C++ library (about half a
    second), and every chatscale process imports this module through the CLI."""
    import datasketches

    return datasketches


def minute_of(ts_s: float) -> int:
    """Wall-clock seconds -> the epoch minute that buckets them."""
    return int(ts_s // 60)


def window(minute: int, minutes: int) -> range:
    """The minutes a query at ``minute`` counts: the last ``minutes`` of them, inclusive."""
    return range(minute - minutes + 1, minute + 1)


def new_sketch(lg_k: int) -> datasketches.frequent_strings_sketch:
    return _ds().frequent_strings_sketch(lg_k)


def sketch_top(sketch: datasketches.frequent_strings_sketch, k: int) -> list[tuple[str, int]]:
    """The ``k`` items with the highest estimates (ties broken by id, for determinism)."""
    rows = sketch.get_frequent_items(_ds().frequent_items_error_type.NO_FALSE_NEGATIVES)
    rows = sorted(rows, key=lambda r: (-r[1], r[0]))
    return [(item, int(estimate)) for item, estimate, _lb, _ub in rows[:k]]


def exact_top(counts: Counter[str], k: int) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]


class ExactWindow:
    """Per-minute exact counters; what the Redis sorted sets hold, in memory."""

    def __init__(self, minutes: int) -> None:
        self.minutes = minutes
        self.buckets: dict[int, Counter[str]] = {}

    def add(self, minute: int, guild: str, n: int = 1) -> None:
        self.buckets.setdefault(minute, Counter())[guild] += n
        for old in [m for m in self.buckets if m <= minute - self.minutes]:
            del self.buckets[old]

    def merged(self, minute: int) -> Counter[str]:
        total: Counter[str] = Counter()
        for m in window(minute, self.minutes):
            total.update(self.buckets.get(m, {}))
        return total

    def top(self, minute: int, k: int) -> list[tuple[str, int]]:
        return exact_top(self.merged(minute), k)

    def counters(self) -> int:
        """Distinct (minute, guild) counters held: what the memory grows with."""
        return sum(len(c) for c in self.buckets.values())


class SketchWindow:
    """Per-minute frequent-items sketches of fixed size, merged at query time."""

    def __init__(self, minutes: int, lg_k: int) -> None:
        self.minutes = minutes
        self.lg_k = lg_k
        self.buckets: dict[int, datasketches.frequent_strings_sketch] = {}

    def add(self, minute: int, guild: str, n: int = 1) -> None:
        sketch = self.buckets.get(minute)
        if sketch is None:
            sketch = self.buckets[minute] = new_sketch(self.lg_k)
            for old in [m for m in self.buckets if m <= minute - self.minutes]:
                del self.buckets[old]
        sketch.update(guild, n)

    def merged(self, minute: int) -> datasketches.frequent_strings_sketch:
        total = new_sketch(self.lg_k)
        for m in window(minute, self.minutes):
            if m in self.buckets:
                total.merge(self.buckets[m])
        return total

    def top(self, minute: int, k: int) -> list[tuple[str, int]]:
        return sketch_top(self.merged(minute), k)

    def serialized_bytes(self) -> int:
        return sum(s.get_serialized_size_bytes() for s in self.buckets.values())


def merge_serialized(blobs: Iterable[bytes], lg_k: int) -> datasketches.frequent_strings_sketch:
    total = new_sketch(lg_k)
    for blob in blobs:
        total.merge(_ds().frequent_strings_sketch.deserialize(blob))
    return total


# ---- the comparison at scale (benchmark and lab) ----------------------------------------------


@dataclass(frozen=True)
class Event:
    minute: int
    guild: str
    n: int = 1


def zipf_stream(*, guilds: int, messages: int, minutes: int, skew: float, seed: int) -> list[Event]:
    """A seeded stream: ``messages`` messages over ``minutes`` minutes among ``guilds`` guilds
    whose activity follows a Zipf law of exponent ``skew`` (a few busy servers, a long tail),
    with the ranking reshuffled a little every minute so the window matters."""
    rng = random.Random(seed)
    weights = [1 / (r + 1) ** skew for r in range(guilds)]
    ids = [f"{1_000_000 + g}" for g in range(guilds)]
    per_minute = messages // minutes
    events: list[Event] = []
    order = list(range(guilds))
    for m in range(minutes):
        for _ in range(guilds // 50):  # a little churn: swap a few ranks
            a, b = rng.randrange(guilds), rng.randrange(guilds)
            order[a], order[b] = order[b], order[a]
        picks = rng.choices(order, weights=weights, k=per_minute)
        events += [Event(m, ids[g]) for g in picks]
    return events


@dataclass(frozen=True)
class Comparison:
    k: int
    guilds: int
    messages: int
    recall_at_k: float  # share of the exact top-K the sketch's top-K contains
    max_abs_error: int  # largest |estimate - exact| among the exact top-K
    max_rel_error: float  # the same, relative to the exact count
    error_bound: int  # what the library guarantees: epsilon * window total
    exact_counters: int  # (minute, guild) counters the exact arm holds
    sketch_bytes: int  # serialized sketches of the window


def compare(
    events: Sequence[Event],
    *,
    k: int,
    minutes: int,
    lg_k: int,
) -> Comparison:
    """Feed one stream to both arms and compare their top-K at the last minute."""
    exact, sketch = ExactWindow(minutes), SketchWindow(minutes, lg_k)
    for e in events:
        exact.add(e.minute, e.guild, e.n)
        sketch.add(e.minute, e.guild, e.n)
    now = max(e.minute for e in events)
    truth = exact.merged(now)
    want = exact_top(truth, k)
    merged = sketch.merged(now)
    got = sketch_top(merged, k)
    errors = [abs(int(merged.get_estimate(g)) - c) for g, c in want]
    rel = [abs(int(merged.get_estimate(g)) - c) / c for g, c in want]
    total = sum(truth.values())
    return Comparison(
        k=k,
        guilds=len({e.guild for e in events}),
        messages=len(events),
        recall_at_k=len({g for g, _ in want} & {g for g, _ in got}) / max(1, len(want)),
        max_abs_error=max(errors, default=0),
        max_rel_error=max(rel, default=0.0),
        error_bound=int(_ds().frequent_strings_sketch.get_epsilon_for_lg_size(lg_k) * total),
        exact_counters=exact.counters(),
        sketch_bytes=sketch.serialized_bytes(),
    )
