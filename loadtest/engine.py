"""The load test's parent: set up, drive the generator processes, sample the servers, judge.

One run, in order:

1. generate the community from its seed and load it **through the control plane**
   (``guilds.community.apply``: the storage interfaces, then a metadata-version bump),
   unless the store already holds exactly it (a 50k-member community takes a while on SQLite);
2. make the scenario's plan (``loadtest.scenarios``) and split it over the generator
   processes: each client, and so each sender, lives in exactly one process;
3. *setup*: the processes connect the members who are online before the run (bounded rate);
4. *run*: every process replays its share of the timeline from one shared start time ``t0``,
   while this process samples CPU and memory of every server and generator process and the
   consumer groups' lag and pending entries (XINFO GROUPS), and injects the scenario's fault;
5. *drain*: wait until deliveries stop arriving (or ``drain_s``);
6. merge: one ``DeliveryLedger`` is built from every process's acknowledged sends and receipts,
   with each message's audience = every client whose first READY came before the message's
   intended send time; latency histograms and time series are added exactly (hdr).

The generator processes are children over ``multiprocessing`` pipes, or — ``processes=0`` — one
generator in this event loop (the tests use that against in-process gateways).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import math
import multiprocessing
import os
import platform
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psutil

from chatscale import tokens
from chatscale.cancel import cancel_and_wait
from chatscale.config import Settings
from chatscale.keys import INGEST_GROUP, PRESENCE_GROUP, Keys
from chatscale.redisconn import connect
from guilds import community
from loadtest import communities, cpuhog, memberlist, scenarios
from loadtest.accounting import DeliveryLedger, StoredCheck
from loadtest.generator import ClientPlan, Part, child_main, drive
from loadtest.latency import LatencyRecorder, TimeSeries
from loadtest.topology import Embedded, External, resume_after, storage_pid
from storage import open_store


class Topology(Protocol):
    kind: str
    timed_events: list[tuple[float, str]]

    @property
    def settings(self) -> Settings: ...

    @property
    def urls(self) -> list[str]: ...
    async def start(self, say=print) -> None: ...  # noqa: ANN001
    async def stop(self) -> None: ...
    def processes(self) -> dict[str, psutil.Process]: ...


@dataclass
class Given:
    """Gateways already running in this process (tests): nothing to start, sample or kill."""

    settings: Settings
    gateway_urls: list[str]
    kind: str = "in-process"
    timed_events: list[tuple[float, str]] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        return list(self.gateway_urls)

    async def start(self, say=print) -> None:  # noqa: ANN001
        return None

    async def stop(self) -> None:
        return None

    def processes(self) -> dict[str, psutil.Process]:
        return {}


@dataclass
class RunConfig:
    scenario: str
    community: str
    duration: float | None = None
    processes: int = 2
    rate: float | None = None
    out: Path | None = None
    gateways: list[str] | None = None  # external gateway URLs
    online: int | None = None
    seed: int | None = None
    fault_at: float | None = None
    pause_s: float = 5.0
    connect_rate: float = 250.0
    connect_window: int = 64  # setup: clients connecting at once (all processes)
    window: int = 1  # messages in flight per client
    drain_s: float = 15.0
    ready_timeout: float = 30.0
    # setup: how long the generators may take to connect the clients online before the run;
    # None: the clients at ``connect_rate`` plus ``max_attempts`` (8) ready timeouts
    setup_timeout: float | None = None
    reply_timeout: float = 60.0  # a generator answers "finish" with its results within this
    history_wait_s: float = 30.0  # acknowledged messages missing from history: look again until
    observers: int = 6
    embedded_gateways: int = 2
    embedded_workers: int = 2
    embedded_presence: int = 1
    storage_url: str = "sqlite:///.chatscale/loadtest/chatscale.db"
    workdir: Path = Path(".chatscale/loadtest")
    inject: dict[str, int] = field(default_factory=dict)  # tests: damage receipts on purpose
    progress_every: float = 1.0
    quiet_s: float = 2.0  # the drain ends once no delivery arrived for this long
    report_s: float = 0.5  # how often generator processes report progress
    command: str = ""
    # storms (connect-storm, reconnect-storm) are NOT CLEAN above this READY p99
    ready_bound_s: float = 10.0
    cpu_hog: bool = False  # a competing process keeps one core busy for the run
    # the talkers (clients that send) get a generator process of their own when they are few
    # (at most TALKERS_APART_SHARE of the clients): see ``split``
    talkers_apart: bool = True
    redis_cluster: int = 0  # embedded topology on a local Valkey Cluster of N masters


# ---- loading the community ----------------------------------------------------------------------


async def load_community(
    sim: communities.SimCommunity, settings: Settings, say=print
) -> dict[str, Any]:  # noqa: ANN001
    """Load through ``community.apply`` unless the store already holds exactly this community."""
    store = await open_store(settings.storage_url, bucket_span_ms=settings.bucket_span_ms)
    try:
        started = time.perf_counter()
        users, guilds, channels, members = sim.community.plan()
        plan_s = time.perf_counter() - started
        guild = guilds[0]
        present = True
        for user in (users[0], users[len(users) // 2], users[-1]):
            found = await store.find_user(user.username)
            present = present and found is not None and found.id == user.id
        if present:
            have = await store.guild_channels(guild.id)
            present = {c.id for c in have} == {c.id for c in channels}
        if present:
            present = len(await store.guild_members(guild.id)) == len(members)
        info: dict[str, Any] = {"members": len(members), "plan_s": round(plan_s, 3)}
        if present:
            info.update(loaded=False, note="already in the store: apply skipped")
            say(f"community   {sim.spec.name}: already loaded ({len(members):,} members), skipped")
        else:
            say(
                f"community   {sim.spec.name}: loading {len(members):,} members through community.apply ..."
            )
            redis = connect(settings) if settings.redis_url else None
            started = time.perf_counter()
            try:
                counts = await community.apply(
                    sim.community, store, redis, Keys(settings.key_prefix)
                )
            finally:
                if redis is not None:
                    await redis.aclose()
            took = time.perf_counter() - started
            info.update(
                loaded=True,
                apply_s=round(took, 2),
                counts=counts,
                writes_per_s=round(sum(v for v in counts.values()) / took),
            )
            say(f"community   loaded in {took:.1f}s: {counts}")
        info["user_ids"] = [u.id for u in users]
        info["channel_ids"] = [c.id for c in channels]
        info["guild_id"] = guild.id
        return info
    finally:
        await store.close()


# ---- drivers: generator in this loop or in child processes ----------------------------------------


class _Inline:
    def __init__(self, part: Part, inbox: asyncio.Queue[dict[str, Any]]) -> None:
        self.commands: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.pid = os.getpid()
        self.index = part.index
        self.finished = False
        self.inbox = inbox
        self.task = asyncio.create_task(drive(part, self.commands, self._report))
        self.task.add_done_callback(self._ended)

    def _report(self, msg: dict[str, Any]) -> None:
        self.finished = self.finished or msg.get("type") == "results"
        self.inbox.put_nowait(msg)

    def _ended(self, task: asyncio.Task[None]) -> None:
        """A driver that ended without its results crashed: tell the parent now, with why,
        instead of letting it wait for a report that cannot come."""
        if self.finished:
            return
        why = "cancelled" if task.cancelled() else repr(task.exception())
        self.inbox.put_nowait({"type": "dead", "part": self.index, "why": why})

    def send(self, cmd: dict[str, Any]) -> None:
        self.commands.put_nowait(cmd)

    async def close(self, timeout: float = 10.0) -> None:
        """Finish the driver (it aborts its connections); cancel it if it does not finish."""
        if not self.task.done():
            self.commands.put_nowait({"cmd": "finish"})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.task), timeout)
        if not self.task.done():
            self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


class _Child:
    def __init__(self, part: Part, inbox: asyncio.Queue[dict[str, Any]]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=child_main, args=(part, child), name=f"loadgen-{part.index}")
        self.proc.start()
        child.close()
        self.pid = self.proc.pid
        self.index = part.index
        self.finished = False
        self.inbox = inbox
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(self.conn.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            while self.conn.poll():
                msg = self.conn.recv()
                self.finished = self.finished or msg.get("type") == "results"
                self.inbox.put_nowait(msg)
        except (EOFError, OSError):
            self.loop.remove_reader(self.conn.fileno())
            if not self.finished:  # after its results a child exits: that EOF is expected
                why = f"exit code {self.proc.exitcode}; see its stderr"
                self.inbox.put_nowait({"type": "dead", "part": self.index, "why": why})

    def send(self, cmd: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(cmd)

    async def close(self, timeout: float = 10.0) -> None:
        """Wait for the child to exit after its results; kill it if it does not (always reaped)."""
        await asyncio.to_thread(self.proc.join, timeout)
        if self.proc.is_alive():
            self.proc.kill()
            await asyncio.to_thread(self.proc.join, 10)
        with contextlib.suppress(Exception):
            self.loop.remove_reader(self.conn.fileno())
        self.conn.close()
        with contextlib.suppress(ValueError):  # still running after SIGKILL + 10 s: leave it
            self.proc.close()


# ---- sampling the servers ---------------------------------------------------------------------------


class Sampler:
    """CPU and memory of every process, and consumer-group lag/pending, once a second."""

    def __init__(self, topo: Topology, generators: dict[str, int], settings: Settings) -> None:
        self.topo = topo
        self.settings = settings
        self.generators = {name: psutil.Process(pid) for name, pid in generators.items()}
        self.procs: dict[int, psutil.Process] = {}
        self.rows: list[dict[str, Any]] = []
        self.streams: list[dict[str, Any]] = []
        self.start = time.time()
        self.ncpu = psutil.cpu_count() or 1

    def _named(self) -> dict[str, psutil.Process]:
        named = {**self.topo.processes(), **self.generators}
        named.setdefault("loadtest (parent)", psutil.Process(os.getpid()))
        out = {}
        for name, proc in named.items():
            cached = self.procs.get(proc.pid)
            if cached is None:
                cached = self.procs[proc.pid] = proc
                with contextlib.suppress(psutil.Error):
                    cached.cpu_percent(None)
            out[name] = cached
        return out

    async def run(self) -> None:
        psutil.cpu_percent(None)
        self._named()
        while True:
            await asyncio.sleep(1.0)
            row: dict[str, Any] = {
                "t": round(time.time() - self.start, 2),
                "cpu": {},
                "rss_mib": {},
            }
            for name, proc in self._named().items():
                with contextlib.suppress(psutil.Error):
                    row["cpu"][name] = proc.cpu_percent(None)
                    row["rss_mib"][name] = round(proc.memory_info().rss / 2**20, 1)
            row["machine_cpu"] = psutil.cpu_percent(None) * self.ncpu  # % of one core
            self.rows.append(row)

    async def run_streams(self) -> None:
        if not self.settings.redis_url:
            return
        quick = self.settings.model_copy(update={"redis_timeout_s": 0.8, "redis_retries": 0})
        redis = connect(quick)
        keys = Keys(self.settings.key_prefix)
        try:
            while True:
                at = time.time()
                row: dict[str, Any] = {"t": round(at - self.start, 2)}
                try:
                    lag = pending = 0
                    for stream in keys.ingest_all(self.settings.ingest_shards):
                        for group in await _groups(redis, stream):
                            if group.get("name") == INGEST_GROUP:
                                pending += int(group.get("pending") or 0)
                                lag += int(group.get("lag") or 0)
                    row.update(ingest_lag=lag, ingest_pending=pending)
                    lag = pending = found = 0  # summed over the presence partitions
                    for stream in keys.presence_in_all(self.settings.presence_partitions):
                        for group in await _groups(redis, stream):
                            if group.get("name") == PRESENCE_GROUP:
                                found += 1
                                lag += int(group.get("lag") or 0)
                                pending += int(group.get("pending") or 0)
                    if found:  # no presence service: no presence columns
                        row.update(presence_lag=lag, presence_pending=pending)
                except Exception as exc:  # noqa: BLE001 - a paused Redis is what we measure
                    row["error"] = type(exc).__name__
                self.streams.append(row)
                await asyncio.sleep(max(0.0, 1.0 - (time.time() - at)))
        finally:
            with contextlib.suppress(Exception):
                await redis.aclose()


async def _groups(redis: Any, stream: str) -> list[dict[str, Any]]:
    try:
        raw = await redis.xinfo_groups(stream)
    except Exception as exc:  # noqa: BLE001
        if "no such key" in str(exc).lower():
            return []
        raise
    return [{_s(k): _s(v) for k, v in g.items()} for g in raw]


def _s(v: Any) -> Any:
    return v.decode() if isinstance(v, bytes) else v


# ---- durability: is every acknowledged message in history? ------------------------------------------


async def check_stored(settings: Settings, results: list[dict[str, Any]]) -> dict[str, Any]:
    """Read back the history of every channel written to: each acknowledged message must be
    there exactly once (an ACK promises durability), and no message may be stored under two
    ids (a resend the gateway did not take for a retry would do that). Stored messages carry
    no nonce: a message is recognised by the key that starts its content (``StoredCheck``)."""
    acked: dict[tuple[int, int], str] = {}
    for r in results:
        for key, channel_id, _s, _t, _n, message_id in r["sends"]:
            if message_id:
                acked[(channel_id, message_id)] = key
    check = StoredCheck(acked, also=(key for r in results for key, _ in r["failed"]))
    oldest: dict[int, int] = {}
    for channel_id, message_id in acked:
        oldest[channel_id] = min(message_id, oldest.get(channel_id, message_id))
    started = time.perf_counter()
    store = await open_store(settings.storage_url, bucket_span_ms=settings.bucket_span_ms)
    try:
        for channel_id, floor in oldest.items():
            before = None
            while True:
                page = await store.page(channel_id, before=before, limit=200)
                for m in page:
                    if m.message_id < floor:
                        break
                    check.see(channel_id, m.message_id, m.payload)
                if len(page) < 200 or page[-1].message_id < floor:
                    break
                before = page[-1].message_id
    finally:
        await store.close()
    return {**check.report(), "read_back_s": round(time.perf_counter() - started, 2)}


# ---- the run --------------------------------------------------------------------------------------------


def _topology(cfg: RunConfig) -> Topology:
    """Gateways given on the command line, or a topology of our own."""
    if cfg.gateways:
        from chatscale.discovery import settings_for_tools

        return External(cfg.gateways, settings_for_tools())
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    return Embedded(
        (cfg.out or cfg.workdir) / "topology",
        storage_url=cfg.storage_url,
        gateways=cfg.embedded_gateways,
        workers=cfg.embedded_workers,
        presence=cfg.embedded_presence,
        redis_cluster=cfg.redis_cluster,
    )


def setup_timeout(cfg: RunConfig, clients: int) -> float:
    """How long setup may take: the connect rate, plus every retry of a slow last client."""
    if cfg.setup_timeout is not None:
        return cfg.setup_timeout
    return clients / max(1.0, cfg.connect_rate) + 8 * cfg.ready_timeout


#: ``split``: talkers get a generator process of their own when they are at most this share of
#: the online clients (a streamer's chat: 117 talkers among 3,000 viewers), not when most send
TALKERS_APART_SHARE = 0.1


class LoadTestError(RuntimeError):
    """The run could not be measured (a generator died or hung, clients were refused): the
    message says what happened in one line, for the command line to print as is."""


def split(
    plan: scenarios.Plan,
    sim: communities.SimCommunity,
    load: dict[str, Any],
    urls: list[str],
    settings: Settings,
    cfg: RunConfig,
    parts: int,
) -> list[Part]:
    """One Part per generator process; a client (and so a sender) lives in exactly one.

    With ``talkers_apart`` and few talkers (at most ``TALKERS_APART_SHARE`` of the online
    clients, at least two generator processes), the clients that send get one more process of
    their own: a real talker's device is not shared with a thousand other viewers, and a
    stop-and-wait sender in a process busy receiving everyone's deliveries waits for that
    process's event loop, not for the server, before it sees its ack and sends again; its send
    lag would measure the load generator. Everyone else is spread over the ``parts``."""
    now = time.time()
    ttl = int(cfg.ready_timeout * 4 + (cfg.duration or 60) * 4 + 3600)
    user_ids = load["user_ids"]
    online = sorted(plan.online)
    talkers = {m.sender for m in plan.sends}
    apart = (
        cfg.talkers_apart and parts >= 2 and 0 < len(talkers) <= TALKERS_APART_SHARE * len(online)
    )
    out = [
        Part(
            index=i,
            clients=[],
            urls=urls,
            channels=load["channel_ids"],
            connect_rate=cfg.connect_rate / parts,
            connect_window=max(1, cfg.connect_window // parts),
            ready_timeout=cfg.ready_timeout,
            setup_timeout=setup_timeout(cfg, len(plan.online) - len(plan.connect_at)),
            bucket_s=1.0,
            inject=dict(cfg.inject),
            report_s=cfg.report_s,
            window=cfg.window,
            jitter=settings.reconnect_jitter,
        )
        for i in range(parts + (1 if apart else 0))
    ]
    owner: dict[int, int] = {}
    watched_by_observers = sorted({cid for _, cid, _ in plan.statuses})
    spread = 0  # the clients that are not talkers kept apart, round robin over ``parts``
    for k, cid in enumerate(online):
        member = sim.members[cid]
        if apart and cid in talkers:
            part = out[parts]
        else:
            part = out[spread % parts]
            spread += 1
        owner[cid] = part.index
        part.clients.append(
            ClientPlan(
                cid=cid,
                user_id=user_ids[cid],
                token=tokens.mint(user_ids[cid], secret=settings.token_secret, ttl_s=ttl, now=now),
                device=member.device,
                url=urls[k % len(urls)],
                connect_at=plan.connect_at.get(cid),
                observer=cid in plan.observers,
                watch=tuple(
                    user_ids[c]
                    for c in memberlist.watch_list(
                        online, k, observer=cid in plan.observers, observed=watched_by_observers
                    )
                ),
            )
        )
    for m in plan.sends:
        out[owner[m.sender]].sends.append((m.at, m.sender, m.channel, m.content))
    for at, cid, status in plan.statuses:
        out[owner[cid]].statuses.append((at, cid, status))
    for drop in plan.drops:
        out[owner[drop[1]]].drops.append(drop)
    if plan.observers:
        watched = {cid for _, cid, _ in plan.statuses}
        for part in out:
            if any(c.observer for c in part.clients):
                part.watch = list(plan.statuses)
                part.user_cids = {user_ids[cid]: cid for cid in watched}
    return out


async def run(cfg: RunConfig, *, topology: Topology | None = None, say=print) -> dict[str, Any]:  # noqa: ANN001, C901
    sim = communities.load(cfg.community, online=cfg.online)
    plan = scenarios.build(
        scenarios.Options(
            scenario=cfg.scenario,
            duration=cfg.duration,
            rate=cfg.rate,
            seed=cfg.seed,
            fault_at=cfg.fault_at,
            pause_s=cfg.pause_s,
            observers=cfg.observers,
        ),
        sim,
    )
    if plan.fault and plan.fault[0] == "pause-cassandra" and topology is None and not cfg.gateways:
        if not cfg.storage_url.startswith("cassandra://"):
            raise ValueError("pause-cassandra needs --storage-url cassandra://host:port/keyspace")
    if plan.fault and topology is not None and topology.kind == "in-process":
        raise ValueError("fault scenarios need real processes: run without an in-process topology")
    topology = topology if topology is not None else _topology(cfg)
    machine = describe_machine()
    say(f"loadtest    {cfg.scenario} on {sim.spec.name}: {scenarios.SCENARIOS[cfg.scenario]}")
    for note in plan.notes:
        say(f"plan        {note}")
    await topology.start(say=say)
    hog = cpuhog.start() if cfg.cpu_hog else None
    if hog is not None:
        say(f"cpu hog     pid {hog.pid} keeps one core busy until the run ends")
    drivers: list[Any] = []
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    tasks: list[asyncio.Task[Any]] = []
    timings: dict[str, float] = {}
    fault_log: list[dict[str, Any]] = []
    results: dict[int, dict[str, Any]] = {}
    try:
        settings = topology.settings
        load = await load_community(sim, settings, say=say)
        nparts = max(1, cfg.processes)
        parts = split(plan, sim, load, topology.urls, settings, cfg, nparts)
        if len(parts) > nparts:
            say(
                f"generators  {len(parts[-1].clients)} talkers in a process of their own "
                f"(generator-{nparts}), the other clients over {nparts} (--talkers-together: "
                "all over the same processes)"
            )
        load["home"] = {c.cid: c.url for p in parts for c in p.clients}
        for part in parts:
            drivers.append(_Inline(part, inbox) if cfg.processes == 0 else _Child(part, inbox))
        generators = (
            {f"generator-{i}": d.pid for i, d in enumerate(drivers)} if cfg.processes else {}
        )
        sampler = Sampler(topology, generators, settings)
        tasks += [asyncio.create_task(sampler.run()), asyncio.create_task(sampler.run_streams())]
        latest: dict[int, dict[str, Any]] = {}

        async def wait_for(kind: str, timeout: float) -> None:
            """Every generator's ``kind`` report, within ``timeout`` or a LoadTestError."""
            deadline = time.time() + timeout
            done: set[int] = set()
            shown = time.time()
            while len(done) < len(drivers):
                if kind == "setup_done" and time.time() - shown > 5 and latest:
                    shown = time.time()
                    say(
                        f"setup       {sum(m.get('ready_now', 0) for m in latest.values()):,} ready ..."
                    )
                try:
                    msg = await asyncio.wait_for(inbox.get(), max(0.01, deadline - time.time()))
                except TimeoutError:
                    missing = sorted(set(range(len(drivers))) - done)
                    raise LoadTestError(
                        f"generator(s) {missing} sent no {kind!r} report within {timeout:g}s"
                    ) from None
                if msg["type"] == "progress":
                    latest[msg["part"]] = msg
                elif msg["type"] == kind:
                    latest[msg["part"]] = msg
                    done.add(msg["part"])
                    if kind == "results":
                        results[msg["part"]] = msg
                elif msg["type"] == "dead":
                    raise LoadTestError(_dead(msg))

        # -- setup ---------------------------------------------------------------------------------
        before = len(plan.online) - len(plan.connect_at)
        started = time.time()
        for d in drivers:
            d.send({"cmd": "setup", "at": started + 0.2})
        say(
            f"setup       connecting {before:,} clients (up to {cfg.connect_rate:g}/s, {cfg.connect_window} at once) ..."
        )
        # the generators end their setup by themselves after setup_timeout; the margin is for
        # a loaded machine to deliver that report
        await wait_for("setup_done", parts[0].setup_timeout + cfg.reply_timeout)
        timings["setup_s"] = round(time.time() - started, 2)
        ready = sum(m.get("ready_now", 0) for m in latest.values())
        say(f"setup       {ready:,}/{before:,} ready in {timings['setup_s']:.1f}s")
        refused = {k: v for m in latest.values() for k, v in m.get("terminal", {}).items() if v}
        if refused:
            raise LoadTestError(
                f"{sum(refused.values())} client(s) refused for good during setup ({refused}): "
                f"the gateways do not know this community's users, so they read another store "
                f"than this load test wrote ({settings.storage_url}, Redis {settings.redis_url})"
            )

        # -- run -----------------------------------------------------------------------------------
        t0 = time.time() + (0.5 if cfg.processes else 0.1)
        sampler.start = t0
        for d in drivers:
            d.send({"cmd": "run", "t0": t0})
        end_of_plan = max(
            [plan.duration]
            + [m.at for m in plan.sends]
            + [s[0] for s in plan.statuses]
            + [d[0] + d[3] for d in plan.drops]
            + list(plan.connect_at.values())
        )
        if plan.fault:
            tasks.append(asyncio.create_task(_fault(plan.fault, topology, t0, fault_log, say)))
        progress = _Progress(say, cfg.progress_every, t0)
        while time.time() < t0 + end_of_plan:
            await _pump(inbox, latest, 0.25)
            progress.maybe(latest, sampler)
        timings["run_s"] = round(time.time() - t0, 2)

        # -- drain -----------------------------------------------------------------------------------
        # It ends early only when nothing can still arrive: no message awaiting its ACK, no
        # client reconnecting or reloading history (a slow machine stretches both), the
        # workers' ingest streams empty, and then every READY client has every acknowledged
        # message or nothing arrived for quiet_s. Otherwise drain_s bounds it.
        drain_start = time.time()
        fresh = max(0.3, 2 * cfg.report_s)  # progress reports newer than the end of the run
        last_change, last_received = time.time(), -1
        while time.time() < drain_start + cfg.drain_s:
            await _pump(inbox, latest, min(0.25, cfg.report_s))
            progress.maybe(latest, sampler)
            received = sum(m.get("received", 0) for m in latest.values())
            outbox = sum(m.get("outbox", 0) for m in latest.values())
            acked = sum(m.get("acked", 0) for m in latest.values())
            ready_now = sum(m.get("ready_now", 0) for m in latest.values())
            settling = sum(m.get("settling", 0) for m in latest.values())
            stream = sampler.streams[-1] if sampler.streams else {}
            backlog = stream.get("ingest_lag", 0) or stream.get("ingest_pending", 0)
            if received != last_received or outbox or settling or backlog:
                last_change, last_received = time.time(), received
                continue
            if time.time() - drain_start < fresh:
                continue
            if received >= acked * ready_now or time.time() - last_change > cfg.quiet_s:
                break
        timings["drain_s"] = round(time.time() - drain_start, 2)
        for d in drivers:
            d.send({"cmd": "finish"})
        await wait_for("results", cfg.reply_timeout)
        ordered = [results[i] for i in sorted(results)]
        stored = await check_stored(settings, ordered)
        # a worker may still be finishing a history backlog (paused storage): look again
        look_until = time.monotonic() + cfg.history_wait_s
        while stored["missing_from_history"] and time.monotonic() < look_until:
            await asyncio.sleep(min(2.0, max(0.0, look_until - time.monotonic())))
            stored = await check_stored(settings, ordered)
        say(
            f"history     {stored['acknowledged'] - stored['missing_from_history']:,}/{stored['acknowledged']:,} "
            f"acknowledged messages found in history storage"
        )
    finally:
        # bounded: a sampler in a Redis call can lose a cancellation on 3.11 (chatscale.cancel)
        await cancel_and_wait(tasks, 10.0, "load test")
        for task in tasks:
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: a sampler's failure must not warn at exit
        for d in drivers:
            await d.close()
        cpuhog.stop(hog)
        await topology.stop()
    events = [
        {"t": round(at - t0, 2), "what": text} for at, text in getattr(topology, "timed_events", [])
    ]
    report = build_report(
        cfg=cfg,
        sim=sim,
        plan=plan,
        load=load,
        topology=topology,
        results=[results[i] for i in sorted(results)],
        sampler=sampler,
        t0=t0,
        timings=timings,
        faults=sorted(fault_log + events, key=lambda e: e["t"]),
        machine=machine,
    )
    report["messages"]["stored"] = stored
    report["verdict"] = verdict(report)
    return report


