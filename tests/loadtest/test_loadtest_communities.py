"""Simulated communities: reproducible from one seed, shaped as their files say, loadable
through the control plane."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatscale.keys import Keys
from chatscale.redisconn import connect
from loadtest import communities
from loadtest.engine import load_community

SHIPPED = ["study-group", "gaming-50k", "streamer-live"]


@pytest.mark.parametrize("name", SHIPPED)
def test_the_same_seed_gives_the_same_members_and_schedules(name: str):
    a, b = communities.load(name), communities.load(name)
    assert a.members == b.members
    assert a.messages(start=0, seconds=5, per_second=4, seed=7) == b.messages(
        start=0, seconds=5, per_second=4, seed=7
    )
    assert a.community.plan() == b.community.plan()


def test_shapes_follow_the_files():
    study = communities.load("study-group")
    assert len(study.members) == 20 and len(study.online) == 16
    gaming = communities.load("gaming-50k")
    assert len(gaming.members) == 50_000 and len(gaming.online) == 5_000
    assert gaming.members[0].online  # the owner (the celebrity) is always online
    devices = {m.device for m in gaming.online}
    assert devices == {"desktop", "mobile", "web"}
    # a few talkers, many lurkers, and the top tenth of talkers post most of the messages
    summary = gaming.summary()
    assert summary["talkers"] == 250 and summary["lurkers_online"] == 4_750
    assert summary["top_10pct_talkers_share"] > 0.5
    msgs = gaming.messages(start=0, seconds=60, per_second=5, seed=1)
    assert len(msgs) == 300 and msgs[1].at - msgs[0].at == pytest.approx(0.2)
    senders = [m.sender for m in msgs]
    top = max(set(senders), key=senders.count)
    assert senders.count(top) > len(msgs) / 10
    streamer = communities.load("streamer-live")
    arriving = [m.arrive_at for m in streamer.online if m.arrive_at is not None]
    assert len(arriving) > 2_800 and max(arriving) <= 10.0
    assert all(m.arrive_at is None for m in streamer.talkers())  # the regulars are there first


def test_online_override_and_storms():
    sim = communities.load("study-group", online=5)
    assert len(sim.online) == 5
    storm = sim.status_storm(start=1.0, seed=3)
    assert len(storm) == 5 and all(1.0 <= s.at <= 2.0 for s in storm)
    assert {s.status for s in storm} <= {"idle", "dnd", "invisible"}
    drops = sim.drop_storm(at=4.0, seed=3)
    assert len(drops) == 5 and {d.at for d in drops} == {4.0}


def test_a_bad_file_says_what_is_wrong(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nseed = 1\n[members]\ncount = 3\nonline = 2.0\n')
    with pytest.raises(ValueError, match="online"):
        communities.load(bad)
    with pytest.raises(FileNotFoundError, match="study-group"):
        communities.load("no-such-community")


async def test_loading_goes_through_the_control_plane_once(settings):
    sim = communities.load("study-group")
    redis = connect(settings)
    keys = Keys(settings.key_prefix)
    try:
        before = int(await redis.get(keys.metadata_version()) or 0)
        first = await load_community(sim, settings, say=lambda *_: None)
        assert first["loaded"] and first["counts"]["members"] == 20
        assert int(await redis.get(keys.metadata_version())) > before  # apply bumped it
        again = await load_community(sim, settings, say=lambda *_: None)
        assert not again["loaded"]  # already there: skipped
        assert again["user_ids"] == first["user_ids"]
    finally:
        await redis.aclose()
