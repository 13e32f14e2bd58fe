"""History store vs cold tier (the guide's data strategy): storage bytes per message and the
latency of a page of old history.

One channel of history (``scroll_jump_search.seed_rows``: evenly over ``days`` days) in a real
SQLite history store. Arm ``history``: no cold tier (``COLD_URL`` empty), every message stays
in the store; bytes are the store's file(s) per message. Arm ``cold``: the real archiver
(``storage.tiers.Archiver``) moves every bucket older than ``archive_after_days`` into a local
directory cold store (``storage.cold``: one zlib-compressed object per (channel, bucket)); bytes
are the objects per archived message. Then both arms read the same ``before`` pages of 50 at
random anchors in the oldest part of the channel (the part that is cold in arm ``cold``)
through ``storage.paging.read_page``, the gateway's path (arm ``cold`` through
``storage.tiers.TieredHistory``). The hot cache is off (it only holds the newest 50).
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
from lab.experiments.scroll_jump_search import DAY_MS, END_MS, fill_store, seed_rows
from storage.cold import ColdArchive, LocalDirStore
from storage.hot import HotCache
from storage.paging import read_page
from storage.tiers import Archiver, TieredHistory

PAGE = 50


def _bytes(folder: Path, pattern: str) -> int:
    return sum(p.stat().st_size for p in folder.glob(pattern) if p.is_file())


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def measure(trial: harness.Trial) -> Measurement:
    p = trial.params
    span = Settings().bucket_span_ms
    channel, rows, _texts = seed_rows(p["messages"], p["days"], seed=41 + trial.round)
    workdir = Path(trial.workdir) / f"{trial.arm.name}-{trial.round}"
    workdir.mkdir(parents=True, exist_ok=True)
    store = await fill_store(f"sqlite:///{workdir}/history.db", rows, bucket_span_ms=span)
    history_bytes = _bytes(workdir, "history.db*")
    cutoff_ms = END_MS - int(p["archive_after_days"] * DAY_MS)
    try:
        if trial.arm.name == "cold":
            archive = ColdArchive(LocalDirStore(workdir / "cold"))
            archiver = Archiver(
                store,
                archive,
                bucket_span_ms=span,
                archive_after_s=p["archive_after_days"] * 86_400,
                wall_ms=lambda: END_MS,
            )
            report = await archiver.compact_once()
            if report.messages == 0:
                raise RuntimeError("nothing was archived: the channel is too young (a bug)")
            stored = await archive.objects.total_bytes() / report.messages
            reader = TieredHistory(store, archive, bucket_span_ms=span)
            archived = report.messages
        else:
            stored = history_bytes / len(rows)
            reader = store
            archived = 0
        # anchors a whole bucket older than the archive age: cold in arm ``cold``
        old = [
            r.message_id for r in rows if snowflake.timestamp_ms(r.message_id) < cutoff_ms - span
        ]
        hot = HotCache(None, Keys("lab"), size=0)  # type: ignore[arg-type]  # off: never touched
        rng = random.Random(trial.round)
        lat: list[float] = []
        for _ in range(p["pages"]):
            anchor = old[rng.randrange(PAGE, len(old))]
            t = time.perf_counter()
            page = await read_page(hot, reader, channel, before=anchor, limit=PAGE)
            lat.append((time.perf_counter() - t) * 1000)
            if len(page) != PAGE or page[0][0] >= anchor:
                raise RuntimeError(f"a {trial.arm.name} page came back wrong (a bug)")
    finally:
        await store.close()
    return Measurement(
        {
            "bytes_per_message": stored,
            "page_p50_ms": _pct(lat, 0.5),
            "page_p99_ms": _pct(lat, 0.99),
        },
        notes=[
            f"{len(rows):,} messages over {p['days']} days in one channel, {p['pages']} old pages of "
            f"{PAGE}; buckets older than {p['archive_after_days']} days archived: {archived:,} messages"
        ],
    )


def conclude(o: Outcome) -> str:
    size = o.verdict("bytes_per_message", "cold", "history")
    if size == "missing" or o.median("cold", "page_p50_ms") is None:
        return "Not every arm produced numbers, so nothing can be concluded from this run."
    b = o.compare("bytes_per_message", "cold", "history")
    first = (
        f"The cold tier stored old history in far fewer bytes per message ({b})"
        if size == "holds"
        else f"Against the expectation, the cold tier did not store old messages clearly smaller ({b})"
    )
    slow = o.verdict("page_p50_ms", "history", "cold")
    lat = o.compare("page_p50_ms", "cold", "history")
    second = (
        f"; the price is a slower old page ({lat}): each cold page reads and decompresses a whole "
        "bucket object and lists the channel's objects"
        if slow == "holds"
        else f"; a cold page was not clearly slower than a history page here ({lat})"
    )
    return (
        first
        + second
        + f" (p99 {fmt(o.median('cold', 'page_p99_ms'))} vs {fmt(o.median('history', 'page_p99_ms'))} ms). "
        "Old history is rarely read, so cheap storage at a slower page is the right trade."
    )


EXPERIMENT = Experiment(
    name="cold-tier",
    title="History store vs cold tier: bytes per message and an old page's latency",
    claim="Older history moves to cheap cold storage (object storage), read only when someone "
    "scrolls that far.",
    claim_ids=(10,),
    hop="history",
    knob="`CHATSCALE_COLD_URL`, `CHATSCALE_ARCHIVE_AFTER_S`; `chatscale archive`",
    arms=(
        Arm("history", "no cold tier: every message in the SQLite history store"),
        Arm(
            "cold",
            "buckets older than the archive age compacted into a local-directory cold store "
            "(COLD_URL=file:///...)",
        ),
    ),
    metrics=(
        Metric("bytes_per_message", "storage per old message in its tier", "B"),
        Metric("page_p50_ms", "a 50-message page of old history, p50", "ms"),
        Metric("page_p99_ms", "the same, p99", "ms"),
    ),
    sizes={
        "tiny": {"messages": 2_000, "days": 40, "archive_after_days": 20, "pages": 20},
        "quick": {"messages": 20_000, "days": 40, "archive_after_days": 20, "pages": 100},
        "full": {"messages": 200_000, "days": 40, "archive_after_days": 20, "pages": 300},
    },
    quick_seconds=15,
    measure=measure,
    conclude=conclude,
)