async def _pump(
    inbox: asyncio.Queue[dict[str, Any]], latest: dict[int, dict[str, Any]], timeout: float
) -> None:
    with contextlib.suppress(TimeoutError):
        msg = await asyncio.wait_for(inbox.get(), timeout)
        while True:
            if msg["type"] == "progress":
                latest[msg["part"]] = msg
            elif msg["type"] == "dead":
                raise LoadTestError(_dead(msg))
            if inbox.empty():
                break
            msg = inbox.get_nowait()


def _dead(msg: dict[str, Any]) -> str:
    return f"generator {msg['part']} ended before its results ({msg.get('why', '?')})"


async def _fault(
    fault: tuple[str, float, float], topo: Any, t0: float, log: list[dict[str, Any]], say
) -> None:  # noqa: ANN001
    kind, at, seconds = fault
    await asyncio.sleep(max(0.0, t0 + at - time.time()))

    def note(text: str, injected: bool | None = None) -> None:
        entry: dict[str, Any] = {"t": round(time.time() - t0, 2), "what": text}
        if injected is not None:  # the entry that says whether the scenario's fault happened
            entry["injected"] = injected
        log.append(entry)
        say(f"fault       t={time.time() - t0:5.1f}s {text}")

    try:
        if kind == "kill-worker":
            note(await topo.kill_worker(0), injected=True)
        elif kind == "kill-gateway":
            note(await topo.kill_gateway(-1), injected=True)
        elif kind in ("pause-redis", "pause-cassandra"):
            what = "valkey" if kind == "pause-redis" else "cassandra"
            pid = topo.valkey_pid() if kind == "pause-redis" else storage_pid(topo.settings)
            os.kill(pid, signal.SIGSTOP)  # raises if there is no such process: not injected
            note(f"SIGSTOP {what} (pid {pid}) for {seconds:g}s", injected=True)
            events: list[str] = []
            await resume_after(pid, seconds, events, what)
            for e in events:
                note(e)
        else:
            note(f"fault not injected: no such fault {kind!r}", injected=False)
    except (LookupError, OSError, AssertionError, IndexError) as exc:
        note(f"fault not injected: {type(exc).__name__}: {exc}", injected=False)


