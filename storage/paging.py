"""Reading a channel page: hot cache first, then history, with no gap and no duplicate.

The hot cache holds the newest N messages that workers have written; everything older than its
oldest entry is read from history. A page that straddles the boundary takes what the hot cache
has and continues in history strictly below the oldest id it returned, so ids never repeat. If
Redis was flushed the hot cache is simply empty and history serves everything.
"""

from __future__ import annotations

from storage.base import HistoryStore
from storage.hot import HotCache


async def read_page(
    hot: HotCache, history: HistoryStore, channel_id: int, *, before: int | None, limit: int
) -> list[tuple[int, str]]:
    """Newest first: [(message_id, payload)] strictly older than ``before``."""
    page = await hot.page(channel_id, before=before, limit=limit)
    if len(page) >= limit:
        return page
    # Anything the hot cache no longer (or never) held is in history. Continue below the oldest
    # id seen so far; if the hot cache held nothing below ``before`` start at ``before`` itself.
    cursor = page[-1][0] if page else before
    rest = await history.page(channel_id, before=cursor, limit=limit - len(page))
    return page + [(m.message_id, m.payload) for m in rest]
