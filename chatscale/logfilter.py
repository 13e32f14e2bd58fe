"""A logging filter that lets a repeated line through a few times per window, then counts it.

An error that repeats per connection or per accept (``Too many open files`` under a connection
flood) otherwise writes a traceback per event: ~300k lines, 135 MB of log in 45 s, and the
disk and CPU that costs are taken from serving. Lines are "the same" when logger, level and
message template (``record.msg``, before its arguments) match. After ``limit`` of them in a
window the rest are dropped and counted; the first one let through in a later window says how
many were dropped, so nothing disappears silently.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class RepeatFilter(logging.Filter):
    def __init__(
        self,
        *,
        limit: int = 10,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 10_000,
    ) -> None:
        super().__init__()
        self.limit = limit
        self.window_s = window_s
        self.clock = clock
        self.max_keys = max_keys  # distinct templates tracked; beyond it the oldest are forgotten
        # key -> [window start, lines let through in it, lines suppressed since last report]
        self._seen: dict[tuple[str, int, str], list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        entry = self._seen.get(key)
        if entry is None or now - entry[0] >= self.window_s:
            suppressed = int(entry[2]) if entry is not None else 0
            if entry is None and len(self._seen) >= self.max_keys:
                del self._seen[next(iter(self._seen))]
            self._seen[key] = [now, 1, 0]
            if suppressed:
                record.msg = f"{record.msg} [{suppressed} identical lines suppressed before this]"
            return True
        if entry[1] < self.limit:
            entry[1] += 1
            return True
        entry[2] += 1
        return False


def install(limit: int, window_s: float) -> None:
    """Put one filter on every handler of the root logger (call after ``basicConfig``); a handler
    that already has one keeps it, so calling this twice does not stack filters."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RepeatFilter) for f in handler.filters):
            handler.addFilter(RepeatFilter(limit=limit, window_s=window_s))