class _Progress:
    def __init__(self, say, every: float, t0: float) -> None:  # noqa: ANN001
        self.say = say
        self.every = every
        self.t0 = t0
        self.next = t0 + every
        self.prev_received = 0
        self.prev_at = t0
        self.tty = sys.stdout.isatty() and say is print

    def maybe(self, latest: dict[int, dict[str, Any]], sampler: Sampler) -> None:
        now = time.time()
        if now < self.next or not latest:
            return
        self.next = now + self.every
        m = latest.values()
        received = sum(x.get("received", 0) for x in m)
        rate = (received - self.prev_received) / max(1e-3, now - self.prev_at)
        self.prev_received, self.prev_at = received, now
        p99 = max((x.get("window_p99_ms", 0.0) for x in m), default=0.0)
        cpu = sampler.rows[-1]["cpu"] if sampler.rows else {}
        busiest = max(cpu.items(), key=lambda kv: kv[1], default=("-", 0.0))
        lag = sampler.streams[-1] if sampler.streams else {}
        line = (
            f"t={now - self.t0:6.1f}s  ready {sum(x.get('ready_now', 0) for x in m):>6,}"
            f"  sent {sum(x.get('acked', 0) for x in m):>7,}/{sum(x.get('scheduled', 0) for x in m):<7,}"
            f"  deliv {received:>9,} ({rate:>8,.0f}/s)  p99(1s) {p99:7.1f}ms"
            f"  errs {sum(x.get('errors', 0) for x in m)} closes {sum(x.get('closes', 0) for x in m)}"
            f"  busiest {busiest[0]} {busiest[1]:.0f}%"
            f"  lag {lag.get('ingest_lag', '?')}/pend {lag.get('ingest_pending', '?')}"
        )
        self.say(line)


