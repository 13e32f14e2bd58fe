"""``chatscale run``: the whole topology on one machine, no Docker.

Starts a real Valkey (unless ``REDIS_URL`` is set), loads the demo community into the storage
backend (SQLite by default), starts gateway and worker processes, shows a scripted
conversation between users on different gateways plus a traced message, then keeps serving
until Ctrl-C or SIGTERM. A worker that dies is restarted and its shard leases are evicted at
once, so its pending entries are reclaimed without waiting for the lease to expire. The
embedded Valkey, if it dies, is restarted on the same port with the same data directory (its
AOF is replayed); services reconnect by themselves. Stopping
sends SIGTERM to every child, waits, then SIGKILLs stragglers: nothing is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from chatscale import discovery, metrics, tokens
from chatscale.client import ChatClient
from chatscale.config import Settings
from chatscale.keys import Keys
from chatscale.procutil import die_with_parent
from chatscale.redisconn import connect
from chatscale.trace import format_timeline
from chatscale.valkey import ValkeyCluster, ValkeyServer
from guilds import community
from storage import open_store
from workers.leases import evict

STATE_FILE = "run.json"
#: How long `chatscale run` waits for its gateways to register. A cold start imports every
#: package in each child at once; on a busy 2-core machine that alone took over 20 s.
REGISTER_WITHIN_S = 60


@dataclass
class Child:
    role: str
    index: int
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    restarts: int = 0
    consumer: str = ""


@dataclass
class Topology:
    settings: Settings
    workdir: Path
    gateways: int = 2
    workers: int = 2
    base_port: int = 8765
    children: list[Child] = field(default_factory=list)
    valkey: ValkeyServer | None = None
    gateway_urls: list[str] = field(default_factory=list)
    #: The services beyond the chat path that this topology starts: the voice relay, the
    #: search indexer and the archiver (`chatscale run` starts both; a load test or lab arm only what it needs,
    #: so their figures are not paid for by processes they do not exercise).
    extras: frozenset[str] = frozenset({"voice", "indexer", "archive"})
    #: Presence processes; with ``presence_partitions`` > 1 they lease the partitions between
    #: them (presence/partitions.py), with one partition the others are standbys.
    presence: int = 1
    #: ``chatscale run --redis-cluster N``: a local Valkey Cluster of N masters (and
    #: ``redis_replicas`` replicas of each) instead of one Valkey; 0: one Valkey.
    redis_cluster: int = 0
    redis_replicas: int = 0
    valkey_cluster: ValkeyCluster | None = None

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            CHATSCALE_REDIS_URL=str(self.settings.redis_url),
            CHATSCALE_STORAGE_URL=self.settings.storage_url,
            CHATSCALE_KEY_PREFIX=self.settings.key_prefix,
            CHATSCALE_TOKEN_SECRET=self.settings.token_secret,
            CHATSCALE_SEARCH_URL=self.settings.search_url,
            CHATSCALE_COLD_URL=self.settings.cold_url,
            CHATSCALE_ARCHIVE_INTERVAL_S=repr(self.settings.archive_interval_s),
            PYTHONUNBUFFERED="1",
        )
        env.update(extra)
        return env

    def spawn(self, child: Child, **env: str) -> None:
        assert child.log is not None
        out = open(child.log, "ab")  # noqa: SIM115 - owned by the child process
        port = metrics.child_port(self.settings, self.children.index(child))  # stable per child
        child.proc = subprocess.Popen(
            [sys.executable, "-m", "chatscale", *child.args],
            env=self.env(CHATSCALE_METRICS_PORT=str(port), **env),
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent(),  # no orphans even if the supervisor is SIGKILLed
        )
        out.close()

    def stop_all(self) -> None:
        for child in self.children:
            if child.proc and child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for child in self.children:
            if child.proc is None:
                continue
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait()
        if self.valkey is not None:
            self.valkey.stop()
        if self.valkey_cluster is not None:
            self.valkey_cluster.stop()


def run_search_url(workdir: Path) -> str:
    """Where `chatscale run` keeps its search index (and `chatscale search` finds it)."""
    return f"sqlite:///{(Path(workdir) / 'search.db').resolve()}"


def run_cold_url(workdir: Path) -> str:
    """Where `chatscale run` keeps its cold tier (a local directory) unless COLD_URL is set."""
    return f"file://{(Path(workdir) / 'cold').resolve()}"


def _last_line(log: Path | None) -> str:
    """The last line a child wrote: its one-line error (``port 8765 is in use``, ...)."""
    try:
        lines = [ln for ln in (log.read_text(errors="replace") if log else "").splitlines() if ln]
    except OSError:
        return "no log"
    return lines[-1].strip().removeprefix("error: ") if lines else "no output"


def plan(topo: Topology) -> list[Child]:
    """The service processes ``chatscale run`` starts next to Valkey and the storage backend:
    workers, one presence service, one voice relay, gateways, the indexer and the archiver. docker-compose.yml runs the same services as
    containers; tests/ops/test_compose.py keeps the two in step."""
    logs = topo.workdir / "logs"
    children = []
    for i in range(topo.workers):
        child = Child("worker", i, ["worker"], log=logs / f"worker-{i}.log")
        child.consumer = f"worker-{i}-{os.getpid()}"
        child.args += ["--consumer", child.consumer]
        children.append(child)
    for i in range(max(1, topo.presence)):
        name = "presence" if i == 0 else f"presence-{i + 1}"  # the first keeps its old log name
        args = ["presence", "--consumer", f"presence-{i + 1}"]
        children.append(Child("presence", i, args, log=logs / f"{name}.log"))
    if "voice" in topo.extras:
        children.append(Child("voice", 0, ["voice", "--id", "relay-0"], log=logs / "voice.log"))
    for i in range(topo.gateways):
        port = 0 if topo.base_port == 0 else topo.base_port + i
        args = ["gateway", "--id", f"gw-{i}", "--port", str(port)]
        children.append(Child("gateway", i, args, log=logs / f"gateway-{i}.log"))
    # the search indexer (stored-message stream -> index; `chatscale run` sets search_url),
    # spawned last: nothing waits for it, and the gateways' start is what `run` waits on
    if "indexer" in topo.extras:
        children.append(Child("indexer", 0, ["indexer"], log=logs / "indexer.log"))
    if "archive" in topo.extras:  # old buckets -> the cold tier every ARCHIVE_INTERVAL_S
        children.append(Child("archive", 0, ["archive", "--loop"], log=logs / "archive.log"))
    return children


async def start(topo: Topology, *, say=print) -> None:  # noqa: ANN001
    settings = topo.settings
    (topo.workdir / "logs").mkdir(parents=True, exist_ok=True)
    if "token_secret" not in settings.model_fields_set:
        # No usable default secret: one per data directory, kept in it (mode 0600).
        secret = discovery.ensure_secret(topo.workdir)
        settings = topo.settings = settings.model_copy(update={"token_secret": secret})
    if not settings.redis_url and topo.redis_cluster:
        # A dead cluster master is not restarted here: its replica takes over (with
        # ``redis_replicas``), or its slots stay down (README, "Growing past one machine").
        topo.valkey_cluster = await asyncio.to_thread(
            ValkeyCluster(
                topo.redis_cluster,
                replicas=topo.redis_replicas,
                workdir=topo.workdir / "valkey-cluster",
            ).start
        )
        settings = topo.settings = settings.model_copy(
            update={"redis_url": topo.valkey_cluster.url}
        )
        say(
            f"valkey      started  cluster of {topo.redis_cluster} masters, "
            f"{topo.redis_replicas} replica(s) each: {topo.valkey_cluster.url}"
        )
    elif not settings.redis_url:
        topo.valkey = ValkeyServer(
            workdir=topo.workdir / "valkey", appendfsync=settings.valkey_appendfsync
        ).start()
        settings = topo.settings = settings.model_copy(update={"redis_url": topo.valkey.url})
        say(
            f"valkey      started  {topo.valkey.url} (pid {topo.valkey.proc.pid if topo.valkey.proc else '?'}, "
            f"appendfsync {settings.valkey_appendfsync})"
        )
    else:
        say(f"valkey      using    {settings.redis_url}")
    if not settings.search_url and "indexer" in topo.extras:  # next to the run's data
        settings = topo.settings = settings.model_copy(
            update={"search_url": run_search_url(topo.workdir)}
        )
    if not settings.cold_url and "archive" in topo.extras:  # a cold tier next to the data
        settings = topo.settings = settings.model_copy(
            update={"cold_url": run_cold_url(topo.workdir)}
        )
    store = await open_store(settings.storage_url, bucket_span_ms=settings.bucket_span_ms)
    redis = connect(settings)
    try:
        counts = await community.apply(
            community.load_file(community.SEEDS / "demo.toml"),
            store,
            redis,
            Keys(settings.key_prefix),
        )
        say(f"storage     {settings.storage_url}  seeded demo community {counts}")
        await redis.delete(Keys(settings.key_prefix).gateways())
    finally:
        await store.close()
    for child in plan(topo):
        topo.children.append(child)
        topo.spawn(child)
    deadline = time.monotonic() + REGISTER_WITHIN_S
    while True:
        registered = await redis.hgetall(Keys(settings.key_prefix).gateways())
        if len(registered) >= topo.gateways:
            break
        for child in topo.children:
            if child.proc and child.proc.poll() is not None:
                raise discovery.TopologyError(
                    f"{child.role}-{child.index} exited early: {_last_line(child.log)} "
                    f"(log: {child.log})"
                )
        if time.monotonic() > deadline:
            raise discovery.TopologyError(
                f"gateways did not register within {REGISTER_WITHIN_S} s; see {topo.workdir / 'logs'}"
            )
        await asyncio.sleep(0.1)
    topo.gateway_urls = [
        json.loads(registered[f"gw-{i}".encode()])["url"] for i in range(topo.gateways)
    ]
    await redis.aclose()
    for i, url in enumerate(topo.gateway_urls):
        say(f"gateway-{i}   {url}")
    relay = ", voice relay 1" if "voice" in topo.extras else ""
    say(
        f"workers     {topo.workers}, presence {max(1, topo.presence)}{relay} (logs in {topo.workdir / 'logs'})"
    )
    if "indexer" in topo.extras:
        say(f"search      indexer 1, index {settings.search_url}")
    if "archive" in topo.extras:
        from storage.cold import redact_url

        cold = redact_url(settings.cold_url)
        say(f"cold tier   archiver every {settings.archive_interval_s:g} s, {cold}")
    (topo.workdir / STATE_FILE).write_text(
        json.dumps(
            {
                "redis_url": settings.redis_url,
                "storage_url": settings.storage_url,
                "key_prefix": settings.key_prefix,
                "gateways": topo.gateway_urls,
                "pid": os.getpid(),
            },
            indent=2,
        )
    )


async def demo(topo: Topology, *, say=print) -> None:  # noqa: ANN001
    """A scripted conversation: alice on gateway 0, bob on gateway 1, then one traced message."""
    s = topo.settings
    now = time.time()
    store = await open_store(s.storage_url, bucket_span_ms=s.bucket_span_ms)
    try:
        alice, bob = await store.find_user("alice"), await store.find_user("bob")
    finally:
        await store.close()
    assert alice and bob
    tok = {
        u.username: tokens.mint(  # alice traces a message: an operator capability
            u.id, secret=s.token_secret, ttl_s=s.token_ttl_s, now=now, operator=u is alice
        )
        for u in (alice, bob)
    }
    a = await ChatClient.identify(topo.gateway_urls[0], tok["alice"])
    b = await ChatClient.identify(topo.gateway_urls[-1], tok["bob"], device="mobile")
    try:
        general = next(
            c for g in a.ready["guilds"] for c in g["channels"] if c["name"] == "general"
        )
        say(
            f"\ndemo: alice on gateway-0, bob on gateway-{len(topo.gateway_urls) - 1}, channel #general"
        )
        script = [
            (a, "anyone up for a mock system-design interview?"),
            (b, "yes! design a chat app?"),
            (a, "deal. start with the gateway fleet."),
        ]
        for sender, text in script:
            await sender.send_message(general["id"], text)
            for who, client in (("alice", a), ("bob", b)):
                got = await client.next_event("MESSAGE_CREATE")
                say(
                    f"  {who:>5} sees  [{got['d']['id']}] {got['d']['author']['username']}: {got['d']['content']}"
                )
        await a.send_message(general["id"], "this one is traced", trace=True)
        got = await b.next_event("MESSAGE_CREATE")
        say("\ntrace of one message, alice -> bob (chatscale trace does this on demand):")
        say(format_timeline([(hop, ns) for hop, ns in got["trace"]]))
    finally:
        await a.close()
        await b.close()


#: Children restarted as they are when they exit (workers also get their leases evicted):
#: role -> (the name said in the log, what the restart resumes from).
RESTARTED = {
    "voice": ("voice relay", ""),  # its sessions are gone: clients AUTH again
    "indexer": ("indexer", " from its committed offset"),
    "archive": ("archiver", ""),  # compaction is idempotent: it starts over
    "presence": ("presence", " from its saved state"),
}


async def supervise(topo: Topology, stop: asyncio.Event, *, say=print) -> None:  # noqa: ANN001
    """Restart a dead Valkey and dead children (evicting a worker's leases) until ``stop``."""
    keys = Keys(topo.settings.key_prefix)
    redis = connect(topo.settings)
    try:
        while not stop.is_set():
            await restart_valkey_if_dead(topo, say=say)
            for child in topo.children:
                if child.proc and child.proc.poll() is not None and child.role in RESTARTED:
                    child.restarts += 1
                    name, resumes = RESTARTED[child.role]
                    say(
                        f"{name} exited ({child.proc.returncode}); "
                        f"restarting{resumes} (#{child.restarts})"
                    )
                    topo.spawn(child)
                if child.proc and child.proc.poll() is not None and child.role == "worker":
                    code = child.proc.returncode
                    with contextlib.suppress(Exception):
                        await evict(
                            redis, keys, shards=topo.settings.ingest_shards, consumer=child.consumer
                        )
                    child.restarts += 1
                    say(
                        f"worker-{child.index} exited ({code}); leases evicted, restarting (#{child.restarts})"
                    )
                    topo.spawn(child)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.5)
    finally:
        await redis.aclose()


