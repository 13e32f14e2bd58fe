"""Reading a channel page: hot cache first, then history, with no gap and no duplicate.

The hot cache holds the newest N messages that workers have written; everything older than its
oldest entry is read from history. A page that straddles the boundary takes what the hot cache
has and continues in history strictly below the oldest id it returned, so ids never repeat. If
Redis was flushed the hot cache is simply empty and history serves everything. With the hot
cache off (``hot_size=0``) Redis is not asked at all: every page is a history read.

Three ways to ask, as Discord's channel-messages API (at most one per request):

- ``before`` (or none): the newest ``limit`` messages strictly older than ``before``.
- ``after``: the oldest ``limit`` messages strictly newer than ``after``. History is read
  forwards first, then the hot cache continues above it: history rows at or above the hot
  cache's oldest id are dropped and taken from the cache instead (which holds every message from
  its oldest id up), so the seam is the same one ``before`` uses.
- ``around``: ``limit - limit // 2`` messages at or after ``around`` (the message itself, if it
  exists) and ``limit // 2`` strictly before it: a jump to a message link or, since a snowflake
  encodes time, to a date (``chatscale.snowflake.from_timestamp_ms``).

Every page is returned newest first. ``history`` is any ``HistoryStore``; with a cold tier it is
``storage.tiers.TieredHistory``, so pages reach archived buckets the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from storage.base import HistoryStore
from storage.hot import HotCache

#: Told of every read a page makes: ``(source, rows, seconds)``, source ``"hot"`` or ``"history"``.
ReadHook = Callable[[str, int, float], None]


async def read_page(
    hot: HotCache,
    history: HistoryStore,
    channel_id: int,
    *,
    before: int | None = None,
    after: int | None = None,
    around: int | None = None,
    limit: int,
    on_read: ReadHook | None = None,
) -> list[tuple[int, str]]:
    """Newest first: [(message_id, payload)]; see the module docstring for the three modes."""
    if sum(x is not None for x in (before, after, around)) > 1:
        raise ValueError("at most one of before, after and around")
    if around is not None:
        newer = await _forwards(hot, history, channel_id, around - 1, limit - limit // 2, on_read)
        older = await _backwards(hot, history, channel_id, around, limit // 2, on_read)
        return newer[::-1] + older if limit // 2 else newer[::-1]
    if after is not None:
        return (await _forwards(hot, history, channel_id, after, limit, on_read))[::-1]
    return await _backwards(hot, history, channel_id, before, limit, on_read)


async def _backwards(
    hot: HotCache,
    history: HistoryStore,
    channel_id: int,
    before: int | None,
    limit: int,
    on_read: ReadHook | None,
) -> list[tuple[int, str]]:
    page: list[tuple[int, str]] = []
    if limit <= 0:
        return page
    if hot.size > 0:
        started = time.perf_counter()
        page = await hot.page(channel_id, before=before, limit=limit)
        if on_read is not None:
            on_read("hot", len(page), time.perf_counter() - started)
        if len(page) >= limit:
            return page
    # Anything the hot cache no longer (or never) held is in history. Continue below the oldest
    # id seen so far; if the hot cache held nothing below ``before`` start at ``before`` itself.
    cursor = page[-1][0] if page else before
    started = time.perf_counter()
    rest = await history.page(channel_id, before=cursor, limit=limit - len(page))
    if on_read is not None:
        on_read("history", len(rest), time.perf_counter() - started)
    return page + [(m.message_id, m.payload) for m in rest]


async def _forwards(
    hot: HotCache,
    history: HistoryStore,
    channel_id: int,
    after: int,
    limit: int,
    on_read: ReadHook | None,
) -> list[tuple[int, str]]:
    """Oldest first: [(message_id, payload)] strictly newer than ``after``."""
    after = max(after, 0)  # ``around=0`` asks from the start of time
    oldest_hot: int | None = None
    cached: list[tuple[int, str]] = []
    if hot.size > 0:
        started = time.perf_counter()
        oldest_hot, cached = await hot.page_after(channel_id, after=after, limit=limit)
        if on_read is not None:
            on_read("hot", len(cached), time.perf_counter() - started)
        if oldest_hot is not None and after >= oldest_hot:
            return cached  # everything newer than ``after`` is in the cache
    started = time.perf_counter()
    rows = await history.page_after(channel_id, after=after, limit=limit)
    if on_read is not None:
        on_read("history", len(rows), time.perf_counter() - started)
    page = [
        (m.message_id, m.payload) for m in rows if oldest_hot is None or m.message_id < oldest_hot
    ]
    if len(page) >= limit or oldest_hot is None:
        return page[:limit]
    # The cache holds every message from its oldest id up; nothing lies between the last history
    # row kept (below that id) and the cache's first entry above ``after``.
    return page + cached[: limit - len(page)]
