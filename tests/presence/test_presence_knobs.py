"""The presence knobs the lab turns: typing window 0, raw broadcast, the gateways' tick.

Real gateways, a real Valkey, an injected presence clock and a stepped gateway presence timer."""

from __future__ import annotations

import asyncio
import time

import orjson

from chatscale.client import ChatClient
from chatscale.keys import Keys
from chatscale.redisconn import connect
from chatscale.wire import Op
from gateway.server import Gateway
from presence.coalesce import TypingThrottle
from presence.service import PresenceService
from tests.conftest import FakeClock, Stack, presence_tick


def test_typing_window_zero_is_no_throttle():
    throttle = TypingThrottle(window=0, ttl=0)
    assert all(throttle.typing(1, 10, 100.0) for _ in range(5))
    assert (throttle.received, throttle.emitted) == (5, 5)


async def _service(stack: Stack, **update: object) -> PresenceService:
    service = PresenceService(
        stack.settings.model_copy(update=update), store=stack.store, clock=FakeClock(1e6)
    )
    await service.start()
    return service


async def test_typing_window_zero_forwards_every_typing_event(stack: Stack):
    presence = await _service(stack, typing_window_s=0.0)
    try:
        bob = await stack.client("bob", gateway=1)
        alice = await stack.client("alice", gateway=0)
        general = str(stack.channels["general"])
        for _ in range(3):
            await alice.send_op(Op.TYPING, {"channel_id": general})
        await alice.send_message(general, "sync point")  # TYPING frames are handled before it
        await presence_tick(stack, presence, drain=True)
        for _ in range(3):
            d = (await bob.next_event("TYPING_START"))["d"]
            assert d["user_id"] == str(stack.users["alice"])
        assert (presence.typing.received, presence.typing.emitted) == (3, 3)
    finally:
        await presence.close()


async def test_raw_broadcast_sends_a_change_inside_the_window_at_once(stack: Stack):
    """Coalesced, a second change within the tick waits for the window; raw, it goes out at the
    next step (``CHATSCALE_PRESENCE_COALESCE=false``)."""
    presence = await _service(stack, presence_coalesce=False)
    try:
        bob = await stack.client("bob", gateway=1)
        alice = await stack.client("alice", gateway=0)
        await presence_tick(stack, presence, drain=True)
        for status in ("idle", "online"):
            await alice.send_op(Op.PRESENCE_UPDATE, {"status": status})
            await alice.send_message(stack.channels["general"], f"sync {status}")
            await presence_tick(stack, presence, 0.1, drain=True)  # well inside a 1 s window
            while True:
                d = (await bob.next_event("PRESENCE_UPDATE"))["d"]
                mine = [p for p in d["presences"] if p["user_id"] == str(stack.users["alice"])]
                if mine and mine[0]["status"] == status:
                    break
        assert presence.coalescer.stats.updates_out >= 2
    finally:
        await presence.close()


class SteppedTimer:
    """Stands in for the gateway's presence timer: records each interval asked for and returns
    only when the test steps it, so 'one batch per tick' is checked without wall time."""

    def __init__(self) -> None:
        self.intervals: list[float] = []
        self._steps = asyncio.Semaphore(0)

    async def sleep(self, seconds: float) -> None:
        self.intervals.append(seconds)
        await self._steps.acquire()

    def step(self) -> None:
        self._steps.release()


async def test_gateway_sends_its_presence_batch_every_presence_tick(stack: Stack):
    """With ``CHATSCALE_PRESENCE_TICK_MS=50`` the gateway's presence timer runs every 50 ms and
    each tick writes the sessions that identified since the last one to the presence stream,
    three times in a row (stepped timer: no wall-clock bound that a loaded machine could miss)."""
    fast = Gateway(
        stack.settings.model_copy(update={"presence_tick_ms": 50}),
        store=stack.store,
        gateway_id="gw-fast",
    )
    timer = SteppedTimer()
    fast.presence_sleep = timer.sleep  # type: ignore[method-assign]
    await fast.start()
    redis = connect(stack.settings)
    stream = Keys(stack.settings.key_prefix).presence_in()
    clients: list[ChatClient] = []
    try:
        newest = await redis.xrevrange(stream, count=1)
        last = newest[0][0] if newest else "0-0"  # not "$": a tick may write before we read
        for name in ("alice", "bob", "carol"):
            client = await ChatClient.identify(fast.url, stack.token(name), heartbeat=False)
            clients.append(client)
            timer.step()  # one tick
            found, deadline = False, time.monotonic() + 30
            while not found:
                assert time.monotonic() < deadline, (
                    f"{name} not in the presence stream 30 s after a tick"
                )
                reply = await redis.xread({stream: last}, block=1000)
                for _, entries in reply or []:
                    for entry_id, fields in entries:
                        last = entry_id
                        batch = orjson.loads(fields[b"e"])
                        found = found or (
                            batch["gw"] == "gw-fast"
                            and any(
                                e["type"] == "online" and e["user_id"] == stack.users[name]
                                for e in batch["events"]
                            )
                        )
        assert set(timer.intervals) == {0.05}
    finally:
        for c in clients:
            await c.close()
        timer.step()
        await fast.stop()
        await redis.aclose()