async def restart_valkey_if_dead(topo: Topology, *, say=print) -> bool:  # noqa: ANN001
    """The embedded Valkey died: start it again on the same port and data directory.

    Children keep their URL and reconnect on their next call (their Redis errors meanwhile are
    transient ones they already retry). Returns whether a restart happened.
    """
    valkey = topo.valkey
    if valkey is None or valkey.exited() is None:
        return False
    code = valkey.exited()
    say(f"valkey exited ({code}); restarting on port {valkey.port} with data in {valkey.workdir}")
    try:
        await asyncio.to_thread(valkey.restart)
    except RuntimeError as exc:  # port taken meanwhile, AOF unreadable: say so, try again
        say(f"valkey restart failed ({exc}); trying again")
        return False
    say(
        f"valkey      restarted {valkey.url} (pid {valkey.proc.pid if valkey.proc else '?'}, "
        f"#{valkey.restarts}, AOF replayed)"
    )
    return True


def how_to_connect(topo: Topology) -> str:
    url = topo.gateway_urls[0] if topo.gateway_urls else "ws://127.0.0.1:8765"
    return (
        "\nconnect by hand (see docs/protocol.md):\n"
        "  chatscale token alice            # prints a token (reads .chatscale/run.json)\n"
        f"  python -m websockets {url}\n"
        '  > {"op":2,"d":{"token":"<token>","device":"desktop"}}\n'
        '  > {"op":20,"d":{"channel_id":"<id from READY>","content":"hello","nonce":"1"}}\n'
        "  chatscale trace                  # one traced message, hop by hop\n"
        "Ctrl-C stops everything."
    )
