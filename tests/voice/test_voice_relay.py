"""Voice end to end: real gateways, a real relay (UDP sockets), Valkey, the control plane.

In the demo community alice owns interview-prep; bob, carol and dave are members. Each test
creates a voice channel ``lounge`` open to @everyone (CONNECT and SPEAK are in the defaults).
Packets travel over loopback UDP; a packet sent after another by the same relay is used as a
marker ("everything before it was handled"), never a sleep.
"""

from __future__ import annotations

import asyncio

import pytest

from chatscale import voice as voice_core
from chatscale.keys import Keys
from chatscale.wire import Op
from guilds.controlplane import ControlPlane
from guilds.permissions import Permission
from presence.service import PresenceService
from tests.conftest import Stack, join_voice, presence_tick, settled
from voice import packet
from voice.client import VoiceConnection, VoiceRefused

P = Permission


async def _lounge(stack: Stack, plane: ControlPlane) -> tuple[int, int]:
    [guild_row] = await stack.store.find_guilds("interview-prep")
    lounge = (await plane.create_channel(guild_row.id, "lounge", kind="voice")).created.id
    return guild_row.id, lounge


async def _next_media(conn: VoiceConnection) -> packet.Media:
    _, data = await asyncio.wait_for(conn.received.get(), 10)
    media = packet.parse_media(data)
    assert media is not None, data
    return media


async def test_no_relay_or_a_text_channel_is_refused(stack: Stack, plane: ControlPlane):
    guild, lounge = await _lounge(stack, plane)
    bob = await stack.client("bob")
    await bob.send_op(Op.VOICE_STATE_UPDATE, {"guild_id": str(guild), "channel_id": str(lounge)})
    error = await asyncio.wait_for(bob.events.get(), 10)
    assert (error["op"], error["d"]["code"]) == (Op.ERROR, "VOICE_UNAVAILABLE")
    await bob.send_op(
        Op.VOICE_STATE_UPDATE,
        {"guild_id": str(guild), "channel_id": str(stack.channels["general"])},
    )
    error = await asyncio.wait_for(bob.events.get(), 10)
    assert (error["op"], error["d"]["code"]) == (Op.ERROR, "NOT_VOICE_CHANNEL")


async def test_silenced_members_are_not_forwarded_and_a_late_joiner_disturbs_nobody(
    stack: Stack, plane: ControlPlane, relay
):
    guild, lounge = await _lounge(stack, plane)
    await plane.set_overwrite(lounge, "member", stack.users["dave"], allow=P(0), deny=P.SPEAK)
    alice, bob, dave, carol = [
        await stack.client(n, gateway=i % 2)
        for i, n in enumerate(("alice", "bob", "dave", "carol"))
    ]
    va = await join_voice(stack, alice, guild, lounge, relay)
    vb = await join_voice(stack, bob, guild, lounge, relay)
    vd = await join_voice(stack, dave, guild, lounge, relay)
    assert (va.speak, vb.speak, vd.speak) == (True, True, False)
    for seq in (1, 2, 3):
        va.send_media(seq, seq * 960, b"a%d" % seq)
    for listener in (vb, vd):
        got = [await _next_media(listener) for _ in range(3)]
        assert [(m.seq, m.ssrc, m.payload) for m in got] == [
            (s, va.ssrc, b"a%d" % s) for s in (1, 2, 3)
        ]
    vd.send_media(1, 960, b"dave")  # no SPEAK: dropped at the relay
    va.send_media(4, 4 * 960, b"a4")  # the marker
    assert (await _next_media(vb)).payload == b"a4"
    assert relay.router.counters.dropped_not_speaking == 1
    vc = await join_voice(stack, carol, guild, lounge, relay)  # mid-stream
    for seq in (5, 6):
        va.send_media(seq, seq * 960, b"a%d" % seq)
    assert [(await _next_media(vb)).seq for _ in range(2)] == [5, 6]  # no gap, no repeat
    assert [(await _next_media(vc)).seq for _ in range(2)] == [5, 6]
    assert vb.received.empty() and va.received.empty()  # nobody hears themselves or dave


