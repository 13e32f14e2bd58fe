"""The spam-raid scenario (loadtest/raid.py): the report's arithmetic (pure), and one tiny raid
against the in-process gateways with a spam-detecting worker consuming in the background."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from loadtest import communities, raid
from loadtest.engine import load_community
from tests.conftest import Stack
from workers.worker import Worker

pytestmark = pytest.mark.timeout(150)

TINY = """
name = "raid-tiny"
seed = 7
[members]
count = 5
online = 1.0
[[channels]]
name = "a"
[[channels]]
name = "b"
[[channels]]
name = "c"
[chat]
messages_per_minute = 120
talkers = 0.5
"""


def test_percentile_is_nearest_rank():
    assert raid.percentile([], 50) is None
    assert raid.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert raid.percentile([float(i) for i in range(1, 101)], 99) == 99.0
    assert raid.percentile([5.0], 99) == 5.0


def test_bot_text_repeats_unless_it_rotates():
    victims = [1, 2, 3, 4, 5, 6, 7]
    plain = {raid.bot_text(0, n, victims, 3) for n in range(30)}
    rotating = {raid.bot_text(0, n, victims, 3, rotate=True) for n in range(30)}
    assert len(plain) == len(raid.SPAM) and len(rotating) > len(plain)


def test_summary_counts_time_to_action_deliveries_and_false_positives():
    bot1 = raid.Account("bot", 11, "b1", created_ms=1_000, sent=10, acked=9)
    bot2 = raid.Account("bot", 12, "b2", created_ms=2_000, sent=5, acked=5)
    new = raid.Account("newcomer", 21, "n1", created_ms=3_000, sent=4)
    act = {"action": "quarantine", "score": 0.8}
    actions = [
        {"user": 11, "created_ms": 1_000, "acted_ms": 31_000, **act},
        {"user": 11, "created_ms": 1_000, "acted_ms": 40_000, **act},  # a second worker's
        {"user": 21, "created_ms": 3_000, "acted_ms": 9_000, **act},  # a newcomer: false positive
        {"user": 99, "created_ms": 0, "acted_ms": 9_000, **act},  # a member: false positive
    ]
    delivered = {11: {1: 5_000.0, 2: 30_000.0, 3: 32_000.0}, 21: {4: 4_000.0}, 99: {5: 1.0}}
    r = raid.summarize([bot1, bot2, new], actions, delivered, act_within_s=300, normal_ids={99})
    b = r["bots"]
    assert (b["created"], b["acted"], b["acted_within_5min"]) == (2, 1, 1)
    assert b["to_action_s"] == {"p50": 30.0, "p99": 30.0, "max": 30.0}
    assert b["messages_sent"] == 15 and b["messages_acked"] == 14
    assert b["messages_delivered_before_action"] == 2
    assert b["messages_delivered_after_action"] == 1
    assert r["false_positives"]["count"] == 2
    assert {a["kind"] for a in r["false_positives"]["accounts"]} == {"newcomer", "member"}
    assert r["normal"]["newcomer_messages_delivered"] == 1
    assert r["verdict"] == {"every_bot_acted_within_5min": False, "no_false_positive": False}


async def test_a_tiny_raid_acts_on_every_bot(stack: Stack, tmp_path: Path):
    path = tmp_path / "raid-tiny.toml"
    path.write_text(TINY)
    sim = communities.load(str(path))
    settings = stack.settings.model_copy(update={"spam_detect": True})
    worker = Worker(settings, store=stack.store, consumer="w-raid")
    task = asyncio.create_task(worker.run())
    try:
        load = await load_community(sim, stack.settings, say=lambda _t: None)
        cfg = raid.RaidConfig(
            community=str(path), duration=2.0, bots=2, bot_every_s=0.5, bot_rate=10.0,
            newcomers=1, newcomer_rate=1.0, act_within_s=90.0, drain_s=0.5,
        )  # fmt: skip
        urls = [gw.url for gw in stack.gateways]
        r = await raid.Raid(cfg, stack.settings, urls, say=lambda _t: None).run(sim, load)
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)
        await worker.close()
    b = r["bots"]
    assert b["created"] == 2 and b["acted"] == 2, r
    for bot in b["per_bot"]:  # acted through the strong path: the session was closed (4016)
        assert bot["action"] == "quarantine" and bot["close_code"] == 4016
        assert 0 < bot["to_action_s"] <= 90
        assert bot["delivered"] <= bot["acked"] <= bot["sent"]
    assert b["messages_delivered_before_action"] + b["messages_delivered_after_action"] == sum(
        bot["delivered"] for bot in b["per_bot"]
    )
    assert r["false_positives"] == {"count": 0, "accounts": []}
    assert r["normal"]["members_online"] == 5 and r["normal"]["newcomers"] == 1
    assert r["verdict"]["every_bot_acted_within_5min"]
    assert "creation -> action" in raid.text(r)
