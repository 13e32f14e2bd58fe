"""What ``appendfsync always`` costs against ``everysec``: ``python -m loadtest.fsync_bench``.

Each run starts a fresh embedded Valkey (AOF on, the given policy) in a temporary directory on
the disk under test and writes message-sized stream entries (XADD of a ~300-byte payload, what
a gateway does per message) two ways:

- ``serial``: one client, one XADD at a time — the latency one sender sees (under ``always``
  each reply waits for its own fsync);
- ``concurrent``: ``--clients`` clients at once — throughput, where ``always`` shares one fsync
  among every write of an event-loop iteration (group commit).

The two policies are alternated run by run (always, everysec, always, ...) so drift in the
machine's load hits both; the median and the range of ``--runs`` runs are printed, and
``--json`` writes the raw samples.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from chatscale.valkey import ValkeyServer

PAYLOAD = b"x" * 300
POLICIES = ("always", "everysec")


async def _serial(url: str, n: int) -> dict[str, float]:
    client = aioredis.Redis.from_url(url)
    try:
        samples = []
        for _ in range(n):
            t = time.perf_counter()
            await client.xadd("bench:serial", {"e": PAYLOAD})
            samples.append(time.perf_counter() - t)
    finally:
        await client.aclose()
    samples.sort()
    return {
        "p50_ms": samples[len(samples) // 2] * 1000,
        "p99_ms": samples[int(len(samples) * 0.99)] * 1000,
    }


async def _concurrent(url: str, n: int, clients: int) -> float:
    conns = [aioredis.Redis.from_url(url) for _ in range(clients)]
    try:

        async def one(c: aioredis.Redis) -> None:
            for _ in range(n // clients):
                await c.xadd("bench:concurrent", {"e": PAYLOAD})

        await asyncio.gather(*(c.ping() for c in conns))  # connect before the clock starts
        t = time.perf_counter()
        await asyncio.gather(*(one(c) for c in conns))
        return (n // clients * clients) / (time.perf_counter() - t)
    finally:
        for c in conns:
            await c.aclose()


async def one_run(policy: str, *, n: int, clients: int, workdir: Path) -> dict[str, float]:
    with ValkeyServer(workdir=workdir, appendfsync=policy) as server:  # type: ignore[arg-type]
        serial = await _serial(server.url, n)
        rate = await _concurrent(server.url, n * 2, clients)
    return {**serial, "concurrent_per_s": rate}


def _summary(values: list[float]) -> str:
    return f"{statistics.median(values):9.2f}  ({min(values):.2f} .. {max(values):.2f})"


async def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3, help="runs per policy (alternated)")
    p.add_argument("--writes", type=int, default=2000, help="serial XADDs per run")
    p.add_argument("--clients", type=int, default=32, help="clients of the concurrent part")
    p.add_argument("--dir", help="where the AOF goes (default: a temporary directory)")
    p.add_argument("--json", help="write the raw samples here")
    args = p.parse_args(argv)
    if args.runs < 1 or args.writes < 100 or args.clients < 1:
        print("need --runs >= 1, --writes >= 100, --clients >= 1", file=sys.stderr)
        return 2
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="fsync-bench-"))
    samples: dict[str, list[dict[str, float]]] = {p: [] for p in POLICIES}
    for i in range(args.runs):
        for policy in POLICIES:
            result = await one_run(
                policy,
                n=args.writes,
                clients=args.clients,
                workdir=base / f"{policy}-{i}",
            )
            samples[policy].append(result)
            print(
                f"run {i + 1} {policy:9} {json.dumps({k: round(v, 3) for k, v in result.items()})}"
            )
    print(
        f"\nmedian (min .. max) of {args.runs} runs, {args.writes} serial XADDs each, disk: {base}"
    )
    for key, label in (
        ("p50_ms", "serial p50 ms"),
        ("p99_ms", "serial p99 ms"),
        ("concurrent_per_s", f"XADD/s, {args.clients} clients"),
    ):
        for policy in POLICIES:
            print(f"  {label:24} {policy:9} {_summary([s[key] for s in samples[policy]])}")
    out: dict[str, Any] = {"args": vars(args), "samples": samples}
    if args.json:
        await asyncio.to_thread(Path(args.json).write_text, json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
