"""The presence snapshot is rewritten when something changed, not on every quiet tick."""

from __future__ import annotations

import orjson

from chatscale.keys import PRESENCE_GROUP
from presence.service import PresenceService
from tests.conftest import FakeClock, Stack


async def _heartbeat(stack: Stack, service: PresenceService, session_id: str) -> None:
    batch = {"events": [{"type": "heartbeat", "session_id": session_id}]}
    await stack.gateways[0].redis.xadd(service.keys.presence_in(), {"e": orjson.dumps(batch)})


async def _saved_last_seen(stack: Stack, service: PresenceService) -> dict[str, float]:
    raw = await stack.gateways[0].redis.get(service.keys.presence_state())
    return {s["session_id"]: s["last_seen"] for s in orjson.loads(raw)["state"]["sessions"]}


async def test_quiet_steps_save_at_most_every_save_every_and_ack_only_what_was_saved(
    stack: Stack,
):
    clock = FakeClock(1_000_000.0)
    service = PresenceService(stack.settings, store=stack.store, clock=clock, save_every=5.0)
    await service.start()
    redis = stack.gateways[0].redis
    stream = service.keys.presence_in()
    try:
        await stack.client("alice", gateway=0)
        await stack.gateways[0].flush_presence()
        await service.step()  # alice online: a visible change, saved and acked at once
        await service.step()  # the re-read of pending entries ends: a step with nothing
        clock.advance(2.0)
        await service.step()  # the coalescer forgets the guild's last update: saved
        [sid] = (await _saved_last_seen(stack, service)).keys()
        saved = await _saved_last_seen(stack, service)
        assert (await redis.xpending(stream, PRESENCE_GROUP))["pending"] == 0

        clock.advance(1.0)
        await _heartbeat(stack, service, sid)
        assert await service.step() == 1
        assert await _saved_last_seen(stack, service) == saved  # not rewritten
        assert (await redis.xpending(stream, PRESENCE_GROUP))["pending"] == 1  # not acked

        # A restart now re-reads the heartbeat it did not save.
        second = PresenceService(stack.settings, store=stack.store, clock=clock, save_every=5.0)
        await second.start()
        assert await second.step() == 1
        assert (await _saved_last_seen(stack, second))[sid] == clock()
        assert (await redis.xpending(stream, PRESENCE_GROUP))["pending"] == 0
        await second.close()

        clock.advance(1.0)
        await _heartbeat(stack, service, sid)
        await service.step()
        assert (await redis.xpending(stream, PRESENCE_GROUP))["pending"] == 1
        clock.advance(5.0)
        await _heartbeat(stack, service, sid)
        await service.step()  # save_every has passed: saved, both entries acked
        assert (await _saved_last_seen(stack, service))[sid] == clock()
        assert (await redis.xpending(stream, PRESENCE_GROUP))["pending"] == 0
    finally:
        await service.close()


async def test_save_every_zero_saves_after_every_step(stack: Stack):
    clock = FakeClock(1_000_000.0)
    service = PresenceService(stack.settings, store=stack.store, clock=clock, save_every=0)
    await service.start()
    try:
        await stack.client("alice", gateway=0)
        await stack.gateways[0].flush_presence()
        await service.step()
        await service.step()
        [sid] = (await _saved_last_seen(stack, service)).keys()
        clock.advance(1.0)
        await _heartbeat(stack, service, sid)
        await service.step()
        assert (await _saved_last_seen(stack, service))[sid] == clock()
    finally:
        await service.close()
