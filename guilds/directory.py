"""The server directory in Redis: public guilds, name-prefix autocomplete, top-K activity.

Three derived indexes (key names in ``chatscale.keys``), all kept current by their writers:

- ``directory()`` (hash guild id -> ``{"name", "public"}``) and ``directory_names()`` (a sorted
  set of ``<casefolded name>\\0<id>`` with score 0, public guilds only). The control plane
  writes both when a guild is created, renamed or made public/private (``ControlPlane``), and a
  community file's ``public = true`` guilds are written when it is seeded. Autocomplete is one
  ``ZRANGEBYLEX [prefix (prefix\\xff`` — O(log n + k) — so a guild created a moment ago is found
  by the next keystroke. The public flag lives here, not in the metadata store: losing Redis
  loses it until the guilds are published (or seeded) again; docs/discovery.md says so.
- ``activity(minute)``: a sorted set per wall-clock minute, guild -> accepted messages, ZINCRBY'd
  once per guild per worker batch and expiring after the window. ``top_exact`` merges the
  window's minutes with ZUNIONSTORE into a scratch key and reads the top K, in one MULTI.
- ``activity_sketch(minute, consumer)``: each worker's frequent-items sketch of the current
  minute (``guilds.topk``), written every ``discovery_sketch_flush_s``; ``top_approx`` merges
  the window's sketches of every worker (sketches are mergeable).

Counting is at-least-once, like the pipeline: a batch redelivered after a worker died counts
again. Activity is counted by the minute a worker accepted the message, not by its snowflake.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from chatscale.keys import Keys
from guilds import suggest, topk
from storage import Store

MAX_QUERY_CHARS = 100
MAX_LIMIT = 50
_SEP = "\x00"


class DirectoryError(ValueError):
    """A query the directory refuses (the message is the one line a user reads)."""


@dataclass(frozen=True, slots=True)
class Entry:
    guild_id: int
    name: str
    public: bool = True
    activity: int | None = None  # messages in the window (top-K only)

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = {"id": str(self.guild_id), "name": self.name}
        if self.activity is not None:
            d["messages"] = self.activity
        return d


def normalize(text: str) -> str:
    """What names are matched on: casefolded, surrounding spaces removed."""
    return text.strip().casefold()


def check_prefix(prefix: str) -> str:
    key = normalize(prefix)
    if not key:
        raise DirectoryError("a search needs a prefix of at least one character")
    if len(prefix) > MAX_QUERY_CHARS:
        raise DirectoryError(f"a prefix is at most {MAX_QUERY_CHARS} characters")
    if _SEP in key or any(ord(c) < 32 for c in key):
        raise DirectoryError("a prefix has no control characters")
    return key


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise DirectoryError(f"limit must be 1..{MAX_LIMIT}")
    return limit


class Directory:
    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        *,
        window_minutes: int = 10,
        sketch_lg_k: int = 10,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.window_minutes = window_minutes
        self.sketch_lg_k = sketch_lg_k
        self.wall_clock = wall_clock

    # ---- the public directory and autocomplete ------------------------------------------------

    async def index(self, guild_id: int, name: str, *, public: bool | None = None) -> None:
        """Record a guild's name (created or renamed) and, if given, its public flag; keep the
        autocomplete set in step, in one MULTI. ``public=None`` keeps the current flag."""
        raw = await self.redis.hget(self.keys.directory(), str(guild_id))
        old = orjson.loads(raw) if raw else None
        if public is None:
            public = bool(old and old["public"])
        async with self.redis.pipeline(transaction=True) as pipe:
            if old is not None:
                pipe.zrem(self.keys.directory_names(), _member(old["name"], guild_id))
            pipe.hset(
                self.keys.directory(),
                str(guild_id),
                orjson.dumps({"name": name, "public": public}),
            )
            if public:
                pipe.zadd(self.keys.directory_names(), {_member(name, guild_id): 0})
            await pipe.execute()

    async def get(self, guild_id: int) -> Entry | None:
        raw = await self.redis.hget(self.keys.directory(), str(guild_id))
        if not raw:
            return None
        d = orjson.loads(raw)
        return Entry(guild_id, d["name"], d["public"])

    async def list_public(self, *, offset: int = 0, limit: int = MAX_LIMIT) -> list[Entry]:
        """Public guilds in name order, ``limit`` of them from position ``offset``."""
        check_limit(limit)
        if offset < 0:
            raise DirectoryError("offset must be 0 or more")
        members = await self.redis.zrangebylex(
            self.keys.directory_names(), "-", "+", start=offset, num=limit
        )
        return await self._entries(members)

    async def search(self, prefix: str, *, limit: int = 10) -> list[Entry]:
        """Public guilds whose name starts with ``prefix`` (case-insensitive), name order.
        Bounds are bytes: ``\\xff`` never occurs in UTF-8, so ``(prefix\\xff`` ends the range."""
        key = check_prefix(prefix).encode()
        check_limit(limit)
        members = await self.redis.zrangebylex(
            self.keys.directory_names(), b"[" + key, b"(" + key + b"\xff", start=0, num=limit
        )
        return await self._entries(members)

    async def _entries(self, members: list[bytes]) -> list[Entry]:
        ids = [int(m.decode().rpartition(_SEP)[2]) for m in members]
        if not ids:
            return []
        rows = await self.redis.hmget(self.keys.directory(), [str(i) for i in ids])
        out = []
        for guild_id, raw in zip(ids, rows, strict=True):
            if raw:
                d = orjson.loads(raw)
                out.append(Entry(guild_id, d["name"], d["public"]))
        return out

    # ---- activity: written by workers ---------------------------------------------------------

    async def record(self, counts: Counter[int], *, at: float | None = None) -> None:
        """Add one batch's accepted messages per guild to this minute's bucket (one round
        trip); the bucket expires once it has left the window."""
        if not counts:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            self.queue_record(pipe, counts, at=at)
            await pipe.execute()

    def queue_record(self, pipe: Any, counts: Counter[int], *, at: float | None = None) -> int:
        """``record``'s commands queued on a pipeline another write shares (the worker's ack);
        returns how many were queued."""
        if not counts:
            return 0
        minute = topk.minute_of(self.wall_clock() if at is None else at)
        key = self.keys.activity(minute)
        for guild_id, n in counts.items():
            pipe.zincrby(key, n, str(guild_id))
        pipe.expire(key, (self.window_minutes + 1) * 60)
        return len(counts) + 1

    async def write_sketch(self, minute: int, consumer: str, blob: bytes) -> None:
        await self.redis.set(
            self.keys.activity_sketch(minute, consumer), blob, ex=(self.window_minutes + 1) * 60
        )

    # ---- top-K -------------------------------------------------------------------------------

    async def top_exact(
        self, k: int, *, at: float | None = None, public_only: bool = False
    ) -> list[tuple[int, int]]:
        """The ``k`` guilds with the most messages in the window ending this minute
        (``public_only``: among the guilds listed in the directory)."""
        check_limit(k)
        minute = topk.minute_of(self.wall_clock() if at is None else at)
        sources = [self.keys.activity(m) for m in topk.window(minute, self.window_minutes)]
        scratch = self.keys.activity_scratch(secrets.token_hex(6))
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zunionstore(scratch, sources)
            # a margin past K so ties at the boundary sort by id below; public_only reads
            # further down the ranking to skip private guilds
            pipe.zrange(
                scratch, 0, (k * 50 if public_only else k * 4) + 50, desc=True, withscores=True
            )
            pipe.delete(scratch)
            _, rows, _ = await pipe.execute()
        ranked = sorted(((int(g), int(s)) for g, s in rows), key=lambda r: (-r[1], r[0]))
        return await self._keep(ranked, k, public_only)

    async def top_approx(
        self, k: int, *, at: float | None = None, public_only: bool = False
    ) -> list[tuple[int, int]]:
        """The same from the workers' sketches (estimates; docs/discovery.md has the bound)."""
        check_limit(k)
        minute = topk.minute_of(self.wall_clock() if at is None else at)
        blobs: list[bytes] = []
        for m in topk.window(minute, self.window_minutes):
            pattern = self.keys.activity_sketch(m, "*")
            async for key in self.redis.scan_iter(match=pattern, count=100):
                blob = await self.redis.get(key)
                if blob:
                    blobs.append(blob)
        merged = topk.merge_serialized(blobs, self.sketch_lg_k)
        ranked = [(int(g), n) for g, n in topk.sketch_top(merged, 1 << self.sketch_lg_k)]
        return await self._keep(ranked, k, public_only)

    async def _keep(
        self, ranked: list[tuple[int, int]], k: int, public_only: bool
    ) -> list[tuple[int, int]]:
        if not public_only:
            return ranked[:k]
        out: list[tuple[int, int]] = []
        for start in range(0, len(ranked), 200):
            chunk = ranked[start : start + 200]
            rows = await self.redis.hmget(self.keys.directory(), [str(g) for g, _ in chunk])
            for row, raw in zip(chunk, rows, strict=True):
                if raw and orjson.loads(raw)["public"]:
                    out.append(row)
                    if len(out) == k:
                        return out
        return out

    async def exact_bytes(self, *, at: float | None = None) -> int:
        """Redis's MEMORY USAGE of the window's exact buckets."""
        minute = topk.minute_of(self.wall_clock() if at is None else at)
        total = 0
        for m in topk.window(minute, self.window_minutes):
            used = await self.redis.memory_usage(self.keys.activity(m), samples=0)
            total += int(used or 0)
        return total

    async def names(self, guild_ids: Iterable[int]) -> dict[int, str]:
        ids = [str(g) for g in guild_ids]
        if not ids:
            return {}
        rows = await self.redis.hmget(self.keys.directory(), ids)
        return {int(g): orjson.loads(r)["name"] for g, r in zip(ids, rows, strict=True) if r}


