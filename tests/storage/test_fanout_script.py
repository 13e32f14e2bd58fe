"""``storage/lua/fanout.lua`` on a real Valkey: the script reads the guild's route set itself
and writes one entry to each live gateway's delivery stream, at most once per message, and
nothing when the shard's lease moved."""

from __future__ import annotations

import redis.asyncio as aioredis

from chatscale.config import Settings
from chatscale.keys import Keys
from storage.scripts import FANOUT, routed_fanout

GUILD = 42


def test_gateway_key_parts_rebuild_the_keys():
    keys = Keys("pfx")
    alive_a, alive_b, deliver_a, deliver_b = keys.gateway_key_parts()
    assert alive_a + "gw-7" + alive_b == keys.gateway_alive("gw-7")
    assert deliver_a + "gw-7" + deliver_b == keys.deliver("gw-7")


async def test_fanout_writes_each_live_gateway_once_and_respects_the_lease(settings: Settings):
    redis = aioredis.from_url(settings.redis_url)
    keys = Keys(settings.key_prefix)
    script = redis.register_script(FANOUT)

    async def fan_out(message: int, entry: bytes, guild: int = GUILD) -> int:
        k, a = routed_fanout(
            keys,
            marker=keys.fanned_out(message),
            lease=keys.lease(0),
            guild_id=guild,
            entry=entry,
            maxlen=100,
            fenced=True,
            consumer="me",
        )
        return await script(keys=k, args=a)

    try:
        await redis.sadd(keys.route(GUILD), "gw-b", "gw-a", "gw-dead")
        await redis.set(keys.gateway_alive("gw-a"), 1)
        await redis.set(keys.gateway_alive("gw-b"), 1)  # gw-dead has no liveness key
        await redis.set(keys.lease(0), "me")

        assert await fan_out(1, b"one") == 2  # the dead gateway is skipped
        assert await fan_out(2, b"two") == 2
        for gw in ("gw-a", "gw-b"):
            entries = await redis.xrange(keys.deliver(gw))
            assert [e[b"e"] for _, e in entries] == [b"one", b"two"]
        assert not await redis.exists(keys.deliver("gw-dead"))

        assert await fan_out(2, b"two") == 0  # a redelivery: already fanned out
        await redis.set(keys.lease(0), "someone-else")
        assert await fan_out(3, b"three") == -1  # the lease moved: nothing written
        assert not await redis.exists(keys.fanned_out(3))
        await redis.set(keys.lease(0), "me")
        assert await fan_out(4, b"four", guild=GUILD + 1) == 0  # a guild nobody is routed for
        assert await redis.xlen(keys.deliver("gw-a")) == 2
    finally:
        await redis.aclose()
