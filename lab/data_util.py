"""Helpers of the data experiments (inbox-fanout, hot-cache) that the harness does not have:
members seeded in bulk, and a process's own counters read from its /metrics endpoint.

Candidates for ``lab/harness.py``; they live here until the lead moves them.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import urllib.request
from pathlib import Path

import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from chatscale.config import Settings
from chatscale.keys import INGEST_GROUP, Keys
from guilds import community

#: What a lab topology needs to serve /metrics (each process on a free loopback port,
#: registered in Redis under ``Keys.metrics_endpoint``).
METRICS_ON = {"CHATSCALE_METRICS_PORT": "-1"}


def sqlite_path(settings: Settings) -> Path:
    url = settings.storage_url
    if not url.startswith("sqlite:///"):
        raise ValueError(f"bulk seeding writes SQLite files only, not {url!r}")
    return Path(url.removeprefix("sqlite://"))


async def add_offline_members(
    settings: Settings, redis: aioredis.Redis, spec: community.Community, first: int
) -> float:
    """Write the users ``spec`` plans from index ``first`` on, and their membership of its
    guild, straight into the topology's SQLite file in one transaction; then bump the metadata
    version so caches reload. Returns the seconds it took.

    The rows are exactly those ``community.apply`` writes through ``put_user`` and
    ``add_member`` (same ids: ``spec.plan()``), which costs ~0.6 ms per member through the
    store's interface (one commit each): 50,000 members would take half a minute, the whole
    budget of a quick run. Members seeded this way hold no roles but @everyone, like
    ``lab_community``'s. They never connect: they are the offline members.
    """
    started = time.monotonic()
    users, guilds, _channels, members = spec.plan()
    guild_id = guilds[0].id
    ids = {u.id for u in users[first:]}
    user_rows = [(u.id, u.username) for u in users[first:]]
    member_rows = [(g, u) for g, u in members if g == guild_id and u in ids]
    await asyncio.to_thread(_insert, sqlite_path(settings), user_rows, member_rows)
    await redis.incr(Keys(settings.key_prefix).metadata_version())
    return time.monotonic() - started


def _insert(path: Path, users: list[tuple[int, str]], members: list[tuple[int, int]]) -> None:
    db = sqlite3.connect(path, timeout=10.0, isolation_level=None)
    try:
        db.execute("PRAGMA busy_timeout=10000")
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT OR IGNORE INTO users (id, username) VALUES (?, ?)", users)
        db.executemany("INSERT OR IGNORE INTO members (guild_id, user_id) VALUES (?, ?)", members)
        db.execute("COMMIT")
    finally:
        db.close()


async def endpoints(
    redis: aioredis.Redis, settings: Settings, role: str, *, count: int, timeout: float = 15.0
) -> list[str]:
    """The /metrics URLs (``http://host:port/metrics``) of ``count`` processes of ``role`` (waits for them to register)."""
    pattern = Keys(settings.key_prefix).metrics_endpoint("*")
    deadline = time.monotonic() + timeout
    while True:
        urls = []
        async for key in redis.scan_iter(match=pattern):
            raw = await redis.get(key)
            if raw:
                info = json.loads(raw)
                if info.get("role") == role:
                    urls.append(info["url"])
        if len(urls) >= count:
            return sorted(urls)
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{count} {role} /metrics endpoint(s): {len(urls)} within {timeout}s"
            )
        await asyncio.sleep(0.1)  # polling a registration written by another process


async def scrape(urls: list[str]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of every endpoint, summed over the endpoints:
    {(sample name, sorted labels): value}."""

    def one(url: str) -> str:
        with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 - our own endpoint
            return r.read().decode()

    totals: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for text in await asyncio.gather(*(asyncio.to_thread(one, u) for u in urls)):
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                totals[key] = totals.get(key, 0.0) + s.value
    return totals


def sample(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def workers_done(redis: aioredis.Redis, settings: Settings, timeout: float = 60.0) -> None:
    """Wait until the workers have read and acked every ingest entry (a worker acks only after
    storing and fanning out, so every write of every message sent so far is done). Polls the
    consumer group: the workers announce nothing when they finish."""
    keys = Keys(settings.key_prefix)
    deadline = time.monotonic() + timeout
    while True:
        busy = 0
        for stream in keys.ingest_all(settings.ingest_shards):
            if not await redis.exists(stream):
                continue
            for group in await redis.xinfo_groups(stream):
                name = group["name"]
                if (name.decode() if isinstance(name, bytes) else name) == INGEST_GROUP:
                    lag = group.get("lag")
                    busy += int(group.get("pending", 0)) + (int(lag) if lag is not None else 1)
        if not busy:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the workers did not finish within {timeout:g}s ({busy} left)")
        await asyncio.sleep(0.02)
