"""Trust & safety (docs/safety.md): AutoMod rules, the moderation stage's modes and fail modes,
and the spam-bot detector acting through the control plane's strong path."""

from __future__ import annotations

import asyncio

import pytest

from chatscale import snowflake
from chatscale.client import ChatClient
from chatscale.closecodes import Close
from chatscale.keys import Keys
from chatscale.wire import IngestMessage, Op
from guilds.automod import Rules, RulesError, evaluate
from guilds.controlplane import ControlPlane
from storage import User
from tests.conftest import Stack, settled
from workers import features, spam
from workers.moderation import Moderation
from workers.worker import Worker

# ---- pure ---------------------------------------------------------------------------------------


def test_rules_verdicts():
    rules = Rules(keywords=("scam*",), alert_keywords=("refund",), max_mentions=2)
    assert evaluate(rules, "anyone tried redis?").action == "allow"
    assert evaluate(rules, "great SCAMMERS here").action == "block"
    assert evaluate(rules, "join discord.gg/abc123").action == "block"
    assert evaluate(rules, "<@1> <@2> <@3> hi").action == "block"
    assert evaluate(rules, "I want a refund").action == "alert"
    assert evaluate(rules, "same again", repeats=3).action == "block"
    assert evaluate(rules, "same again", repeats=2).action == "allow"
    assert evaluate(Rules(mention_action="timeout", max_mentions=1), "<@1> <@2>").action == (
        "timeout"
    )
    assert evaluate(rules, "fine", model_score=0.95).action == "block"
    assert evaluate(rules, "fine", model_score=0.7).action == "alert"
    assert evaluate(Rules(exempt_users=(7,)), "discord.gg/x", author_id=7).action == "allow"
    with pytest.raises(RulesError):
        Rules(regexes=("(",))
    with pytest.raises(RulesError):
        Rules.from_json('{"nope": 1}')
    assert Rules.from_json(rules.to_json()) == rules


def test_spam_score_separates_a_bot_from_an_eager_newcomer():
    bot = features.AccountFeatures(
        1, 30, messages=20, duplicates=15, mentions=10, distinct_channels=5,
        messages_last_min=20, joins_last_min=4,
    )  # fmt: skip
    newcomer = features.AccountFeatures(
        2, 60, messages=6, duplicates=0, mentions=1, distinct_channels=2, messages_last_min=6,
        joins_last_min=1, devices={"desktop": "online"},
    )  # fmt: skip
    assert spam.score(bot) >= 0.7 > 0.2 > spam.score(newcomer)


# ---- real processes -----------------------------------------------------------------------------


def worker_with(stack: Stack, **knobs: object) -> Worker:
    return Worker(stack.settings.model_copy(update=knobs), store=stack.store, consumer="w-safe")


async def guild_of(stack: Stack) -> int:
    [guild] = await stack.store.find_guilds("interview-prep")
    return guild.id


async def test_a_blocked_message_reaches_nobody_and_its_author_gets_the_code(
    stack: Stack, plane: ControlPlane
):
    guild = await guild_of(stack)
    mods = stack.channels["mentors-only"]
    await plane.set_automod(guild, Rules(keywords=("badword",), alert_keywords=("refund",),
                                         alert_channel_id=mods))  # fmt: skip
    worker = worker_with(stack, moderation_mode="enforce")
    alice, bob, carol = (
        await stack.client("alice"),
        await stack.client("bob", 1),
        await stack.client("carol", 1),
    )
    general = stack.channels["general"]
    await alice.send_message(general, "you badword")
    await alice.send_message(general, "I want a refund")
    await alice.send_message(general, "sentinel")
    await worker.drain()
    rejected = await alice.next_event("MESSAGE_REJECTED")
    assert rejected["d"]["code"] == "AUTOMOD_BLOCKED"
    for member in (bob, carol):
        got = []
        while not got or got[-1] != "sentinel":
            got.append((await member.next_event("MESSAGE_CREATE"))["d"]["content"])
        assert got == ["I want a refund", "sentinel"]  # the alert is delivered, the block not
    alert = await carol.next_event("AUTOMOD_ALERT")  # carol is a mentor: she sees the channel
    assert alert["d"]["reason"] == "alert keyword 'refund'"
    assert "AUTOMOD_ALERT" not in [f.get("t") for f in await settled(bob)]
    await worker.close()