async def suggest_for(
    store: Store,
    directory: Directory,
    user_id: int,
    *,
    alpha: float,
    k: int = 10,
    max_neighbours: int = 200,
) -> list[tuple[Entry, float]]:
    """Public guilds for one user, scored as ``guilds.suggest.Model`` does, on the user's
    neighbourhood read from the metadata store: their guilds, up to ``max_neighbours`` fellow
    members (the lowest ids, for determinism), those members' guilds; candidates' sizes are
    their real member counts and their activity the exact top-K window's counts."""
    check_limit(k)
    mine = {g.id for g in await store.user_guilds(user_id)}
    neighbours: set[int] = set()
    for guild_id in sorted(mine):
        room = max_neighbours - len(neighbours)
        if room <= 0:
            break
        neighbours.update(sorted(set(await store.guild_members(guild_id)) - {user_id})[:room])
    members: dict[int, set[int]] = {user_id: mine}
    for other in sorted(neighbours):
        members[other] = {g.id for g in await store.user_guilds(other)}
    candidates = {g for gs in members.values() for g in gs} | mine
    sizes = {g: len(await store.guild_members(g)) for g in sorted(candidates)}
    activity = dict(await directory.top_exact(MAX_LIMIT))
    model = suggest.Model(members, activity, sizes=sizes)
    ranked = model.suggest(user_id, alpha=alpha, k=len(candidates) or 1, fill=False)
    out: list[tuple[Entry, float]] = []
    for guild_id, score in ranked:
        entry = await directory.get(guild_id)
        if entry is not None and entry.public:
            out.append((entry, score))
            if len(out) == k:
                break
    return out


