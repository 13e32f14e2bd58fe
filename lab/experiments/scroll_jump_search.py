"""Reaching a message about a month back (claim 12): scroll, jump, or search.

One channel of history in a real SQLite history store, messages evenly spread over
``days`` days ending now; the target is the message ~``back_days`` days back, with one rare
word in it. Arm ``scroll``: REQUEST_HISTORY ``before`` pages of 50 from the newest until a page
holds the target (what a client without jump or search must do). Arm ``jump``: one ``around``
page at the target's id (a message link; a date works the same, a snowflake encodes time).
Arm ``search``: the SEARCH index (SQLite FTS5, ``storage/search_index.py``, kept apart from
history and fed before the run) is queried for the word, then one ``around`` page at the hit
(clicking a result shows it in context). Pages go through ``storage.paging.read_page``, the
gateway's own read path; rows read are counted by its read hook (the index's results count as
rows too). The hot cache is off: it holds only the newest 50 messages, irrelevant a month back.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from chatscale import snowflake
from chatscale.config import Settings
from chatscale.keys import Keys
from lab import harness
from lab.experiment import Arm, Experiment, Measurement, Metric, Outcome, fmt
from loadtest.search_bench import _payload, _words
from storage import StoredMessage, open_store
from storage.hot import HotCache
from storage.paging import read_page
from storage.search_index import IndexDoc, SearchIndex

DAY_MS = 86_400_000
END_MS = 1_760_000_000_000  # "now" of the seeded channel (fixed: runs are comparable)
PAGE = 50
NEEDLE = "xylophonequartz"


def seed_rows(
    messages: int, days: float, seed: int, *, needle_back_days: float | None = None
) -> tuple[int, list[StoredMessage], list[str]]:
    """One channel's history, oldest first, evenly over ``days`` days up to END_MS, and each
    message's text; the one nearest ``needle_back_days`` back says NEEDLE."""
    rng = random.Random(seed)
    start = END_MS - int(days * DAY_MS)
    channel = snowflake.from_timestamp_ms(start - DAY_MS) | 5
    ids = [
        snowflake.from_timestamp_ms(start + int(i * days * DAY_MS / messages)) | (i % 4096)
        for i in range(messages)
    ]
    texts = [" ".join(_words(rng)) for _ in ids]
    if needle_back_days is not None:
        want = END_MS - int(needle_back_days * DAY_MS)
        t = min(range(messages), key=lambda i: abs(snowflake.timestamp_ms(ids[i]) - want))
        texts[t] = f"meet at the {NEEDLE} tonight"
    rows = [
        StoredMessage(channel, mid, 1 + i % 50, _payload(mid, channel, text))
        for i, (mid, text) in enumerate(zip(ids, texts, strict=True))
    ]
    return channel, rows, texts


async def fill_store(url: str, rows: list[StoredMessage], *, bucket_span_ms: int):  # noqa: ANN201
    store = await open_store(url, bucket_span_ms=bucket_span_ms)
    for i in range(0, len(rows), 2000):
        await store.insert_many(rows[i : i + 2000])
    return store


