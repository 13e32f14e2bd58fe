"""The ``fanout_mode`` knob: ``gateway`` (the default) writes one delivery entry per gateway and
nothing per user; ``inbox`` also appends a pointer to every member's inbox stream, online or
not, once per message, while online members are still delivered through their gateways."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from chatscale.config import Settings
from chatscale.keys import Keys
from tests.conftest import Stack
from workers.worker import Worker


def test_default_is_gateway_fanout(clean_env):
    assert Settings().fanout_mode == "gateway"
    assert Settings(fanout_mode="inbox").fanout_mode == "inbox"
    with pytest.raises(ValueError):
        Settings(fanout_mode="everyone")


async def test_gateway_mode_writes_no_inbox(stack: Stack):
    keys = Keys(stack.settings.key_prefix)
    bob = await stack.client("bob", gateway=1)
    alice = await stack.client("alice")
    await alice.send_message(stack.channels["general"], "hello")
    await stack.drain()
    await bob.next_event("MESSAGE_CREATE")
    redis = stack.gateways[0].redis
    assert await redis.keys(keys.inbox(0).replace(":{u0}", ":*")) == []
    assert stack.worker.stats.inbox_writes == 0


async def test_inbox_mode_writes_every_member_once_and_still_delivers(stack: Stack):
    keys = Keys(stack.settings.key_prefix)
    settings = stack.settings.model_copy(update={"fanout_mode": "inbox", "inbox_maxlen": 3})
    worker = Worker(settings, store=stack.store, consumer="w-inbox")
    try:
        bob = await stack.client("bob", gateway=1)  # online; everyone else is offline
        alice = await stack.client("alice")
        general = stack.channels["general"]
        sent = await alice.send_message(general, "to every inbox")
        await worker.drain()
        got = await bob.next_event("MESSAGE_CREATE")
        assert got["d"]["id"] == sent["id"]  # online members still get it from their gateway
        guild = int(got["d"]["guild_id"])
        members = await stack.store.guild_members(guild)
        redis = stack.gateways[0].redis
        others = [u for u in members if u != stack.users["alice"]]
        assert len(others) >= 2  # online and offline members alike
        for user_id in others:
            entries = await redis.xrange(keys.inbox(user_id))
            assert [e[1] for e in entries] == [
                {b"c": str(general).encode(), b"m": sent["id"].encode()}
            ]
        assert await redis.xlen(keys.inbox(stack.users["alice"])) == 0  # not the author
        assert worker.stats.inbox_writes == len(others)

        # a redelivery of the same message writes no second inbox entry (the marker)
        await worker.pipeline._inbox([_Msg(int(sent["id"]), general, guild, stack.users["alice"])])
        assert worker.stats.inbox_writes == len(others)
        assert await redis.xlen(keys.inbox(stack.users["bob"])) == 1

        # inboxes are capped at inbox_maxlen, approximately (MAXLEN ~ drops whole stream nodes
        # of up to 100 entries): after 250 more messages far fewer than 251 are left
        await asyncio.gather(*(alice.send_message(general, f"more {i}") for i in range(250)))
        await worker.drain()
        assert 3 <= await redis.xlen(keys.inbox(stack.users["bob"])) <= 200
    finally:
        await worker.close()


@dataclass
class _Msg:
    """The fields of an ``IngestMessage`` the inbox step reads."""

    id: int
    channel_id: int
    guild_id: int
    author_id: int