# ---- judging and the report ----------------------------------------------------------------------------


def judge(
    results: list[dict[str, Any]], home: dict[int, str] | None = None
) -> tuple[Any, dict[str, Any]]:
    """One ledger from every process: acknowledged sends with their audiences, every receipt.

    Also where the loss was: missing deliveries per client's first gateway (``home``), so a
    reader can tell one broken gateway from a general shortfall.
    """
    ready = sorted((t, int(cid)) for r in results for cid, t in r["ready_at"].items())
    times = [t for t, _ in ready]
    not_judged = {nonce for r in results for nonce, _ in r["failed"]} | {
        n for r in results for n in r["rejected"]
    }
    sends = sorted((s for r in results for s in r["sends"]), key=lambda s: s[3])
    ledger = DeliveryLedger()
    audiences: dict[int, frozenset[int]] = {}
    judged_times: list[float] = []
    for nonce, channel_id, sender, intended, seq, *_ in sends:
        if nonce in not_judged:
            continue
        k = bisect.bisect_right(times, intended)
        audience = audiences.get(k)
        if audience is None:
            audience = audiences[k] = frozenset(cid for _, cid in ready[:k])
        ledger.record_send(
            nonce,
            channel_id=channel_id,
            sender=sender,
            sent_at=intended,
            recipients=audience,
            seq=seq,
        )
        judged_times.append(intended)
    intended_at = {s[0]: s[3] for s in sends}
    extra: dict[str, Any] = Counter()
    got: dict[int, set[str]] = {}
    last: dict[str, float] = {}
    for r in results:
        for cid, nonce, at in r["receipts"]:
            if nonce not in intended_at or nonce in not_judged:
                extra["delivered_not_acknowledged"] += 1
                continue
            ledger.record_receipt(cid, nonce, at)
            got.setdefault(cid, set()).add(nonce)
            if at > last.get(nonce, 0.0):
                last[nonce] = at
    fanout = LatencyRecorder()  # per message: intended send -> its last delivery
    for nonce, at in last.items():
        fanout.record(at - intended_at[nonce])
    extra["time_to_last_delivery_ms"] = _ms(fanout)
    report = ledger.report(math.inf)
    if report.lost:
        by_gateway: Counter[str] = Counter()
        clients = 0
        for ready_at, cid in ready:
            expected = len(judged_times) - bisect.bisect_left(judged_times, ready_at)
            missing = expected - len(got.get(cid, ()))
            if missing > 0:
                clients += 1
                by_gateway[(home or {}).get(cid, "?")] += missing
        extra["lost_by_home_gateway"] = dict(by_gateway)
        extra["clients_with_loss"] = clients
    return report, {"distinct_audiences": len(audiences), **extra}