def _member(name: str, guild_id: int) -> str:
    return f"{normalize(name)}{_SEP}{guild_id}"


class ActivityCounter:
    """The worker's hook: counts a batch's accepted messages per guild (exact, in Redis) and
    into this worker's sketch of the current minute, written at most every ``flush_s``."""

    def __init__(
        self,
        directory: Directory,
        consumer: str,
        *,
        flush_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = directory
        self.consumer = consumer
        self.flush_s = flush_s
        self.clock = clock
        self._minute = -1
        self._sketch = topk.new_sketch(directory.sketch_lg_k)
        self._dirty = False
        self._flushed_at = float("-inf")

    async def batch(self, guild_ids: Iterable[int], *, pipe: Any = None) -> int:
        """Count a batch: into this minute's sketch, and into Redis — on ``pipe`` when given
        (the caller executes it; returns how many commands were queued), else now."""
        counts = Counter(guild_ids)
        if not counts:
            return 0
        now = self.directory.wall_clock()
        minute = topk.minute_of(now)
        if minute != self._minute:
            if self._dirty:  # the minute that just ended, complete
                await self._flush()
            self._minute, self._sketch = minute, topk.new_sketch(self.directory.sketch_lg_k)
        for guild_id, n in counts.items():
            self._sketch.update(str(guild_id), n)
        self._dirty = True
        queued = 0
        if pipe is None:
            await self.directory.record(counts, at=now)
        else:
            queued = self.directory.queue_record(pipe, counts, at=now)
        if self.clock() - self._flushed_at >= self.flush_s:
            await self._flush()
        return queued

    async def _flush(self) -> None:
        await self.directory.write_sketch(self._minute, self.consumer, self._sketch.serialize())
        self._dirty = False
        self._flushed_at = self.clock()

    async def close(self) -> None:
        if self._dirty:
            await self._flush()


async def exact_in_redis(
    redis: aioredis.Redis, keys: Keys, events: list[topk.Event], *, k: int, minutes: int
) -> tuple[list[tuple[int, int]], int, float]:
    """The exact arm of the top-K comparison on a real Redis: write ``events`` as the workers
    would (one pipeline per minute), then query. Returns (top-K, MEMORY USAGE of the window's
    buckets in bytes, the query's milliseconds)."""
    directory = Directory(redis, keys, window_minutes=minutes)
    per_minute: dict[int, Counter[int]] = {}
    for e in events:
        per_minute.setdefault(e.minute, Counter())[int(e.guild)] += e.n
    for minute, counts in sorted(per_minute.items()):
        await directory.record(counts, at=minute * 60)
    now = max(per_minute) * 60 + 1
    t0 = time.perf_counter()
    top = await directory.top_exact(k, at=now)
    ms = (time.perf_counter() - t0) * 1000
    return top, await directory.exact_bytes(at=now), ms
