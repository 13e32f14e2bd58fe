"""The hot set (claim 9): the last 50 messages of a channel in Redis vs every read from storage.

One channel gets ``messages`` messages through the real pipeline (gateway → log → worker →
hot cache and SQLite history). Then ``readers`` members "open the channel" ``opens`` times
each, all at once: REQUEST_HISTORY for the newest page of 50, over their WebSocket, and the
client times each answer. Arm ``hot`` is today's topology (``CHATSCALE_HOT_SIZE=50``: the page
comes from the Redis sorted set); arm ``storage`` turns the hot cache off
(``CHATSCALE_HOT_SIZE=0``: workers cache nothing, and every page is a SQLite read on the
gateway). Measured: page latency p50/p99 as the client sees it, storage reads per open (the
gateway's ``chatscale_gateway_page_reads_total{source="history"}``, read from its /metrics), the
gateway's own time for the read (``chatscale_stage_seconds{stage="page_hot"|"page_history"}``:
the Redis ZRANGE or the SQLite SELECT alone, without the WebSocket and JSON around it, which
both arms share), and the servers' CPU per open.

What this miniature cannot show: SQLite here is a local file in the page cache, one
``SELECT ... LIMIT 50`` on the primary key, a few hundred microseconds; a real history store is a
network hop to a database cluster shared by every channel. The storage reads per open are what
carries over: with the hot cache, opening a busy channel costs the history store nothing.
"""

from __future__ import annotations

import asyncio
import time

from lab import data_util, harness
from lab.experiment import Arm, Experiment, Measurement, Metric, Outcome, fmt
from loadtest.latency import LatencyRecorder

PAGE = 50


async def measure(trial: harness.Trial) -> Measurement:
    p = trial.params
    readers, opens, messages = p["readers"], p["opens"], p["messages"]
    spec = harness.lab_community(readers + 1)
    async with trial.topology(gateways=1, workers=1, env=data_util.METRICS_ON) as topo:
        seeded = await harness.seed(topo.settings, spec)
        (channel,) = seeded.channel_ids
        clients = await harness.connect(topo.settings, topo.urls, seeded.user_ids)
        redis = harness.redis_for(topo)
        try:
            writer, listener, openers = clients[0], clients[1], clients[1:]
            gate = asyncio.Semaphore(32)

            async def send(i: int) -> str:
                async with gate:
                    return (await writer.send_message(channel, f"history {i}", timeout=30))["id"]

            sent = set(
                await harness.bounded(
                    asyncio.gather(*(send(i) for i in range(messages))),
                    60 + messages / 50,
                    f"sending {messages} messages",
                )
            )

            async def stored() -> None:  # sync history mode: delivered means stored and cached
                while sent:
                    sent.discard(
                        (await listener.next_event("MESSAGE_CREATE", timeout=60))["d"]["id"]
                    )

            await harness.bounded(stored(), 60 + messages / 50, "the messages' deliveries")
            gateway_metrics = await data_util.endpoints(redis, topo.settings, "gateway", count=1)
            before = await data_util.scrape(gateway_metrics)
            latency = LatencyRecorder()
            got: list[int] = []

            async def open_channel(c) -> None:  # noqa: ANN001
                for _ in range(opens):
                    t0 = time.perf_counter()
                    page = await c.history(channel, limit=PAGE, timeout=30)
                    latency.record(time.perf_counter() - t0)
                    got.append(len(page))

            cpu = harness.Cpu(topo).start()
            t0 = time.monotonic()
            await harness.bounded(
                asyncio.gather(*(open_channel(c) for c in openers)),
                60 + readers * opens / 20,
                "the channel opens",
            )
            wall = time.monotonic() - t0
            spent = cpu.stop()
            after = await data_util.scrape(gateway_metrics)
        finally:
            await redis.aclose()
            await harness.close_all(clients)
    total = readers * opens
    if min(got) < PAGE:
        raise RuntimeError(f"a page came back with {min(got)} messages, not {PAGE}")

    def delta(name: str, source: str) -> float:
        return data_util.sample(after, name, source=source) - data_util.sample(
            before, name, source=source
        )

    def stage(suffix: str) -> float:
        return sum(
            data_util.sample(after, f"chatscale_stage_seconds_{suffix}", stage=f"page_{src}")
            - data_util.sample(before, f"chatscale_stage_seconds_{suffix}", stage=f"page_{src}")
            for src in ("hot", "history")
        )

    reads = stage("count")
    return Measurement(
        {
            "read_us": stage("sum") / reads * 1e6 if reads else None,
            "page_p50_ms": latency.percentile_ms(50),
            "page_p99_ms": latency.percentile_ms(99),
            "storage_reads_per_open": delta("chatscale_gateway_page_reads_total", "history")
            / total,
            "storage_rows_per_open": delta("chatscale_gateway_page_rows_total", "history") / total,
            "opens_per_s": total / wall,
            "server_cpu_ms_per_open": sum(spent.values()) * 1000 / total,
        },
        notes=[
            f"{readers} readers × {opens} opens of the newest {PAGE} of {messages} messages",
        ],
    )


