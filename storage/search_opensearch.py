"""The search index in OpenSearch (``opensearch://host:port/index``), behind SearchIndex's API.

The same contract as the SQLite FTS5 index (storage/search_index.py), so the indexer and the
gateway do not know which one they talk to; ``SearchIndex.open`` picks by URL scheme.

* **Documents**: index ``<index>``, one per message, ``_id`` = message id; ``content`` is text
  analysed by ``standard`` + ``lowercase`` + ``asciifolding`` (FTS5's ``unicode61`` folds
  accents too); ``payload`` is stored, not indexed (returned like ``_source``).
* **Offsets**: index ``<index>-offsets``, one document per stream. OpenSearch has no
  transaction across documents, so ``apply`` writes the batch first (``op_type=create``: a
  redelivered message is a 409, counted as not new) and the offset only after every item
  succeeded, both with ``refresh=wait_for`` (visible to the next search). An indexer killed
  between the two re-reads the batch and changes nothing: the writes are idempotent, where
  SQLite made them atomic.
* **Deletions** overwrite the document with a tombstone (``deleted: true``, no content) instead
  of removing it: a later ``create`` of that id (a worker indexing at write a batch it retries,
  or the stream replayed) is a 409 and never brings the message back, as the SQLite index's
  ``deleted`` table does; queries and ``count`` leave tombstones out.
* **Queries**: a ``bool`` with ``filter`` clauses (``terms`` on the channel ids the caller may
  read now, the author, a ``range`` on the id for ``before``/``after``) and, for text,
  ``match_bool_prefix`` with ``operator: and``: every word must appear, the last one as a
  prefix, and the text is analysed, never parsed, so user input cannot inject query syntax.
  Newest first by ``message_id``.

HTTP through httpx (async, connection pooling, timeouts, one small well-kept dependency) rather
than opensearch-py, whose async client pulls in aiohttp and wraps the same JSON bodies.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import quote, urlparse

import orjson

from storage.exceptions import StorageUnavailable
from storage.search_doc import _TERM, MAX_TERMS, IndexDoc

MAPPINGS = {
    "settings": {
        "number_of_shards": 1,
        "number_of_replicas": 0,
        # apply() waits for the refresh (refresh=wait_for) so a batch is searchable when its
        # offset moves: 200 ms instead of 1 s bounds that wait (and the indexer's commit time)
        "refresh_interval": "200ms",
        "analysis": {
            "analyzer": {
                "folded": {"tokenizer": "standard", "filter": ["lowercase", "asciifolding"]}
            }
        },
    },
    "mappings": {
        "dynamic": "strict",
        "properties": {
            "message_id": {"type": "long"},
            "channel_id": {"type": "long"},
            "guild_id": {"type": "long"},
            "author_id": {"type": "long"},
            "content": {"type": "text", "analyzer": "folded"},
            "payload": {"type": "keyword", "index": False, "doc_values": False},
            "deleted": {"type": "boolean"},
        },
    },
}
OFFSETS = {
    "settings": {"number_of_shards": 1, "number_of_replicas": 0},
    "mappings": {"dynamic": "strict", "properties": {"last_id": {"type": "keyword"}}},
}


def parse_url(url: str) -> tuple[str, str]:
    """``opensearch://host:port/index`` -> (``http://host:port``, index)."""
    u = urlparse(url)
    index = u.path.strip("/")
    if u.scheme != "opensearch" or not u.hostname or not index or "/" in index:
        raise ValueError(f"bad search URL {url!r}: use opensearch://host:port/index")
    return f"http://{u.hostname}:{u.port or 9200}", index