def _merge_latency(results: list[dict[str, Any]], key: str) -> LatencyRecorder:
    rec = LatencyRecorder()
    for r in results:
        rec.merge(LatencyRecorder.from_dict(r[key]))
    return rec


def _merge_series(results: list[dict[str, Any]], key: str) -> TimeSeries | None:
    series = None
    for r in results:
        if r.get(key) is None:
            continue
        s = TimeSeries.from_dict(r[key])
        if series is None:
            series = s
        else:
            series.merge(s)
    return series


def _ms(rec: LatencyRecorder) -> dict[str, Any]:
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in rec.summary().items()}


def _sum(results: list[dict[str, Any]], key: str) -> dict[str, int]:
    total: Counter[str] = Counter()
    for r in results:
        total.update(r[key])
    return dict(sorted(total.items()))


def describe_machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": psutil.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _process_table(sampler: Sampler, t_from: float, t_to: float) -> dict[str, dict[str, Any]]:
    rows = [r for r in sampler.rows if t_from <= r["t"] <= t_to] or sampler.rows
    out: dict[str, dict[str, Any]] = {}
    names = sorted({n for r in rows for n in r["cpu"]})
    for name in names:
        cpu = [r["cpu"][name] for r in rows if name in r["cpu"]]
        rss = [r["rss_mib"][name] for r in rows if name in r["rss_mib"]]
        out[name] = {
            "cpu_avg_pct": round(sum(cpu) / len(cpu), 1) if cpu else 0.0,
            "cpu_max_pct": round(max(cpu), 1) if cpu else 0.0,
            "rss_max_mib": max(rss) if rss else 0.0,
            "rss_end_mib": rss[-1] if rss else 0.0,
            "samples": len(cpu),
        }
    return out


