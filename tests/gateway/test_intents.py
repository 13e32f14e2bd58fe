"""IDENTIFY's ``intents``: a session gets only the event groups it asked for.

Real in-process gateways, a real Valkey and SQLite (the ``stack`` fixture). A HEARTBEAT/ACK
round trip (``settled``) proves a client has received everything its gateway sent before.
"""

from __future__ import annotations

import asyncio

import pytest

from chatscale.client import ChatClient
from chatscale.closecodes import Close
from chatscale.wire import ALL_INTENTS, Intent, Op
from presence.service import PresenceService
from tests.conftest import Stack, presence_tick, settled


def kinds(frames: list[dict]) -> list[str]:
    return [f["t"] for f in frames if f.get("t")]


async def test_without_guild_messages_no_message_create_but_replies_still_arrive(stack: Stack):
    everything = await stack.client("bob", gateway=0)  # no intents: all of them
    pusher = await stack.client("carol", gateway=0, intents=int(Intent.GUILD_MESSAGES))
    poller = await stack.client("dave", gateway=1, intents=0)
    general = stack.channels["general"]
    sent = await poller.send_message(general, "from the poller")  # MESSAGE_ACK still comes
    await stack.drain()
    for client in (everything, pusher):
        got = await client.next_event("MESSAGE_CREATE")
        assert got["d"]["id"] == sent["id"]
    assert "MESSAGE_CREATE" not in kinds(await settled(poller))
    # ... and the poller finds it by asking for history
    assert [m["id"] for m in await poller.history(general)] == [sent["id"]]


async def test_presence_and_typing_follow_their_intents(stack: Stack, presence: PresenceService):
    typing_only = await stack.client("bob", gateway=1, intents=int(Intent.GUILD_MESSAGE_TYPING))
    presences = await stack.client("carol", gateway=1, intents=int(Intent.GUILD_PRESENCES))
    alice = await stack.client("alice", gateway=0)
    assert typing_only.ready["presences"] == {}
    assert presences.ready["presences"]  # the guild's presences, as without intents
    await alice.send_op(Op.TYPING, {"channel_id": str(stack.channels["general"])})
    await alice.send_message(stack.channels["general"], "sync point")
    await presence_tick(stack, presence, drain=True)
    await typing_only.next_event("TYPING_START")
    await presences.next_event("PRESENCE_UPDATE")
    bob_saw, carol_saw = kinds(await settled(typing_only)), kinds(await settled(presences))
    assert "PRESENCE_UPDATE" not in bob_saw and "MESSAGE_CREATE" not in bob_saw
    assert "TYPING_START" not in carol_saw and "MESSAGE_CREATE" not in carol_saw


def test_omitted_intents_mean_every_event_group():
    assert (
        ALL_INTENTS == Intent.GUILD_PRESENCES | Intent.GUILD_MESSAGES | Intent.GUILD_MESSAGE_TYPING
    )
    assert (Intent.GUILD_PRESENCES, Intent.GUILD_MESSAGES, Intent.GUILD_MESSAGE_TYPING) == (
        256,
        512,
        2048,
    )  # Discord's numbers


@pytest.mark.parametrize("bad", [True, "512", -1, 1.5, 1 << 31])
async def test_intents_that_are_not_a_bitfield_close_with_4006(stack: Stack, bad: object):
    client = await ChatClient.open(stack.gateways[0].url, heartbeat=False)
    stack.clients.append(client)
    await client.send_op(Op.IDENTIFY, {"token": stack.token("bob"), "intents": bad})
    await asyncio.wait_for(client.closed.wait(), 10)
    assert client.close_code == Close.INVALID_PAYLOAD
