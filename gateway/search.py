"""SEARCH (op 25) at the gateway: the index answers, permissions are checked at query time.

Which channels a search may return is computed when the request arrives, from the metadata
store (``guilds.readable.readable_channels``), not from what was true when a message was
indexed nor from the session's cached view. The index only filters to those channel ids
(``storage.search_index``).

The answer is a SEARCH_RESULTS dispatch ``{"nonce", "messages": [MESSAGE_CREATE d, ...]}``,
newest first, never kept for RESUME (like HISTORY).
"""

from __future__ import annotations

from typing import Any

from chatscale.redisconn import TRANSIENT
from chatscale.wire import Search, dumps
from guilds.readable import readable_channels
from storage import StorageUnavailable
from storage.search_index import SearchIndex


class SearchDesk:
    """The gateway's search side: opens the index on first use (``search_url``)."""

    def __init__(self, gw: Any) -> None:
        self.gw = gw
        self.index: SearchIndex | None = None

    async def answer(self, client: Any, request: Search) -> None:
        session = client.session
        assert session is not None
        gw = self.gw
        if not gw.settings.search_url:
            gw.send_error(client, "UNAVAILABLE", "search is not enabled", nonce=request.nonce)
            return
        try:
            if self.index is None:
                self.index = await SearchIndex.open(gw.settings.search_url)
            channels = await readable_channels(gw.store, session.user_id, guild_id=request.guild_id)
            if request.channel_id is not None:
                if request.channel_id not in channels:
                    gw.send_error(
                        client,
                        "UNKNOWN_CHANNEL",
                        "no such channel readable by you",
                        nonce=request.nonce,
                    )
                    return
                channels = {request.channel_id}
            hits = await self.index.search(
                channels,
                text=request.content,
                author_id=request.author_id,
                before=request.before,
                after=request.after,
                limit=request.limit,
            )
        except (*TRANSIENT, StorageUnavailable):
            gw.send_error(
                client, "UNAVAILABLE", "search is unavailable", nonce=request.nonce, retry_after=1.0
            )
            return
        body = ",".join(payload for _, payload in hits)
        d = f'{{"nonce":{dumps(request.nonce)},"messages":[{body}]}}'
        gw.send(client, session.dispatch("SEARCH_RESULTS", d, replay=False))

    async def close(self) -> None:
        if self.index is not None:
            await self.index.close()
            self.index = None
