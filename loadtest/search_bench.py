"""Figures for jump, search and the cold tier (docs/storage.md "Tiers", docs/benchmarks.md).

    python -m loadtest.search_bench search --messages 1000000   # seed, then query latency
    python -m loadtest.search_bench lag --rate 500 --seconds 20  # index lag under steady load
    python -m loadtest.search_bench tiers --messages 20000       # cold vs history pages, bytes
    python -m loadtest.search_bench tiers --messages 20000 --cold s3   # the cold tier on S3Proxy
    python -m loadtest.search_bench search --messages 100000 --engine opensearch

``search`` seeds a SQLite FTS5 index straight through ``SearchIndex.apply`` (the indexer's
commit) with realistic messages (Zipf-distributed words from a 5,000-word vocabulary, 6-14
words each, 100 channels) and times ``SearchIndex.search`` for a member who may read 20 of the
100 channels: p50/p99 over ``--queries`` one- and two-word searches.

``lag`` runs a real Valkey, a producer appending to the stored stream at ``--rate`` messages
per second (as workers do after the history write) and the ``Indexer`` loop in the same
process; the lag of each message is commit time minus its snowflake time (the indexer's share
of send-to-searchable; the gateway-to-history part is the message latency measured elsewhere).

``tiers`` writes one channel's messages across 20 buckets into SQLite, archives the older half
into a local directory (``--cold s3``: a bucket of a real S3Proxy started from Maven jars,
storage/s3proxy_node.py, over loopback HTTP), and times ``read_page`` pages (hot cache off, so
every page is a store read) that land in history against pages that land in the cold tier, and
reports the bytes per message of each tier.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from pathlib import Path

from chatscale import snowflake
from chatscale.config import Settings
from chatscale.keys import Keys
from chatscale.redisconn import connect
from chatscale.valkey import ValkeyServer
from chatscale.wire import Author, StoredEntry, message_payload
from storage import StoredMessage, open_store
from storage.cold import ColdArchive, LocalDirStore, open_object_store
from storage.hot import HotCache
from storage.paging import read_page
from storage.search_index import IndexDoc, SearchIndex
from storage.tiers import Archiver, TieredHistory
from workers.indexer import LAG, Indexer, feed

VOCAB = 5000
CHANNELS = 100


def _words(rng: random.Random) -> list[str]:
    return [f"w{int(rng.paretovariate(1.1)) % VOCAB}" for _ in range(rng.randint(6, 14))]


def _bytes(folder: Path, pattern: str) -> int:
    return sum(p.stat().st_size for p in folder.glob(pattern))


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def _payload(mid: int, channel: int, content: str) -> str:
    return message_payload(
        message_id=mid,
        channel_id=channel,
        guild_id=channel // 10,
        author=Author(id=str(mid % 500), username=f"user{mid % 500}"),
        content=content,
        timestamp_ms=snowflake.timestamp_ms(mid),
    )


async def bench_search(messages: int, queries: int, workdir: Path, engine: str = "sqlite") -> dict:
    node = None
    if engine == "opensearch":
        from storage.opensearch_node import OpenSearchNode, fetch_jars

        node = OpenSearchNode(home=fetch_jars(), workdir=workdir / "opensearch").start()
        index = await SearchIndex.open(node.search_url("bench"))
    else:
        index = await SearchIndex.open(f"sqlite:///{workdir}/search.db")
    rng = random.Random(7)
    ids = snowflake.SnowflakeGenerator(901)
    started = time.perf_counter()
    batch: list[IndexDoc] = []
    for i in range(messages):
        mid = ids.next()
        channel = 1000 + rng.randrange(CHANNELS)
        content = " ".join(_words(rng))
        batch.append(
            IndexDoc(
                mid, channel, channel // 10, mid % 500, content, _payload(mid, channel, content)
            )
        )
        if len(batch) == 5000:
            await index.apply("bench", f"{i}-0", batch)
            batch = []
    if batch:
        await index.apply("bench", f"{messages}-0", batch)
    seed_s = time.perf_counter() - started
    readable = set(range(1000, 1020))  # two guilds of ten channels
    lat: dict[str, list[float]] = {"one word": [], "two words": [], "author only": []}
    for q in range(queries):
        kind = list(lat)[q % 3]
        words = [f"w{rng.randint(2, 200)}" for _ in range(1 if kind == "one word" else 2)]
        t0 = time.perf_counter()
        if kind == "author only":
            await index.search(readable, author_id=rng.randrange(500), limit=25)
        else:
            await index.search(readable, text=" ".join(words), limit=25)
        lat[kind].append((time.perf_counter() - t0) * 1000)
    await index.close()
    if node is not None:
        stats = node.request("GET", "/bench/_stats/store")
        size = stats["_all"]["primaries"]["store"]["size_in_bytes"]
        node.stop()
    else:
        size = _bytes(workdir, "search.db*")
    return {
        "messages": messages,
        "engine": engine,
        "seed_s": round(seed_s, 1),
        "seed_msgs_per_s": round(messages / seed_s),
        "index_bytes_per_message": round(size / messages, 1),
        "latency_ms": {
            k: {"p50": round(pct(v, 0.5), 2), "p99": round(pct(v, 0.99), 2), "n": len(v)}
            for k, v in lat.items()
        },
    }


async def bench_lag(rate: int, seconds: float, workdir: Path) -> dict:
    valkey = ValkeyServer(workdir=workdir / "valkey").start()
    try:
        settings = Settings(redis_url=valkey.url, key_prefix="lag", search_batch=500)
        redis = connect(settings)
        index = await SearchIndex.open(f"sqlite:///{workdir}/lag.db")
        indexer = Indexer(settings, index=index)
        seen: list[float] = []
        original = LAG.observe
        LAG.observe = lambda v: (seen.append(v), original(v))  # type: ignore[method-assign]
        runner = asyncio.create_task(indexer.run())
        ids = snowflake.SnowflakeGenerator(902)
        rng = random.Random(3)
        keys = Keys("lag")
        tick = 0.01
        per_tick = rate * tick
        owed = 0.0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            owed += per_tick
            n, owed = int(owed), owed - int(owed)
            entries = []
            for _ in range(n):
                mid = ids.next()
                channel = 1000 + rng.randrange(CHANNELS)
                content = " ".join(_words(rng))
                entries.append(
                    StoredEntry(
                        id=mid,
                        channel_id=channel,
                        guild_id=channel // 10,
                        author_id=1,
                        payload=_payload(mid, channel, content),
                    )
                )
            await feed(redis, keys, entries, settings.stored_stream_maxlen)
            await asyncio.sleep(tick)
        indexer.stop()  # the loop ends within its 1 s block; then whatever is left
        await runner
        await indexer.drain()
        LAG.observe = original  # type: ignore[method-assign]
        await indexer.close()
        await index.close()
        await redis.aclose()
        return {
            "rate": rate,
            "seconds": seconds,
            "indexed": len(seen),
            "lag_ms": {
                "p50": round(pct(seen, 0.5) * 1000, 1),
                "p99": round(pct(seen, 0.99) * 1000, 1),
                "max": round(max(seen) * 1000, 1),
            },
        }
    finally:
        valkey.stop()


async def bench_tiers(messages: int, pages: int, workdir: Path, cold: str = "dir") -> dict:
    span = 3_600_000
    store = await open_store(f"sqlite:///{workdir}/tiers.db", bucket_span_ms=span)
    t0 = 1_760_000_000_000
    channel = snowflake.from_timestamp_ms(t0) | 5
    rng = random.Random(5)
    rows = []
    for i in range(messages):
        ms = t0 + int(i * (20 * span) / messages)
        mid = snowflake.from_timestamp_ms(ms) | (i % 4096)
        rows.append(StoredMessage(channel, mid, 1, _payload(mid, channel, " ".join(_words(rng)))))
    for i in range(0, messages, 2000):
        await store.insert_many(rows[i : i + 2000])
    payload_bytes = sum(len(r.payload.encode()) for r in rows)
    db_before = _bytes(workdir, "tiers.db*")
    s3 = None
    if cold == "s3":
        from storage.s3proxy_node import S3ProxyNode, fetch_jars

        s3 = S3ProxyNode(lib_dir=fetch_jars(), workdir=workdir / "s3proxy").start()
        s3.create_bucket("bench")
        archive = ColdArchive(open_object_store(s3.cold_url("bench", "cold")))
    else:
        archive = ColdArchive(LocalDirStore(workdir / "cold"))
    archiver = Archiver(
        store,
        archive,
        bucket_span_ms=span,
        archive_after_s=10 * 3600,
        wall_ms=lambda: t0 + 20 * span,
    )
    t_archive = time.perf_counter()
    report = await archiver.compact_once()
    archive_s = time.perf_counter() - t_archive
    cold_bytes = await archive.objects.total_bytes()
    valkey = ValkeyServer(workdir=workdir / "valkey").start()
    try:
        redis = connect(Settings(redis_url=valkey.url))
        hot = HotCache(redis, Keys("tiers"), size=0)  # off: every page reads a store
        tiered = TieredHistory(store, archive, bucket_span_ms=span)
        hot_on = HotCache(redis, Keys("tiers"), size=50)
        await hot_on.add_many([(channel, r.message_id, r.payload) for r in rows[-50:]])
        hot_mem = await redis.memory_usage(Keys("tiers").hot(channel))
        lat: dict[str, list[float]] = {"hot cache": [], "history": [], "cold": []}
        for _ in range(pages):
            for name, lo, hi in (
                ("history", messages // 2 + 100, messages - 100),
                ("cold", 100, messages // 2 - 100),
            ):
                anchor = rows[rng.randrange(lo, hi)].message_id
                t = time.perf_counter()
                page = await read_page(hot, tiered, channel, before=anchor, limit=50)
                lat[name].append((time.perf_counter() - t) * 1000)
                assert len(page) == 50
            t = time.perf_counter()
            await read_page(hot_on, tiered, channel, before=None, limit=50)
            lat["hot cache"].append((time.perf_counter() - t) * 1000)
        await redis.aclose()
    finally:
        valkey.stop()
        if s3 is not None:
            s3.stop()
    await store.close()
    return {
        "messages": messages,
        "cold": cold,
        "archived": report.messages,
        "archive_s": round(archive_s, 2),
        "payload_bytes_per_message": round(payload_bytes / messages, 1),
        "history_bytes_per_message": round(db_before / messages, 1),
        "cold_bytes_per_message": round(cold_bytes / report.messages, 1),
        "hot_bytes_per_message": round(hot_mem / 50, 1),
        "page_ms": {
            k: {"p50": round(pct(v, 0.5), 2), "p99": round(pct(v, 0.99), 2), "n": len(v)}
            for k, v in lat.items()
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.search_bench",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("what", choices=["search", "lag", "tiers"])
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=600)
    p.add_argument("--rate", type=int, default=500)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--pages", type=int, default=200)
    p.add_argument(
        "--cold", choices=["dir", "s3"], default="dir", help="tiers: the cold tier's object store"
    )
    p.add_argument(
        "--engine",
        choices=["sqlite", "opensearch"],
        default="sqlite",
        help="search: SQLite FTS5, or a real OpenSearch node from Maven jars",
    )
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.what == "search":
            result = asyncio.run(bench_search(args.messages, args.queries, work, args.engine))
        elif args.what == "lag":
            result = asyncio.run(bench_lag(args.rate, args.seconds, work))
        else:
            result = asyncio.run(bench_tiers(args.messages, args.pages, work, args.cold))
    print(result)


if __name__ == "__main__":
    main()
