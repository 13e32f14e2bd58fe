"""What both search backends share: the indexed document and how user text splits into terms
(storage/search_index.py for SQLite FTS5, storage/search_opensearch.py for OpenSearch)."""

from __future__ import annotations

import re
from dataclasses import dataclass

_TERM = re.compile(r"\w+", re.UNICODE)
MAX_TERMS = 16


@dataclass(frozen=True, slots=True)
class IndexDoc:
    message_id: int
    channel_id: int
    guild_id: int
    author_id: int
    content: str
    payload: str
