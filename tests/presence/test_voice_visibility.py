"""Voice state reaches only members who can see the channel; only voice channels, with CONNECT.

Real gateways, a real presence service and Valkey; time is injected. In the demo community
alice owns interview-prep, carol holds the mentors role, bob and dave are plain members. The
test adds a private voice channel only mentors can see and a public one.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from chatscale.client import ChatClient
from chatscale.wire import Op
from guilds.controlplane import ControlPlane
from guilds.permissions import Permission
from presence.service import PresenceService
from tests.conftest import Stack, join_voice, presence_tick, settled

P = Permission


def voice_of(frames: list[dict[str, Any]]) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """(scope channel, [(user, channel)]) of every VOICE_STATE_UPDATE, in order."""
    return [
        (f["d"]["channel_id"], [(v["user_id"], v["channel_id"]) for v in f["d"]["voice"]])
        for f in frames
        if f.get("t") == "VOICE_STATE_UPDATE"
    ]


async def voice_request(client: ChatClient, guild: int, channel: int | None) -> None:
    await client.send_op(
        Op.VOICE_STATE_UPDATE,
        {"guild_id": str(guild), "channel_id": None if channel is None else str(channel)},
    )


async def test_a_private_voice_channel_reaches_only_its_viewers(
    stack: Stack, presence: PresenceService, relay
):
    [guild_row] = await stack.store.find_guilds("interview-prep")
    guild = guild_row.id
    [mentors] = [r for r in await stack.store.guild_roles(guild) if r.name == "mentors"]
    plane = ControlPlane(stack.settings, store=stack.store)
    try:
        staff = (
            await plane.create_channel(
                guild,
                "staff-voice",
                kind="voice",
                overwrites=[
                    ("role", guild, P(0), P.VIEW_CHANNEL),
                    ("role", mentors.id, P.VIEW_CHANNEL, P(0)),
                ],
            )
        ).created.id
        lounge = (await plane.create_channel(guild, "lounge", kind="voice")).created.id
    finally:
        await plane.close()
    alice = await stack.client("alice", gateway=0)  # the owner sees every channel
    bob = await stack.client("bob", gateway=1)
    carol = await stack.client("carol", gateway=1)
    carol_id = str(stack.users["carol"])
    await presence_tick(stack, presence, 2.0)
    await settled(alice), await settled(bob)

    await join_voice(stack, carol, guild, staff, relay)  # into the private channel
    await presence_tick(stack, presence, 2.0)
    await stack.drain()
    leaked = [f for f in await settled(bob) if str(staff) in orjson.dumps(f).decode()]
    assert leaked == []
    assert voice_of(await settled(alice)) == [(str(staff), [(carol_id, str(staff))])]

    await join_voice(stack, carol, guild, lounge, relay)  # a move: staff's viewers see her leave it
    await presence_tick(stack, presence, 2.0)
    await stack.drain()
    assert voice_of(await settled(alice)) == [
        (str(staff), [(carol_id, None)]),
        (str(lounge), [(carol_id, str(lounge))]),
    ]
    bob_frames = await settled(bob)
    assert voice_of(bob_frames) == [(str(lounge), [(carol_id, str(lounge))])]
    assert [f for f in bob_frames if str(staff) in orjson.dumps(f).decode()] == []
    assert presence.state.voice_channel(stack.users["carol"]) == (guild, lounge)


async def test_voice_state_needs_a_visible_voice_channel_with_connect(
    stack: Stack, presence: PresenceService
):
    [guild_row] = await stack.store.find_guilds("interview-prep")
    guild = guild_row.id
    plane = ControlPlane(stack.settings, store=stack.store)
    try:
        lounge = (await plane.create_channel(guild, "lounge", kind="voice")).created.id
        hidden = (
            await plane.create_channel(
                guild, "hidden", kind="voice", overwrites=[("role", guild, P(0), P.VIEW_CHANNEL)]
            )
        ).created.id
        bob = await stack.client("bob", gateway=1)
        await plane.set_overwrite(lounge, "member", stack.users["bob"], allow=P(0), deny=P.CONNECT)
        await bob.next_event("CHANNEL_UPDATE")
    finally:
        await plane.close()
    cases = [
        (stack.channels["general"], "NOT_VOICE_CHANNEL"),  # a text channel
        (lounge, "MISSING_PERMISSIONS"),  # visible voice channel, CONNECT denied
        (hidden, "UNKNOWN_CHANNEL"),  # cannot see it
        (stack.channels["papers"], "UNKNOWN_CHANNEL"),  # another guild's channel
    ]
    for channel, code in cases:
        await voice_request(bob, guild, channel)
        error = await asyncio.wait_for(bob.events.get(), 10)
        assert (error["op"], error["d"]["code"]) == (Op.ERROR, code), channel
    await bob.send_message(stack.channels["general"], "still connected")
    await presence_tick(stack, presence, 2.0)
    assert presence.state.voice_channel(stack.users["bob"]) is None


async def test_a_member_removed_from_the_guild_leaves_its_voice_channel(
    stack: Stack, presence: PresenceService, relay
):
    [guild_row] = await stack.store.find_guilds("interview-prep")
    guild = guild_row.id
    alice = await stack.client("alice", gateway=0)
    carol = await stack.client("carol", gateway=1)
    carol_id = str(stack.users["carol"])
    plane = ControlPlane(stack.settings, store=stack.store)
    try:
        lounge = (await plane.create_channel(guild, "lounge", kind="voice")).created.id
        await carol.next_event("CHANNEL_CREATE")
        await join_voice(stack, carol, guild, lounge, relay)
        await presence_tick(stack, presence, 2.0)
        assert presence.state.voice_channel(stack.users["carol"]) == (guild, lounge)
        await settled(alice)
        await plane.ban(guild, stack.users["carol"])
    finally:
        await plane.close()
    await presence_tick(stack, presence, 2.0)
    assert presence.state.voice_channel(stack.users["carol"]) is None
    assert voice_of(await settled(alice)) == [(str(lounge), [(carol_id, None)])]
