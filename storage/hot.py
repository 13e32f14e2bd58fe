"""The hot cache: the latest N messages of each channel in Redis.

"Load the channel" reads here. Each channel is a sorted set whose scores are all 0 and whose
members are ``<20-digit zero-padded id>|<payload>``: lexicographic order is id order, and
snowflakes (up to 2**63) would lose precision as float scores. Adding the same message twice is
a no-op because the member bytes are identical (the payload is fixed at the gateway). Add and
trim run in one MULTI, so a reader never sees more than N.
"""

from __future__ import annotations

import orjson
import redis.asyncio as aioredis

from chatscale.keys import Keys


def _member(message_id: int, payload: str) -> bytes:
    return f"{message_id:020d}|{payload}".encode()


member_bytes = _member  # for scripts that write the hot cache themselves (storage/lua/hot_add.lua)


def _split(member: bytes) -> tuple[int, str]:
    head, _, payload = member.partition(b"|")
    return int(head), payload.decode()


class HotCache:
    def __init__(self, redis: aioredis.Redis, keys: Keys, *, size: int = 50) -> None:
        self._redis = redis
        self._keys = keys
        self.size = size

    async def add(self, channel_id: int, message_id: int, payload: str) -> None:
        key = self._keys.hot(channel_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zadd(key, {_member(message_id, payload): 0})
            pipe.zremrangebyrank(key, 0, -(self.size + 1))
            await pipe.execute()

    async def add_many(self, messages: list[tuple[int, int, str]]) -> None:
        """[(channel_id, message_id, payload)] in one MULTI (one round trip for a batch)."""
        async with self._redis.pipeline(transaction=True) as pipe:
            for channel_id, message_id, payload in messages:
                key = self._keys.hot(channel_id)
                pipe.zadd(key, {_member(message_id, payload): 0})
                pipe.zremrangebyrank(key, 0, -(self.size + 1))
            await pipe.execute()

    async def page(
        self, channel_id: int, *, before: int | None, limit: int
    ) -> list[tuple[int, str]]:
        """Newest first, ids strictly below ``before``: [(id, payload)]."""
        high = b"+" if before is None else f"({before:020d}".encode()
        members = await self._redis.zrevrangebylex(self._keys.hot(channel_id), high, b"-", 0, limit)
        return [_split(m) for m in members]

    async def page_after(
        self, channel_id: int, *, after: int, limit: int
    ) -> tuple[int | None, list[tuple[int, str]]]:
        """Oldest first, ids strictly above ``after``, and the oldest id the cache holds, read
        in one MULTI so the two agree (a trim between them could otherwise open a gap)."""
        key = self._keys.hot(channel_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zrange(key, 0, 0)
            # members are "<id>|<payload>": "[<after + 1>" is the first one above ``after``
            pipe.zrangebylex(key, f"[{after + 1:020d}".encode(), b"+", 0, limit)
            first, members = await pipe.execute()
        return (_split(first[0])[0] if first else None), [_split(m) for m in members]

    async def oldest(self, channel_id: int) -> int | None:
        first = await self._redis.zrange(self._keys.hot(channel_id), 0, 0)
        return _split(first[0])[0] if first else None

    # ---- message deletion (DELETE_MESSAGE) ---------------------------------------------------

    @staticmethod
    def _range(message_id: int) -> tuple[bytes, bytes]:
        """The lex range holding exactly this id's member: "<id>|..." ('}' follows '|')."""
        head = f"{message_id:020d}".encode()
        return b"[" + head + b"|", b"(" + head + b"}"

    async def get(self, channel_id: int, message_id: int) -> str | None:
        """The payload of one message if the cache holds it."""
        low, high = self._range(message_id)
        members = await self._redis.zrangebylex(self._keys.hot(channel_id), low, high, 0, 1)
        return _split(members[0])[1] if members else None

    async def remove_many(self, keys: list[tuple[int, int]]) -> None:
        """Remove messages by (channel_id, message_id), one round trip; absent ones are no-ops."""
        if not keys:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for channel_id, message_id in keys:
                pipe.zremrangebylex(self._keys.hot(channel_id), *self._range(message_id))
            await pipe.execute()


async def stored_author(
    hot: HotCache, history: object, channel_id: int, message_id: int
) -> int | None:
    """The author id of a message in the hot cache or the history store, else None (deleted,
    never sent, or only in the cold tier). ``history`` is a ``HistoryStore``."""
    payload = await hot.get(channel_id, message_id)
    if payload is not None:
        try:
            return int(orjson.loads(payload)["author"]["id"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None
    rows = await history.page(channel_id, before=message_id + 1, limit=1)  # type: ignore[attr-defined]
    if rows and rows[0].message_id == message_id:
        return int(rows[0].author_id)
    return None