def build_report(
    *,
    cfg: RunConfig,
    sim: communities.SimCommunity,
    plan: scenarios.Plan,
    load: dict[str, Any],
    topology: Topology,
    results: list[dict[str, Any]],
    sampler: Sampler,
    t0: float,
    timings: dict[str, float],
    faults: list[dict[str, Any]],
    machine: dict[str, Any],
) -> dict[str, Any]:
    delivery, extra = judge(results, load.get("home"))
    counters = _sum(results, "counters")
    latency = _merge_latency(results, "latency")
    ready_latency = _merge_latency(results, "ready_latency")
    series = _merge_series(results, "series")
    connect_series = _merge_series(results, "connect_series")
    rows = series.rows() if series else []
    sends_acked = sum(len(r["sends"]) for r in results)
    received = sum(len(r["receipts"]) for r in results)
    run_s = timings.get("run_s", plan.duration)
    deliver_span = run_s + timings.get("drain_s", 0.0)
    first_send = min((s[3] for r in results for s in r["sends"]), default=t0)
    last_send = max((s[3] for r in results for s in r["sends"]), default=t0)
    ready_times = sorted(t for r in results for t in r["ready_at"].values())
    storm = [t for t in ready_times if t >= t0]
    processes = _process_table(sampler, 0.0, run_s)
    generator_cpu_s = sum(r["cpu_s"] for r in results)
    machine_cpu = [r["machine_cpu"] for r in sampler.rows if 0 <= r["t"] <= run_s]
    ours = [sum(r["cpu"].values()) for r in sampler.rows if 0 <= r["t"] <= run_s]
    streams = [s for s in sampler.streams if "error" not in s]
    report: dict[str, Any] = {
        "scenario": cfg.scenario,
        "description": scenarios.SCENARIOS[cfg.scenario],
        "command": cfg.command,
        "started_at": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t0)),
        "machine": machine,
        "community": sim.summary(),
        "topology": {
            "kind": topology.kind,
            "gateways": topology.urls,
            "storage_url": topology.settings.storage_url,
            "ingest_shards": topology.settings.ingest_shards,
        },
        "load": {k: v for k, v in load.items() if k not in ("user_ids", "channel_ids", "home")},
        "plan": {
            "duration_s": plan.duration,
            "notes": plan.notes,
            "processes": len(results) if cfg.processes else 0,  # talkers apart: one more
            **plan.offered(),
        },
        "timings": timings,
        "connections": {
            "clients": len(plan.online),
            "ready": len(ready_times),
            "attempts_failed": _sum(results, "failures"),
            "refused": _sum(results, "refused"),
            # refused by admission (4017 GATEWAY_BUSY with retry_after) and retried: not failures
            "refused_retried": _sum(results, "retried"),
            "clients_refused": counters.get("clients_refused", 0),  # refused at least once
            "refused_share": round(
                counters.get("clients_refused", 0) / max(1, len(plan.online)), 4
            ),
            "dropped_by_server": sum(_sum(results, "close_codes").values()),
            "gave_up": counters.get("gave_up", 0),
            "ready_latency_ms": _ms(ready_latency),
            "accepted_per_s": (
                round(
                    len(storm)
                    / max(1e-3, storm[-1] - min(t0 + min(plan.connect_at.values()), storm[0])),
                    1,
                )
                if len(storm) > 1 and plan.connect_at
                else None
            ),
            "close_codes": _sum(results, "close_codes"),
            "reconnects": counters.get("reconnects", 0),
            "drops": counters.get("drops", 0),
            "resumed": counters.get("resumed", 0),
            "invalid_session": counters.get("invalid_session", 0),
            "new_sessions": counters.get("new_sessions", 0),
            "resume_latency_ms": _ms(_merge_latency(results, "resume_latency")),
            "new_session_latency_ms": _ms(_merge_latency(results, "reconnect_latency")),
            "offline_gap_ms": _ms(_merge_latency(results, "session_gap")),
            "ready_at_end": sum(r["ready_now"] for r in results),
        },
        "messages": {
            "scheduled": counters.get("scheduled", 0),
            "acknowledged": sends_acked,
            "offered_per_s": plan.offered()["messages_per_s"],
            "achieved_per_s": round(sends_acked / max(1e-3, plan.duration), 2),
            "send_span_s": round(last_send - first_send, 2),
            "send_errors": _sum(results, "send_errors"),
            "not_acknowledged": sum(len(r["failed"]) for r in results),
            "unsent_at_end": sum(r["unsent"] for r in results),
            "rejected": sum(len(r["rejected"]) for r in results),
            "ack_timeouts": counters.get("ack_timeouts", 0),
            "retries": counters.get("send_retries", 0),
            "resent_after_new_session": counters.get("resent_after_new_session", 0),
            "ack_latency_ms": _ms(_merge_latency(results, "ack_latency")),
            "in_flight_per_client": cfg.window,
            "send_lag_ms": _ms(_merge_latency(results, "send_lag")),
        },
        "deliveries": {
            "received": received,
            "per_s": round(received / max(1e-3, deliver_span), 1),
            "peak_per_s": max((r["deliveries"] for r in rows), default=0) / 1.0,
            "latency_ms": _ms(latency),
            **{
                k: getattr(delivery, k)
                for k in (
                    "expected",
                    "delivered",
                    "lost",
                    "duplicated",
                    "reordered",
                    "unexpected",
                    "unknown",
                )
            },
            "early": counters.get("early", 0),
            "recovered_from_history": counters.get("recovered", 0),
            "recovered_age_ms": _ms(_merge_latency(results, "recovered_age")),
            "foreign": counters.get("foreign_messages", 0),
            **extra,
            "injected": _sum(results, "injected"),
            "examples": {k: v[:5] for k, v in delivery.examples.items() if v},
        },
        "presence": {
            "status_changes_sent": counters.get("status_changes", 0),
            "updates_received": counters.get("presence_frames", 0),
            "bytes_received": counters.get("presence_bytes", 0),
            "updates_per_s": round(counters.get("presence_frames", 0) / max(1e-3, deliver_span), 1),
            "propagation_ms": _ms(_merge_latency(results, "presence_latency")),
            # presence bytes received per client that arrived during the run (the storm's)
            "bytes_per_arrival": round(
                counters.get("presence_bytes", 0) / max(1, len(plan.connect_at) or len(plan.online))
            ),
        },
        "faults": faults,
        "processes": processes,
        "generator": {
            "processes": max(1, len(results)),
            "cpu_s": round(generator_cpu_s, 2),
            "cpu_us_per_delivery": round(generator_cpu_s / max(1, received) * 1e6, 1),
            "in_process": cfg.processes == 0,
        },
        "machine_load": {
            "machine_cpu_avg_pct": round(sum(machine_cpu) / len(machine_cpu), 1)
            if machine_cpu
            else None,
            "ours_cpu_avg_pct": round(sum(ours) / len(ours), 1) if ours else None,
            "others_cpu_avg_pct": (
                round(max(0.0, sum(machine_cpu) / len(machine_cpu) - sum(ours) / len(ours)), 1)
                if machine_cpu and ours
                else None
            ),
        },
        "streams": {
            "ingest_lag_max": max((s.get("ingest_lag", 0) for s in streams), default=None),
            "ingest_pending_max": max((s.get("ingest_pending", 0) for s in streams), default=None),
            "ingest_pending_end": streams[-1].get("ingest_pending") if streams else None,
            "presence_lag_max": max((s.get("presence_lag", 0) for s in streams), default=None),
            "unreachable_samples": sum(1 for s in sampler.streams if "error" in s),
        },
        "series": {
            "deliveries": rows,
            "connects": connect_series.rows() if connect_series else [],
            "processes": sampler.rows,
            "streams": sampler.streams,
        },
        "latency_histogram": latency.buckets(),
        "latency_percentiles": latency.percentile_curve(),
        "ready_latency_histogram": ready_latency.buckets(),
    }
    report["ready_bound_s"] = cfg.ready_bound_s
    report["cpu_hog"] = cfg.cpu_hog
    report["verdict"] = verdict(report)
    return report


