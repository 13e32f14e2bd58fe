"""``hot_size=0`` turns the hot cache off: workers cache nothing (acceptance still checks the
metadata version), and every page is read from history storage without asking Redis. The
paging layer reports each read it makes (``on_read``), which the gateway exports."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from chatscale.config import Settings
from chatscale.keys import Keys
from storage import StoredMessage
from storage.hot import HotCache
from storage.paging import read_page
from tests.conftest import Stack
from workers.worker import Worker


def test_hot_size_is_never_negative(clean_env):
    assert Settings().hot_size == 50
    assert Settings(hot_size=0).hot_size == 0
    with pytest.raises(ValueError):
        Settings(hot_size=-1)


async def test_read_page_reports_its_reads(stack: Stack):
    keys = Keys(stack.settings.key_prefix)
    redis = stack.gateways[0].redis
    channel = 4242
    rows = [StoredMessage(channel, 1000 + i, 1, f'{{"n":{i}}}') for i in range(30)]
    await stack.store.insert_many(rows)
    hot = HotCache(redis, keys, size=10)
    await hot.add_many([(channel, m.message_id, m.payload) for m in rows[-10:]])
    reads: list[tuple[str, int]] = []

    def seen(source: str, n: int, seconds: float) -> None:
        assert 0 <= seconds < 10
        reads.append((source, n))

    page = await read_page(hot, stack.store, channel, before=None, limit=10, on_read=seen)
    assert [i for i, _ in page] == list(range(1029, 1019, -1))
    assert reads == [("hot", 10)]  # the hot cache filled the page: no storage read

    reads.clear()
    page = await read_page(hot, stack.store, channel, before=None, limit=25, on_read=seen)
    assert [i for i, _ in page] == list(range(1029, 1004, -1))  # no gap, no duplicate
    assert reads == [("hot", 10), ("history", 15)]

    reads.clear()
    off = HotCache(redis, keys, size=0)  # the same cached entries exist, but the cache is off
    page = await read_page(off, stack.store, channel, before=None, limit=10, on_read=seen)
    assert [i for i, _ in page] == list(range(1029, 1019, -1))
    assert reads == [("history", 10)]  # Redis was not asked


async def test_hot_cache_off_end_to_end(stack: Stack):
    """A worker with hot_size=0 stores and delivers but caches nothing; a gateway with
    hot_size=0 answers REQUEST_HISTORY from storage and counts the read."""
    keys = Keys(stack.settings.key_prefix)
    off = stack.settings.model_copy(update={"hot_size": 0})
    worker = Worker(off, store=stack.store, consumer="w-cold")
    gw = stack.gateways[0]
    gw.hot.size = 0  # this gateway reads as a gateway started with CHATSCALE_HOT_SIZE=0
    try:
        bob = await stack.client("bob", gateway=1)
        alice = await stack.client("alice")
        general = stack.channels["general"]
        sent = [await alice.send_message(general, f"m{i}") for i in range(5)]
        await worker.drain()
        got = await bob.next_event("MESSAGE_CREATE")
        assert got["d"]["id"] == sent[0]["id"]
        assert await gw.redis.exists(keys.hot(general)) == 0
        before = _count("history"), _count("hot")
        page = await alice.history(general, limit=3)
        assert [m["id"] for m in page] == [s["id"] for s in reversed(sent)][:3]
        assert (_count("history"), _count("hot")) == (before[0] + 1, before[1])
    finally:
        await worker.close()


def _count(source: str) -> float:
    value = REGISTRY.get_sample_value("chatscale_gateway_page_reads_total", {"source": source})
    return value or 0.0
