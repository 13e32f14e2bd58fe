"""The search index: SQLite FTS5 in its own file, apart from history storage.

Why FTS5: it ships inside the standard library's ``sqlite3`` (no new dependency, no server to
run), keeps a real inverted index with BM25 and prefix queries, and commits the index rows and
the indexer's stream offset in *one* transaction, so an indexer killed at any point resumes
exactly where its last commit ended (no message indexed twice, none skipped). Its limit is one
writer per file: a bigger deployment runs a search engine (OpenSearch) fed from the same stream.

Tables: ``docs`` (one row per message: ids, author, the text indexed and the payload returned,
like a search engine's ``_source``), ``fts`` (FTS5 over ``docs.content``, external content) and
``offsets`` (stream name -> last entry id indexed) and ``deleted`` (ids of deleted messages: a
tombstone, so an add that arrives after its deletion — a worker indexing at write a batch it
retries, or the stream replayed — never brings a deleted message back; adds are keyed by id, so
two paths indexing one message leave one document).

A query never decides visibility: the caller passes the channel ids the requester may read
*now* (``gateway/search.py`` computes them from the metadata store at query time), and the
index filters to them. Text is matched as a conjunction of quoted terms, so user input cannot
inject FTS5 query syntax.

``SearchIndex.open("opensearch://host:port/index")`` returns the same API on OpenSearch instead
(storage/search_opensearch.py).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from storage.exceptions import StorageUnavailable
from storage.search_doc import _TERM, MAX_TERMS, IndexDoc

SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    message_id INTEGER PRIMARY KEY, channel_id INTEGER NOT NULL, guild_id INTEGER NOT NULL,
    author_id INTEGER NOT NULL, content TEXT NOT NULL, payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS docs_by_channel ON docs (channel_id, message_id);
CREATE INDEX IF NOT EXISTS docs_by_author ON docs (author_id, message_id);
CREATE VIRTUAL TABLE IF NOT EXISTS fts USING fts5(
    content, content='docs', content_rowid='message_id', tokenize='unicode61'
);
CREATE TABLE IF NOT EXISTS offsets (stream TEXT PRIMARY KEY, last_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS deleted (message_id INTEGER PRIMARY KEY);
"""

__all__ = ["MAX_TERMS", "IndexDoc", "SearchIndex", "match_expression", "path_of"]


def match_expression(text: str) -> str | None:
    """User text -> an FTS5 query: every word must appear (quoted, so no operators). The last
    word also matches as a prefix ("hel" finds "hello"), as a search box does while typing."""
    terms = _TERM.findall(text)[:MAX_TERMS]
    if not terms:
        return None
    quoted = [f'"{t}"' for t in terms]
    quoted[-1] += "*"
    return " ".join(quoted)


def path_of(url: str) -> str:
    if not url.startswith("sqlite://"):
        raise ValueError(
            f"unknown search URL {url!r}: use sqlite:///path or opensearch://host:port/index"
        )
    return url.removeprefix("sqlite://").removeprefix("/")  # sqlite:////abs/path -> /abs/path


