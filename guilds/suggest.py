"""Server suggestions from co-membership and activity, with a popularity-bias correction, and
their offline evaluation. Pure logic: memberships in, rankings and figures out.

**Scoring** (item-to-item co-membership). For a user in guilds ``G(u)``, a candidate guild ``c``
scores

    score(c) = sum over g in G(u) of  co(g, c) / |g|^(1/2)      (shared members, damped for a
                                                                 huge guild g: it links to all)
             / |c|^alpha                                        (the bias correction)
             * (1 + log(1 + activity(c)) / 10)                  (a little boost if c is busy now)

``alpha = 0`` is raw co-membership: the biggest servers share members with everyone and win
every list (popularity bias). ``alpha > 0`` divides by the candidate's size — inverse-popularity
weighting — so a smaller server that shares many members with yours can rank above a giant
that shares a few more. ``CHATSCALE_DISCOVERY_SUGGEST_ALPHA`` sets it (default 0.5).

**Evaluation** (``evaluate``): for every user with at least two memberships, one membership
(chosen by the seed) is held out; the model is built on the rest; a hit is the held-out guild
in the user's top 10 (recall@10, the same as hit rate with one held-out item). Catalogue
coverage is the share of all guilds that appear in at least one user's top 10. The baseline
recommends the most-joined guilds the user is not in.

**The world** (``generate_world``): the seeds under ``seeds/`` describe one or two guilds each
— too few for a top-10 — so the evaluation runs on a generated world of many servers, seeded:
users have one to three interests, servers one topic and a Zipf-distributed pull, and a user
joins mostly servers of their interests (weighted by pull) and sometimes a big server of any
topic. ``world_from_community`` turns any ``seeds/*.toml`` structure file into memberships too.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

K = 10


@dataclass
class World:
    """Who is in which guild, and each guild's recent activity (messages)."""

    members: dict[int, set[int]]  # user -> guilds
    activity: dict[int, int] = field(default_factory=dict)  # guild -> messages
    names: dict[int, str] = field(default_factory=dict)

    def guilds(self) -> set[int]:
        return {g for gs in self.members.values() for g in gs} | set(self.activity)


class Model:
    """Co-membership counts of one world, ready to rank."""

    def __init__(
        self,
        members: Mapping[int, set[int]],
        activity: Mapping[int, int],
        *,
        sizes: Mapping[int, int] | None = None,
    ) -> None:
        """``sizes``: real member counts when ``members`` is only a neighbourhood."""
        self.members = members
        self.activity = activity
        self.size: Counter[int] = Counter(g for gs in members.values() for g in gs)
        if sizes is not None:
            for g, n in sizes.items():
                self.size[g] = n
        self.co: dict[int, Counter[int]] = defaultdict(Counter)
        for gs in members.values():
            ordered = sorted(gs)
            for i, a in enumerate(ordered):
                for b in ordered[i + 1 :]:
                    self.co[a][b] += 1
                    self.co[b][a] += 1
        self._by_size = [g for g, _ in sorted(self.size.items(), key=lambda kv: (-kv[1], kv[0]))]

    def suggest(
        self, user: int, *, alpha: float, k: int = K, fill: bool = True
    ) -> list[tuple[int, float]]:
        mine = self.members.get(user, set())
        scores: dict[int, float] = defaultdict(float)
        for g in mine:
            damp = 1 / math.sqrt(self.size[g] or 1)
            for c, shared in self.co[g].items():
                if c not in mine:
                    scores[c] += shared * damp
        ranked = [
            (c, s / self.size[c] ** alpha * (1 + math.log1p(self.activity.get(c, 0)) / 10))
            for c, s in scores.items()
        ]
        ranked.sort(key=lambda r: (-r[1], r[0]))
        if fill and len(ranked) < k:  # a user with no co-members: fill with the popular ones
            seen = mine | {c for c, _ in ranked}
            ranked += [(c, 0.0) for c in self.popular(k, exclude=seen)]
        return ranked[:k]

    def popular(self, k: int, *, exclude: set[int] = frozenset()) -> list[int]:  # type: ignore[assignment]
        out: list[int] = []
        for g in self._by_size:
            if g not in exclude:
                out.append(g)
                if len(out) == k:
                    break
        return out


@dataclass(frozen=True)
class Evaluation:
    method: str  # "popular" or "co-membership a=..."
    users: int  # users evaluated (one held-out membership each)
    recall_at_k: float
    coverage: float  # share of the catalogue in at least one top-K
    tail_recall: float  # recall on held-out guilds outside the 10 % biggest
    median_rank_of_suggested: float  # popularity rank of what is suggested (1 = biggest)


