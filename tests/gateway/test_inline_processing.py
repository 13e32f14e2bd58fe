"""``CHATSCALE_PROCESSING=inline``: the gateway authorizes, stores and fans out before the ack.

With the default (``log``) a MESSAGE_ACK means "in the ingest stream": nothing is stored or
delivered until a worker runs. Inline, the ack comes after the hot cache, history and fan-out,
and no stream entry exists: the worker has nothing to do.
"""

from __future__ import annotations

import time

import pytest

from chatscale.config import Settings
from chatscale.keys import Keys
from chatscale.redisconn import connect
from chatscale.wire import IngestMessage
from tests.conftest import Stack, on_redis_cluster_too


async def _stream_lengths(settings: Settings) -> int:
    redis = connect(settings)
    keys = Keys(settings.key_prefix)
    try:
        return sum([await redis.xlen(keys.ingest(s)) for s in range(settings.ingest_shards)])
    finally:
        await redis.aclose()


async def _send_and_look(stack: Stack) -> tuple[dict, list, list, int]:
    alice = await stack.client("alice", gateway=0)
    await stack.client("bob", gateway=1)  # a recipient on the other gateway
    general = stack.channels["general"]
    ack = await alice.send_message(general, "hello inline")
    stored = await stack.store.page(general, before=None, limit=10)
    hot = await stack.gateways[0].hot.page(general, before=None, limit=10)
    queued = await _stream_lengths(stack.settings)
    return ack, stored, hot, queued


class TestInline:
    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        return settings.model_copy(update={"processing": "inline"})

    @on_redis_cluster_too
    async def test_the_ack_comes_after_store_and_fan_out_and_nothing_is_queued(self, stack: Stack):
        ack, stored, hot, queued = await _send_and_look(stack)
        message_id = int(ack["id"])
        assert [m.message_id for m in stored] == [message_id]  # in history before the ack
        assert [i for i, _ in hot] == [message_id]  # and in the hot cache
        assert queued == 0  # no log entry: no worker involved
        bob = stack.clients[1]
        created = await bob.next_event("MESSAGE_CREATE", timeout=5)  # no drain: fanned out
        assert created["d"]["id"] == ack["id"]

    async def test_a_refusal_by_the_authorizer_is_a_code(self, stack: Stack):
        gw = stack.gateways[0]
        assert gw.inline is not None
        [guild] = await stack.store.find_guilds("interview-prep")
        forged = IngestMessage(
            id=123,
            channel_id=999_999,  # not a channel of the guild
            guild_id=guild.id,
            author_id=stack.users["alice"],
            gateway_id=gw.id,
            session_id="s",
            nonce=None,
            payload="{}",
        )
        assert await gw.inline.process(forged) == "UNKNOWN_CHANNEL"

    async def test_a_slow_store_delays_the_ack(self, stack: Stack, settings: Settings):
        inline = stack.gateways[0].inline
        assert inline is not None
        inline.settings = settings.model_copy(update={"history_delay_ms": 300})
        alice = await stack.client("alice", gateway=0)
        started = time.monotonic()
        await alice.send_message(stack.channels["general"], "slow")
        assert time.monotonic() - started >= 0.3  # the history write waited before the ack


async def test_by_default_the_ack_means_queued_and_the_worker_does_the_rest(stack: Stack):
    assert stack.settings.processing == "log"
    ack, stored, hot, queued = await _send_and_look(stack)
    assert stored == [] and hot == [] and queued == 1
    await stack.drain()
    general = stack.channels["general"]
    assert [m.message_id for m in await stack.store.page(general, before=None, limit=10)] == [
        int(ack["id"])
    ]