class OpenSearchIndex:
    def __init__(self, base_url: str, index: str) -> None:
        import httpx  # the `opensearch` extra

        self.base_url = base_url
        self.index = index
        self.offsets_index = f"{index}-offsets"
        self._http = httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(10.0, read=30.0))

    @classmethod
    async def open(cls, url: str) -> OpenSearchIndex:
        base_url, index = parse_url(url)
        self = cls(base_url, index)
        try:
            for name, body in ((self.index, MAPPINGS), (self.offsets_index, OFFSETS)):
                status, answer = await self._call("PUT", f"/{name}", body, ok=(200, 400))
                if status == 400 and "resource_already_exists" not in str(answer):
                    raise StorageUnavailable(f"search index {name}: {answer}")
        except BaseException:
            await self.close()
            raise
        return self

    async def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        ok: tuple[int, ...] = (200, 201),
        ndjson: bytes | None = None,
    ) -> tuple[int, Any]:
        import httpx

        try:
            if ndjson is not None:
                resp = await self._http.request(
                    method, path, content=ndjson, headers={"Content-Type": "application/x-ndjson"}
                )
            elif body is None:
                resp = await self._http.request(method, path)
            else:
                resp = await self._http.request(
                    method,
                    path,
                    content=orjson.dumps(body),
                    headers={"Content-Type": "application/json"},
                )
        except httpx.HTTPError as exc:
            raise StorageUnavailable(f"search index {self.base_url}: {exc!r}") from exc
        answer = orjson.loads(resp.content) if resp.content else None
        if resp.status_code not in ok:
            raise StorageUnavailable(
                f"search index {self.base_url}{path}: HTTP {resp.status_code} {answer}"
            )
        return resp.status_code, answer

    async def close(self) -> None:
        await self._http.aclose()

    # ---- writing (the indexer) --------------------------------------------------------------

    async def apply(
        self, stream: str, last_id: str, adds: Sequence[IndexDoc], deletes: Sequence[int] = ()
    ) -> int:
        """Index ``adds``, drop ``deletes``, then move the stream offset. Returns how many
        documents were new (a redelivered one already exists: 409, skipped)."""
        added = 0
        if adds or deletes:
            lines = []
            for d in adds:
                lines.append(orjson.dumps({"create": {"_id": str(d.message_id)}}))
                lines.append(
                    orjson.dumps(
                        {
                            "message_id": d.message_id,
                            "channel_id": d.channel_id,
                            "guild_id": d.guild_id,
                            "author_id": d.author_id,
                            "content": d.content,
                            "payload": d.payload,
                        }
                    )
                )
            for message_id in deletes:  # a tombstone: see the module docstring
                lines.append(orjson.dumps({"index": {"_id": str(message_id)}}))
                lines.append(orjson.dumps({"message_id": message_id, "deleted": True}))
            _, answer = await self._call(
                "POST",
                f"/{self.index}/_bulk?refresh=wait_for",
                ndjson=b"\n".join(lines) + b"\n",
            )
            for item in answer["items"]:
                ((op, result),) = item.items()
                status = result.get("status", 500)
                if op == "create" and status == 201:
                    added += 1
                elif not (op == "create" and status == 409) and not (
                    op == "index" and status in (200, 201)
                ):
                    raise StorageUnavailable(f"search index bulk {op}: {result}")
        if not stream:  # "": a write that is no stream's (the worker indexing at write)
            return added
        await self._call(
            "PUT",
            f"/{self.offsets_index}/_doc/{quote(stream, safe='')}?refresh=wait_for",
            {"last_id": last_id},
        )
        return added

    async def add(self, docs: Sequence[IndexDoc]) -> int:
        """Index ``docs`` outside any stream (``search_indexing=write``: the worker, before its
        fan-out); idempotent, and a deleted id stays deleted."""
        return await self.apply("", "", docs, [])

    async def offset(self, stream: str) -> str | None:
        status, answer = await self._call(
            "GET", f"/{self.offsets_index}/_doc/{quote(stream, safe='')}", ok=(200, 404)
        )
        return answer["_source"]["last_id"] if status == 200 else None

    async def count(self) -> int:
        live = {"query": {"bool": {"must_not": [{"term": {"deleted": True}}]}}}
        _, answer = await self._call("POST", f"/{self.index}/_count", live)
        return answer["count"]

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
        """Newest first: [(message_id, payload)] in ``channel_ids`` only."""
        channels = sorted(set(channel_ids))
        if not channels:
            return []
        filters: list[dict[str, Any]] = [{"terms": {"channel_id": channels}}]
        if author_id is not None:
            filters.append({"term": {"author_id": author_id}})
        bounds = {}
        if before is not None:
            bounds["lt"] = before
        if after is not None:
            bounds["gt"] = after
        if bounds:
            filters.append({"range": {"message_id": bounds}})
        query: dict[str, Any] = {"filter": filters, "must_not": [{"term": {"deleted": True}}]}
        terms = _TERM.findall(text)[:MAX_TERMS]
        if terms:
            query["must"] = [
                {"match_bool_prefix": {"content": {"query": " ".join(terms), "operator": "and"}}}
            ]
        body = {
            "query": {"bool": query},
            "sort": [{"message_id": "desc"}],
            "size": limit,
            "_source": ["payload"],
            "track_total_hits": False,
        }
        _, answer = await self._call("POST", f"/{self.index}/_search", body)
        return [(int(h["_id"]), h["_source"]["payload"]) for h in answer["hits"]["hits"]]
