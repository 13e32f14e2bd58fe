"""A Valkey Cluster master is SIGKILLed mid-traffic: its replica is promoted, clients recover,
and the acknowledged messages that were lost are counted exactly.

Replication is asynchronous (no WAIT): a gateway's MESSAGE_ACK means the entry is in the
master's memory, and the replica gets it a moment later. A master killed inside that moment
takes the entry with it although the sender was told it was queued. Each sender here waits for
its ack before the next send, so while replication keeps up within a client round trip (on
one machine it does) at most one acknowledged message per sender is in that window: the bound
asserted. README, "Growing past one machine", has the measured figure and the window on a
network.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
import warnings
from asyncio.selector_events import _SelectorSocketTransport
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio.connection import AbstractConnection

from chatscale.client import ChatClient, GatewayError
from chatscale.keys import Keys
from chatscale.valkey import ValkeyCluster
from tests.conftest import Stack

pytestmark = pytest.mark.slow

MESSAGES_PER_SENDER = 30
KILL_AFTER = 10  # acks of the first sender before its shard's master is killed


@pytest.fixture(scope="module", autouse=True)
def _collect_the_killed_masters_connections() -> Iterator[None]:
    """redis-py's cluster client drops a node that left its slot map (the killed master)
    without closing the connections that were busy on it, e.g. a blocking read. Whichever later
    test the collector happened to run in when they became garbage then failed on their
    ResourceWarnings ("Unclosed ClusterNode object", unclosed transports and sockets). Here,
    where they are expected: collect what is garbage already, then close what is still
    reachable over a closed event loop (``_close_dead_connections``). Some of it still was in
    about 1 run of 5, held by redis-py's own web of parsers and handlers, and was freed in a
    later test: `pytest tests/workers -n 2` failed a search test's setup in 3 of 14 runs with
    the collection alone, in 0 of 8 with both."""
    yield
    hook = sys.unraisablehook
    sys.unraisablehook = lambda _: None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
            _close_dead_connections()
    finally:
        sys.unraisablehook = hook


def _close_dead_connections() -> None:
    """Close, without I/O, what is still reachable of connections whose event loop is closed:
    each transport's socket, and the redis-py connections (and so their cluster nodes) over
    them are marked disconnected, so no destructor reports them wherever they are freed."""
    dead: set[int] = set()
    for obj in gc.get_objects():
        # type(), not isinstance(): gc.get_objects() may hold a dead weakref.proxy, which
        # isinstance() dereferences (ReferenceError)
        if (
            issubclass(type(obj), _SelectorSocketTransport)
            and obj._loop is not None
            and obj._loop.is_closed()
        ):
            dead.add(id(obj))
            obj._closing = True  # what close() would set; close() itself needs a live loop
            if obj._sock is not None:
                sock, obj._sock = obj._sock, None
                sock.close()
    for obj in gc.get_objects():
        if issubclass(type(obj), AbstractConnection) and obj._writer is not None:
            if id(obj._writer.transport) in dead:
                obj._reader = obj._writer = None


@pytest.fixture
def failover_cluster(tmp_path: Path) -> Iterator[ValkeyCluster]:
    """This test's own cluster (it gets damaged): 3 masters, one replica each."""
    cluster = ValkeyCluster(3, replicas=1, workdir=tmp_path / "vcluster").start()
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_url(failover_cluster: ValkeyCluster) -> str:
    return failover_cluster.url


async def test_a_killed_master_fails_over_and_loses_at_most_the_replication_window(
    stack: Stack, failover_cluster: ValkeyCluster
):
    general = stack.channels["general"]
    keys = Keys(stack.settings.key_prefix)
    stream = keys.ingest(general % stack.settings.ingest_shards)
    victim = failover_cluster.master_of(stream)
    senders = {"alice": await stack.client("alice", gateway=0)}
    senders["bob"] = await stack.client("bob", gateway=1)
    acked: dict[int, str] = {}  # message id -> content, for every MESSAGE_ACK received
    refused = 0  # UNAVAILABLE answers (retried with the same nonce)
    killed = asyncio.Event()
    kill_at = 0.0

    async def send_all(name: str, client: ChatClient) -> None:
        nonlocal refused, kill_at
        for i in range(MESSAGES_PER_SENDER):
            deadline = time.monotonic() + 30
            while True:
                try:
                    ack = await client.send_message(general, f"{name} {i}", nonce=f"{name}-{i}")
                    acked[int(ack["id"])] = f"{name} {i}"
                    break
                except (GatewayError, TimeoutError) as exc:
                    refused += 1
                    assert time.monotonic() < deadline, (
                        f"{name}'s message {i} was not accepted within 30 s of retrying "
                        f"after the failover (last answer: {exc!r})"
                    )
                    await asyncio.sleep(0.1)  # a client's retry backoff, not a timing wait
            if name == "alice" and i == KILL_AFTER - 1:
                failover_cluster.kill(victim)  # mid-traffic: bob is sending too
                kill_at = time.monotonic()
                killed.set()

    await asyncio.gather(*(send_all(n, c) for n, c in senders.items()))
    assert killed.is_set()
    recovered_s = time.monotonic() - kill_at
    promoted = failover_cluster.master_of(stream)
    assert promoted is not victim, "the killed master's slots were not taken over"

    # Drain until the shard is empty (the worker's reads fail while the slot map settles).
    deadline = time.monotonic() + 60
    while True:
        await stack.drain()
        pending = await stack.worker.redis.xpending(stream, "workers")
        if not pending["pending"] and not stack.worker._retry:
            lag = await stack.worker.redis.xinfo_groups(stream)
            if all(int(g.get("lag") or 0) == 0 for g in lag):
                break
        assert time.monotonic() < deadline, f"the worker did not drain the shard: {pending}"

    stored = {m.message_id for m in await stack.store.page(general, before=None, limit=500)}
    lost = sorted(set(acked) - stored)
    print(
        f"\nfailover: {len(acked)} acked, {len(lost)} lost, {refused} sends refused and "
        f"retried, all sends done {recovered_s:.1f}s after the kill"
    )
    assert len(acked) == 2 * MESSAGES_PER_SENDER  # every send was eventually acknowledged
    assert len(lost) <= len(senders), f"more acknowledged messages lost than the bound: {lost}"
    assert refused > 0, "no send hit the failover: the test did not test it"
