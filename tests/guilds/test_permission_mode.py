"""``CHATSCALE_PERMISSION_MODE``: strong (default) vs cached permission views.

The cached mode is the eventual arm of the ``bans`` lab experiment: the control plane returns
without telling anyone, gateways reload views every ``PERMISSION_CACHE_TTL_S`` and workers keep
their authorization cache that long. Real in-process gateways and worker, real Valkey and
SQLite; time is moved with injected clocks, never slept.
"""

from __future__ import annotations

import pytest

from chatscale.client import GatewayError
from chatscale.config import Settings
from guilds.controlplane import ControlPlane
from tests.conftest import FakeClock, Stack, settled

TTL = 30.0


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"permission_mode": "cached", "permission_cache_ttl_s": TTL})


def test_the_default_is_strong():
    assert Settings(token_secret="x").permission_mode == "strong"


async def test_a_cached_ban_holds_only_once_the_caches_expire(stack: Stack, plane: ControlPlane):
    worker_clock = FakeClock()
    auth = stack.worker.pipeline.auth
    auth._clock, auth._loaded_at = worker_clock, worker_clock()  # the test moves its time
    alice = await stack.client("alice", gateway=0)
    bob = await stack.client("bob", gateway=1)
    general = stack.channels["general"]
    [guild] = await stack.store.find_guilds("interview-prep")
    await bob.send_message(general, "before")  # the worker caches bob's membership
    await stack.drain()
    assert (await alice.next_event("MESSAGE_CREATE"))["d"]["content"] == "before"
    assert (await bob.next_event("MESSAGE_CREATE"))["d"]["content"] == "before"

    receipt = await plane.ban(guild.id, stack.users["bob"])
    assert receipt.gateways == () and receipt.confirmed == ()  # nobody was asked or waited for
    assert await stack.store.is_banned(guild.id, stack.users["bob"])  # but it is stored

    # Within the TTL: the gateway still delivers to bob and lets him post; the worker accepts.
    await stack.gateways[1].control.check()
    await alice.send_message(general, "to everyone, bob included")
    await bob.send_message(general, "banned, still posting")
    await stack.drain()
    assert (await bob.next_event("MESSAGE_CREATE"))["d"]["content"] == "to everyone, bob included"
    contents = [f["d"]["content"] for f in await settled(alice) if f.get("t") == "MESSAGE_CREATE"]
    assert "banned, still posting" in contents

    # The worker's cache expires first: its next check rejects bob, the gateway still takes it.
    worker_clock.advance(TTL)
    await bob.send_message(general, "rejected by the worker")
    await stack.drain()
    assert (await bob.next_event("MESSAGE_REJECTED"))["d"]["code"] == "MISSING_ACCESS"

    # The gateway's views expire: bob loses the guild and is refused at the gateway.
    stack.clock.advance(TTL)
    await stack.gateways[1].control.check()
    assert (await bob.next_event("GUILD_DELETE"))["d"]["id"] == str(guild.id)
    with pytest.raises(GatewayError, match="UNKNOWN_CHANNEL"):
        await bob.send_message(general, "too late")


async def test_a_cached_gateway_reloads_only_every_ttl(stack: Stack, plane: ControlPlane):
    await stack.client("bob", gateway=1)
    [guild] = await stack.store.find_guilds("interview-prep")
    await plane.ban(guild.id, stack.users["bob"])
    gateway = stack.gateways[1]
    stack.clock.advance(TTL - 1)
    await gateway.control.check()
    assert guild.id in bob_session(stack, gateway).guilds  # not yet
    stack.clock.advance(1)
    await gateway.control.check()
    assert guild.id not in bob_session(stack, gateway).guilds


def bob_session(stack: Stack, gateway):  # noqa: ANN001, ANN201
    [session] = [s for s in gateway.sessions.values() if s.user_id == stack.users["bob"]]
    return session
