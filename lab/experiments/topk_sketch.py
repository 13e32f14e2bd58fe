"""Top-K active servers over a sliding 10-minute window (claim 24): exact per-minute counters in
Redis vs a frequent-items sketch, on one seeded stream at 10,000 servers.

Arm ``exact``: the workers' ZINCRBY'd per-minute sorted sets (``guilds/directory.py``), merged
with ZUNIONSTORE at query time, in a real Valkey started for the run; memory is Redis's own
MEMORY USAGE of the window's keys. Arm ``sketch``: one DataSketches frequent_strings_sketch per
minute (``guilds/topk.py``), merged at query time; memory is the serialized sketches of one
worker (each worker writes its own). Both arms see the same Zipf-skewed stream (seed = run);
error is measured against the exact count of the window.
"""

from __future__ import annotations

import time

from chatscale.config import Settings
from chatscale.keys import Keys
from chatscale.redisconn import connect
from chatscale.valkey import ValkeyServer
from guilds import topk
from guilds.directory import exact_in_redis
from lab import harness
from lab.experiment import Arm, Experiment, Measurement, Metric, Outcome, fmt


async def measure(trial: harness.Trial) -> Measurement:
    p = trial.params
    events = topk.zipf_stream(
        guilds=p["guilds"],
        messages=p["messages"],
        minutes=p["minutes"],
        skew=p["skew"],
        seed=19 + trial.round,
    )
    note = (
        f"{p['guilds']:,} servers, {p['messages']:,} messages over {p['minutes']} minutes, "
        f"Zipf {p['skew']}, top-{p['k']}"
    )
    if trial.arm.name == "exact":
        with ValkeyServer() as server:
            redis = connect(Settings(redis_url=server.url))
            try:
                top, used, ms = await exact_in_redis(
                    redis, Keys("lab"), events, k=p["k"], minutes=p["minutes"]
                )
            finally:
                await redis.aclose()
        truth = topk.ExactWindow(p["minutes"])
        for e in events:
            truth.add(e.minute, e.guild, e.n)
        want = truth.top(events[-1].minute, p["k"])
        if [(str(g), n) for g, n in top] != want:
            raise RuntimeError("the Redis top-K differs from the in-memory exact count (a bug)")
        return Measurement(
            {
                "memory_bytes": float(used),
                "max_rel_error": 0.0,
                "recall_at_k": 1.0,
                "query_ms": ms,
            },
            notes=[note],
        )
    lg_k = int(trial.arm.params["lg_k"])
    cmp = topk.compare(events, k=p["k"], minutes=p["minutes"], lg_k=lg_k)
    window = topk.SketchWindow(p["minutes"], lg_k)
    for e in events:
        window.add(e.minute, e.guild, e.n)
    blobs = [s.serialize() for s in window.buckets.values()]
    t0 = time.perf_counter()
    topk.sketch_top(topk.merge_serialized(blobs, lg_k), p["k"])
    ms = (time.perf_counter() - t0) * 1000
    return Measurement(
        {
            "memory_bytes": float(cmp.sketch_bytes),
            "max_rel_error": cmp.max_rel_error,
            "recall_at_k": cmp.recall_at_k,
            "query_ms": ms,
        },
        notes=[note, f"library's error bound: {cmp.error_bound:,} messages per guild"],
    )


def conclude(o: Outcome) -> str:
    memory = o.verdict("memory_bytes", "sketch", "exact")
    if memory == "missing":
        return "Not every arm produced numbers, so nothing can be concluded from this run."
    err = o.median("sketch", "max_rel_error")
    recall = o.median("sketch", "recall_at_k")
    mem = o.compare("memory_bytes", "sketch", "exact")
    if memory == "holds":
        first = f"The sketch held the window in far less memory ({mem})"
    elif memory == "reversed":
        first = (
            f"Against the claim, the sketch took more memory than the exact counters ({mem}): "
            "at this size there are fewer distinct active servers than the sketch has counters"
        )
    else:
        first = f"Both arms took about the same memory ({mem})"
    second = (
        f", at the price of estimates: its worst relative error among the true top-K was "
        f"{fmt((err or 0) * 100)} % and it found {fmt((recall or 0) * 100)} % of the exact top-K"
    )
    q = o.compare("query_ms", "sketch", "exact")
    return first + second + f". Query time: {q}."


EXPERIMENT = Experiment(
    name="topk-sketch",
    title="Top-K active servers: exact counters in Redis vs a frequent-items sketch",
    claim="Top-K most active servers over a sliding window can be kept approximately in fixed "
    "memory (a sketch) instead of one counter per server.",
    claim_ids=(24,),
    hop="worker",
    knob="`CHATSCALE_DISCOVERY_SKETCH_LG_K` (the sketch's size); `chatscale discover top "
    "[--approx]`",
    arms=(
        Arm("exact", "per-minute sorted sets in Redis, ZUNIONSTORE at query time"),
        Arm(
            "sketch",
            "per-minute DataSketches frequent_strings_sketch (2^10 counters), merged",
            {"CHATSCALE_DISCOVERY_SKETCH_LG_K": "10"},
            {"lg_k": 10},
        ),
    ),
    metrics=(
        Metric("memory_bytes", "memory of the 10-minute window", "B"),
        Metric("max_rel_error", "worst relative error in the true top-K", "count"),
        Metric("recall_at_k", "share of the true top-K found", "count", better="higher"),
        Metric("query_ms", "one top-K query", "ms"),
    ),
    sizes={
        "tiny": {"guilds": 500, "messages": 5_000, "minutes": 10, "skew": 1.1, "k": 10},
        "quick": {"guilds": 10_000, "messages": 200_000, "minutes": 10, "skew": 1.1, "k": 10},
        "full": {"guilds": 10_000, "messages": 1_000_000, "minutes": 10, "skew": 1.1, "k": 10},
    },
    quick_seconds=20,
    measure=measure,
    conclude=conclude,
)
