"""Fault run on a real 3-node Cassandra ring (RF=3): chat traffic and metadata changes keep
running while one node, then a second, is stopped; then both come back. Exact accounting.

``python -m loadtest.cassandra_faults [--phase-s 8] [--runs 3]``

Everything is real and on this machine: a 3-node Cassandra 5.0 ring on 127.0.0.1-3
(``storage.cassandra_node.CassandraCluster``), a Valkey, two gateways and a worker in this
process, the demo community. alice (gateway 0) sends to #general as fast as her ACKs come back;
bob (gateway 1) counts what he receives live; a moderator changes #system-design's slowmode
every 200 ms (a metadata write at QUORUM). Phases of ``--phase-s`` seconds: all up, node 3
stopped, nodes 2 and 3 stopped; then both are restarted, the worker drains, and every ACKed
message id is looked up in Cassandra (page by page, at ONE, all three nodes up).

Per phase: messages ACKed / refused (an error instead of an ACK) / delivered live, metadata
changes done / refused (with the first refusal's text). At the end: ACKed, stored, lost
(ACKed but not stored), duplicates. Printed as one JSON object per run and a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from chatscale import tokens
from chatscale.client import ChatClient
from chatscale.config import Settings
from chatscale.keys import Keys
from chatscale.redisconn import connect
from chatscale.valkey import ValkeyServer
from gateway.server import Gateway
from guilds import community
from guilds.controlplane import ControlPlane
from storage import StorageUnavailable, open_store
from storage.cassandra_node import CassandraCluster, fetch_jars, missing_requirements
from workers.worker import Worker

PHASES = ("all up", "1 of 3 down", "2 of 3 down")


async def one_run(
    cluster: CassandraCluster, valkey: ValkeyServer, phase_s: float, meta_from: int = 0
) -> dict:
    settings = Settings(
        redis_url=valkey.url,
        storage_url=cluster.url(f"faults_{uuid.uuid4().hex[:8]}", rf=3, timeout=2),
        key_prefix=f"f{uuid.uuid4().hex[:8]}",
        token_secret="fault-run",
        worker_block_ms=50,
        user_messages_per_window=1_000_000,
        events_per_window=1_000_000,
    )
    store = await open_store(settings.storage_url, bucket_span_ms=settings.bucket_span_ms)
    redis = connect(settings)
    spec = community.load_file(community.SEEDS / "demo.toml")
    await community.apply(spec, store, redis, Keys(settings.key_prefix))
    await redis.aclose()
    users, _guilds, channels, _members = spec.plan()
    uid = {u.username: u.id for u in users}
    cid = {c.name: c.id for c in channels}
    gateways = [Gateway(settings, store=store, gateway_id=f"gw-{i}") for i in range(2)]
    for gw in gateways:
        await gw.start()
    worker = Worker(settings, store=store, consumer="w-faults")
    worker.pipeline.breaker_s = 0.2
    plane = ControlPlane(settings, store=store)

    def token(name: str) -> str:
        return tokens.mint(uid[name], secret=settings.token_secret, ttl_s=3600, now=time.time())

    clients = {
        "alice": await ChatClient.identify(gateways[0].url, token("alice")),
        "bob": await ChatClient.identify(gateways[1].url, token("bob")),
    }

    async def reconnect(name: str, gateway: int, p: int) -> None:
        """A dropped client IDENTIFYs again, as a real one would (every 0.5 s until it can)."""
        await asyncio.sleep(0.5)
        try:
            clients[name] = await ChatClient.identify(gateways[gateway].url, token(name))
            stats[p]["reconnected"] = stats[p].get("reconnected", 0) + 1
        except Exception as exc:  # noqa: BLE001 - e.g. READY needs a metadata read
            stats[p]["reconnect_refused"] = stats[p].get("reconnect_refused", 0) + 1
            stats[p].setdefault("reconnect_error", f"{type(exc).__name__}: {exc}")

    general = cid["general"]
    phase = {"i": 0}
    stats: list[dict[str, Any]] = [
        {
            "phase": p,
            "acked": 0,
            "refused": 0,
            "live": 0,
            "late": 0,
            "meta_ok": 0,
            "meta_refused": 0,
        }
        for p in PHASES
    ]
    acked: list[int] = []
    stop = asyncio.Event()

    async def send() -> None:
        n = 0
        while not stop.is_set():
            p = phase["i"]
            try:
                if clients["alice"].closed.is_set():
                    await reconnect("alice", 0, p)
                    continue
                ack = await clients["alice"].send_message(general, f"{p}:{n}", timeout=10)
                acked.append(int(ack["id"]))
                stats[p]["acked"] += 1
            except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001 - refused
                # (an error event, no ACK, or the ACK's future cancelled as the gateway
                # closed the connection: this task itself is never cancelled)
                stats[p]["refused"] += 1
                stats[p].setdefault("send_error", f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(0.05)  # (a closed connection fails at once: yield)
            n += 1

    async def discard() -> None:  # alice's copies of her own messages
        while True:
            client = clients["alice"]
            try:
                await asyncio.wait_for(client.events.get(), 1.0)
            except TimeoutError:
                pass

    async def receive() -> None:
        while True:
            try:
                ev = await clients["bob"].next_event("MESSAGE_CREATE", timeout=1.0)
            except (TimeoutError, ConnectionError):
                if clients["bob"].closed.is_set():
                    await reconnect("bob", 1, phase["i"])
                continue
            p = int(ev["d"]["content"].split(":")[0])
            stats[p]["late" if stop.is_set() else "live"] += 1

    async def moderate() -> None:
        k = 0
        while not stop.is_set():
            p = phase["i"]
            if p < meta_from:
                await asyncio.sleep(0.05)
                continue
            try:
                await plane.set_slowmode(cid["system-design"], k % 2)
                stats[p]["meta_ok"] += 1
            except StorageUnavailable as exc:
                stats[p]["meta_refused"] += 1
                stats[p].setdefault("refusal", str(exc))
            k += 1
            await asyncio.sleep(0.2)

    tasks = [asyncio.create_task(c()) for c in (send, receive, moderate, worker.run, discard)]
    faults = [None, lambda: cluster.stop_node(2), lambda: cluster.stop_node(1)]
    t_fault: list[float] = []
    for i, fault in enumerate(faults):
        phase["i"] = i  # a phase starts when its node is told to stop
        if fault is not None:
            t0 = time.monotonic()
            await asyncio.to_thread(fault)  # traffic keeps running meanwhile
            t_fault.append(round(time.monotonic() - t0, 1))
        await asyncio.sleep(phase_s)
        stats[i]["backlog_at_end"] = worker.history_backlog
    stop.set()
    await asyncio.gather(*tasks[:1], *tasks[2:3])
    t0 = time.monotonic()
    # Launched from the main thread (not a thread pool's): the JVMs' parent-death signal
    # follows the thread that started them. Blocking the loop meanwhile is fine: no traffic.
    cluster.restart(1, 2)
    recovered_s = time.monotonic() - t0

    async def stored_ids() -> list[int]:
        out: list[int] = []
        after = 0
        while page := await store.page_after(general, after=after, limit=500):
            out += [m.message_id for m in page]
            after = page[-1].message_id
        return out

    # The worker keeps running (its retries, then the entries it had not read yet); every
    # ACKed message must reach the store within 120 s of the ring being whole again.
    acked_set = set(acked)
    for _ in range(240):
        stored = await stored_ids()
        if acked_set <= set(stored):
            break
        await asyncio.sleep(0.5)
    caught_up_s = time.monotonic() - t0 - recovered_s
    worker.stop()
    await tasks[3]
    tasks[1].cancel()
    tasks[4].cancel()
    stored_set = set(stored)
    result = {
        "phases": stats,
        "fault_s": t_fault,
        "restart_both_s": round(recovered_s, 1),
        "caught_up_s": round(caught_up_s, 1),
        "acked": len(acked),
        "stored": len(acked_set & stored_set),
        "lost": len(acked_set - stored_set),
        "duplicates": len(stored) - len(stored_set),
        # sent, no ACK seen (the connection closed first), yet stored: the client cannot tell
        "stored_without_ack": len(stored_set - acked_set),
    }
    for c in clients.values():
        await c.close()
    for gw in gateways:
        await gw.stop()
    await plane.close()
    await worker.close()
    await store.close()
    return result


def _table(results: list[dict]) -> str:
    def med(values: list[float]) -> str:
        m = statistics.median(values)
        return f"{m:g} ({min(values):g}-{max(values):g})" if len(values) > 1 else f"{m:g}"

    lines = [
        "| phase | messages ACKed | refused | delivered live | delivered after recovery "
        "| metadata changes ok | refused |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, name in enumerate(PHASES):
        row = [
            med([r["phases"][i][k] for r in results])
            for k in ("acked", "refused", "live", "late", "meta_ok", "meta_refused")
        ]
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    lines.append("")
    lines.append(
        "after both nodes are back: ACKed "
        + med([r["acked"] for r in results])
        + ", stored "
        + med([r["stored"] for r in results])
        + ", lost "
        + med([r["lost"] for r in results])
        + ", duplicates "
        + med([r["duplicates"] for r in results])
        + ", stored without an ACK "
        + med([r["stored_without_ack"] for r in results])
    )
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> int:
    lib = fetch_jars(progress=lambda line: print(line, file=sys.stderr))
    work = Path(tempfile.mkdtemp(prefix="cassandra-faults-"))
    valkey = ValkeyServer(workdir=work / "valkey").start()
    results = []
    try:
        for run in range(args.runs):
            cluster = CassandraCluster(lib_dir=lib, workdir=work / f"ring{run}")
            cluster.start(300.0)  # from the main thread, see one_run
            try:
                result = await one_run(cluster, valkey, args.phase_s, args.meta_from_phase)
            finally:
                cluster.stop()
            print(json.dumps(result), flush=True)
            results.append(result)
    finally:
        valkey.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(_table(results))
    return 0 if all(r["lost"] == 0 for r in results) else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.cassandra_faults", description=__doc__)
    p.add_argument("--phase-s", type=float, default=8.0, help="seconds per phase (default 8)")
    p.add_argument("--runs", type=int, default=3, help="runs, each on a fresh ring (default 3)")
    p.add_argument(
        "--meta-from-phase",
        type=int,
        default=0,
        choices=(0, 1, 2),
        help="the moderator starts at this phase (0: all along; 2: only once two nodes are "
        "down, so no change invalidates the worker's membership view before the outage)",
    )
    args = p.parse_args(argv)
    problem = missing_requirements()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
