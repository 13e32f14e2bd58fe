"""The herd mitigations against real in-process gateways, a real Valkey and SQLite (issue 14).

- an IDENTIFY beyond the admission limit gets ERROR GATEWAY_BUSY with ``retry_after`` and close
  4017, and the client's backoff (``ChatClient.identify_with_backoff``) gets in on the retry;
- a gateway whose event loop lags sheds typing and presence but delivers every message;
- a gateway whose loop is starved past its liveness TTL keeps its sessions and its deliveries
  (mitigations on), where today's gateway (off) drops them with 4000.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from chatscale.client import ChatClient, Refused
from chatscale.closecodes import Close
from chatscale.config import Settings
from chatscale.keys import Keys
from chatscale.redisconn import connect
from chatscale.wire import Op
from gateway import server
from presence.service import PresenceService
from tests.conftest import Stack, presence_tick, settled


@pytest.fixture
def storm(request: pytest.FixtureRequest) -> dict[str, object]:
    return getattr(request, "param", {})


@pytest.fixture
def settings(
    settings: Settings, storm: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> Settings:
    # A 1 s liveness TTL renewed every 0.2 s, so "starved past the TTL" costs ~1.5 s, not 10.
    monkeypatch.setattr(server, "ALIVE_TTL_S", 1)
    monkeypatch.setattr(server, "ALIVE_EVERY_S", 0.2)
    return settings.model_copy(update=storm)


async def until(what: Callable[[], bool], why: str, timeout: float = 10.0) -> None:
    """Poll a condition the gateway reaches on its own (bounded; says what did not happen)."""
    for _ in range(int(timeout / 0.01)):
        if what():
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"{why} within {timeout} s")


@pytest.mark.parametrize("storm", [{"identify_concurrency": 1, "identify_queue": 0}], indirect=True)
async def test_identify_beyond_the_limit_is_refused_with_retry_after_then_gets_in(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
):
    gw = stack.gateways[0]
    gate = asyncio.Event()
    real = stack.store.get_user

    async def held(user_id: int):  # the first IDENTIFY holds the only slot until released
        await gate.wait()
        return await real(user_id)

    monkeypatch.setattr(stack.store, "get_user", held)
    first = asyncio.create_task(stack.client("alice"))
    await until(lambda: gw.storm.admission.running == 1, "alice's IDENTIFY never took the slot")

    refused = await ChatClient.open(gw.url, heartbeat=False)
    stack.clients.append(refused)
    await refused.send_op(Op.IDENTIFY, {"token": stack.token("bob")})
    with pytest.raises(Refused) as got:
        await refused._until_ready()
    assert got.value.code == Close.GATEWAY_BUSY
    assert refused.last_error is not None and refused.last_error["code"] == "GATEWAY_BUSY"
    retry_after = refused.last_error["retry_after"]
    assert got.value.retry_after == retry_after > 0

    waited: list[float] = []

    async def sleep(seconds: float) -> None:  # the backoff's wait: the slot frees meanwhile
        waited.append(seconds)
        gate.set()
        await first

    bob = await ChatClient.identify_with_backoff(
        gw.url, stack.token("bob"), jitter=False, sleep=sleep, heartbeat=False
    )
    stack.clients.append(bob)
    assert bob.ready["user"]["id"] == str(stack.users["bob"])
    assert len(waited) == 1 and waited[0] >= retry_after  # retry_after honoured, then READY
    assert (await first).session_id in gw.sessions
    assert gw.storm.admission.refused == 2 and gw.storm.admission.running == 0


@pytest.mark.parametrize(
    "storm",
    [{"degrade_lag_ms": 200.0, "degrade_hold_s": 3600.0, "degrade_min_sessions": 0}],
    indirect=True,
)
async def test_a_lagging_gateway_sheds_typing_and_presence_but_delivers_every_message(
    stack: Stack, presence: PresenceService
):
    bob = await stack.client("bob", gateway=1)
    time.sleep(0.4)  # noqa: ASYNC251 - the saturation itself: the event loop is 400 ms late
    gw = stack.gateways[1]
    await until(lambda: gw.storm.degrade.active, "a 400 ms stall did not start degrade mode")
    alice = await stack.client("alice", gateway=0)  # comes online: a PRESENCE_UPDATE for bob
    general = stack.channels["general"]
    await alice.send_op(Op.TYPING, {"channel_id": str(general)})
    sent = [await alice.send_message(general, f"m{i}") for i in range(5)]
    await presence_tick(stack, presence, drain=True)  # typing + presence, then the messages
    got = [(await bob.next_event("MESSAGE_CREATE"))["d"]["id"] for _ in sent]
    assert got == [m["id"] for m in sent]  # every message, in order
    seen = {f.get("t") for f in await settled(bob)}
    assert not seen & {"TYPING_START", "PRESENCE_UPDATE"}, seen
    assert gw.storm.degrade.shed.get("TYPING_START", 0) >= 1
    assert gw.storm.degrade.shed.get("PRESENCE_UPDATE", 0) >= 1


@pytest.mark.parametrize(
    "storm", [{"storm_mitigations": "on"}, {"storm_mitigations": "off"}], indirect=True
)
async def test_a_gateway_starved_past_its_liveness_ttl_keeps_sessions_and_deliveries(
    stack: Stack, settings: Settings
):
    gw = stack.gateways[0]
    bob = await stack.client("bob", gateway=0)
    alice = await stack.client("alice", gateway=1)
    time.sleep(1.6)  # noqa: ASYNC251 - the loop starved of CPU for longer than the 1 s TTL
    if settings.storm_mitigations == "on":
        # (off: alice's gateway was starved too and may drop her before she can send)
        sent = await alice.send_message(stack.channels["general"], "during the stall")
        await stack.drain()
    await gw.control.check()  # what housekeeping runs every second
    redis = connect(settings)
    try:
        alive = await redis.exists(Keys(settings.key_prefix).gateway_alive(gw.id))
    finally:
        await redis.aclose()
    if settings.storm_mitigations == "on":
        got = await bob.next_event("MESSAGE_CREATE")
        assert got["d"]["id"] == sent["id"]
        assert not bob.closed.is_set() and bob.session_id in gw.sessions and alive
    else:  # today's failure mode: the key expired, workers skipped gw-0, sessions dropped
        await asyncio.wait_for(bob.closed.wait(), 10)
        assert bob.close_code == Close.UNKNOWN_ERROR