async def test_lost_speak_and_a_ban_take_effect_at_the_relay_before_the_call_returns(
    stack: Stack, plane: ControlPlane, relay
):
    guild, lounge = await _lounge(stack, plane)
    bob, carol = await stack.client("bob"), await stack.client("carol", gateway=1)
    alice, dave = await stack.client("alice"), await stack.client("dave", gateway=1)
    vb = await join_voice(stack, bob, guild, lounge, relay)
    vc = await join_voice(stack, carol, guild, lounge, relay)
    vd = await join_voice(stack, dave, guild, lounge, relay)  # listens
    router = relay.router
    receipt = await plane.set_overwrite(
        lounge, "member", stack.users["bob"], allow=P(0), deny=P.SPEAK
    )
    assert receipt.complete
    assert router.sessions[router.by_member[(guild, stack.users["bob"])]].speak is False
    receipt = await plane.ban(guild, stack.users["carol"])
    assert receipt.complete
    assert (guild, stack.users["carol"]) not in router.by_member  # already gone at return
    grant = await stack.gateways[0].redis.hget(
        Keys(stack.settings.key_prefix).voice_grant(guild), str(stack.users["carol"])
    )
    assert grant is None
    await asyncio.wait_for(vc.ended_event.wait(), 10)
    assert vc.ended == packet.ENDED_REVOKED
    vb.send_media(1, 960, b"muted")
    vc.send_media(1, 960, b"banned")
    va = await join_voice(stack, alice, guild, lounge, relay)
    va.send_media(1, 960, b"marker")  # after the two above: the first thing dave hears
    assert (await _next_media(vd)).payload == b"marker"
    assert (router.counters.dropped_not_speaking, router.counters.dropped_unknown) == (1, 1)
    # losing CONNECT ends bob too (he stays in the guild)
    await plane.set_overwrite(lounge, "member", stack.users["bob"], allow=P(0), deny=P.CONNECT)
    assert (guild, stack.users["bob"]) not in router.by_member


async def test_the_guild_sees_a_member_in_voice_only_once_the_relay_admitted_them(
    stack: Stack, plane: ControlPlane, presence: PresenceService, relay
):
    guild, lounge = await _lounge(stack, plane)
    alice, bob = await stack.client("alice"), await stack.client("bob", gateway=1)
    bob_id = stack.users["bob"]
    await presence_tick(stack, presence, 2.0)
    await settled(alice)
    await bob.send_op(Op.VOICE_STATE_UPDATE, {"guild_id": str(guild), "channel_id": str(lounge)})
    server = (await bob.next_event("VOICE_SERVER_UPDATE"))["d"]
    assert server["transport"] == "udp" and server["speak"] is True
    claims = voice_core.verify(server["token"], secret=stack.settings.token_secret, now=0)
    assert (claims.user_id, claims.channel_id) == (bob_id, lounge)
    for _ in range(3):  # granted, not connected: nobody sees bob in voice
        await presence_tick(stack, presence, 1.0, drain=True)
        assert presence.state.voice_channel(bob_id) is None
    assert [f for f in await settled(alice) if f.get("t") == "VOICE_STATE_UPDATE"] == []
    conn = await VoiceConnection.open(server["endpoint"], server["token"])
    stack.clients.append(conn)
    await relay.wait_admitted(1)
    await presence_tick(stack, presence, 1.0, drain=True)
    assert presence.state.voice_channel(bob_id) == (guild, lounge)
    assert (guild, bob_id) in relay.router.by_member  # shown => can send
    shown = [f for f in await settled(alice) if f.get("t") == "VOICE_STATE_UPDATE"]
    assert [v["user_id"] for f in shown for v in f["d"]["voice"]] == [str(bob_id)]
    # a second join kills the first token: it can no longer be used at the relay
    await join_voice(stack, bob, guild, lounge, relay)
    with pytest.raises(VoiceRefused) as refused:
        await VoiceConnection.open(server["endpoint"], server["token"], timeout=10)
    assert refused.value.reason == packet.ENDED_NO_GRANT
    forged = server["token"][:-2] + ("AA" if not server["token"].endswith("AA") else "BB")
    with pytest.raises(VoiceRefused) as refused:
        await VoiceConnection.open(server["endpoint"], forged, timeout=10)
    assert refused.value.reason == packet.ENDED_BAD_TOKEN


async def test_an_idle_relay_session_ends_and_leaves_voice(
    stack: Stack, plane: ControlPlane, presence: PresenceService, relay
):
    """A client that sends nothing for VOICE_IDLE_TIMEOUT_S is ended by the relay, which also
    removes its grant and tells presence (the relay's clock is injected)."""
    guild, lounge = await _lounge(stack, plane)
    bob = await stack.client("bob")
    vb = await join_voice(stack, bob, guild, lounge, relay)
    await presence_tick(stack, presence, 1.0)
    assert presence.state.voice_channel(stack.users["bob"]) == (guild, lounge)
    now = relay.clock()
    relay.clock = lambda: now + stack.settings.voice_idle_timeout_s + 1
    await relay.check()
    await asyncio.wait_for(vb.ended_event.wait(), 10)
    assert vb.ended == packet.ENDED_IDLE
    key = Keys(stack.settings.key_prefix).voice_grant(guild)
    assert await stack.gateways[0].redis.hget(key, str(stack.users["bob"])) is None
    await presence_tick(stack, presence, 1.0)
    assert presence.state.voice_channel(stack.users["bob"]) is None
