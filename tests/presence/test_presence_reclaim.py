"""The presence service after a crash between read and ack, and its input stream's size."""

from __future__ import annotations

import pytest

from chatscale.keys import PRESENCE_GROUP
from presence.service import PresenceService
from tests.conftest import FakeClock, Stack


class Killed(Exception):
    """Stands for SIGKILL arriving after the batch was read, before its state was saved."""


async def _die(*_args: object) -> None:
    raise Killed


async def flush_gateways(stack: Stack) -> None:
    for gw in stack.gateways:
        await gw.flush_presence()


async def test_a_batch_read_but_not_acked_is_read_again_after_a_restart(stack: Stack):
    clock = FakeClock(1_000_000.0)
    first = PresenceService(stack.settings, store=stack.store, clock=clock)
    await first.start()
    bob = await stack.client("bob", gateway=1)
    await flush_gateways(stack)
    await first.step()  # bob online, saved and acked
    await stack.client("alice", gateway=0)
    await flush_gateways(stack)  # the batch saying alice came online
    first._save = _die  # type: ignore[method-assign]
    with pytest.raises(Killed):
        await first.step()  # read, applied in memory only, then the process dies
    await first.close()
    stream = first.keys.presence_in()
    assert (await stack.gateways[0].redis.xpending(stream, PRESENCE_GROUP))["pending"] == 1

    second = PresenceService(stack.settings, store=stack.store, clock=clock)
    await second.start()
    try:
        assert second.state.status(stack.users["alice"]) == "offline"  # lost with the process
        clock.advance(stack.settings.presence_tick_ms / 1000)  # the guild's next update is due
        assert await second.step() == 1  # the pending batch, read again
        assert second.state.status(stack.users["alice"]) == "online"
        await stack.drain()
        while True:
            update = await bob.next_event("PRESENCE_UPDATE", timeout=5)
            seen = {p["user_id"]: p["status"] for p in update["d"]["presences"]}
            if str(stack.users["alice"]) in seen:
                assert seen[str(stack.users["alice"])] == "online"
                break
        assert (await stack.gateways[0].redis.xpending(stream, PRESENCE_GROUP))["pending"] == 0
        assert await second.step() == 0  # back to new entries only
    finally:
        await second.close()


async def test_the_input_stream_holds_only_what_is_in_flight(stack: Stack):
    service = PresenceService(stack.settings, store=stack.store, clock=FakeClock(1_000_000.0))
    await service.start()
    redis = stack.gateways[0].redis
    stream = service.keys.presence_in()
    try:
        for name in ("alice", "bob", "carol", "dave"):
            await stack.client(name, gateway=0)
            await stack.client(name, gateway=1)
            await flush_gateways(stack)
            assert await service.step() >= 1
        # Every tick added entries; only the last acked one is kept as the trim floor.
        assert await redis.xlen(stream) <= 1
        # An entry read by someone else and still pending is kept, and so is what follows it.
        await stack.client("erin", gateway=0)
        await flush_gateways(stack)
        [[_, [(stuck, _)]]] = await redis.xreadgroup(PRESENCE_GROUP, "other", {stream: ">"})
        await stack.client("frank", gateway=1)
        await flush_gateways(stack)
        assert await service.step() == 1
        assert [eid for eid, _ in await redis.xrange(stream)][0] == stuck
    finally:
        await service.close()