def verdict(report: dict[str, Any]) -> dict[str, Any]:
    """What limited the run, in words, from the CPU table and the counters."""
    d = report["deliveries"]
    notes = []
    procs = report["processes"]
    servers = {n: p for n, p in procs.items() if not n.startswith(("generator", "loadtest"))}
    gens = {n: p for n, p in procs.items() if n.startswith("generator")}
    busiest = max(procs.items(), key=lambda kv: kv[1]["cpu_avg_pct"], default=None)
    if busiest is not None:
        name, p = busiest
        level = "saturated" if p["cpu_avg_pct"] >= 85 else "busiest"
        notes.append(
            f"{level}: {name} at {p['cpu_avg_pct']:.0f}% of one core on average (max {p['cpu_max_pct']:.0f}%)"
        )
    load = report["machine_load"]
    cpus = report["machine"]["cpus"] or 1
    if load["machine_cpu_avg_pct"] is not None and load["machine_cpu_avg_pct"] >= 85 * cpus:
        notes.append(
            f"the machine was saturated: {load['machine_cpu_avg_pct']:.0f}% of {cpus * 100}%"
        )
    if load["others_cpu_avg_pct"]:
        notes.append(
            f"other processes on the machine used {load['others_cpu_avg_pct']:.0f}% of a core on average"
        )
    if gens and servers:
        g = sum(p["cpu_avg_pct"] for p in gens.values())
        s = sum(p["cpu_avg_pct"] for p in servers.values())
        notes.append(f"generator {g:.0f}% vs servers {s:.0f}% of a core (sums)")
    m = report["messages"]
    if m["send_lag_ms"]["p99_ms"] > 50:
        notes.append(
            f"senders fell behind their schedule: p99 {m['send_lag_ms']['p99_ms']:.0f} ms from intended "
            f"to actual send ({m['in_flight_per_client']} message(s) in flight per client, ack p50 "
            f"{m['ack_latency_ms']['p50_ms']:.1f} ms); latency includes that wait"
        )
    s = report["streams"]
    if s["ingest_lag_max"]:
        notes.append(f"workers fell behind: ingest lag up to {s['ingest_lag_max']} entries")
    clean = not (d["lost"] or d["duplicated"] or d["reordered"] or d["unexpected"] or d["unknown"])
    # A run that measured nothing, or not what it set out to, is not clean either: no loss
    # among zero messages proves nothing (a topology reading another store refuses every
    # client as an unknown user and sends nothing), and a fault scenario without its fault
    # is a steady run under another name.
    unmeasured = []
    c = report["connections"]
    if c["clients"] and not c["ready"]:
        unmeasured.append(f"none of the {c['clients']:,} clients reached READY")
    if c.get("refused"):
        unmeasured.append(
            f"{sum(c['refused'].values()):,} client(s) refused for good ({c['refused']})"
        )
    if m["scheduled"] and not m["acknowledged"]:
        unmeasured.append(f"none of the {m['scheduled']:,} scheduled messages was acknowledged")
    elif m["acknowledged"] and not d["expected"]:
        unmeasured.append("no delivery was expected: no client was READY to receive")
    storm_notes = storm_verdict(report)
    if storm_notes:
        clean = False
        notes[:0] = storm_notes
    fault = report["plan"].get("fault")
    if fault and not any(f.get("injected") for f in report["faults"]):
        why = [f["what"] for f in report["faults"] if f.get("injected") is False]
        unmeasured.append(
            f"the fault ({fault[0]}) was not injected" + (f": {why[0]}" if why else "")
        )
    stored = m.get("stored")
    if stored is not None:
        if stored["missing_from_history"] or stored["stored_twice"]:
            clean = False
            notes.insert(
                0,
                f"{stored['missing_from_history']} acknowledged message(s) missing from history, "
                f"{stored['stored_twice']} stored twice",
            )
        else:
            notes.insert(
                0, f"all {stored['acknowledged']:,} acknowledged messages are in history, once each"
            )
    if d["lost"]:
        notes.insert(
            0,
            f"{d['lost']:,} deliveries missing at READY clients "
            f"(neither live nor recovered from history by the end of the drain)",
        )
    if unmeasured:  # first: the rest of the notes describe a run that did not happen
        clean = False
        notes[:0] = [f"NOT MEASURED: {u}" for u in unmeasured]
    return {"clean": clean, "notes": notes}


