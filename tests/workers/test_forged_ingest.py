"""Entries written straight into an ingest stream by someone who is not a gateway.

Anyone who can reach Redis can XADD an ingest entry. The worker authorizes the envelope
(author_id, channel, guild) but delivers the payload bytes as they are, so a payload that says
something else than the envelope (another author, a made-up username, another channel) must
never reach a recipient, the hot cache or history: it is dead-lettered with the reason.
"""

from __future__ import annotations

import orjson

from chatscale.keys import INGEST_GROUP, Keys
from chatscale.wire import Author, IngestMessage, encode_entry, message_payload
from tests.conftest import Stack
from workers.worker import Worker


async def test_forged_payloads_are_dead_lettered_not_delivered(stack: Stack):
    keys = Keys(stack.settings.key_prefix)
    redis = stack.gateways[0].redis
    alice, bob = stack.users["alice"], stack.users["bob"]
    general = stack.channels["general"]
    listener = await stack.client("bob", gateway=1)
    real = await stack.client("alice", gateway=0)
    first = await real.send_message(general, "a real one")  # the shape a gateway writes
    await stack.drain()
    got = await listener.next_event("MESSAGE_CREATE")
    assert got["d"]["id"] == first["id"]
    guild = int(got["d"]["guild_id"])
    other_channel = stack.channels["system-design"]

    def payload(message_id: int, **override: object) -> str:
        d = orjson.loads(
            message_payload(
                message_id=message_id,
                channel_id=general,
                guild_id=guild,
                author=Author(id=str(alice), username="alice"),
                content="forged",
                timestamp_ms=0,
            )
        )
        return orjson.dumps({**d, **override}).decode()

    forgeries = {
        1: {"author": {"id": str(bob), "username": "bob"}},  # someone else's name
        2: {"author": {"id": str(alice), "username": "admin"}},  # a made-up username
        3: {"author": {"id": "999", "username": "ghost"}},  # a made-up user
        4: {"channel_id": str(other_channel)},  # shown in another channel
        5: {"id": "42"},  # another message's id
    }
    stream = keys.ingest(general % stack.settings.ingest_shards)
    for i, override in forgeries.items():
        m = IngestMessage(
            id=900_000 + i,
            channel_id=general,
            guild_id=guild,
            author_id=alice,  # a member allowed to post here: authorization passes
            gateway_id="gw-0",
            session_id="forged",
            payload=payload(900_000 + i, **override),
        )
        await redis.xadd(stream, encode_entry(m))
    await stack.drain()

    dead = await redis.xrange(keys.dead_letter())
    reasons = {int(orjson.loads(f[b"e"])["id"]) - 900_000: f[b"reason"].decode() for _, f in dead}
    assert set(reasons) == set(forgeries), reasons
    assert all(r.startswith("forged: payload") for r in reasons.values()), reasons
    assert "author" in reasons[1] and "author" in reasons[2] and "channel_id" in reasons[4]
    assert stack.worker.stats.processed == 1  # only the real message
    assert (await redis.xpending(stream, INGEST_GROUP))["pending"] == 0  # all acked
    hot = await stack.gateways[0].hot.page(general, before=None, limit=50)
    assert [i for i, _ in hot] == [int(first["id"])]
    stored = await stack.store.page(general, before=None, limit=50)
    assert [m.message_id for m in stored] == [int(first["id"])]

    # Nothing reached the listener: the next message it sees is the next real one.
    after = await real.send_message(general, "still works")
    await stack.drain()
    got = await listener.next_event("MESSAGE_CREATE")
    assert got["d"]["id"] == after["id"]
    assert got["d"]["author"] == {"id": str(alice), "username": "alice"}


async def test_the_dead_letter_stream_is_bounded(stack: Stack):
    settings = stack.settings.model_copy(update={"dead_letter_maxlen": 10})
    worker = Worker(settings, store=stack.store, consumer="w-bounded")
    keys = Keys(settings.key_prefix)
    redis = stack.gateways[0].redis
    try:
        for i in range(500):  # undecodable: each is dead-lettered at once
            await redis.xadd(keys.ingest(i % settings.ingest_shards), {"e": b"not json %d" % i})
        await worker.drain()
        assert worker.stats.dead_lettered == 500
        length = await redis.xlen(keys.dead_letter())
        # MAXLEN ~ trims whole stream nodes (100 entries each by default), never below the cap.
        assert 10 <= length <= 10 + 100, length
        [(_, newest)] = await redis.xrevrange(keys.dead_letter(), count=1)
        assert newest[b"e"].startswith(b"not json")
        assert newest[b"reason"] == b"undecodable: JSONDecodeError"
    finally:
        await worker.close()
