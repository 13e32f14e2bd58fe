"""Message deletion (DELETE_MESSAGE, op 26) and indexing at write, end to end on the stack's
real Valkey, gateways and SQLite stores: with ``search_indexing=write`` a message a viewer has
received is already searchable (no indexer ran); a deletion by its author reaches every viewer
as MESSAGE_DELETE and leaves history and the search index; others need MANAGE_MESSAGES; a
repeated deletion changes nothing and dispatches nothing twice.
"""

from __future__ import annotations

import pytest

from chatscale import snowflake
from chatscale.client import GatewayError
from chatscale.keys import Keys
from chatscale.wire import IngestDelete, encode_entry
from storage.cold import ColdArchive, open_object_store
from storage.search_index import IndexDoc, SearchIndex
from storage.tiers import Archiver
from tests.conftest import Stack, on_redis_cluster_too
from workers.indexer import Indexer


@pytest.fixture
def settings(settings, tmp_path):
    return settings.model_copy(
        update={
            "search_url": f"sqlite:///{tmp_path}/search.db",
            "search_indexing": "write",
            "cold_url": f"file://{tmp_path}/cold",
        }
    )


@on_redis_cluster_too
async def test_index_at_write_and_deletion(stack: Stack) -> None:
    general = stack.channels["general"]
    bob = await stack.client("bob", gateway=1)
    alice = await stack.client("alice", gateway=0)
    carol = await stack.client("carol", gateway=0)
    dave = await stack.client("dave", gateway=1)
    m1 = (await bob.send_message(general, "zebra one"))["id"]
    m2 = (await bob.send_message(general, "zebra two"))["id"]
    await stack.drain()
    assert (await alice.next_event("MESSAGE_CREATE"))["d"]["id"] == m1
    # indexed by the worker before its fan-out: searchable once delivered, no indexer has run
    assert [m["id"] for m in await dave.search(content="zebra")] == [m2, m1]

    with pytest.raises(GatewayError, match="MISSING_PERMISSIONS"):
        await dave.delete_message(general, m1)  # neither the author nor MANAGE_MESSAGES
    assert (await bob.delete_message(general, m1))["id"] == m1
    await stack.drain()
    for viewer in (alice, dave, bob):
        d = (await viewer.next_event("MESSAGE_DELETE"))["d"]
        assert (d["id"], d["channel_id"]) == (m1, str(general))
    assert [m["id"] for m in await alice.history(general)] == [m2]

    index = await SearchIndex.open(stack.settings.search_url)
    try:  # the deletion reaches the index through the stored stream (adds were not fed)
        indexer = Indexer(stack.settings, index=index, redis=stack.gateways[0].redis)
        assert await indexer.drain() == 1
        assert [m["id"] for m in await dave.search(content="zebra")] == [m2]
        # an add arriving after the deletion (a retried batch indexing at write) stays deleted
        await index.add([IndexDoc(int(m1), general, 0, stack.users["bob"], "zebra one", "{}")])
        assert [m["id"] for m in await dave.search(content="zebra")] == [m2]

        # twice: refused at the gateway (gone), and a redelivered deletion is a no-op that
        # dispatches nothing: the next thing alice gets is carol's deletion of m2
        with pytest.raises(GatewayError, match="UNKNOWN_MESSAGE"):
            await bob.delete_message(general, m1)
        again = IngestDelete(
            id=int(m1),
            channel_id=general,
            guild_id=int(d["guild_id"]),
            author_id=stack.users["bob"],
            deleter_id=stack.users["bob"],
            gateway_id="gw-1",
            session_id="x",
        )
        keys = Keys(stack.settings.key_prefix)
        shard = general % stack.settings.ingest_shards
        await stack.gateways[0].redis.xadd(keys.ingest(shard), encode_entry(again))
        await carol.delete_message(general, m2)  # MANAGE_MESSAGES: not hers, allowed
        await stack.drain()
        assert (await alice.next_event("MESSAGE_DELETE"))["d"]["id"] == m2
        assert await alice.history(general) == []
        await indexer.drain()
        assert await dave.search(content="zebra") == []
    finally:
        await index.close()


async def test_an_archived_message_cannot_be_deleted(stack: Stack) -> None:
    general = stack.channels["general"]
    alice = await stack.client("alice")
    sent = (await alice.send_message(general, "old news"))["id"]
    await stack.drain()
    span = stack.settings.bucket_span_ms
    archive = ColdArchive(open_object_store(stack.settings.cold_url))
    archiver = Archiver(stack.store, archive, bucket_span_ms=span, archive_after_s=1)
    assert await archiver.compact_bucket(general, snowflake.bucket(int(sent), span)) > 0
    # still in the hot cache too, but its bucket's object is immutable: refused, kept
    with pytest.raises(GatewayError, match="MESSAGE_ARCHIVED"):
        await alice.delete_message(general, sent)
    assert [m["id"] for m in await alice.history(general)] == [sent]
