"""The presence knobs the lab turns: typing window 0, raw broadcast, the gateways' tick.

Real gateways, a real Valkey, an injected presence clock (the gateway tick test waits on the
stream with a bound instead of sleeping)."""

from __future__ import annotations

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


async def test_gateway_sends_its_presence_batch_every_presence_tick(stack: Stack):
    """With ``CHATSCALE_PRESENCE_TICK_MS=50`` each new session reaches the presence stream
    within a fraction of a second, three times in a row (a fixed 1 s turn could not)."""
    fast = Gateway(
        stack.settings.model_copy(update={"presence_tick_ms": 50}),
        store=stack.store,
        gateway_id="gw-fast",
    )
    await fast.start()
    redis = connect(stack.settings)
    stream = Keys(stack.settings.key_prefix).presence_in()
    clients: list[ChatClient] = []
    try:
        last = "$"
        for name in ("alice", "bob", "carol"):
            client = await ChatClient.identify(fast.url, stack.token(name), heartbeat=False)
            clients.append(client)
            ready_at = time.monotonic()
            found = False
            while not found:
                remaining = 0.5 - (time.monotonic() - ready_at)
                assert remaining > 0, f"{name}'s session not reported within 0.5 s"
                reply = await redis.xread({stream: last}, block=max(1, int(remaining * 1000)))
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
    finally:
        for c in clients:
            await c.close()
        await fast.stop()
        await redis.aclose()
