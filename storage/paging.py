"""Reading a channel page: hot cache first, then history, with no gap and no duplicate.

The hot cache holds the newest N messages that workers have written; everything older than its
oldest entry is read from history. A page that straddles the boundary takes what the hot cache
has and continues in history strictly below the oldest id it returned, so ids never repeat. If
Redis was flushed the hot cache is simply empty and history serves everything. With the hot
cache off (``hot_size=0``) Redis is not asked at all: every page is a history read.
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
    before: int | None,
    limit: int,
    on_read: ReadHook | None = None,
) -> list[tuple[int, str]]:
    """Newest first: [(message_id, payload)] strictly older than ``before``."""
    page: list[tuple[int, str]] = []
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