async def test_shadow_never_blocks(stack: Stack, plane: ControlPlane):
    await plane.set_automod(await guild_of(stack), Rules(keywords=("badword",)))
    worker = worker_with(stack, moderation_mode="shadow")
    alice, bob = await stack.client("alice"), await stack.client("bob", 1)
    await alice.send_message(stack.channels["general"], "you badword")
    await worker.drain()
    assert (await bob.next_event("MESSAGE_CREATE"))["d"]["content"] == "you badword"
    assert worker.safety.moderation.counts == {"block": 1}
    assert "MESSAGE_REJECTED" not in [f.get("t") for f in await settled(alice)]
    await worker.close()


@pytest.mark.parametrize("fail", ["open", "closed"])
async def test_a_failing_classifier_follows_the_fail_mode(stack: Stack, fail: str):
    worker = worker_with(stack, moderation_mode="enforce", moderation_down=True,
                         moderation_fail=fail)  # fmt: skip
    alice, bob = await stack.client("alice"), await stack.client("bob", 1)
    await alice.send_message(stack.channels["general"], "hello while it is down")
    await worker.drain()
    if fail == "open":
        assert (await bob.next_event("MESSAGE_CREATE"))["d"]["content"] == "hello while it is down"
    else:
        assert (await alice.next_event("MESSAGE_REJECTED"))["d"]["code"] == "AUTOMOD_UNAVAILABLE"
        assert "MESSAGE_CREATE" not in [f.get("t") for f in await settled(bob)]
    await worker.close()


async def test_a_classifier_over_its_budget_is_a_timeout(stack: Stack):
    class Stuck:
        name = "stuck"

        async def score(self, items):  # never answers: only the budget ends it
            await asyncio.Event().wait()

    settings = stack.settings.model_copy(
        update={
            "moderation_mode": "enforce",
            "moderation_budget_ms": 20,
            "moderation_fail": "closed",
        }
    )
    redis = stack.gateways[0].redis
    stage = Moderation(settings, redis=redis, keys=Keys(settings.key_prefix), classifier=Stuck())
    m = IngestMessage(id=1, channel_id=2, guild_id=3, author_id=4, gateway_id="g",
                      session_id="s", payload='{"content":"x"}')  # fmt: skip
    screened = await stage.screen([m])
    assert screened.passed == [] and screened.blocked == [(m, "AUTOMOD_UNAVAILABLE")]
    assert stage.failures == 1


async def test_a_raid_account_is_quarantined_through_the_strong_path(
    stack: Stack, plane: ControlPlane
):
    guild = await guild_of(stack)
    bot_id = snowflake.SnowflakeGenerator(1).next()  # created now: its age is in its id
    await stack.store.put_user(User(bot_id, "raider"))
    stack.users["raider"] = bot_id
    await plane.add_member(guild, bot_id)
    worker = worker_with(stack, spam_detect=True)
    bots = [await stack.client("raider"), await stack.client("raider", 1)]
    channels = [stack.channels[c] for c in ("general", "system-design")]
    for i in range(20):  # fast, repeated, mention-heavy, no presence service: score >= 0.7
        await bots[0].send_message(channels[i % 2], f"free nitro <@1> <@2> <@3> {i % 2}")
    await worker.drain()
    await asyncio.wait_for(worker.safety.actions.wait(), 30)  # the quarantine call returned
    for gw in stack.gateways:  # ... and no gateway held a session of the bot any more
        assert all(s.user_id != bot_id for s in gw.sessions.values())
    for bot in bots:
        await asyncio.wait_for(bot.closed.wait(), 10)
        assert bot.close_code == Close.ACCOUNT_QUARANTINED
    again = await ChatClient.open(stack.gateways[0].url, heartbeat=False)
    stack.clients.append(again)
    await again.send_op(Op.IDENTIFY, {"token": stack.token("raider")})
    await asyncio.wait_for(again.closed.wait(), 10)  # refused at IDENTIFY: quarantined
    assert again.close_code == Close.ACCOUNT_QUARANTINED
    entries = await stack.gateways[0].redis.xrange(Keys(stack.settings.key_prefix).spam_actions())
    assert [e[b"user"] for _, e in entries] == [str(bot_id).encode()]
    assert float(entries[0][1][b"score"]) >= 0.7
    assert int(entries[0][1][b"acted_ms"]) - snowflake.timestamp_ms(bot_id) < 300_000
    assert not await stack.store.is_member(guild, bot_id)
    await worker.close()
