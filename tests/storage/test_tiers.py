"""Jumping and paging across the three tiers: the Redis hot cache (newest), the history store
(recent buckets) and the cold archive (old buckets, compacted into objects in a directory).

Real Valkey, real SQLite, and both cold backends: a real directory (``file://``) and a real
S3-compatible server (S3Proxy from Maven jars, ``s3://``, tests/conftest.py). ``before``/``after``/
``around`` pages walked to both ends must list every message exactly once, in order, whatever
the page size; a compacted bucket reads back byte-identical messages.
"""

from __future__ import annotations

import pytest

from chatscale import snowflake
from chatscale.keys import Keys
from chatscale.redisconn import connect
from storage import StoredMessage, open_store
from storage.cold import ColdArchive, decode_bucket, encode_bucket, open_object_store
from storage.hot import HotCache
from storage.paging import read_page
from storage.tiers import Archiver, TieredHistory

SPAN = 3_600_000  # one-hour buckets
T0 = 1_760_000_000_000
CHANNEL = snowflake.from_timestamp_ms(T0) | 77  # created at T0: bucket 0 of the test


def mid(ms: int, seq: int = 0) -> int:
    return snowflake.from_timestamp_ms(T0 + ms) | seq


# 8 buckets with messages (and empty ones between); payloads that JSON could mangle if it
# were re-serialized rather than carried as a string.
IDS = sorted(mid(h * SPAN + k * 997, k) for h in (0, 1, 3, 4, 6, 9, 10, 12) for k in range(1, 6))
PAYLOADS = {
    i: f'{{"id":"{i}","content":"h\\u00e9 \\"q\\" ✓ \\\\ {n}","x":1.50}}' for n, i in enumerate(IDS)
}


def row(i: int) -> StoredMessage:
    return StoredMessage(CHANNEL, i, 7, PAYLOADS[i])


@pytest.fixture
async def store(tmp_path):
    s = await open_store(f"sqlite:///{tmp_path}/tiers.db", bucket_span_ms=SPAN)
    yield s
    await s.close()


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.slow)])
def cold_url(request, tmp_path) -> str:
    """The cold tier in a local directory, or in a bucket of a real S3Proxy."""
    if request.param == "s3":
        return request.getfixturevalue("s3_cold_url")
    return f"file://{tmp_path}/cold"


@pytest.fixture
async def tiers(settings, store, cold_url):
    await store.insert_many([row(i) for i in IDS])
    archive = ColdArchive(open_object_store(cold_url))
    # "now" is 13 h after T0 and the archive age 7 h: buckets 0..5 (ending by T0+6h) go cold.
    archiver = Archiver(
        store,
        archive,
        bucket_span_ms=SPAN,
        archive_after_s=7 * 3600,
        wall_ms=lambda: T0 + 13 * SPAN,
    )
    report = await archiver.compact_once()
    redis = connect(settings)
    hot = HotCache(redis, Keys(settings.key_prefix), size=7)
    await hot.add_many([(CHANNEL, i, PAYLOADS[i]) for i in IDS[-7:]])
    yield hot, TieredHistory(store, archive, bucket_span_ms=SPAN), report, archive
    await redis.aclose()


async def test_compaction_moves_only_old_buckets_and_reads_back_byte_identical(tiers, store):
    _hot, _history, report, archive = tiers
    first = snowflake.bucket(CHANNEL, SPAN)
    assert await archive.buckets(CHANNEL) == [first + h for h in (0, 1, 3, 4)]
    assert (report.buckets, report.messages) == (4, 20)
    assert await store.channel_buckets(CHANNEL) == [first + h for h in (6, 9, 10, 12)]
    back = [m for b in await archive.buckets(CHANNEL) for m in await archive.read(CHANNEL, b)]
    assert back == [row(i) for i in IDS[:20]]
    assert [m.payload.encode() for m in back] == [PAYLOADS[i].encode() for i in IDS[:20]]
    # encode/decode alone, with a message set out of order
    shuffled = [row(i) for i in reversed(IDS[:5])]
    assert decode_bucket(CHANNEL, encode_bucket(shuffled)) == [row(i) for i in IDS[:5]]


@pytest.mark.parametrize("limit", [1, 3, 7, 100])
async def test_before_and_after_walk_every_tier_with_no_gap_or_duplicate(tiers, limit):
    hot, history, _report, _archive = tiers
    seen, before = [], None
    while page := await read_page(hot, history, CHANNEL, before=before, limit=limit):
        assert len(page) <= limit
        seen += [i for i, _ in page]
        before = page[-1][0]
    assert seen == IDS[::-1]

    seen, after = [], 0
    while page := await read_page(hot, history, CHANNEL, after=after, limit=limit):
        assert [i for i, _ in page] == sorted((i for i, _ in page), reverse=True)  # newest first
        seen += [i for i, _ in reversed(page)]
        after = page[0][0]
    assert seen == IDS
    assert all(payload == PAYLOADS[i] for i, payload in page)


async def test_around_centres_on_the_message_in_any_tier(tiers):
    hot, history, _report, _archive = tiers
    for k in (0, 3, 12, 19, 20, 27, 33, 39):  # cold, history, the hot cache, the ends
        target = IDS[k]
        page = [i for i, _ in await read_page(hot, history, CHANNEL, around=target, limit=6)]
        want = [i for i in IDS if i >= target][:3][::-1] + [i for i in IDS if i < target][::-1][:3]
        assert page == want, k
        assert target in page
    # a date, not a message: the snowflake of a millisecond between two buckets
    between = mid(2 * SPAN)
    page = [i for i, _ in await read_page(hot, history, CHANNEL, around=between, limit=4)]
    assert page == [IDS[11], IDS[10], IDS[9], IDS[8]]
    with pytest.raises(ValueError):
        await read_page(hot, history, CHANNEL, before=1, after=1, limit=4)