class SearchIndex:
    def __init__(self, path: str) -> None:
        self.path = path
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="search")
        self._db: sqlite3.Connection | None = None

    @classmethod
    async def open(cls, url: str) -> SearchIndex:
        if url.startswith("opensearch://"):  # the same API on a search engine
            from storage.search_opensearch import OpenSearchIndex

            return await OpenSearchIndex.open(url)  # type: ignore[return-value]
        path = path_of(url)
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        index = cls(path)
        await index._run(index._connect)
        return index

    def _connect(self) -> None:
        db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=10000")
        db.executescript(SCHEMA)
        self._db = db

    async def _run(self, fn: Any, *args: Any) -> Any:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        except sqlite3.OperationalError as exc:
            raise StorageUnavailable(f"search index: {exc}") from exc

    async def close(self) -> None:
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._pool.shutdown(wait=True)

    # ---- writing (the indexer) --------------------------------------------------------------

    def _apply(
        self, stream: str, last_id: str, adds: Sequence[IndexDoc], deletes: Sequence[int]
    ) -> int:
        db = self._db
        assert db is not None
        added = 0
        db.execute("BEGIN IMMEDIATE")
        try:
            if adds:
                marks = ",".join("?" * len(adds))
                dead = {
                    r[0]
                    for r in db.execute(
                        f"SELECT message_id FROM deleted WHERE message_id IN ({marks})",
                        [d.message_id for d in adds],
                    )
                }
                adds = [d for d in adds if d.message_id not in dead]
            for d in adds:
                cur = db.execute(
                    "INSERT OR IGNORE INTO docs VALUES (?, ?, ?, ?, ?, ?)",
                    (d.message_id, d.channel_id, d.guild_id, d.author_id, d.content, d.payload),
                )
                if cur.rowcount == 1:  # a redelivered entry is already indexed: skip it
                    db.execute(
                        "INSERT INTO fts (rowid, content) VALUES (?, ?)", (d.message_id, d.content)
                    )
                    added += 1
            for message_id in deletes:
                db.execute("INSERT OR IGNORE INTO deleted VALUES (?)", (message_id,))
                row = db.execute(
                    "SELECT content FROM docs WHERE message_id = ?", (message_id,)
                ).fetchone()
                if row is not None:
                    db.execute(
                        "INSERT INTO fts (fts, rowid, content) VALUES ('delete', ?, ?)",
                        (message_id, row[0]),
                    )
                    db.execute("DELETE FROM docs WHERE message_id = ?", (message_id,))
            if stream:  # "" : a write that is no stream's (the worker indexing at write)
                db.execute(
                    "INSERT INTO offsets VALUES (?, ?) ON CONFLICT(stream) DO UPDATE SET "
                    "last_id = excluded.last_id",
                    (stream, last_id),
                )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return added

    async def apply(
        self, stream: str, last_id: str, adds: Sequence[IndexDoc], deletes: Sequence[int] = ()
    ) -> int:
        """Index ``adds``, drop ``deletes`` and move the stream offset, in one transaction.
        Returns how many documents were new."""
        return await self._run(self._apply, stream, last_id, list(adds), list(deletes))

    async def add(self, docs: Sequence[IndexDoc]) -> int:
        """Index ``docs`` outside any stream (``search_indexing=write``: the worker, before its
        fan-out), in one transaction; idempotent, and a deleted id stays deleted."""
        return await self._run(self._apply, "", "", list(docs), [])

    async def offset(self, stream: str) -> str | None:
        rows = await self._run(
            self._exec, "SELECT last_id FROM offsets WHERE stream = ?", (stream,)
        )
        return rows[0][0] if rows else None

    def _exec(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        assert self._db is not None
        return self._db.execute(sql, params).fetchall()

    async def count(self) -> int:
        return (await self._run(self._exec, "SELECT count(*) FROM docs"))[0][0]

    # ---- querying (the gateway) -------------------------------------------------------------

    async def search(
        self,
        channel_ids: Iterable[int],
        *,
        text: str = "",
        author_id: int | None = None,
        before: int | None = None,
        after: int | None = None,
        limit: int = 25,
    ) -> list[tuple[int, str]]:
        """Newest first: [(message_id, payload)] in ``channel_ids`` only. Page on with
        ``before`` = the last id returned."""
        channels = sorted(set(channel_ids))
        if not channels:
            return []
        where = [f"d.channel_id IN ({','.join('?' * len(channels))})"]
        params: list[Any] = list(channels)
        match = match_expression(text)
        if author_id is not None:
            where.append("d.author_id = ?")
            params.append(author_id)
        if match is not None:
            if before is not None:  # on fts.rowid, so FTS5 starts its walk there
                where.append("fts.rowid < ?")
                params.append(before)
            if after is not None:
                where.append("fts.rowid > ?")
                params.append(after)
            # ORDER BY fts.rowid: FTS5 walks its doclists newest first and the join stops at
            # ``limit`` rows; ordering by the docs column would sort every match first.
            sql = (
                "SELECT d.message_id, d.payload FROM fts CROSS JOIN docs d "
                "ON d.message_id = fts.rowid "
                f"WHERE fts MATCH ? AND {' AND '.join(where)} ORDER BY fts.rowid DESC LIMIT ?"
            )
            params = [match, *params, limit]
        else:
            if before is not None:
                where.append("d.message_id < ?")
                params.append(before)
            if after is not None:
                where.append("d.message_id > ?")
                params.append(after)
            sql = (
                f"SELECT d.message_id, d.payload FROM docs d WHERE {' AND '.join(where)} "
                "ORDER BY d.message_id DESC LIMIT ?"
            )
            params.append(limit)
        return [(r[0], r[1]) for r in await self._run(self._exec, sql, tuple(params))]
