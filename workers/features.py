"""Feature serving: an account's stored streaming features and its live session context in one
read (one Redis round trip for any number of accounts).

Stored (written by the spam detector, ``workers/spam.py``, one pipeline per worker batch; joins
by ``ControlPlane.add_member``), per account, tagged by user so one account's keys share a
cluster slot:

- ``keys.features(u)`` hash: ``msgs``, ``dups`` (messages whose text the account had sent
  before), ``mentions`` — totals since the first message, kept ``2 x SPAM_WINDOW_S``;
- sliding windows as sorted sets scored by ms: ``msgs`` (message ids: the current rate),
  ``chans`` (channels written in: distinct channels), ``digests`` (texts: duplicates),
  ``joins`` (guilds joined: joins per minute).

Live (the presence service's hash ``keys.presence_users``): status and devices
(``client_status``) of an account's sessions. The account's age comes from its snowflake.

``read`` is what the detector scores from and what the moderation stage or an operator reads
(``chatscale features USER``); its latency is ``chatscale_feature_read_seconds``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import orjson
import redis.asyncio as aioredis
from prometheus_client import Histogram

from chatscale import snowflake
from chatscale.keys import Keys

RATE_WINDOW_MS = 60_000  # "current rate": messages in the last minute
FEATURE_READ = Histogram(
    "chatscale_feature_read_seconds",
    "Time of one feature-serving read (stored features + live context) for a batch of accounts.",
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1),
)


@dataclass(frozen=True, slots=True)
class AccountFeatures:
    user_id: int
    age_s: float  # from the account's snowflake
    messages: int = 0
    duplicates: int = 0
    mentions: int = 0
    distinct_channels: int = 0  # within the feature window
    messages_last_min: int = 0  # the live rate
    joins_last_min: int = 0
    joins: int = 0
    status: str = "offline"  # live: the presence service's view
    devices: dict[str, str] = field(default_factory=dict)

    @property
    def duplicate_ratio(self) -> float:
        return self.duplicates / self.messages if self.messages else 0.0

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "duplicate_ratio": round(self.duplicate_ratio, 3)}


def account_age_s(user_id: int, now_ms: int) -> float:
    return max(0.0, (now_ms - snowflake.timestamp_ms(user_id)) / 1000)


async def read(
    redis: aioredis.Redis, keys: Keys, user_ids: list[int], *, now_ms: int | None = None
) -> dict[int, AccountFeatures]:
    """Every account's features and live context, in one pipelined round trip."""
    started = time.perf_counter()
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    users = sorted(set(user_ids))
    if not users:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for u in users:
            pipe.hgetall(keys.features(u))
            pipe.zcount(keys.feature_window(u, "msgs"), now_ms - RATE_WINDOW_MS, "+inf")
            pipe.zcard(keys.feature_window(u, "chans"))
            pipe.zcount(keys.feature_window(u, "joins"), now_ms - RATE_WINDOW_MS, "+inf")
            pipe.zcard(keys.feature_window(u, "joins"))
        pipe.hmget(keys.presence_users(), [str(u) for u in users])
        replies = await pipe.execute()
    presences = replies[-1]
    out = {}
    for i, u in enumerate(users):
        h, rate, chans, joins_min, joins = replies[5 * i : 5 * i + 5]
        live = orjson.loads(presences[i]) if presences[i] else {}
        out[u] = AccountFeatures(
            user_id=u,
            age_s=account_age_s(u, now_ms),
            messages=int(h.get(b"msgs", 0)),
            duplicates=int(h.get(b"dups", 0)),
            mentions=int(h.get(b"mentions", 0)),
            distinct_channels=int(chans),
            messages_last_min=int(rate),
            joins_last_min=int(joins_min),
            joins=int(joins),
            status=live.get("status", "offline"),
            devices=live.get("client_status", {}),
        )
    FEATURE_READ.observe(time.perf_counter() - started)
    return out