async def measure(trial: harness.Trial) -> Measurement:
    p = trial.params
    channel, rows, texts = seed_rows(
        p["messages"], p["days"], seed=31 + trial.round, needle_back_days=p["back_days"]
    )
    target = rows[texts.index(f"meet at the {NEEDLE} tonight")]
    workdir = Path(trial.workdir)
    store = await fill_store(
        f"sqlite:///{workdir}/history-{trial.arm.name}-{trial.round}.db",
        rows,
        bucket_span_ms=Settings().bucket_span_ms,
    )
    hot = HotCache(None, Keys("lab"), size=0)  # type: ignore[arg-type]  # off: never touched
    read = {"rows": 0, "trips": 0}

    def on_read(_tier: str, n: int, _s: float) -> None:
        read["rows"] += n

    index = None
    try:
        if trial.arm.name == "search":
            index = await SearchIndex.open(f"sqlite:///{workdir}/search-{trial.round}.db")
            docs = [
                IndexDoc(r.message_id, channel, channel // 10, r.author_id, text, r.payload)
                for r, text in zip(rows, texts, strict=True)
            ]
            for i in range(0, len(docs), 5000):  # built before the clock starts
                await index.apply("lab", f"{i}-0", docs[i : i + 5000])
        started = time.perf_counter()
        if trial.arm.name == "scroll":
            cursor = None
            while True:
                page = await read_page(
                    hot, store, channel, before=cursor, limit=PAGE, on_read=on_read
                )
                read["trips"] += 1
                if not page or any(mid == target.message_id for mid, _ in page):
                    break
                cursor = page[-1][0]
        elif trial.arm.name == "jump":
            page = await read_page(
                hot, store, channel, around=target.message_id, limit=PAGE, on_read=on_read
            )
            read["trips"] += 1
        else:
            assert index is not None
            hits = await index.search({channel}, text=NEEDLE, limit=25)
            read["rows"] += len(hits)
            read["trips"] += 1
            if hits:
                page = await read_page(
                    hot, store, channel, around=hits[0][0], limit=PAGE, on_read=on_read
                )
                read["trips"] += 1
        took = (time.perf_counter() - started) * 1000
        if not any(mid == target.message_id for mid, _ in page):
            raise RuntimeError(f"arm {trial.arm.name} did not reach the target (a bug)")
    finally:
        await store.close()
        if index is not None:
            await index.close()
    return Measurement(
        {"rows_read": float(read["rows"]), "round_trips": float(read["trips"]), "latency_ms": took},
        notes=[
            f"{p['messages']:,} messages over {p['days']} days in one channel (SQLite history), "
            f"target {p['back_days']} days back, pages of {PAGE}"
        ],
    )


def conclude(o: Outcome) -> str:
    if any(o.median(a, "rows_read") is None for a in ("scroll", "jump", "search")):
        return "Not every arm produced numbers, so nothing can be concluded from this run."
    rows = o.verdict("rows_read", "jump", "scroll")
    head = (
        f"Scrolling read {fmt(o.median('scroll', 'rows_read'))} rows in "
        f"{fmt(o.median('scroll', 'round_trips'))} pages to reach a message a month back; "
        f"a jump read {fmt(o.median('jump', 'rows_read'))} in one page and a search "
        f"{fmt(o.median('search', 'rows_read'))} in two round trips (query, then the page around "
        "the hit)"
    )
    if rows != "holds":
        head += " — against the claim, jumping did not read clearly fewer rows than scrolling"
    lat = o.compare("latency_ms", "jump", "scroll")
    return (
        head
        + f". Latency: jump vs scroll {lat}; search vs scroll {o.compare('latency_ms', 'search', 'scroll')}. "
        "Scrolling costs grow with how far back the target is; jump and search do not, which is "
        "why history is read by jumping and searching and the index lives apart from storage."
    )


EXPERIMENT = Experiment(
    name="scroll-jump-search",
    title="Reaching a message a month back: scroll vs jump vs search",
    claim="Users search and jump in history rather than read it linearly: indexing is separate "
    "from storage.",
    claim_ids=(12,),
    hop="history",
    knob="REQUEST_HISTORY `before` / `around` (docs/protocol.md) and SEARCH (`CHATSCALE_SEARCH_URL`)",
    arms=(
        Arm("scroll", "before-pages of 50 from the newest until the target is on one"),
        Arm("jump", "one around-page at the target's id (a message link)"),
        Arm("search", "an FTS5 query for a word in it, then the around-page at the hit"),
    ),
    metrics=(
        Metric("rows_read", "rows read from history (and the index)", "rows"),
        Metric("round_trips", "requests the client makes", "count"),
        Metric("latency_ms", "time until the target is on screen", "ms"),
    ),
    sizes={
        "tiny": {"messages": 2_000, "days": 40, "back_days": 30},
        "quick": {"messages": 20_000, "days": 40, "back_days": 30},
        "full": {"messages": 200_000, "days": 40, "back_days": 30},
    },
    quick_seconds=20,
    measure=measure,
    conclude=conclude,
)
