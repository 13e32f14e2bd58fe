"""Discovery (docs/discovery.md): the directory's autocomplete follows the control plane at
once, top-K over Redis matches an exact count of a seeded stream, the suggestions' evaluation
is a function of its seed, and the gateway's DISCOVER op answers or refuses with its code."""

from __future__ import annotations

from collections import Counter

import pytest

from chatscale.client import GatewayError
from chatscale.keys import Keys
from chatscale.redisconn import connect
from chatscale.wire import Op
from guilds import suggest, topk
from guilds.controlplane import ControlPlane
from guilds.directory import ActivityCounter, Directory, DirectoryError


async def test_autocomplete_and_gateway_op(stack, plane: ControlPlane) -> None:
    alice = stack.users["alice"]
    d = plane.directory
    made = (await plane.create_guild("Rustaceans Berlin", alice, public=True)).created
    hidden = (await plane.create_guild("rust-secret", alice)).created
    # the next keystroke finds the guild created a moment ago; a private one is never listed
    assert [e.guild_id for e in await d.search("rust")] == [made.id]
    assert [e.guild_id for e in await d.search("RUSTACEANS b")] == [made.id]
    await plane.set_public(hidden.id, True)
    assert [e.name for e in await d.search("rust")] == [
        "rust-secret",
        "Rustaceans Berlin",
    ]  # casefolded byte order
    await plane.rename_guild(made.id, "Gophers Berlin")
    assert [e.name for e in await d.search("rust")] == ["rust-secret"]
    assert [e.name for e in await d.search("goph")] == ["Gophers Berlin"]
    await plane.set_public(hidden.id, False)
    assert await d.search("rust") == []
    with pytest.raises(DirectoryError):
        await d.search("  ")

    bob = await stack.client("bob")
    found = await bob.discover("search", query="gop")
    assert [g["name"] for g in found] == ["Gophers Berlin"]
    listed = {g["name"] for g in await bob.discover("list", limit=50)}
    assert {"interview-prep", "Gophers Berlin"} <= listed  # demo.toml: interview-prep public
    assert "ml-reading-group" not in listed and "rust-secret" not in listed

    # bob's fellow member alice is in Gophers Berlin (public) and ml-reading-group (private)
    suggested = [g["name"] for g in await bob.discover("suggest")]
    assert suggested == ["Gophers Berlin"]

    # the worker's hook counts accepted messages per guild; DISCOVER top reads them back
    for i in range(3):
        await bob.send_message(stack.channels["general"], f"hello {i}")
    await stack.drain()
    top = await bob.discover("top", limit=5)
    prep = [g for g in top if g["name"] == "interview-prep"]
    assert prep and prep[0]["messages"] == 3, top

    # values the directory refuses: one documented ERROR, the connection stays open
    with pytest.raises(GatewayError) as refused:
        await bob.discover("search", query="")
    assert refused.value.d["code"] == "BAD_DISCOVER_REQUEST"
    with pytest.raises(GatewayError) as refused:
        await bob.discover("list", limit=500)
    assert refused.value.d["code"] == "BAD_DISCOVER_REQUEST"
    assert await bob.discover("search", query="inter") == [
        {"id": str(await _id(stack, "interview-prep")), "name": "interview-prep"}
    ]
    # a wrong shape is a wrong payload, as for every op: 4006
    await bob.send_op(Op.DISCOVER, {"kind": "everything"})
    await bob.closed.wait()
    assert bob.close_code == 4006


async def _id(stack, name: str) -> int:
    [guild] = await stack.store.find_guilds(name)
    return guild.id


async def test_top_k_matches_an_exact_count_of_a_seeded_stream(settings) -> None:
    redis = connect(settings)
    keys = Keys(settings.key_prefix)
    now = [0.0]
    directory = Directory(redis, keys, window_minutes=10, wall_clock=lambda: now[0])
    tick = [0.0]
    counter = ActivityCounter(directory, "w1", flush_s=1.0, clock=lambda: tick[0])
    events = topk.zipf_stream(guilds=300, messages=6000, minutes=14, skew=1.1, seed=7)
    truth = topk.ExactWindow(10)
    try:
        batch: list[int] = []
        for i, e in enumerate(events):
            truth.add(e.minute, e.guild, e.n)
            batch.append(int(e.guild))
            end_of_minute = i + 1 == len(events) or events[i + 1].minute != e.minute
            if len(batch) == 50 or end_of_minute:  # a worker batch
                now[0] = e.minute * 60 + 30
                tick[0] += 0.5  # the sketch is flushed every other batch
                await counter.batch(batch)
                batch = []
        await counter.close()
        last = events[-1].minute
        want = truth.top(last, 20)
        got = await directory.top_exact(20, at=last * 60 + 59)
        assert [(str(g), n) for g, n in got] == want
        # 300 guilds < 0.75 x 1024 counters: the sketches are exact too
        approx = await directory.top_approx(20, at=last * 60 + 59)
        assert [(str(g), n) for g, n in approx] == want
        # minutes before the window (0..3 of 14) are not counted
        assert sum(truth.merged(last).values()) < len(events)
    finally:
        await redis.aclose()


def test_the_sketch_errs_within_its_bound_when_it_is_smaller_than_the_stream() -> None:
    events = topk.zipf_stream(guilds=3000, messages=20_000, minutes=10, skew=1.1, seed=3)
    cmp = topk.compare(events, k=10, minutes=10, lg_k=6)
    assert cmp.guilds > 64  # more distinct guilds than counters: estimates, not counts
    assert cmp.max_abs_error <= cmp.error_bound


def test_suggestion_evaluation_is_deterministic_on_a_seed() -> None:
    def run(seed: int) -> list[suggest.Evaluation]:
        world = suggest.generate_world(users=400, guilds=80, topics=8, seed=seed)
        return suggest.evaluate(world, alphas=[0.0, 0.5], seed=seed)

    first, again, other = run(5), run(5), run(6)
    assert first == again
    assert first != other
    popular, raw, corrected = first
    assert [r.method for r in first] == ["popular", "co-membership a=0", "co-membership a=0.5"]
    assert raw.recall_at_k > popular.recall_at_k  # co-membership beats the baseline here
    assert corrected.coverage > raw.coverage  # the correction reaches further into the tail
    assert corrected.median_rank_of_suggested > raw.median_rank_of_suggested


def test_model_counts_co_membership() -> None:
    members = {1: {10, 20}, 2: {10, 20}, 3: {10, 30}, 4: {10}}
    model = suggest.Model(members, {})
    assert model.co[10] == Counter({20: 2, 30: 1})
    assert [g for g, _ in model.suggest(4, alpha=0, k=2)] == [20, 30]
    assert model.popular(1, exclude={10}) == [20]


def test_cli_eval_and_its_mistakes(capsys: pytest.CaptureFixture[str]) -> None:
    from chatscale.cli import main

    assert main(["discover", "eval", "--community", "demo"]) == 0
    out = capsys.readouterr().out
    assert "community 'demo'" in out and "recall@10" in out
    assert main(["discover", "eval", "--alpha", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --alpha is 0..2"]