def conclude(o: Outcome) -> str:
    reads = o.verdict("storage_reads_per_open", "hot", "storage")
    fast = o.verdict("page_p50_ms", "hot", "storage")
    tail = o.verdict("page_p99_ms", "hot", "storage")
    hot_reads, cold_reads = (
        o.median("hot", "storage_reads_per_open"),
        o.median("storage", "storage_reads_per_open"),
    )
    if reads == "missing" or fast == "missing":
        return "Not every arm produced numbers, so nothing can be concluded from this run."
    if reads == "holds":
        first = (
            f"With the last {PAGE} messages in Redis, opening the channel cost the history store "
            f"{fmt(hot_reads)} reads per open, against {fmt(cold_reads)} without the hot cache: "
            "the busiest read of a chat app never reaches the database"
        )
    elif reads == "reversed":
        first = (
            f"Against the claim, the hot-cache arm read storage more ({fmt(hot_reads)} vs "
            f"{fmt(cold_reads)} reads per open): the hot set did not cover the newest page"
        )
    else:
        first = (
            f"Both arms read storage about as often ({fmt(hot_reads)} vs {fmt(cold_reads)} reads "
            "per open), so the hot cache did not take the channel opens off the history store"
        )
    p50 = o.compare("page_p50_ms", "hot", "storage")
    p99 = o.compare("page_p99_ms", "hot", "storage")
    local = (
        "this storage is a local SQLite file already in memory, not a database across the "
        "network; the saving that carries over is the database load, which a shared history "
        "cluster pays for every open."
    )
    if fast == "holds" and tail != "reversed":
        second = f". It was also faster for the reader: {p50}; {p99}."
    elif fast == "reversed" and tail != "holds":
        second = f". The reader did not gain from it here — {p50}; {p99} — because {local}"
    elif {fast, tail} == {"holds", "reversed"}:
        second = (
            f". Latency is mixed — {p50}; {p99} — so no latency win can be claimed at this size: "
            + local
        )
    else:
        second = f". Latency barely differs ({p50}; {p99}): {local}"
    inside = o.verdict("read_us", "hot", "storage")
    read = o.compare("read_us", "hot", "storage")
    if inside == "holds":
        third = f" Inside the gateway the read alone is quicker from Redis ({read})."
    elif inside == "reversed":
        third = (
            f" Inside the gateway the read alone was quicker from SQLite ({read}): an in-process "
            "library call on a cached file beats a network round trip to Redis."
        )
    elif inside == "tie":
        third = f" Inside the gateway the read alone costs about the same ({read})."
    else:
        third = ""
    return first + second + third


EXPERIMENT = Experiment(
    name="hot-cache",
    title="The last 50 messages in Redis vs every read from storage",
    claim="The last 50 messages of a channel are the hot set: keep them in memory (Redis).",
    claim_ids=(9,),
    hop="hot",
    knob="`CHATSCALE_HOT_SIZE` (messages per channel in the hot cache; 0 turns it off)",
    arms=(
        Arm("hot", "newest page from the Redis hot cache", {"CHATSCALE_HOT_SIZE": "50"}),
        Arm("storage", "no hot cache: every page from SQLite", {"CHATSCALE_HOT_SIZE": "0"}),
    ),
    metrics=(
        Metric("read_us", "gateway's read of the page (mean)", "µs"),
        Metric("page_p50_ms", "open-channel page p50", "ms"),
        Metric("page_p99_ms", "open-channel page p99", "ms"),
        Metric("storage_reads_per_open", "history-storage reads per open", "count"),
        Metric("storage_rows_per_open", "rows read from storage per open", "count"),
        Metric("opens_per_s", "channel opens served", "opens/s", better="higher"),
        Metric("server_cpu_ms_per_open", "server CPU per open", "ms"),
    ),
    sizes={
        "tiny": {"messages": 60, "readers": 3, "opens": 10},
        "quick": {"messages": 1000, "readers": 8, "opens": 150},
        "full": {"messages": 10000, "readers": 16, "opens": 300},
    },
    quick_seconds=13,
    measure=measure,
    conclude=conclude,
)
