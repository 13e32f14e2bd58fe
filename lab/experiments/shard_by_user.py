"""History sharded by user id vs partitioned by (channel, bucket) (claims 10, 11).

No gateway topology here: the claim is about where history rows live, so this experiment needs
storage only. ``shards`` SQLite files stand for ``shards`` database nodes, each with the
project's own ``messages`` table (``storage.sqlite.SCHEMA``: primary key (channel_id,
message_id), a ``bucket`` column of 10 days of snowflake time). ``messages`` messages of one busy
server channel, from ``authors`` authors over ``days`` days, are written to them by one rule:

- arm ``channel-bucket`` (what chatscale and Discord's Cassandra schema do): a row lives on the
  node chosen by a hash of (channel_id, bucket). The newest page is read from the node of the
  newest bucket, walking back to older buckets (maybe other nodes) only if it has too few.
- arm ``user``: a row lives on the node chosen by a hash of its author's id — the "shard the SQL
  database by user id" design. A channel's messages are on every node, so the newest page asks
  every node for its newest 50 of the channel (in parallel, one thread per node) and merges.

The user layout gets the same index as the other (channel_id, message_id) on every node, its
best case; the difference measured is the scatter-gather alone. Then "open the channel" —
read its newest 50 messages — ``loads`` times. Measured: nodes asked per page, rows read from
the nodes per page (each node returns up to 50; the merge keeps 50), page latency p50/p99 as
the caller sees it, and the time to write the rows.

On real nodes each extra node asked is a network round trip and one more chance of a slow
reply (the page waits for the slowest); here the "nodes" are files on one machine sharing its
two cores, so the latency gap is a floor. The other side of the trade-off is not measured
here: a user-sharded layout answers "this user's messages" from one node.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from chatscale import snowflake
from lab import harness
from lab.experiment import Arm, Experiment, Measurement, Metric, Outcome
from loadtest.latency import LatencyRecorder
from storage.sqlite import SCHEMA

PAGE = 50
SPAN_MS = 10 * 24 * 3600 * 1000  # the store's default bucket span (Settings.bucket_span_ms)
END_MS = int(datetime(2025, 6, 1, tzinfo=UTC).timestamp() * 1000)  # "now": fixed, reproducible
CHANNEL = snowflake.from_timestamp_ms(END_MS - 400 * 24 * 3600 * 1000)  # created a year before


def _node(*parts: int, shards: int) -> int:
    return zlib.crc32(":".join(map(str, parts)).encode()) % shards


class ShardedHistory:
    """History rows on ``shards`` SQLite files, placed by ``layout`` ("user" or
    "channel-bucket"); each file has the store's schema."""

    def __init__(self, folder: Path, shards: int, layout: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.layout = layout
        self.shards = shards
        self.dbs = []
        for i in range(shards):
            db = sqlite3.connect(
                folder / f"node-{i}.db", isolation_level=None, check_same_thread=False
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(SCHEMA)
            self.dbs.append(db)
        self.pool = ThreadPoolExecutor(max_workers=shards, thread_name_prefix="node")

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        for db in self.dbs:
            db.close()

    def node_of(self, channel_id: int, message_id: int, author_id: int) -> int:
        if self.layout == "user":
            return _node(author_id, shards=self.shards)
        return _node(channel_id, snowflake.bucket(message_id, SPAN_MS), shards=self.shards)

    def write(self, rows: list[tuple[int, int, int, str]]) -> None:
        """[(channel_id, message_id, author_id, payload)], one transaction per node."""
        per_node: list[list[tuple[int, int, int, int, str]]] = [[] for _ in self.dbs]
        for channel_id, message_id, author_id, payload in rows:
            per_node[self.node_of(channel_id, message_id, author_id)].append(
                (channel_id, snowflake.bucket(message_id, SPAN_MS), message_id, author_id, payload)
            )
        for db, node_rows in zip(self.dbs, per_node, strict=True):
            db.execute("BEGIN")
            db.executemany("INSERT OR IGNORE INTO messages VALUES (?, ?, ?, ?, ?)", node_rows)
            db.execute("COMMIT")

    async def _ask(self, node: int, sql: str, args: tuple[int, ...]) -> list[tuple[int, str]]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.pool, lambda: self.dbs[node].execute(sql, args).fetchall()
        )

    async def newest_page(
        self, channel_id: int, now_ms: int, limit: int = PAGE
    ) -> tuple[list[tuple[int, str]], int, int]:
        """The channel's newest ``limit`` messages: (page, nodes asked, rows read from nodes)."""
        if self.layout == "user":
            sql = (
                "SELECT message_id, payload FROM messages WHERE channel_id = ? "
                "ORDER BY message_id DESC LIMIT ?"
            )
            answers = await asyncio.gather(
                *(self._ask(n, sql, (channel_id, limit)) for n in range(self.shards))
            )
            rows = [r for a in answers for r in a]
            rows.sort(reverse=True)
            return rows[:limit], self.shards, len(rows)
        sql = (
            "SELECT message_id, payload FROM messages WHERE channel_id = ? AND bucket = ? "
            "ORDER BY message_id DESC LIMIT ?"
        )
        page: list[tuple[int, str]] = []
        asked: set[int] = set()
        read = 0
        b = snowflake.bucket(snowflake.from_timestamp_ms(now_ms), SPAN_MS)
        first = snowflake.bucket(channel_id, SPAN_MS)
        while len(page) < limit and b >= first:
            node = _node(channel_id, b, shards=self.shards)
            got = await self._ask(node, sql, (channel_id, b, limit - len(page)))
            asked.add(node)
            read += len(got)
            page += got
            b -= 1
        return page, len(asked), read


def _messages(p: dict) -> list[tuple[int, int, int, str]]:
    rng = random.Random(11)
    start = END_MS - int(p["days"] * 24 * 3600 * 1000)
    authors = [snowflake.from_timestamp_ms(start - 10**9) + i for i in range(p["authors"])]
    times = sorted(rng.randrange(start, END_MS) for _ in range(p["messages"]))
    rows = []
    for i, t in enumerate(times):
        author = rng.choice(authors)
        message_id = snowflake.from_timestamp_ms(t) | (i % (snowflake.MAX_SEQ + 1))
        payload = f'{{"id":"{message_id}","author":"{author}","content":"message {i} {"x" * 60}"}}'
        rows.append((CHANNEL, message_id, author, payload))
    return rows


async def measure(trial: harness.Trial) -> Measurement:
    p = trial.params
    rows = _messages(p)
    history = ShardedHistory(trial.workdir / "nodes", p["shards"], p["layout"])
    try:
        t0 = time.monotonic()
        await asyncio.to_thread(history.write, rows)
        write_s = time.monotonic() - t0
        expected = [m for _, m, _, _ in rows[-PAGE:]][::-1]
        latency = LatencyRecorder()
        nodes = read = 0
        for _ in range(p["loads"]):
            t0 = time.perf_counter()
            page, asked, got = await history.newest_page(CHANNEL, END_MS)
            latency.record(time.perf_counter() - t0)
            if [m for m, _ in page] != expected:
                raise RuntimeError(f"{p['layout']}: the newest page is not the newest {PAGE}")
            nodes += asked
            read += got
    finally:
        await asyncio.to_thread(history.close)
    loads = p["loads"]
    return Measurement(
        {
            "nodes_per_page": nodes / loads,
            "rows_read_per_page": read / loads,
            "page_p50_ms": latency.percentile_ms(50),
            "page_p99_ms": latency.percentile_ms(99),
            "write_s": write_s,
        },
        notes=[
            f"{p['messages']:,} messages of one channel by {p['authors']:,} authors over "
            f"{p['days']} days on {p['shards']} SQLite files standing for nodes; "
            f"{loads:,} loads of the newest {PAGE}",
        ],
    )


def conclude(o: Outcome) -> str:
    nodes = o.verdict("nodes_per_page", "channel-bucket", "user")
    p50 = o.verdict("page_p50_ms", "channel-bucket", "user")
    if nodes == "missing":
        return "Not every arm produced numbers, so nothing can be concluded from this run."
    asked = o.compare("nodes_per_page", "channel-bucket", "user")
    rows = o.compare("rows_read_per_page", "channel-bucket", "user")
    if nodes == "holds":
        first = (
            "Sharded by user, a channel's history is on every node, so opening the channel is a "
            f"scatter-gather: {asked}; {rows}, of which the merge keeps {PAGE}"
        )
    elif nodes == "reversed":
        first = f"Against the claim, the (channel, bucket) layout asked more nodes ({asked})"
    else:
        first = (
            f"Both layouts asked about as many nodes ({asked}) — with this few nodes the "
            "scatter-gather is not yet visible"
        )
    lat = o.compare("page_p50_ms", "channel-bucket", "user")
    tail = o.compare("page_p99_ms", "channel-bucket", "user")
    if p50 == "holds":
        second = (
            f". The page is slower to load too ({lat}; {tail}), on files of one machine; "
            "across a network every extra node is a round trip and one more chance of a slow "
            "reply. As the guide says, sharding message history by user id makes server and "
            "channel history impractical; partitioning by (channel, time bucket) keeps a page "
            "on one node."
        )
    elif p50 == "reversed":
        second = (
            f". Yet the page was not slower here ({lat}; {tail}): the nodes are files on one "
            "machine, queried in parallel, so the extra reads cost little time; what does carry "
            "over is the load — every page costs every node a query."
        )
    else:
        second = (
            f". Latency is about the same here ({lat}; {tail}): the nodes are files on one "
            "machine, queried in parallel; what carries over to real nodes is the load — every "
            "page costs every node a query, and waits for the slowest."
        )
    return first + second


EXPERIMENT = Experiment(
    name="shard-by-user",
    title="History sharded by user id vs partitioned by (channel, bucket)",
    claim="Sharding a SQL database by user id makes server/channel history retrieval "
    "impractical; older history goes to a wide-column store partitioned for the channel.",
    claim_ids=(11, 10),
    hop="history",
    knob="none in the running system (history is always partitioned by channel and bucket: "
    "`CHATSCALE_BUCKET_SPAN_MS`); the user-sharded layout exists only in this experiment",
    arms=(
        Arm(
            "channel-bucket",
            "rows placed by hash(channel, 10-day bucket): a page reads one node",
            params={"layout": "channel-bucket"},
        ),
        Arm(
            "user",
            "rows placed by hash(author id): a page asks every node and merges",
            params={"layout": "user"},
        ),
    ),
    metrics=(
        Metric("nodes_per_page", "nodes asked per page", "count"),
        Metric("rows_read_per_page", "rows read from nodes per page", "count"),
        Metric("page_p50_ms", "newest-page p50", "ms"),
        Metric("page_p99_ms", "newest-page p99", "ms"),
        Metric("write_s", "time to write the history", "s"),
    ),
    sizes={
        "tiny": {"messages": 5000, "authors": 500, "days": 30, "shards": 4, "loads": 200},
        "quick": {"messages": 200_000, "authors": 5000, "days": 30, "shards": 8, "loads": 2000},
        "full": {"messages": 1_000_000, "authors": 20_000, "days": 60, "shards": 16, "loads": 5000},
    },
    quick_seconds=9,
    measure=measure,
    conclude=conclude,
)
