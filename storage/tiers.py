"""History across tiers: the history store (recent buckets) and the cold archive (old ones).

``TieredHistory`` is a ``HistoryStore``: ``read_page`` uses it in place of the store, so
``before``/``after``/``around`` reach archived buckets with the same no-gap/no-duplicate
guarantee. Each page reads the history store first and lists the channel's cold buckets
*after* that read: a bucket compacted before the history read was written to the archive before
its rows were deleted, so the listing taken afterwards has it. History and cold rows are merged
by id (de-duplicated: during a compaction a bucket is briefly in both) and cut to ``limit``.
Cold objects are read only for buckets that can hold a row of the page: when history filled
the page, only buckets at or beyond its last row's bucket (normally none).

``Archiver.compact_once`` moves every bucket whose whole time span is older than
``archive_after_s`` from the history store into the archive, oldest first per channel: read the
rows, write one object (merged with an existing object of the same bucket, for a row that
arrived late), then delete the partition.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from chatscale import snowflake
from storage.base import ArchivableHistory, StoredMessage
from storage.cold import ColdArchive


def _bucket_of(message_id: int, span_ms: int) -> int:
    return snowflake.bucket(message_id, span_ms)


@dataclass
class ColdReads:
    """What the cold tier served (for metrics and the lab): objects read, rows kept."""

    objects: int = 0
    rows: int = 0


class TieredHistory:
    def __init__(
        self, history: ArchivableHistory, archive: ColdArchive, *, bucket_span_ms: int
    ) -> None:
        self.history = history
        self.archive = archive
        self.span = bucket_span_ms
        self.reads = ColdReads()

    async def insert(self, message: StoredMessage) -> None:
        await self.history.insert(message)

    async def insert_many(self, messages: list[StoredMessage]) -> None:
        await self.history.insert_many(messages)

    async def delete_messages(self, keys: list[tuple[int, int]]) -> None:
        await self.history.delete_messages(keys)  # cold objects are immutable: see DELETE_MESSAGE

    async def page(self, channel_id: int, *, before: int | None, limit: int) -> list[StoredMessage]:
        rows = await self.history.page(channel_id, before=before, limit=limit)
        upper = before if before is not None else (1 << 63) - 1
        floor = _bucket_of(rows[-1].message_id, self.span) if len(rows) >= limit else -1
        cold = [
            b
            for b in await self.archive.buckets(channel_id)
            if floor <= b <= _bucket_of(upper, self.span)
        ]
        merged = {m.message_id: m for m in rows}
        found = 0
        for b in reversed(cold):  # newest cold bucket first
            if found >= limit:
                break
            got = [m for m in await self.archive.read(channel_id, b) if m.message_id < upper]
            self.reads.objects += 1
            found += len(got)
            merged.update((m.message_id, m) for m in got)
        out = sorted(merged.values(), key=lambda m: m.message_id, reverse=True)[:limit]
        self._count(out, rows)
        return out

    async def page_after(self, channel_id: int, *, after: int, limit: int) -> list[StoredMessage]:
        rows = await self.history.page_after(channel_id, after=after, limit=limit)
        ceiling = _bucket_of(rows[-1].message_id, self.span) if len(rows) >= limit else 1 << 62
        cold = [
            b
            for b in await self.archive.buckets(channel_id)
            if _bucket_of(after, self.span) <= b <= ceiling
        ]
        merged = {m.message_id: m for m in rows}
        found = 0
        for b in cold:  # oldest cold bucket first
            if found >= limit:
                break
            got = [m for m in await self.archive.read(channel_id, b) if m.message_id > after]
            self.reads.objects += 1
            found += len(got)
            merged.update((m.message_id, m) for m in got)
        out = sorted(merged.values(), key=lambda m: m.message_id)[:limit]
        self._count(out, rows)
        return out

    def _count(self, out: list[StoredMessage], history_rows: list[StoredMessage]) -> None:
        from_history = {r.message_id for r in history_rows}
        self.reads.rows += sum(1 for m in out if m.message_id not in from_history)


@dataclass
class CompactionReport:
    buckets: int = 0
    messages: int = 0
    bytes_written: int = 0


class Archiver:
    """Moves buckets older than ``archive_after_s`` into the cold archive."""

    def __init__(
        self,
        history: ArchivableHistory,
        archive: ColdArchive,
        *,
        bucket_span_ms: int,
        archive_after_s: float,
        wall_ms=lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self.history = history
        self.archive = archive
        self.span = bucket_span_ms
        self.after_ms = int(archive_after_s * 1000)
        self.wall_ms = wall_ms

    def eligible(self, bucket: int, now_ms: int) -> bool:
        """The bucket's whole span (in snowflake time) is older than the archive age."""
        end_ms = (bucket + 1) * self.span + snowflake.EPOCH_MS
        return end_ms <= now_ms - self.after_ms

    async def compact_once(self) -> CompactionReport:
        report = CompactionReport()
        now = self.wall_ms()
        for channel_id in await self.history.history_channels():
            for b in await self.history.channel_buckets(channel_id):
                if not self.eligible(b, now):
                    break  # ascending: every later bucket is younger
                report.bytes_written += await self.compact_bucket(channel_id, b, report)
        return report

    async def compact_bucket(
        self, channel_id: int, bucket: int, report: CompactionReport | None = None
    ) -> int:
        rows = await self.history.bucket_messages(channel_id, bucket)
        if not rows:
            return 0
        existing = await self.archive.read(channel_id, bucket)  # a late row: merge, rewrite
        merged = {m.message_id: m for m in existing}
        merged.update((m.message_id, m) for m in rows)
        size = await self.archive.write(channel_id, bucket, list(merged.values()))
        await self.history.delete_bucket(channel_id, bucket)  # only after the object exists
        if report is not None:
            report.buckets += 1
            report.messages += len(rows)
        return size


def history_reader(store: ArchivableHistory, *, cold_url: str, bucket_span_ms: int):
    """What pages read: the store alone, or the store and its cold archive (``cold_url``)."""
    if not cold_url:
        return store
    from storage.cold import open_object_store

    return TieredHistory(
        store, ColdArchive(open_object_store(cold_url)), bucket_span_ms=bucket_span_ms
    )
