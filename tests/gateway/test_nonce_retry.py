"""A send retried with the same nonce after a reconnect is the same message.

After a Redis outage every session is dropped (4000) and a client cannot know whether its
last SEND_MESSAGE was queued. The nonce is kept per user, channel, nonce and content for
``nonce_ttl_s`` in Redis, so the retry — on a new session, even on another gateway — gets
the first attempt's id, and the worker stores and delivers that id once.
"""

from __future__ import annotations

import time

import orjson
import pytest

from chatscale.client import GatewayError
from tests.conftest import FakeClock, Stack, settled


async def test_a_retry_on_a_new_session_on_another_gateway_is_one_message(stack: Stack):
    general = stack.channels["general"]
    dave = await stack.client("dave", gateway=0)
    bob = await stack.client("bob", gateway=1)
    first = await bob.send_message(general, "exactly once", nonce="r-1")
    await bob.close()  # the ACK was "lost": the client only knows its connection went away
    again = await stack.client("bob", gateway=0)
    assert again.session_id != bob.session_id
    second = await again.send_message(general, "exactly once", nonce="r-1")
    assert second["id"] == first["id"]
    await stack.drain()
    stored = await stack.store.page(general, before=None, limit=100)
    assert [str(m.message_id) for m in stored] == [first["id"]]
    got = [f["d"]["id"] for f in await settled(dave) if f.get("t") == "MESSAGE_CREATE"]
    assert got == [first["id"]]
    gw = stack.gateways[0]
    key = gw.keys.send_nonce(stack.users["bob"], general, "r-1", "exactly once")
    assert 0 < await gw.redis.ttl(key) <= stack.settings.nonce_ttl_s


async def test_a_new_message_reusing_a_nonce_is_a_new_message(stack: Stack):
    """The nonce is a retry token, not an identity: other content, another channel or
    another user is another message (a client restarting its counter must not be silenced)."""
    general, design = stack.channels["general"], stack.channels["system-design"]
    bob = await stack.client("bob", gateway=1)
    dave = await stack.client("dave", gateway=0)
    ids = {
        (await bob.send_message(general, "one", nonce="n-1"))["id"],
        (await bob.send_message(general, "two", nonce="n-1"))["id"],
        (await bob.send_message(design, "one", nonce="n-1"))["id"],
        (await dave.send_message(general, "one", nonce="n-1"))["id"],
    }
    assert len(ids) == 4
    # an int nonce is not its string
    assert (await bob.send_message(general, "three", nonce=7))["id"] != (  # type: ignore[arg-type]
        await bob.send_message(general, "three", nonce="7")
    )["id"]


async def test_a_refused_send_does_not_reserve_its_nonce(stack: Stack):
    """A RATE_LIMITED send was not queued: retrying it is a new attempt that is counted,
    not a retry that skips the limit."""
    clock = FakeClock(time.time())
    for gw in stack.gateways:
        gw.control.limiter.settings = stack.settings.model_copy(
            update={"user_messages_per_window": 1, "user_message_window_s": 5.0}
        )
        gw.control.limiter.clock = clock
    general = stack.channels["general"]
    bob = await stack.client("bob", gateway=1)
    await bob.send_message(general, "allowed", nonce="a")
    for gateway in (1, 0, 0):  # the retry is refused too, on any gateway
        client = bob if gateway == 1 else await stack.client("bob", gateway=0)
        with pytest.raises(GatewayError, match="RATE_LIMITED"):
            await client.send_message(general, "limited", nonce="b")
    clock.advance(5.0)
    retried = await bob.send_message(general, "limited", nonce="b")
    await stack.drain()
    stored = await stack.store.page(general, before=None, limit=100)
    assert sorted(orjson.loads(m.payload)["content"] for m in stored) == ["allowed", "limited"]
    assert retried["id"] in {str(m.message_id) for m in stored}


async def test_the_nonce_goes_back_to_its_sender_only_and_is_not_stored(stack: Stack):
    """A nonce is the sender's correlation token: its MESSAGE_ACK carries it, but the stored
    message (hot cache, history) and every MESSAGE_CREATE and HISTORY answer do not — else it
    is kept forever and copied to every recipient (issue 10, item 6)."""
    general = stack.channels["general"]
    nonce = "only-for-bob-7"
    bob = await stack.client("bob", gateway=1)
    dave = await stack.client("dave", gateway=0)
    ack = await bob.send_message(general, "hello", nonce=nonce)
    assert ack["nonce"] == nonce
    await stack.drain()

    hot = await stack.gateways[0].redis.zrange(stack.gateways[0].keys.hot(general), 0, -1)
    assert len(hot) == 1 and nonce.encode() not in hot[0]
    [stored] = await stack.store.page(general, before=None, limit=100)
    assert str(stored.message_id) == ack["id"]
    assert "nonce" not in orjson.loads(stored.payload) and nonce not in stored.payload

    creates = [f for c in (bob, dave) for f in await settled(c) if f.get("t") == "MESSAGE_CREATE"]
    assert [f["d"]["id"] for f in creates] == [ack["id"], ack["id"]]  # the sender's echo too
    assert all("nonce" not in f["d"] and nonce not in orjson.dumps(f).decode() for f in creates)

    from_hot = await dave.history(general)
    await stack.gateways[0].redis.delete(stack.gateways[0].keys.hot(general))
    from_store = await dave.history(general)  # the hot cache is gone: read from history storage
    for page in (from_hot, from_store):
        assert [m["id"] for m in page] == [ack["id"]]
        assert "nonce" not in page[0] and page[0]["content"] == "hello"
