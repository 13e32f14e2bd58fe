"""A paused Cassandra (SIGSTOP on the real JVM): live chat goes on over Redis, nothing is acked
until it is stored, and the backlog drains when the node comes back."""

from __future__ import annotations

import pytest

from chatscale.keys import INGEST_GROUP, Keys
from chatscale.redisconn import connect
from tests.conftest import Stack

pytestmark = [pytest.mark.cassandra, pytest.mark.slow]


@pytest.fixture
def storage_url(cassandra_url: str) -> str:
    return cassandra_url.replace("chatscale_test", "chatscale_faults") + "?timeout=2"


async def test_paused_cassandra_keeps_the_hot_path_and_loses_nothing(stack: Stack, cassandra_node):
    stack.worker.pipeline.breaker_s = 0.0  # retry history at every drain instead of after 1 s
    alice = await stack.client("alice", gateway=0)
    bob = await stack.client("bob", gateway=1)
    general = stack.channels["general"]
    await alice.send_message(general, "warm up")  # fills the worker's membership cache
    await stack.drain()
    await bob.next_event("MESSAGE_CREATE")
    redis = connect(stack.settings)
    stream = Keys(stack.settings.key_prefix).ingest(general % stack.settings.ingest_shards)

    cassandra_node.pause()
    try:
        sent = [
            (await alice.send_message(general, f"during the pause {i}"))["id"] for i in range(5)
        ]
        await stack.drain()
        got = [await bob.next_event("MESSAGE_CREATE") for _ in sent]
        assert [m["d"]["id"] for m in got] == sent  # delivered live from the hot path
        assert [i for i, _ in await stack.gateways[0].hot.page(general, before=None, limit=5)] == [
            int(i) for i in reversed(sent)
        ]
        assert stack.worker.history_backlog == 5
        assert (await redis.xpending(stream, INGEST_GROUP))["pending"] == 5  # not acked: not stored
    finally:
        cassandra_node.resume()

    await stack.drain()  # storage is back: the backlog is written, then acked
    assert stack.worker.history_backlog == 0
    assert (await redis.xpending(stream, INGEST_GROUP))["pending"] == 0
    stored = await stack.store.page(general, before=None, limit=10)
    assert [str(m.message_id) for m in stored[:5]] == list(reversed(sent))
    await alice.send_message(general, "sentinel")
    await stack.drain()
    assert (await bob.next_event("MESSAGE_CREATE"))["d"][
        "content"
    ] == "sentinel"  # no duplicates before it
    await redis.aclose()
