"""``storage/lua/fanout.lua`` on a real Valkey: the listed form (the caller names each gateway's
keys) and the routed form (the script reads the guild's route set itself) write the same
entries, at most once per message, to live gateways only, and refuse when the lease moved."""

from __future__ import annotations

import redis.asyncio as aioredis

from chatscale.config import Settings
from chatscale.keys import Keys
from storage.scripts import FANOUT, FANOUT_MARKER_TTL_S, routed_fanout

GUILD = 42


async def _setup(settings: Settings) -> tuple[aioredis.Redis, Keys]:
    redis = aioredis.from_url(settings.redis_url)
    keys = Keys(settings.key_prefix)
    await redis.sadd(keys.route(GUILD), "gw-b", "gw-a", "gw-dead")
    await redis.set(keys.gateway_alive("gw-a"), 1)
    await redis.set(keys.gateway_alive("gw-b"), 1)  # gw-dead has no liveness key
    await redis.set(keys.lease(0), "me")
    return redis, keys


def test_gateway_key_parts_rebuild_the_keys():
    keys = Keys("pfx")
    alive_a, alive_b, deliver_a, deliver_b = keys.gateway_key_parts()
    assert alive_a + "gw-7" + alive_b == keys.gateway_alive("gw-7")
    assert deliver_a + "gw-7" + deliver_b == keys.deliver("gw-7")


async def test_routed_and_listed_forms_write_the_same(settings: Settings):
    redis, keys = await _setup(settings)
    try:
        script = redis.register_script(FANOUT)
        listed_keys = [keys.fanned_out(1), keys.lease(0)]
        for gw in ("gw-a", "gw-b", "gw-dead"):
            listed_keys += [keys.gateway_alive(gw), keys.deliver(gw)]
        listed = await script(keys=listed_keys, args=[b"one", 100, FANOUT_MARKER_TTL_S, "1", "me"])
        k, a = routed_fanout(
            keys,
            marker=keys.fanned_out(2),
            lease=keys.lease(0),
            guild_id=GUILD,
            entry=b"two",
            maxlen=100,
            fenced=True,
            consumer="me",
        )
        routed = await script(keys=k, args=a)
        assert listed == routed == 2  # the dead gateway is skipped by both
        for gw in ("gw-a", "gw-b"):
            entries = await redis.xrange(keys.deliver(gw))
            assert [e[b"e"] for _, e in entries] == [b"one", b"two"]
        assert not await redis.exists(keys.deliver("gw-dead"))

        assert await script(keys=k, args=a) == 0  # a redelivery: already fanned out
        await redis.set(keys.lease(0), "someone-else")
        k3, a3 = routed_fanout(
            keys,
            marker=keys.fanned_out(3),
            lease=keys.lease(0),
            guild_id=GUILD,
            entry=b"three",
            maxlen=100,
            fenced=True,
            consumer="me",
        )
        assert await script(keys=k3, args=a3) == -1  # the lease moved: nothing written
        assert not await redis.exists(keys.fanned_out(3))
        k4, a4 = routed_fanout(
            keys,
            marker=keys.fanned_out(4),
            lease=keys.lease(0),
            guild_id=GUILD + 1,
            entry=b"four",
            maxlen=100,
            fenced=False,
            consumer="me",
        )
        assert await script(keys=k4, args=a4) == 0  # a guild nobody is routed for
        assert await redis.xlen(keys.deliver("gw-a")) == 2
    finally:
        await redis.aclose()
