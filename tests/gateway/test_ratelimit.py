"""Rate limits on a real Valkey with an injected clock: floods, exact retry_after, resets.

The limiter sends the injected time to the Lua script as an argument, so moving a
``FakeClock`` moves the windows; nothing here sleeps.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from chatscale.client import ChatClient, GatewayError
from chatscale.closecodes import Close
from chatscale.config import Settings
from chatscale.keys import Keys
from chatscale.redisconn import connect
from chatscale.wire import Op
from gateway.ratelimit import RateLimiter
from tests.conftest import FakeClock, Stack


@pytest.fixture
async def limiter(settings: Settings):
    redis = connect(settings)
    tight = settings.model_copy(
        update={
            "user_messages_per_window": 5,
            "user_message_window_s": 5.0,
            "identifies_per_window": 3,
            "identify_window_s": 60.0,
        }
    )
    yield RateLimiter(redis, Keys(settings.key_prefix), tight, clock=FakeClock(1_700_000_000.0))
    await redis.aclose()


async def test_a_flood_admits_the_limit_then_says_exactly_when_to_retry(limiter: RateLimiter):
    clock = limiter.clock
    verdicts = []
    for _ in range(5):
        verdicts.append(await limiter.message(7, 1, slowmode_s=0))
        clock.advance(0.5)  # the five fit in 2.5 s
    assert all(v.allowed for v in verdicts)
    for _ in range(50):  # a flood 2.5 s into the window: refused, and it costs nothing
        refused = await limiter.message(7, 1, slowmode_s=0)
        assert not refused.allowed and refused.scope == "user"
        assert refused.retry_after == pytest.approx(2.5)  # the first message leaves at 5.0 s
    assert "retry after 2.500 s" in refused.message()
    clock.advance(2.499)
    assert not (await limiter.message(7, 1, slowmode_s=0)).allowed
    clock.advance(0.001)
    assert (await limiter.message(7, 1, slowmode_s=0)).allowed  # one slot freed, one taken
    again = await limiter.message(7, 1, slowmode_s=0)
    assert again.retry_after == pytest.approx(0.5)  # the second message leaves next
    clock.advance(5.0)  # a full window later everything has reset
    assert all([(await limiter.message(7, 1, slowmode_s=0)).allowed for _ in range(5)])
    assert (await limiter.message(8, 1, slowmode_s=0)).allowed  # other users are unaffected


async def test_concurrent_requests_from_many_gateways_admit_exactly_the_limit(
    limiter: RateLimiter, settings: Settings
):
    """Twenty clients (think: one user's connections on different gateways) race for the
    same window; the script is atomic, so exactly five win."""
    others = [connect(settings) for _ in range(4)]
    limiters = [limiter] + [
        RateLimiter(r, Keys(settings.key_prefix), limiter.settings, clock=limiter.clock)
        for r in others
    ]
    try:
        verdicts = await asyncio.gather(
            *(limiters[i % 5].message(7, 1, slowmode_s=0) for i in range(100))
        )
    finally:
        for r in others:
            await r.aclose()
    assert sum(v.allowed for v in verdicts) == 5


async def test_slowmode_is_per_user_and_channel_and_checked_with_the_user_rate_atomically(
    limiter: RateLimiter,
):
    clock = limiter.clock
    assert (await limiter.message(7, 1, slowmode_s=10)).allowed
    refused = await limiter.message(7, 1, slowmode_s=10)
    assert (refused.scope, refused.retry_after) == ("slowmode", pytest.approx(10.0))
    assert (await limiter.message(8, 1, slowmode_s=10)).allowed  # another user
    assert (await limiter.message(7, 2, slowmode_s=10)).allowed  # another channel
    assert (await limiter.message(7, 1, slowmode_s=0)).allowed  # a bypassing member: no slowmode
    # 3 of user 7's 5 are used. A slowmode refusal must not have taken a user-window slot:
    clock.advance(4.0)
    for _ in range(5):
        assert not (await limiter.message(7, 1, slowmode_s=10)).allowed
    assert (await limiter.message(7, 3, slowmode_s=0)).allowed
    assert (await limiter.message(7, 4, slowmode_s=0)).allowed
    full = await limiter.message(7, 1, slowmode_s=10)  # both windows refuse: the later one wins
    assert full.scope == "slowmode" and full.retry_after == pytest.approx(6.0)
    clock.advance(6.0)
    assert (await limiter.message(7, 1, slowmode_s=10)).allowed


async def test_identify_rate(limiter: RateLimiter):
    assert all([(await limiter.identify(7)).allowed for _ in range(3)])
    refused = await limiter.identify(7)
    assert (refused.scope, refused.retry_after) == ("identify", pytest.approx(60.0))
    limiter.clock.advance(60.0)
    assert (await limiter.identify(7)).allowed


async def test_queue_message_claims_counts_and_queues_in_one_step_or_not_at_all(
    limiter: RateLimiter, settings: Settings
):
    """lua/send.lua: a new message is queued iff its windows admit it, and then its nonce holds
    its id; a retry finds the nonce and is neither counted nor queued; a refusal claims and
    queues nothing and consumes no slot."""
    keys, redis = Keys(settings.key_prefix), limiter._redis
    stream = keys.ingest(0)

    async def send(message_id: int, nonce_key: str):
        return await limiter.queue_message(
            7,
            1,
            slowmode_s=0,
            stream=stream,
            entry=b"entry-%d" % message_id,
            message_id=message_id,
            nonce_key=nonce_key,
            nonce_ttl_s=60,
        )

    first = await send(101, "nonce-a")
    assert first.verdict.allowed and first.claimed is None
    assert await redis.get("nonce-a") == b"101" and 0 < await redis.ttl("nonce-a") <= 60
    retry = await send(102, "nonce-a")
    assert retry.verdict.allowed and retry.claimed == 101
    for message_id in range(103, 107):  # 4 more new messages, one without a nonce: 5 in all
        assert (
            await send(message_id, f"nonce-{message_id}" if message_id % 2 else "")
        ).claimed is None
    refused = await send(107, "nonce-b")
    assert (refused.verdict.allowed, refused.verdict.scope) == (False, "user")
    assert refused.verdict.retry_after == pytest.approx(5.0)
    assert await redis.get("nonce-b") is None  # not claimed: its retry is counted then
    queued = [fields[b"e"] for _, fields in await redis.xrange(stream)]
    assert queued == [b"entry-101", b"entry-103", b"entry-104", b"entry-105", b"entry-106"]
    assert await redis.zcard(keys.rate_messages(7)) == 5  # the retry and the refusal took none
    limiter.clock.advance(5.0)
    assert (await send(108, "nonce-b")).claimed is None


# ---- through the gateway --------------------------------------------------------------------------


def tighten(stack: Stack, **limits: float) -> FakeClock:
    clock = FakeClock(time.time())
    for gw in stack.gateways:
        gw.control.limiter.settings = stack.settings.model_copy(update=limits)
        gw.control.limiter.clock = clock
    return clock


async def test_the_gateway_answers_rate_limited_with_retry_after(stack: Stack):
    clock = tighten(stack, user_messages_per_window=3, user_message_window_s=5.0)
    bob = await stack.client("bob", gateway=0)
    bob_elsewhere = await stack.client("bob", gateway=1)  # the limit is per user, not per socket
    general = stack.channels["general"]
    await bob.send_message(general, "1")
    await bob_elsewhere.send_message(general, "2")
    await bob.send_message(general, "3", nonce="three")
    with pytest.raises(GatewayError) as refused:
        await bob_elsewhere.send_message(general, "4")
    assert refused.value.d["code"] == "RATE_LIMITED"
    assert refused.value.d["retry_after"] == pytest.approx(5.0, abs=0.01)
    # a retry of a message already queued is not a new message: it is not counted
    assert (await bob.send_message(general, "3", nonce="three"))["nonce"] == "three"
    clock.advance(5.0)
    await bob_elsewhere.send_message(general, "4")
    await stack.drain()
    carol = await stack.client("carol")
    # Each stored once. Compared as a sorted list: ids minted by two gateways in the same
    # millisecond order by node id, not by send order (snowflakes promise time order only).
    assert sorted(m["content"] for m in await carol.history(general)) == ["1", "2", "3", "4"]


async def test_slowmode_holds_members_and_lets_mentors_through(stack: Stack):
    clock = tighten(stack)
    slow = stack.channels["mock-interviews"]  # slowmode 10 s in the demo
    bob = await stack.client("bob")
    carol = await stack.client("carol")  # mentors hold MANAGE_MESSAGES: slowmode does not apply
    await bob.send_message(slow, "first")
    with pytest.raises(GatewayError) as refused:
        await bob.send_message(slow, "second")
    assert refused.value.d["code"] == "RATE_LIMITED" and "slowmode" in refused.value.d["message"]
    assert refused.value.d["retry_after"] == pytest.approx(10.0, abs=0.01)
    await bob.send_message(stack.channels["general"], "elsewhere is fine")
    for i in range(4):
        await carol.send_message(slow, f"mentor {i}")
    clock.advance(10.0)
    await bob.send_message(slow, "second, later")


async def test_too_many_identifies_get_an_error_with_retry_after_then_close_4008(stack: Stack):
    tighten(stack, identifies_per_window=2, identify_window_s=60.0)
    await stack.client("dave", gateway=0)
    await stack.client("dave", gateway=1)
    third = await ChatClient.open(stack.gateways[0].url, heartbeat=False)
    stack.clients.append(third)
    await third.send_op(Op.IDENTIFY, {"token": stack.token("dave"), "device": "web"})
    error = await asyncio.wait_for(third.events.get(), 10)
    assert error["op"] == Op.ERROR and error["d"]["code"] == "RATE_LIMITED"
    assert error["d"]["retry_after"] == pytest.approx(60.0, abs=0.01)
    await asyncio.wait_for(third.closed.wait(), 10)
    assert third.close_code == Close.RATE_LIMITED
    assert "retry after" in third.ws.close_reason