def holdout(
    members: Mapping[int, set[int]], *, seed: int
) -> tuple[dict[int, set[int]], dict[int, int]]:
    """Training memberships and one held-out guild per user with two or more."""
    rng = random.Random(seed)
    train: dict[int, set[int]] = {}
    held: dict[int, int] = {}
    for user in sorted(members):
        gs = sorted(members[user])
        if len(gs) >= 2:
            out = rng.choice(gs)
            held[user] = out
            train[user] = set(gs) - {out}
        else:
            train[user] = set(gs)
    return train, held


def evaluate(world: World, *, alphas: list[float], seed: int, k: int = K) -> list[Evaluation]:
    """The baseline and one row per ``alpha``, on the same held-out split."""
    train, held = holdout(world.members, seed=seed)
    model = Model(train, world.activity)
    catalogue = world.guilds()
    by_size = model.popular(len(catalogue))
    by_size += sorted(catalogue - set(by_size))  # guilds nobody kept in training: last
    rank = {g: i + 1 for i, g in enumerate(by_size)}
    head = set(by_size[: max(1, len(by_size) // 10)])
    rows = []
    arms: list[tuple[str, float | None]] = [("popular", None)]
    arms += [(f"co-membership a={a:g}", a) for a in alphas]
    for name, alpha in arms:
        hits = tail_hits = tail_n = 0
        shown: set[int] = set()
        ranks: list[int] = []
        for user, target in held.items():
            if alpha is None:
                top = model.popular(k, exclude=train[user])
            else:
                top = [c for c, _ in model.suggest(user, alpha=alpha, k=k)]
            shown.update(top)
            ranks += [rank.get(g, len(rank)) for g in top]
            hit = target in top
            hits += hit
            if target not in head:
                tail_n += 1
                tail_hits += hit
        ranks.sort()
        rows.append(
            Evaluation(
                method=name,
                users=len(held),
                recall_at_k=hits / max(1, len(held)),
                coverage=len(shown) / max(1, len(catalogue)),
                tail_recall=tail_hits / max(1, tail_n),
                median_rank_of_suggested=float(ranks[len(ranks) // 2]) if ranks else 0.0,
            )
        )
    return rows


def generate_world(
    *,
    users: int = 3000,
    guilds: int = 600,
    topics: int = 30,
    skew: float = 1.1,
    seed: int = 19,
) -> World:
    """A seeded world of many servers (module docstring). Deterministic for a seed."""
    rng = random.Random(seed)
    topic_of = [rng.randrange(topics) for _ in range(guilds)]
    pull = [1 / (r + 1) ** skew for r in range(guilds)]
    rng.shuffle(pull)
    by_topic: dict[int, list[int]] = defaultdict(list)
    for g, t in enumerate(topic_of):
        by_topic[t].append(g)
    base = 1_000_000
    members: dict[int, set[int]] = {}
    for u in range(users):
        interests = rng.sample(range(topics), rng.choice((1, 1, 2, 2, 3)))
        local = [g for t in interests for g in by_topic[t]]
        n = min(len(local), 2 + int(rng.expovariate(1 / 3)))
        joined: set[int] = set()
        while len(joined) < n:
            if rng.random() < 0.8 and local:
                g = rng.choices(local, weights=[pull[x] for x in local])[0]
            else:
                g = rng.choices(range(guilds), weights=pull)[0]
            joined.add(base + g)
        members[base * 10 + u] = joined
    size = Counter(g for gs in members.values() for g in gs)
    activity = {base + g: int(size.get(base + g, 0) * rng.uniform(0.2, 3.0)) for g in range(guilds)}
    names = {base + g: f"topic{topic_of[g]:02d}-server{g}" for g in range(guilds)}
    return World(members, activity, names)


def world_from_community(memberships: list[tuple[int, int]], names: dict[int, str]) -> World:
    """A ``seeds/*.toml`` structure file's (guild, user) memberships as a world."""
    members: dict[int, set[int]] = defaultdict(set)
    for guild_id, user_id in memberships:
        members[user_id].add(guild_id)
    return World(dict(members), {}, names)


def table(rows: list[Evaluation], *, k: int = K) -> str:
    head = (
        f"{'method':<24} {'users':>6} {'recall@' + str(k):>10} {'coverage':>9} "
        f"{'tail recall':>11} {'median pop. rank':>16}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.method:<24} {r.users:>6} {r.recall_at_k:>10.3f} {r.coverage:>9.3f} "
            f"{r.tail_recall:>11.3f} {r.median_rank_of_suggested:>16.0f}"
        )
    return "\n".join(lines)
