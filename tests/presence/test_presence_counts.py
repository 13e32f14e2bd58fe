"""Presence updates carry the guild's real member count, even right after a metadata change.

The presence service caches member counts per metadata version. A control-plane command
(here ``set_slowmode``, as ``chatscale slowmode`` does) moves the version and empties the
cache; an update whose changes were queued before it and flushed after it must still say how
many members the guild has (and that it is large), not 0 and ``large: false``.
"""

from __future__ import annotations

import pytest

from guilds.controlplane import ControlPlane
from presence.service import PresenceService
from tests.conftest import FakeClock, Stack, presence_tick


@pytest.fixture
async def presence(stack: Stack):
    large = stack.settings.model_copy(update={"large_guild_threshold": 2})
    service = PresenceService(large, store=stack.store, clock=FakeClock(1_000_000.0))
    await service.start()
    yield service
    await service.close()


async def test_counts_survive_a_control_plane_command_between_queue_and_flush(
    stack: Stack, presence: PresenceService
):
    [guild] = await stack.store.find_guilds("interview-prep")
    members = len(await stack.store.guild_members(guild.id))
    assert members > 2  # large for this service
    plane = ControlPlane(stack.settings, store=stack.store)
    try:
        watcher = await stack.client("alice", gateway=0)
        # Large for this service, so lazy: the watcher hears only whom it watches (op 14); the
        # member request after it is answered only once the subscription is in place.
        watched = [stack.users[name] for name in ("bob", "carol", "dave")]
        await watcher.subscribe(guild.id, watched)
        await watcher.request_members(guild.id, user_ids=watched)
        rounds = 0
        for name in ("bob", "carol", "dave"):
            await presence_tick(stack, presence, advance=2.0)  # a quiet guild: emits at once
            await stack.client(name, gateway=1)
            await presence_tick(stack, presence, advance=0.1)  # inside the window: queued, not sent
            rounds += 1
            await plane.set_slowmode(stack.channels["general"], rounds)  # the version moves
            await presence_tick(stack, presence, advance=1.0)  # the queued change goes out now
            while True:
                update = (await watcher.next_event("PRESENCE_UPDATE", timeout=5))["d"]
                if update["guild_id"] != str(guild.id):
                    continue
                assert (update["member_count"], update["large"]) == (members, True), update
                if str(stack.users[name]) in {p["user_id"] for p in update["presences"]}:
                    break
    finally:
        await plane.close()


def test_raw_broadcast_carries_counts_and_large_like_coalesced_updates():
    """``CHATSCALE_PRESENCE_COALESCE=false`` sends each change at once; its updates used to
    say ``large: false`` and no counts for every guild, large or not."""
    from presence.coalesce import Coalescer
    from presence.state import PresenceState, VoiceChange

    state = PresenceState()
    counts = {1: 5, 2: 2}
    raw = Coalescer(enabled=False, large_guild_threshold=2, member_count=counts.__getitem__)
    out = raw.submit(state.online("s", 7, "desktop", "online", 0.0), lambda user: [1, 2])
    out += raw.submit([VoiceChange(7, 1, None, 9)], lambda user: [])
    assert [(u.guild_id, u.large, u.member_count) for u in out] == [
        (1, True, 5),
        (2, False, 2),
        (1, True, 5),
    ]
    assert out[2].voice == (VoiceChange(7, 1, None, 9),) and out[2].presences == ()
