"""Presence partitions: users spread over partitions held by leases, and a failover."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from chatscale import leases
from chatscale.config import Settings
from chatscale.keys import Keys, presence_partition
from presence.partitions import PresenceHost
from tests.conftest import FakeClock, Stack, on_redis_cluster_too

PARTS = 4


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"presence_partitions": PARTS, "presence_lease_ms": 60_000})


def test_a_user_always_maps_to_the_same_partition_and_users_spread():
    assert presence_partition(1234, 1) == 0
    assert all(presence_partition(u, 7) == presence_partition(u, 7) for u in range(100))
    counts = [0] * PARTS
    # snowflake-like ids: the node and sequence bits change slowest, the timestamp in high bits
    for i in range(4000):
        counts[presence_partition((1_700_000_000_000 + i) << 22 | 1 << 12, PARTS)] += 1
    assert min(counts) > 4000 / PARTS * 0.8, counts


@pytest.fixture
async def hosts(stack: Stack) -> AsyncIterator[list[PresenceHost]]:
    clock = FakeClock(1_000_000.0)
    made = [
        PresenceHost(
            stack.settings, store=stack.store, consumer=name, clock=clock, run_services=False
        )
        for name in ("presence-a", "presence-b")
    ]
    yield made
    for h in made:
        await h.close()


async def tick(stack: Stack, hosts: list[PresenceHost], advance: float = 0.0) -> None:
    """One tick for every partition both hosts hold: the presence clock moves by ``advance``
    (at least the coalescing window), both gateways flush their batches, every held partition
    steps, the worker delivers. The gateways' clock stays: moved past the heartbeat timeout
    (45 s), it would let a gateway close the watcher (4009, it sends no heartbeats) before the
    update it waits for arrives, whenever its housekeeping ran first."""
    advance = max(advance, stack.settings.presence_tick_ms / 1000)
    hosts[0].clock.advance(advance)  # type: ignore[attr-defined] - one clock for both hosts
    for gw in stack.gateways:
        await gw.flush_presence()
    for h in hosts:
        for service in h.services.values():
            await service.step()
    await stack.drain()


async def seen_status(client, user_id: int) -> str:  # noqa: ANN001
    """The status of ``user_id`` in the next PRESENCE_UPDATE that mentions them."""
    for _ in range(20):
        update = await client.next_event("PRESENCE_UPDATE", timeout=5)
        for p in update["d"]["presences"]:
            if p["user_id"] == str(user_id):
                return p["status"]
    raise AssertionError(f"no PRESENCE_UPDATE about {user_id} in 20 updates")


@on_redis_cluster_too
async def test_partitions_are_shared_fairly_and_a_survivor_takes_over_a_dead_ones(
    stack: Stack, hosts: list[PresenceHost]
):
    a, b = hosts
    assert (await a.maintain(first=True))[0] == set(range(PARTS))  # alone: all of them
    await b.maintain(first=True)  # registers; everything is taken
    assert b.leases.owned == set()
    _, lost = await a.maintain()  # two live holders: a gives up the excess ...
    assert len(a.leases.owned) == PARTS // 2 and len(lost) == PARTS // 2
    gained, _ = await b.maintain()  # ... and b takes it
    assert gained == lost and a.leases.owned.isdisjoint(b.leases.owned)

    part = {name: presence_partition(uid, PARTS) for name, uid in stack.users.items()}
    on_a = next(n for n, p in part.items() if p in a.leases.owned and n != "bob")
    watcher = await stack.client("bob", gateway=1)
    mover = await stack.client(on_a, gateway=0)
    await tick(stack, hosts)
    owner = a.services[part[on_a]]
    assert owner.state.status(stack.users[on_a]) == "online"
    assert await seen_status(watcher, stack.users[on_a]) == "online"
    # only its own partition knows the user
    for p, service in {**a.services, **b.services}.items():
        if p != part[on_a]:
            assert service.state.status(stack.users[on_a]) == "offline"

    # a dies (no release); the supervisor frees its leases; b's next maintain takes them over
    dead = set(a.leases.owned)
    for service in a.services.values():
        await service.close()
    a.services.clear()
    keys = Keys(stack.settings.key_prefix)
    freed = await leases.evict(
        stack.gateways[0].redis,
        count=PARTS,
        owner="presence-a",
        key=keys.presence_lease,
        roster=keys.presence_roster(),
    )
    assert freed == len(dead)
    before = b.takeovers
    gained, _ = await b.maintain()
    assert gained == dead and b.leases.owned == set(range(PARTS))
    assert b.takeovers - before == len(dead)
    # the partition's state came back from its snapshot: the user is still online ...
    assert b.services[part[on_a]].state.status(stack.users[on_a]) == "online"
    # ... and the user's next change is handled by the new owner and reaches the watcher
    await mover.close()  # its last device: offline once a whole timeout has passed
    timeout = stack.settings.presence_timeout_s
    await tick(stack, hosts, timeout / 2)
    await tick(stack, hosts, timeout + 1)
    assert b.services[part[on_a]].state.status(stack.users[on_a]) == "offline"
    assert await seen_status(watcher, stack.users[on_a]) == "offline"
