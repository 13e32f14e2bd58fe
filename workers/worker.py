"""The worker process: consume ingest shards, run the pipeline, ack, reclaim, dead-letter.

At-least-once: an entry is acked only after every stage of ``workers.pipeline`` succeeded, so
a worker killed at any point leaves its entries pending in the consumer group. Whoever takes
the shard next claims them (XAUTOCLAIM) and runs them again; idempotent stages make the rerun
invisible to recipients.

Failures:
- transient (Redis or the store unreachable, a paused server): the batch stays pending and is
  retried with backoff by the same worker, which keeps its lease, so nothing else steals it and
  no delivery counter grows;
- an entry that cannot be decoded: dead-lettered at once;
- an unexpected exception: the batch is retried up to ``max_deliveries`` times, then its
  entries are dead-lettered (so one bad entry cannot wedge a shard forever);
- a worker that died repeatedly on an entry: the entry's delivery counter (bumped by each
  claim) passes ``max_deliveries`` and the next owner dead-letters it instead of dying too.

``run(burst=True)`` processes what is there — including entries it reclaims — and returns when
the shards are empty (arq's burst mode): tests drain workers instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Literal

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from chatscale.config import Settings
from chatscale.keys import INGEST_GROUP, Keys
from chatscale.redisconn import TRANSIENT, connect, is_cluster
from chatscale.wire import dumps
from storage import StorageUnavailable, Store
from workers import metrics, safety
from workers.leases import ShardLeases
from workers.pipeline import Batch, HistoryPending, LeaseLost, Pipeline

log = logging.getLogger("chatscale.worker")

TRANSIENT_ERRORS = (*TRANSIENT, StorageUnavailable)


class Worker:
    def __init__(
        self,
        settings: Settings,
        *,
        store: Store,
        consumer: str | None = None,
        ordering: Literal["shard", "parallel"] = "shard",
        lease_ttl_ms: int = 5000,
        stop_after: int | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """
        settings: shards, batch size, block time, reclaim idle and max deliveries come from here.
        store: history + metadata backend (already open; the caller closes it).
        consumer: name in the consumer group; unique per process by default.
        ordering: "shard" leases shards (per-channel order); "parallel" lets every worker read
            every shard (more parallelism, order not guaranteed).
        lease_ttl_ms: how long a silent worker keeps its shards.
        stop_after: fault injection for tests — SIGSTOP this process after that many entries of
            a batch have been fanned out, so a test can SIGKILL it mid-batch.
        sleep: how the worker lingers between partial batches (``worker_linger_ms``); tests
            pass their own.
        """
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.consumer = consumer or f"worker-{os.getpid()}-{secrets.token_hex(3)}"
        self.ordering = ordering
        self.redis: aioredis.Redis = connect(settings, block_ms=settings.worker_block_ms)
        self.store = store
        self.pipeline = Pipeline(
            settings,
            redis=self.redis,
            keys=self.keys,
            store=store,
            consumer=self.consumer,
            fenced=ordering == "shard",
        )
        self.leases = ShardLeases(
            self.redis,
            self.keys,
            shards=settings.ingest_shards,
            consumer=self.consumer,
            ttl_ms=lease_ttl_ms,
        )
        self._stop_after = stop_after
        self._sleep = sleep
        self._stopping = asyncio.Event()
        self._retry: list[Batch] = []
        self._history_backlog: list[Batch] = []  # fanned out, waiting for history storage
        self._last_reclaim = 0.0
        self._last_trim = 0.0
        self._last_maintain = 0.0
        self._partial = False  # the last read returned entries, but no shard a full batch
        # Redis Cluster: shards' streams are on different slots, read one XREADGROUP each;
        # a blocking read still outstanding from an earlier step, per stream (``_read_each``)
        self._reads: dict[str, asyncio.Task] = {}
        metrics.watch_worker(self)  # pipeline counters and backlog, read at scrape time
        safety.attach(self)  # the moderation stage and spam detector, if configured (no-op off)

    @property
    def stats(self):  # noqa: ANN201 - the pipeline's counters
        return self.pipeline.stats

    def stop(self) -> None:
        """Finish the current batch, release leases, return from ``run``."""
        self._stopping.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop)

    async def close(self) -> None:
        for task in self._reads.values():  # its entries, if any, are reclaimed by the next owner
            task.cancel()
        await asyncio.gather(*self._reads.values(), return_exceptions=True)
        self._reads.clear()
        await safety.close(self)
        await self.pipeline.close()  # its search index handle (search_indexing=write)
        await self.redis.aclose()

    # ---- main loop --------------------------------------------------------------------------

    async def run(self, *, burst: bool = False) -> None:
        await self._ensure_groups()
        try:
            while not self._stopping.is_set():
                try:
                    worked = await self._step(burst=burst)
                except TRANSIENT_ERRORS as exc:
                    log.warning("%s: transient failure (%s); retrying", self.consumer, exc)
                    if burst:
                        return
                    await self._backoff(1.0)
                    continue
                if burst and not worked:
                    return
                if self._history_backlog and not worked:
                    await self._backoff(self.pipeline.breaker_s)
                elif self._partial and not burst and self.settings.worker_linger_ms > 0:
                    # the read found fewer entries than a batch holds: let the next batch
                    # gather more (fewer round trips per message, up to this much more latency)
                    await self._sleep(self.settings.worker_linger_ms / 1000)
        finally:
            if not burst:  # a drained test worker keeps its leases for the next drain
                with contextlib.suppress(*TRANSIENT):
                    await self.leases.release_all()

    async def drain(self) -> None:
        """Burst mode: process everything available now, then return (keeps leases for reuse)."""
        await self.run(burst=True)

    async def _step(self, *, burst: bool) -> bool:
        # Leases and the health key are kept on a timer (a third of the lease TTL), not per
        # batch: at low rates every batch holds one message and round trips are the cost.
        due = time.monotonic() - self._last_maintain > self.leases.ttl_ms / 3000
        if due or burst:
            self._last_maintain = time.monotonic()
            await self._health()
        if self.ordering == "shard":
            if due or burst:
                gained, _ = await self.leases.maintain(
                    greedy=burst, before_release=self._settle_read if self._reads else None
                )
                for shard in sorted(gained):
                    await self._reclaim(shard, min_idle_ms=0)
            shards = sorted(self.leases.owned)
        else:
            shards = list(range(self.settings.ingest_shards))
            if (
                time.monotonic() - self._last_reclaim > self.settings.reclaim_idle_ms / 1000
                or burst
            ):
                self._last_reclaim = time.monotonic()
                for shard in shards:
                    await self._reclaim(shard, min_idle_ms=self.settings.reclaim_idle_ms)
        worked = bool(self._retry)
        await self._flush_history_backlog()
        await self._run_retries()
        if not shards:
            if not burst:
                await self._backoff(self.leases.ttl_ms / 3000)
            return worked
        streams = {self.keys.ingest(s): ">" for s in shards}
        shard_of = {self.keys.ingest(s): s for s in shards}
        if is_cluster(self.redis):
            reply = await self._read_each(list(streams), burst=burst)
        else:
            reply = await self.redis.xreadgroup(
                INGEST_GROUP,
                self.consumer,
                streams,
                count=self.settings.worker_batch,
                block=None if burst else self.settings.worker_block_ms,
            )
        sizes = [len(entries) for _, entries in reply or [] if entries]
        self._partial = bool(sizes) and max(sizes) < self.settings.worker_batch
        for stream, entries in reply or []:
            if entries:
                worked = True
                name = stream.decode() if isinstance(stream, bytes) else stream
                shard = shard_of.get(name)
                if shard is None:  # an outstanding read of a shard no longer in this step's list
                    shard = next(
                        i for i in range(self.settings.ingest_shards) if self.keys.ingest(i) == name
                    )
                await self._process(Batch(name, shard, entries))
        await self._maybe_trim(shards)
        return worked

    async def _read_each(self, streams: list[str], *, burst: bool) -> list[tuple[str, list]]:
        """The shards' XREADGROUP on a Redis Cluster, where one command may not name streams
        of several slots: one read per stream. Entries that a blocking read of an earlier step
        returned come first; then one non-blocking read of every other stream, in one cluster
        pipeline (one round trip per node); only if all are empty (and not ``burst``), a
        blocking read per stream at once, returning as soon as one answers. The others stay
        outstanding for the next step, never cancelled: a cancelled XREADGROUP may already have
        put entries in this consumer's pending list, where no ``>`` read would find them."""
        got = self._collect_reads()
        if got:
            return got
        idle = [s for s in streams if s not in self._reads]
        if idle:
            async with self.redis.pipeline(transaction=False) as pipe:
                for stream in idle:
                    pipe.xreadgroup(
                        INGEST_GROUP, self.consumer, {stream: ">"}, count=self.settings.worker_batch
                    )
                replies = await pipe.execute()
            got = [(s, es) for reply in replies for s, es in (reply or []) if es]
            if got or burst:
                return got
        for stream in streams:
            if stream not in self._reads:
                self._reads[stream] = asyncio.create_task(
                    self.redis.xreadgroup(
                        INGEST_GROUP,
                        self.consumer,
                        {stream: ">"},
                        count=self.settings.worker_batch,
                        block=self.settings.worker_block_ms,
                    )
                )
        if self._reads:
            await asyncio.wait(
                set(self._reads.values()),
                timeout=self.settings.worker_block_ms / 1000 + 1,
                return_when=asyncio.FIRST_COMPLETED,
            )
        return self._collect_reads()

    async def _settle_read(self, shard: int) -> None:
        """Before this worker gives a shard up: finish the read still outstanding on it and
        process what it got while the lease is still ours. Otherwise entries it delivered
        after the release would be pending under this consumer, fenced off by the lease, and
        never read again (the new owner reclaims when it gains the shard, before that)."""
        stream = self.keys.ingest(shard)
        task = self._reads.pop(stream, None)
        if task is None:
            return
        done, _ = await asyncio.wait({task}, timeout=self.settings.worker_block_ms / 1000 + 1)
        if not done:  # a hung read: leave the shard to the new owner's reclaim
            task.cancel()
            return
        for _name, entries in task.result() or []:
            if entries:
                await self._process(Batch(stream, shard, entries))

    def _collect_reads(self) -> list[tuple[str, list]]:
        """Entries of the blocking reads that have finished (their errors are raised)."""
        got = []
        for stream, task in list(self._reads.items()):
            if task.done():
                del self._reads[stream]
                got += [(s, es) for s, es in (task.result() or []) if es]
        return got

    async def _process(self, batch: Batch) -> None:
        if self._stop_after is not None:
            batch = await self._fault_injection(batch)
        try:
            batch.attempts += 1
            await self.pipeline.process(batch)
        except HistoryPending as pending:
            self._history_backlog.append(pending.batch)
        except LeaseLost:
            log.warning(
                "%s lost the lease of %s mid-batch; leaving it to the new owner",
                self.consumer,
                batch.stream,
            )
        except TRANSIENT_ERRORS:
            self._retry.append(batch)
            raise
        except Exception as exc:  # an unexpected bug or poison entry: retry, then dead-letter
            log.exception(
                "%s: batch on %s failed (attempt %d)", self.consumer, batch.stream, batch.attempts
            )
            if batch.attempts >= self.settings.max_deliveries:
                for entry_id, fields in batch.entries:
                    await self.pipeline.dead_letter(
                        batch.stream, entry_id, fields, f"failed: {exc!r}"[:200]
                    )
            else:
                self._retry.append(batch)

    @property
    def history_backlog(self) -> int:
        """Entries delivered to recipients but not yet stored in history (so not acked)."""
        return sum(len(b.decoded) for b in self._history_backlog)

    async def _flush_history_backlog(self) -> None:
        while self._history_backlog:
            batch = self._history_backlog[0]
            try:
                await self.pipeline.finish(batch)
            except StorageUnavailable:
                return  # still down: keep serving the hot path, try again on a later step
            self._history_backlog.pop(0)
            log.info(
                "%s: stored and acked %d entries from the history backlog",
                self.consumer,
                len(batch.decoded),
            )

    async def _run_retries(self) -> None:
        pending, self._retry = self._retry, []
        for i, batch in enumerate(pending):
            if self.ordering == "shard" and batch.shard not in self.leases.owned:
                continue  # the new owner reclaims it
            try:
                await self._process(batch)
            except TRANSIENT_ERRORS:
                self._retry.extend(pending[i + 1 :])
                raise

    async def _reclaim(self, shard: int, *, min_idle_ms: int) -> None:
        """Take over entries other consumers left pending; dead-letter those delivered too often."""
        stream = self.keys.ingest(shard)
        start = b"0-0"
        while True:
            start, claimed, _deleted = await self.redis.xautoclaim(
                stream,
                INGEST_GROUP,
                self.consumer,
                min_idle_ms,
                start_id=start,
                count=self.settings.worker_batch,
            )
            claimed = [(eid, fields) for eid, fields in claimed if fields is not None]
            if claimed:
                counts = await self._delivery_counts(stream, claimed[0][0], claimed[-1][0])
                keep = []
                for entry_id, fields in claimed:
                    if counts.get(entry_id, 0) > self.settings.max_deliveries:
                        await self.pipeline.dead_letter(
                            stream, entry_id, fields, "delivered too many times"
                        )
                    else:
                        keep.append((entry_id, fields))
                if keep:
                    log.info("%s reclaimed %d entries on %s", self.consumer, len(keep), stream)
                    await self._process(Batch(stream, shard, keep))
            if start in (b"0-0", "0-0"):
                return

    async def _delivery_counts(self, stream: str, first: bytes, last: bytes) -> dict[bytes, int]:
        rows = await self.redis.xpending_range(
            stream,
            INGEST_GROUP,
            min=first,
            max=last,
            count=self.settings.worker_batch,
            consumername=self.consumer,
        )
        return {
            (
                row["message_id"]
                if isinstance(row["message_id"], bytes)
                else str(row["message_id"]).encode()
            ): int(row["times_delivered"])
            for row in rows
        }

    async def _ensure_groups(self) -> None:
        for shard in range(self.settings.ingest_shards):
            try:
                # id 0: entries published before the group existed are consumed, not skipped.
                await self.redis.xgroup_create(
                    self.keys.ingest(shard), INGEST_GROUP, id="0", mkstream=True
                )
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def _maybe_trim(self, shards: list[int]) -> None:
        """Drop acked entries older than anything still pending (the stream is a queue, not a log)."""
        if time.monotonic() - self._last_trim < 5.0:
            return
        self._last_trim = time.monotonic()
        for shard in shards:
            stream = self.keys.ingest(shard)
            summary = await self.redis.xpending(stream, INGEST_GROUP)
            if summary["pending"]:
                floor = summary["min"]
            else:
                groups = await self.redis.xinfo_groups(stream)
                floor = next(
                    (g["last-delivered-id"] for g in groups if g["name"] == INGEST_GROUP.encode()),
                    None,
                )
            if floor:
                await self.redis.xtrim(stream, minid=floor, approximate=True)

    async def _health(self) -> None:
        await self.redis.set(
            self.keys.worker_health(self.consumer),
            dumps({"pid": os.getpid(), "shards": sorted(self.leases.owned), **vars(self.stats)}),
            ex=15,
        )

    async def _backoff(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    async def _fault_injection(self, batch: Batch) -> Batch:
        """Fan out the first ``stop_after`` entries without acking them, then SIGSTOP ourselves
        mid-batch: the test SIGKILLs us, and the next owner must reclaim without duplicates."""
        assert self._stop_after is not None
        if len(batch.entries) <= self._stop_after:
            self._stop_after -= len(batch.entries)
            return batch
        head = Batch(batch.stream, batch.shard, batch.entries[: self._stop_after])
        await self.pipeline.process(head, ack=False)
        log.warning(
            "%s: fault injection, stopping after %d entries", self.consumer, self._stop_after
        )
        os.kill(os.getpid(), signal.SIGSTOP)
        self._stop_after = None
        return Batch(batch.stream, batch.shard, batch.entries[len(head.entries) :])