STORMS = ("connect-storm", "reconnect-storm")


def storm_verdict(report: dict[str, Any]) -> list[str]:
    """A storm is judged by what viewers saw, not only by message loss: failed connection
    attempts (refusals with retry_after are counted apart, not as failures), sessions the
    server closed, and READY slower than the stated bound each make it NOT CLEAN."""
    if report["scenario"] not in STORMS:
        return []
    c = report["connections"]
    out = []
    failed = sum(c["attempts_failed"].values())
    if failed:
        out.append(f"{failed:,} connection attempt(s) failed ({c['attempts_failed']})")
    if c.get("dropped_by_server"):
        out.append(f"{c['dropped_by_server']:,} READY session(s) closed ({c['close_codes']})")
    bound = report.get("ready_bound_s")
    p99 = c["ready_latency_ms"]["p99_ms"] / 1000
    if bound and c["ready"] and p99 > bound:
        out.append(f"READY p99 {p99:.1f} s exceeds the bound of {bound:g} s")
    if c["ready"] < c["clients"]:
        out.append(f"{c['clients'] - c['ready']:,} of {c['clients']:,} clients never reached READY")
    return out


def default_out(cfg: RunConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("reports") / f"{cfg.scenario}-{Path(cfg.community).stem}-{stamp}"
