"""Server suggestions with and without a popularity-bias correction (claim 24), offline.

Both arms rank servers for every user of one seeded world (``guilds/suggest.py``) by
co-membership and activity, with one membership per user held out. Arm ``raw``: alpha = 0 (raw
co-membership: the biggest servers share members with everyone). Arm ``corrected``: each
candidate's score divided by its member count to the power alpha = 0.5 (inverse-popularity
weighting; ``CHATSCALE_DISCOVERY_SUGGEST_ALPHA``). The most-popular baseline is in the notes.
Measured: recall@10 of the held-out membership, catalogue coverage (share of servers in at
least one top 10) and recall on held-out servers outside the 10 % biggest.
"""

from __future__ import annotations

from guilds import suggest
from lab import harness
from lab.experiment import Arm, Experiment, Measurement, Metric, Outcome


async def measure(trial: harness.Trial) -> Measurement:
    p = trial.params
    alpha = float(trial.arm.params["alpha"])
    seed = 19 + trial.round
    world = suggest.generate_world(
        users=p["users"], guilds=p["guilds"], topics=p["topics"], seed=seed
    )
    popular, arm = suggest.evaluate(world, alphas=[alpha], seed=seed)
    return Measurement(
        {
            "recall_at_10": arm.recall_at_k,
            "coverage": arm.coverage,
            "tail_recall": arm.tail_recall,
            "median_pop_rank": arm.median_rank_of_suggested,
        },
        notes=[
            f"{p['users']:,} users, {p['guilds']:,} servers, {p['topics']} topics, seed {seed}",
            f"most-popular baseline: recall@10 {popular.recall_at_k:.3f}, "
            f"coverage {popular.coverage:.3f}",
        ],
    )


def conclude(o: Outcome) -> str:
    cov = o.verdict("coverage", "corrected", "raw")
    if cov == "missing":
        return "Not every arm produced numbers, so nothing can be concluded from this run."
    recall = o.verdict("recall_at_10", "corrected", "raw", margin=1.05)
    c = o.compare("coverage", "corrected", "raw")
    r = o.compare("recall_at_10", "corrected", "raw")
    t = o.compare("tail_recall", "corrected", "raw")
    if cov == "holds":
        first = f"The correction spread suggestions over far more of the catalogue ({c})"
    elif cov == "reversed":
        first = f"Against the claim, the correction narrowed the catalogue shown ({c})"
    else:
        first = f"The correction barely changed the catalogue shown ({c})"
    if recall == "reversed":
        second = f", but it cost accuracy on held-out memberships ({r})"
    elif recall == "holds":
        second = f", and it was more accurate too ({r})"
    else:
        second = f", at about the same accuracy ({r})"
    return first + second + f"; on the long tail: {t}."


EXPERIMENT = Experiment(
    name="suggest-bias",
    title="Server suggestions: raw co-membership vs a popularity-bias correction",
    claim="Server recommendations have a popularity bias that a correction should counter.",
    claim_ids=(24,),
    hop="control",
    knob="`CHATSCALE_DISCOVERY_SUGGEST_ALPHA`; `chatscale discover eval --alpha A`",
    arms=(
        Arm("raw", "co-membership and activity, alpha = 0", params={"alpha": 0.0}),
        Arm(
            "corrected",
            "divided by member count^0.5 (inverse popularity)",
            {"CHATSCALE_DISCOVERY_SUGGEST_ALPHA": "0.5"},
            {"alpha": 0.5},
        ),
    ),
    metrics=(
        Metric("recall_at_10", "recall@10 of a held-out membership", "count", better="higher"),
        Metric("coverage", "catalogue coverage", "count", better="higher"),
        Metric("tail_recall", "recall@10 outside the 10 % biggest", "count", better="higher"),
        Metric("median_pop_rank", "median popularity rank suggested", "count", better="none"),
    ),
    sizes={
        "tiny": {"users": 300, "guilds": 60, "topics": 6},
        "quick": {"users": 3000, "guilds": 600, "topics": 30},
        "full": {"users": 10000, "guilds": 2000, "topics": 60},
    },
    quick_seconds=25,
    measure=measure,
    conclude=conclude,
)
