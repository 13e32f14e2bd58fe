"""``loadtest.engine.split``: few talkers get a generator process of their own; everyone else is
spread over the others; a community where most members talk is spread as before."""

from __future__ import annotations

from dataclasses import replace

from chatscale.config import Settings
from loadtest import communities, scenarios
from loadtest.engine import TALKERS_APART_SHARE, RunConfig, split


def _split(name: str, scenario: str, online: int, *, apart: bool = True, processes: int = 2):
    sim = communities.load(name, online=online)
    plan = scenarios.build(scenarios.Options(scenario=scenario, duration=20), sim)
    load = {
        "user_ids": [1000 + m.index for m in sim.members],
        "channel_ids": [1, 2, 3],
    }
    cfg = replace(RunConfig(scenario=scenario, community=name), talkers_apart=apart)
    settings = Settings(token_secret="t")
    parts = split(plan, sim, load, ["ws://a", "ws://b"], settings, cfg, processes)
    talkers = {m.sender for m in plan.sends}
    return plan, parts, talkers


def test_a_streamers_few_talkers_get_a_process_of_their_own():
    plan, parts, talkers = _split("streamer-live", "connect-storm", 1500)
    assert 0 < len(talkers) <= TALKERS_APART_SHARE * len(plan.online)
    assert len(parts) == 3
    assert {c.cid for c in parts[2].clients} == talkers  # only the talkers, all of them
    assert {s[1] for s in parts[2].sends} <= talkers and parts[2].sends
    assert not parts[0].sends and not parts[1].sends
    viewers = [len(p.clients) for p in parts[:2]]
    assert sum(viewers) == len(plan.online) - len(talkers) and abs(viewers[0] - viewers[1]) <= 1
    # every client lives in exactly one process
    assert sorted(c.cid for p in parts for c in p.clients) == sorted(plan.online)


def test_talkers_together_and_one_process_keep_the_old_spread():
    _, parts, _ = _split("streamer-live", "connect-storm", 1500, apart=False)
    assert len(parts) == 2
    _, parts, _ = _split("streamer-live", "connect-storm", 1500, processes=1)
    assert len(parts) == 1


def test_a_community_where_many_talk_is_spread_as_before():
    plan, parts, talkers = _split("study-group", "steady", 0)
    assert len(talkers) > TALKERS_APART_SHARE * len(plan.online)
    assert len(parts) == 2
