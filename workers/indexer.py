"""The search indexer: the stored-message stream into the search index, asynchronously.

Workers append every message to ``Keys.stored()`` *after* its history write (``feed``), so the
gateway's path never waits on indexing and the index never holds a message history lost. The
indexer reads that stream from its stored offset and applies a batch — new documents, deletions
and the new offset — in one index transaction (``SearchIndex.apply``). Killed at any point, it
restarts from the last committed offset: entries after it are read again, and an entry that
was somehow applied twice is a no-op (documents are keyed by message id).

Lag: every indexed message observes ``now - its snowflake time`` into
``chatscale_search_index_lag_seconds`` (send-to-searchable, the freshness a user sees), and
the gauge ``chatscale_search_index_behind_seconds`` how far behind the stream's head it is.

If the indexer stays down longer than the stream's cap (``stored_stream_maxlen``) the oldest
entries are trimmed before it reads them: ``chatscale_search_index_skipped_total`` counts that
case (detected when the stream's first entry is past the stored offset); a rebuild from history
(not implemented) would be the remedy.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis
from prometheus_client import Counter, Gauge, Histogram

from chatscale import snowflake
from chatscale.config import Settings
from chatscale.keys import Keys
from chatscale.redisconn import connect
from chatscale.wire import IngestMessage, StoredEntry
from storage.search_index import IndexDoc, SearchIndex

log = logging.getLogger("chatscale.indexer")

LAG = Histogram(
    "chatscale_search_index_lag_seconds",
    "From a message's snowflake time (its send) to its commit in the search index.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
BEHIND = Gauge(
    "chatscale_search_index_behind_seconds",
    "0 when the indexer has read the stored stream's newest entry, else how old its offset is.",
)
INDEXED = Counter("chatscale_search_indexed_total", "Messages newly added to the search index.")
SKIPPED = Counter(
    "chatscale_search_index_skipped_total",
    "Times the indexer found its offset trimmed from the stored stream (messages missed).",
)


def _wall_ms() -> float:
    return time.time_ns() / 1e6


async def feed(
    redis: aioredis.Redis, keys: Keys, entries: Sequence[StoredEntry], maxlen: int
) -> None:
    """Append stored messages (or deletions) to the stream, one round trip for a batch."""
    if not entries:
        return
    async with redis.pipeline(transaction=False) as pipe:
        queue_feed(pipe, keys, entries, maxlen)
        await pipe.execute()


def queue_feed(pipe: Any, keys: Keys, entries: Sequence[StoredEntry], maxlen: int) -> int:
    """Queue the stream appends on a pipeline another write shares (the worker's ack);
    returns how many commands were queued."""
    for e in entries:
        pipe.xadd(
            keys.stored(), {b"e": e.model_dump_json().encode()}, maxlen=maxlen, approximate=True
        )
    return len(entries)


def stored_entries(accepted: Sequence[IngestMessage]) -> list[StoredEntry]:
    """Stream entries for accepted ingest messages."""
    return [
        StoredEntry(
            id=m.id,
            channel_id=m.channel_id,
            guild_id=m.guild_id,
            author_id=m.author_id,
            payload=m.payload,
        )
        for m in accepted
    ]


def to_doc(entry: StoredEntry) -> IndexDoc:
    try:
        content = str(orjson.loads(entry.payload).get("content", ""))
    except (orjson.JSONDecodeError, AttributeError):
        content = ""
    return IndexDoc(
        entry.id, entry.channel_id, entry.guild_id, entry.author_id, content, entry.payload
    )


class Indexer:
    def __init__(
        self,
        settings: Settings,
        *,
        index: SearchIndex,
        redis: aioredis.Redis | None = None,
        wall_ms: Callable[[], float] = _wall_ms,
    ) -> None:
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.index = index
        self.redis = redis or connect(settings, block_ms=1000)
        self._own_redis = redis is None
        self.wall_ms = wall_ms
        self.offset: str | None = None
        self.indexed = 0
        self.batches = 0
        # fault injection for the kill test: after this many committed batches, read the next
        # one and SIGSTOP this process before committing it (the test then SIGKILLs it)
        self.stop_after: int | None = None
        self._stop = asyncio.Event()

    async def step(self, *, block_ms: int | None = None) -> int:
        """Read one batch after the stored offset and commit it; entries read (0: none)."""
        stream = self.keys.stored()
        if self.offset is None:
            self.offset = await self.index.offset(stream) or "0-0"
            await self._check_trimmed(stream)
        got = await self.redis.xread(
            {stream: self.offset}, count=self.settings.search_batch, block=block_ms
        )
        if not got:
            return 0
        entries = got[0][1]
        if self.stop_after is not None and self.batches >= self.stop_after:
            os.kill(os.getpid(), signal.SIGSTOP)
        adds: list[IndexDoc] = []
        deletes: list[int] = []
        for _entry_id, fields in entries:
            try:
                e = StoredEntry.model_validate_json(fields[b"e"])
            except (KeyError, ValueError) as exc:
                log.error("skipping an undecodable stored entry %s: %s", _entry_id, exc)
                continue
            if e.kind == "delete":
                deletes.append(e.id)
            else:
                adds.append(to_doc(e))
        last = entries[-1][0].decode()
        self.indexed += await self.index.apply(stream, last, adds, deletes)
        now = self.wall_ms()
        for d in adds:
            LAG.observe(max(0.0, (now - snowflake.timestamp_ms(d.message_id)) / 1000))
        INDEXED.inc(len(adds))
        self.offset = last
        self.batches += 1
        return len(entries)

    async def _check_trimmed(self, stream: str) -> None:
        if self.offset in (None, "0-0"):
            return
        first = await self.redis.xrange(stream, count=1)
        if (
            first
            and _id_tuple(first[0][0].decode()) > _id_tuple(self.offset)
            and not (await self.redis.xrange(stream, min=self.offset, max=self.offset))
        ):
            SKIPPED.inc()
            log.warning("stored stream trimmed past offset %s: messages missed", self.offset)

    async def drain(self) -> int:
        """Index everything the stream holds now (tests, ``chatscale search --reindex``)."""
        total = 0
        while n := await self.step():
            total += n
        return total

    async def run(self) -> None:
        while not self._stop.is_set():
            try:
                await self.step(block_ms=1000)
            except (OSError, ConnectionError) as exc:  # Redis or the index file: retry shortly
                log.warning("indexer step failed: %s", exc)
                await asyncio.sleep(0.5)
            await self._update_behind()

    async def _update_behind(self) -> None:
        """How stale the index is right now: 0 when it has read the stream's newest entry, else
        the age of the entry at its offset (one XINFO per loop turn)."""
        try:
            info = await self.redis.xinfo_stream(self.keys.stored())
        except Exception:  # no stream yet: nothing to be behind on
            BEHIND.set(0)
            return
        last = info.get("last-generated-id", b"0-0")
        last = last.decode() if isinstance(last, bytes) else str(last)
        offset = self.offset or "0-0"
        if _id_tuple(last) <= _id_tuple(offset):
            BEHIND.set(0)
        else:
            BEHIND.set(max(0.0, (self.wall_ms() - _id_tuple(offset)[0]) / 1000))

    def stop(self) -> None:
        self._stop.set()

    async def close(self) -> None:
        if self._own_redis:
            await self.redis.aclose()


def _id_tuple(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
