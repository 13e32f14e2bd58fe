"""``chatscale bench``: baseline figures of the full path on a running topology.

Two measurements, both against real gateways over real WebSockets:

- ``chat``: N members of one bench guild are connected (spread over the gateways); S of them
  send at a fixed total rate (or as fast as acks return, ``--rate 0``). Every member receives
  every message. Latency is send -> receive per delivery (the send time travels in the
  content; all processes share this machine's clock), recorded in an HDR histogram with
  coordinated-omission correction at fixed rates. Every delivery is checked against the
  ledger, so lost and duplicated deliveries are counted, not guessed.
- ``idle``: opens K identified connections to one gateway and reports the gateway's RSS growth
  per connection, then every server process's CPU while the crowd sits idle.

The generator runs in one process; its CPU is reported next to the servers' so a reader can
tell which side saturated. The full load generator with scenarios is ``loadtest`` (issue 6).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any
from urllib.parse import urlsplit

import psutil

from chatscale import tokens
from chatscale.client import ChatClient
from chatscale.config import Settings
from chatscale.keys import Keys
from chatscale.redisconn import connect
from chatscale.trace import identify, send_patiently
from guilds import community
from loadtest.accounting import DeliveryLedger
from loadtest.latency import LatencyRecorder


def bench_community(members: int) -> community.Community:
    names = [f"bench-{i:05d}" for i in range(members)]
    return community.Community(
        name="bench",
        guilds=[
            community.GuildSpec(name="bench", owner=names[0], channels=["load"], members=names)
        ],
    )


def _role(proc: psutil.Process) -> str:
    """valkey, gateway, worker, presence ... from the command line; else the process name."""
    cmd = proc.cmdline()
    if cmd and ("valkey-server" in cmd[0] or "redis-server" in cmd[0]):
        return "valkey"
    if "chatscale" in cmd:
        k = cmd.index("chatscale")
        if k + 1 < len(cmd):
            return cmd[k + 1]
    return proc.name()


async def server_processes(
    settings: Settings, state: dict[str, Any] | None
) -> dict[str, psutil.Process]:
    """The processes of *this* topology, never others on the machine: with ``run.json``
    (``state``) the ``chatscale run`` process and everything it started (Valkey, gateways,
    workers, presence — a restarted worker is found again at the next call); without it, only
    the gateways registered in this topology's Redis that run on this machine. Processes that
    exit while being looked at are skipped."""
    procs: dict[str, psutil.Process] = {}
    if state and state.get("pid"):
        try:
            root = psutil.Process(int(state["pid"]))
            members = [root, *root.children(recursive=True)]
        except psutil.Error:
            members = []  # run.json is stale: its `chatscale run` is gone
        for proc in members:
            with contextlib.suppress(psutil.Error):
                role = "run" if proc is members[0] else _role(proc)
                procs[f"{role}-{proc.pid}"] = proc
        return procs
    redis = connect(settings)
    try:
        registered = await redis.hgetall(Keys(settings.key_prefix).gateways())
    finally:
        await redis.aclose()
    for gw, info in registered.items():
        with contextlib.suppress(psutil.Error, KeyError, ValueError, TypeError):
            proc = psutil.Process(int(json.loads(info)["pid"]))
            if "chatscale" in proc.cmdline():  # a pid from another machine is someone else
                procs[gw.decode()] = proc
    return procs


def _listens_on(proc: psutil.Process, url: str) -> bool:
    port = urlsplit(url).port
    with contextlib.suppress(psutil.Error):
        return any(
            c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
            for c in proc.net_connections(kind="tcp")
        )
    return False


class CpuMeter:
    """CPU % of each process between ``start`` and ``stop``, tolerant of processes that exit
    (a worker killed and restarted mid-run): those are reported as ``"exited"``."""

    def __init__(self, procs: dict[str, psutil.Process]) -> None:
        self.procs: dict[str, psutil.Process] = {}
        for name, proc in procs.items():
            with contextlib.suppress(psutil.Error):
                proc.cpu_percent(None)
                self.procs[name] = proc

    def stop(self) -> dict[str, float | str]:
        out: dict[str, float | str] = {}
        for name, proc in self.procs.items():
            try:
                out[name] = proc.cpu_percent(None)
            except psutil.Error:
                out[name] = "exited"
        return out


async def _connect_members(
    settings: Settings, urls: list[str], members: int
) -> tuple[list[ChatClient], int]:
    spec = bench_community(members)
    await community.apply_to(spec, settings)
    users, _, channels, _ = spec.plan()
    now = time.time()
    clients = []
    for i, user in enumerate(users):
        token = tokens.mint(user.id, secret=settings.token_secret, ttl_s=3600, now=now)
        clients.append(await identify(urls[i % len(urls)], token))
    return clients, channels[0].id


async def chat(
    settings: Settings,
    urls: list[str],
    *,
    members: int,
    senders: int,
    rate: float,
    duration: float,
    state: dict[str, Any] | None = None,
    say=print,
) -> dict[str, Any]:  # noqa: ANN001
    clients, channel = await _connect_members(settings, urls, members)
    cpu = CpuMeter(await server_processes(settings, state))
    me = psutil.Process()
    me.cpu_percent(None)
    ledger = DeliveryLedger()
    latency = LatencyRecorder()
    everyone = list(range(members))
    interval = senders / rate if rate > 0 else None  # per sender
    stop_at = time.monotonic() + duration
    received = 0
    waits: list[float] = []  # retry_after of every RATE_LIMITED/UNAVAILABLE answer

    def on_wait(seconds: float) -> None:
        if not waits:
            say(
                f"  rate limited: waiting {seconds:.1f}s as the gateway asks (the figures include "
                "these waits; see docs/benchmarks.md for a topology with raised limits)"
            )
        waits.append(seconds)

    all_in = asyncio.Event()
    expected = 0  # set when sending stops

    async def receive(idx: int, client: ChatClient) -> None:
        nonlocal received
        while True:
            msg = await client.next_event("MESSAGE_CREATE", timeout=3600)
            now = time.time()
            # "<intended ns> <key>": MESSAGE_CREATE carries no nonce, the content says which
            stamp, key = msg["d"]["content"].split(" ", 1)
            sent_at = int(stamp) / 1e9
            ledger.record_receipt(idx, key, now)
            latency.record(now - sent_at)
            received += 1
            if expected and received >= expected:
                all_in.set()

    async def send(idx: int) -> None:
        client = clients[idx]
        n = 0
        offset = time.time() - time.monotonic()
        next_at = time.monotonic() + (interval or 0) * idx / senders  # stagger the senders
        while time.monotonic() < stop_at:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            # Latency counts from the intended send time, not the actual one: a sender held up
            # by a slow ack would otherwise hide the delay (coordinated omission, as in wrk2).
            intended = next_at + offset if interval else time.time()
            nonce = f"{idx}-{n}"
            ledger.record_send(
                nonce, channel_id=channel, sender=idx, sent_at=intended, recipients=everyone
            )
            await send_patiently(
                client,
                channel,
                f"{int(intended * 1e9)} {nonce}",
                nonce=nonce,
                deadline=time.monotonic() + 60,
                on_wait=on_wait,
            )
            n += 1
            next_at = next_at + interval if interval else time.monotonic()

    readers = [asyncio.create_task(receive(i, c)) for i, c in enumerate(clients)]
    started = time.monotonic()
    progress = asyncio.create_task(_progress(lambda: (ledger.sent_count, received), started, say))
    try:
        await asyncio.gather(*(send(i) for i in range(senders)))
    except BaseException:
        for task in [progress, *readers]:
            task.cancel()
        await asyncio.gather(progress, *readers, return_exceptions=True)
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
        raise
    sent_done = time.monotonic()
    # settle: wait until every expected delivery arrived, or 5 s
    expected = ledger.sent_count * members
    if received < expected:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_in.wait(), 5)
    elapsed = time.monotonic() - started
    progress.cancel()
    for t in readers:
        t.cancel()
    report = ledger.report(time.time() - 5.5 if received < expected else time.time())
    result = {
        "members": members,
        "senders": senders,
        "offered_rate": rate or "closed-loop",
        "messages": ledger.sent_count,
        "messages_per_s": round(ledger.sent_count / (sent_done - started), 1),
        "deliveries": received,
        "deliveries_per_s": round(received / elapsed, 1),
        "latency_ms": latency.summary(),
        "lost": report.lost,
        "duplicated": report.duplicated,
        "reordered": report.reordered,
        "cpu_percent": cpu.stop(),
        "generator_cpu_percent": me.cpu_percent(None),
        "rate_limited": {"answers": len(waits), "waited_s": round(sum(waits), 1)},
    }
    await asyncio.gather(*readers, progress, return_exceptions=True)
    for c in clients:
        await c.close()
    return result


async def _progress(counts, started: float, say) -> None:  # noqa: ANN001
    while True:
        await asyncio.sleep(1.0)
        sent, received = counts()
        say(f"  t={time.monotonic() - started:5.1f}s sent={sent} delivered={received}")


async def idle(
    settings: Settings,
    urls: list[str],
    *,
    connections: int,
    duration: float = 20.0,
    settle: float = 5.0,
    state: dict[str, Any] | None = None,
    say=print,
) -> dict[str, Any]:  # noqa: ANN001
    """K identified connections held on one gateway: its RSS growth per connection, then the
    CPU every server process spends over ``duration`` seconds while nobody sends (heartbeats,
    housekeeping, presence's snapshots: what a quiet crowd costs). ``settle`` seconds are left
    first for the connections' own after-effects (presence's online events, routes)."""
    procs = await server_processes(settings, state)
    gws = [p for n, p in sorted(procs.items()) if n.startswith(("gw", "gateway"))]
    # a topology whose gateways run inside the `run` process itself (in-process) is measured there
    gws = gws or [p for n, p in procs.items() if n.startswith("run-")]
    if not gws:
        raise LookupError("no gateway process of this topology on this machine to measure")
    gw = next((p for p in gws if _listens_on(p, urls[0])), gws[0])
    before = gw.memory_info().rss
    say(f"  connecting {connections:,} identified clients to {urls[0]}")
    clients, _ = await _connect_members(settings, urls[:1], connections)
    after = gw.memory_info().rss
    try:
        say(f"  {settle:g} s to settle, then {duration:g} s of idle CPU")
        await asyncio.sleep(settle)
        meter = CpuMeter(procs)
        await asyncio.sleep(duration)
        cpu = meter.stop()
    finally:
        for c in clients:
            await c.close()
    measured = {k: v for k, v in cpu.items() if isinstance(v, float)}
    return {
        "connections": connections,
        "gateway_rss_before_mib": round(before / 2**20, 1),
        "gateway_rss_after_mib": round(after / 2**20, 1),
        "kib_per_connection": round((after - before) / connections / 1024, 1),
        "idle_seconds": duration,
        "server_cpu_percent_of_a_core": round(sum(measured.values()), 2),
        "cpu_percent": {k: (round(v, 2) if isinstance(v, float) else v) for k, v in cpu.items()},
    }
