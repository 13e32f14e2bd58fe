"""Spam-bot detection in an account's first minutes: streaming features, a score, an action.

Every worker batch (``CHATSCALE_SPAM_DETECT=true``): the messages of accounts younger than
``SPAM_WINDOW_S`` (their age is in their snowflake id) update those accounts' features in one
pipeline (``workers/features.py``), the features are read back with the live context in a
second, each account is scored (``score``, pure), and an account at or above
``SPAM_THRESHOLD`` is acted on once: ``quarantine`` (the control plane bans it from its guilds
and ends its sessions before returning, ``ControlPlane.quarantine``), ``ban`` (the guild it
spammed) or ``log``. Each action is recorded in ``keys.spam_actions()`` with the score and the
features it was taken on — the ``spam-raid`` report reads it.

Older accounts cost nothing here: the check is arithmetic on the author id.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from chatscale.config import Settings
from chatscale.keys import Keys
from chatscale.wire import IngestMessage
from guilds.automod import content_of, mentions
from workers import features
from workers.features import AccountFeatures


@dataclass(frozen=True, slots=True)
class Signal:
    name: str
    value: float
    weight: float


def signals(f: AccountFeatures) -> list[Signal]:
    """What in the features looks like a bot, each in 0..1 times its weight."""
    per_msg = f.mentions / f.messages if f.messages else 0.0
    return [
        Signal("rate", min(1.0, max(0.0, f.messages_last_min - 6) / 14), 0.35),
        Signal("channels", min(1.0, max(0, f.distinct_channels - 2) / 4), 0.2),
        Signal("duplicates", f.duplicate_ratio if f.messages >= 3 else 0.0, 0.3),
        Signal("mentions", min(1.0, per_msg / 3), 0.15),
        Signal("joins", min(1.0, max(0, f.joins_last_min - 2) / 4), 0.2),
        Signal("no_presence", 1.0 if not f.devices and f.messages >= 3 else 0.0, 0.05),
    ]


def score(f: AccountFeatures) -> float:
    """0..1: the weighted signals, summed and capped (weights add to more than 1, so any
    three strong signals reach the default threshold 0.7, one or two never do)."""
    return min(1.0, sum(s.value * s.weight for s in signals(f)))


class SpamDetector:
    def __init__(self, settings: Settings, *, redis: aioredis.Redis, keys: Keys) -> None:
        self.settings = settings
        self.redis = redis
        self.keys = keys
        self.window_ms = settings.spam_window_s * 1000
        self.acted: set[int] = set()  # accounts this worker already acted on

    async def observe(
        self, messages: list[IngestMessage], *, now_ms: int | None = None
    ) -> list[tuple[AccountFeatures, float, IngestMessage]]:
        """Update the features of young authors; return those to act on (features, score, the
        message that tipped it)."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        young = [
            m
            for m in messages
            if features.account_age_s(m.author_id, now_ms) * 1000 < self.window_ms
        ]
        if not young:
            return []
        ttl = 2 * self.settings.spam_window_s
        async with self.redis.pipeline(transaction=False) as pipe:
            for m in young:
                text = content_of(m.payload)
                digest = hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
                u, k = m.author_id, self.keys
                pipe.zadd(k.feature_window(u, "digests"), {digest: now_ms}, nx=True)
                pipe.hincrby(k.features(u), "msgs", 1)
                pipe.hincrby(k.features(u), "mentions", mentions(text))
                pipe.zadd(k.feature_window(u, "msgs"), {str(m.id): now_ms})
                pipe.zadd(k.feature_window(u, "chans"), {str(m.channel_id): now_ms})
                for what in ("digests", "msgs", "chans"):
                    pipe.expire(k.feature_window(u, what), ttl)
                pipe.expire(k.features(u), ttl)
            replies = await pipe.execute()
        per = 9
        dups: dict[int, int] = {}
        for i, m in enumerate(young):
            if replies[per * i] == 0:  # the digest was there: this text was sent before
                dups[m.author_id] = dups.get(m.author_id, 0) + 1
        if dups:
            async with self.redis.pipeline(transaction=False) as pipe:
                for u, n in dups.items():
                    pipe.hincrby(self.keys.features(u), "dups", n)
                await pipe.execute()
        authors = sorted({m.author_id for m in young} - self.acted)
        feats = await features.read(self.redis, self.keys, authors, now_ms=now_ms)
        last = {m.author_id: m for m in young}
        out = []
        for u in authors:
            s = score(feats[u])
            if s >= self.settings.spam_threshold:
                self.acted.add(u)
                out.append((feats[u], s, last[u]))
        return out
