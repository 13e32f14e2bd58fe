"""The presence service with real gateways and a real Valkey; time is injected, never slept."""

from __future__ import annotations

import asyncio

from chatscale.client import ChatClient
from chatscale.wire import Op
from presence.service import PresenceService
from tests.conftest import Stack, presence_tick


async def status_of(client: ChatClient, user_id: int) -> dict:
    """The next PRESENCE_UPDATE that mentions the user (skipping others)."""
    while True:
        msg = await client.next_event("PRESENCE_UPDATE", timeout=5)
        for p in msg["d"]["presences"]:
            if p["user_id"] == str(user_id):
                return p


async def test_phone_drops_desktop_stays_then_last_device_times_out(
    stack: Stack, presence: PresenceService
):
    timeout = stack.settings.presence_timeout_s
    bob = await stack.client("bob", gateway=1)
    desktop = await stack.client("alice", gateway=0)
    phone = await ChatClient.identify(
        stack.gateways[1].url, stack.token("alice"), device="mobile", heartbeat=False
    )
    await presence_tick(stack, presence, drain=True)
    seen = await status_of(bob, stack.users["alice"])
    assert seen["status"] == "online" and set(seen["client_status"]) == {"desktop", "mobile"}
    await phone.close()  # the phone drops; the desktop keeps heartbeating
    # The gateway may report the phone alive once more while its socket closes, so give it a
    # whole timeout after that first tick.
    await presence_tick(stack, presence, timeout / 2, drain=True)
    await presence_tick(stack, presence, timeout + 1, drain=True)
    seen = await status_of(bob, stack.users["alice"])
    assert seen == {
        "user_id": str(stack.users["alice"]),
        "status": "online",
        "client_status": {"desktop": "online"},
    }
    await desktop.close()  # the last device leaves: offline only once the timeout passes
    await presence_tick(stack, presence, timeout / 2, drain=True)
    assert presence.state.status(stack.users["alice"]) == "online"
    await presence_tick(stack, presence, timeout + 1, drain=True)
    assert (await status_of(bob, stack.users["alice"]))["status"] == "offline"


async def test_invisible_looks_offline_and_flapping_is_coalesced(
    stack: Stack, presence: PresenceService
):
    bob = await stack.client("bob", gateway=1)
    alice = await stack.client("alice", gateway=0)
    await presence_tick(stack, presence, drain=True)
    assert (await status_of(bob, stack.users["alice"]))["status"] == "online"
    for status in ("idle", "online", "idle", "online"):  # flaps inside one tick
        await alice.send_op(Op.PRESENCE_UPDATE, {"status": status})
    await alice.send_message(
        stack.channels["general"], "sync point"
    )  # frames before it are handled
    carol = await stack.client("carol", gateway=0)  # a real change in the same tick, as a marker
    await presence_tick(stack, presence, 1.0, drain=True)
    update = await bob.next_event("PRESENCE_UPDATE")
    users = {p["user_id"] for p in update["d"]["presences"]}
    assert str(stack.users["carol"]) in users and str(stack.users["alice"]) not in users
    await alice.send_op(Op.PRESENCE_UPDATE, {"status": "invisible"})
    await alice.send_message(stack.channels["general"], "sync point 2")
    await presence_tick(stack, presence, 1.0, drain=True)
    assert (await status_of(bob, stack.users["alice"]))["status"] == "offline"
    assert presence.state.status(stack.users["alice"]) == "invisible"  # the truth is kept
    del carol


async def test_ready_lists_presences_and_the_service_survives_a_restart(
    stack: Stack, presence: PresenceService
):
    await stack.client("alice", gateway=0)
    await presence_tick(stack, presence, drain=True)
    bob = await stack.client("bob", gateway=1)
    guild = next(g for g in bob.ready["guilds"] if g["name"] == "interview-prep")
    online = {p["user_id"] for p in bob.ready["presences"][guild["id"]]["presences"]}
    assert str(stack.users["alice"]) in online
    await presence.close()
    restarted = PresenceService(stack.settings, store=stack.store, clock=presence.clock)
    await restarted.start()
    try:
        assert restarted.state.status(stack.users["alice"]) == "online"
        await presence_tick(stack, restarted, drain=True)
        assert restarted.state.status(stack.users["bob"]) == "online"
    finally:
        await restarted.close()
    presence.redis = restarted.redis  # closed already; keep the fixture's close harmless


async def test_typing_is_throttled_per_user_and_channel(stack: Stack, presence: PresenceService):
    bob = await stack.client("bob", gateway=1)
    alice = await stack.client("alice", gateway=0)
    general = str(stack.channels["general"])
    for _ in range(3):
        await alice.send_op(Op.TYPING, {"channel_id": general})
    await alice.send_message(general, "sync point")  # TYPING frames are handled before this
    await presence_tick(stack, presence, drain=True)
    first = await bob.next_event("TYPING_START")
    assert first["d"] == {**first["d"], "user_id": str(stack.users["alice"]), "channel_id": general}
    await alice.send_op(Op.TYPING, {"channel_id": general})
    await alice.send_message(general, "sync point 2")
    await presence_tick(stack, presence, stack.settings.typing_window_s + 1, drain=True)
    await bob.next_event("TYPING_START")
    assert presence.typing.received == 4 and presence.typing.emitted == 2


async def test_typing_needs_send_messages(stack: Stack, presence: PresenceService):
    bob = await stack.client("bob", gateway=1)  # sees #announcements but may not post there
    await bob.send_op(Op.TYPING, {"channel_id": str(stack.channels["announcements"])})
    while True:
        msg = await asyncio.wait_for(bob.events.get(), 5)
        if msg["op"] == Op.ERROR:
            break
    assert msg["d"]["code"] == "MISSING_PERMISSIONS"
    await bob.send_op(Op.TYPING, {"channel_id": str(stack.channels["general"])})  # still connected
    await bob.send_message(stack.channels["general"], "sync point")
    await presence_tick(stack, presence, drain=True)
    assert presence.typing.received == 1
