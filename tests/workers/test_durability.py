"""What an OS crash can cost with ``appendfsync everysec``, reproduced on a real Valkey.

An OS crash (or power loss) keeps the AOF only up to the last fsync, so the file ends somewhere
in the last second of writes, possibly mid-command. Here the worker processes one message, the
server is stopped, and its AOF is cut at every command boundary (and inside every command) of
what the worker wrote; each cut is restarted and checked:

- the fan-out marker and the delivery entries written by ``storage/lua/fanout.lua`` survive
  together or not at all: the script's writes reach the AOF as one MULTI/EXEC, and a tail cut
  inside it is dropped as a whole on load (``aof-load-truncated``);
- after the restart the worker finishes what was lost, delivering the message exactly once
  more into the stream when the fan-out was cut, and not at all when it survived, with the
  same id and the same payload bytes as the first time.

What the server cannot undo is a delivery a gateway read before the crash whose entry was then
cut: it is delivered again after the restart. That is why the protocol says clients dedupe
MESSAGE_CREATE by id (README, "Guarantees and failure behaviour"); with ``appendfsync always``
no reply leaves the server before its fsync, so nothing read can be cut.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson
import pytest
import redis as sync_redis

from chatscale.config import Settings
from chatscale.keys import INGEST_GROUP, Keys
from chatscale.redisconn import connect
from chatscale.valkey import ValkeyServer
from chatscale.wire import Author, IngestMessage, encode_entry, message_payload
from guilds import community
from storage import open_store
from workers.leases import evict
from workers.worker import Worker

pytestmark = pytest.mark.slow

GATEWAY = "gw-x"


def commands(aof: bytes, start: int) -> list[tuple[int, int, list[bytes]]]:
    """(offset, end, words) of every RESP command in ``aof[start:]``."""
    out = []
    at = start
    while at < len(aof):
        begin = at
        assert aof[at : at + 1] == b"*", aof[at : at + 20]
        eol = aof.index(b"\r\n", at)
        count = int(aof[at + 1 : eol])
        at = eol + 2
        words = []
        for _ in range(count):
            eol = aof.index(b"\r\n", at)
            size = int(aof[at + 1 : eol])
            words.append(aof[eol + 2 : eol + 2 + size])
            at = eol + 2 + size + 2
        out.append((begin, at, words))
    return out


def incr_file(workdir: Path) -> Path:
    [path] = sorted((workdir / "appendonlydir").glob("*.incr.aof"))
    return path


async def test_a_cut_aof_never_keeps_the_fanout_marker_without_its_deliveries(tmp_path: Path):
    original = tmp_path / "valkey"
    server = ValkeyServer(workdir=original).start()
    settings = Settings(
        redis_url=server.url,
        storage_url=f"sqlite:///{tmp_path}/db.sqlite",
        key_prefix="d",
        token_secret="test-secret",
        worker_block_ms=100,
    )
    keys = Keys(settings.key_prefix)
    store = await open_store(settings.storage_url)
    try:
        redis = connect(settings)
        spec = community.load_file(community.SEEDS / "demo.toml")
        await community.apply(spec, store, redis, keys)
        alice = await store.find_user("alice")
        assert alice
        [guild] = [g for g in await store.user_guilds(alice.id) if g.name == "interview-prep"]
        general = next(c.id for c in await store.guild_channels(guild.id) if c.name == "general")
        await redis.sadd(keys.route(guild.id), GATEWAY)
        await redis.set(keys.gateway_alive(GATEWAY), "1")  # no TTL: alive in every restart
        message_id = 7_000_000
        payload = message_payload(
            message_id=message_id,
            channel_id=general,
            guild_id=guild.id,
            author=Author(id=str(alice.id), username="alice"),
            content="durable?",
            timestamp_ms=0,
        )
        entry = IngestMessage(
            id=message_id,
            channel_id=general,
            guild_id=guild.id,
            author_id=alice.id,
            gateway_id=GATEWAY,
            session_id="s",
            payload=payload,
        )
        stream = keys.ingest(general % settings.ingest_shards)
        worker = Worker(settings, store=store, consumer="w-dur")
        await worker._ensure_groups()
        await redis.xadd(stream, encode_entry(entry))
        await redis.ping()
        accepted_at = incr_file(original).stat().st_size  # the gateway's XADD is in the file
        await worker.drain()
        assert worker.stats.processed == 1
        await worker.close()
        await redis.aclose()
    finally:
        server.stop()  # a clean stop: the whole AOF is on disk, and we cut it ourselves

    aof = incr_file(original).read_bytes()
    written = commands(aof, accepted_at)
    names = [w[0].upper() for _, _, w in written]
    assert b"MULTI" in names and b"XACK" in names, names
    # The fan-out's MULTI: the one whose first write is the marker.
    [fanout] = [
        i
        for i, (_, _, w) in enumerate(written)
        if w[0].upper() == b"MULTI" and written[i + 1][2][1] == keys.fanned_out(message_id).encode()
    ]
    exec_at = next(i for i in range(fanout, len(written)) if written[i][2][0].upper() == b"EXEC")
    cuts = set()
    for begin, end, _ in written:
        cuts |= {begin, (begin + end) // 2}
    cuts |= set(range(written[fanout][0], written[exec_at][1] + 1, 13))  # inside the MULTI
    cuts.add(len(aof))

    outcomes = set()
    for n, cut in enumerate(sorted(cuts)):
        workdir = tmp_path / f"cut-{n}"
        shutil.copytree(original, workdir)
        with incr_file(workdir).open("r+b") as f:
            f.truncate(cut)
        restarted = ValkeyServer(workdir=workdir, port=server.port).start()
        try:
            check = sync_redis.Redis(port=restarted.port)
            marker = check.exists(keys.fanned_out(message_id)) == 1
            delivered = [
                orjson.loads(f[b"e"])["payload"]
                for _, f in check.xrange(keys.deliver(GATEWAY))
                if orjson.loads(f[b"e"]).get("t") == "MESSAGE_CREATE"
            ]
            check.close()
            assert marker == bool(delivered), f"cut at {cut}: marker {marker}, {delivered}"
            assert len(delivered) <= 1
            # Redeliver: the crashed worker's leases are evicted (as `chatscale run` does) and
            # a new one takes over what the cut left pending or unread.
            again = Worker(settings, store=store, consumer=f"w-after-{n}")
            try:
                await evict(again.redis, keys, shards=settings.ingest_shards, consumer="w-dur")
                await again.drain()
                await again.drain()
            finally:
                await again.close()
            check = sync_redis.Redis(port=restarted.port)
            after = [
                orjson.loads(f[b"e"])["payload"]
                for _, f in check.xrange(keys.deliver(GATEWAY))
                if orjson.loads(f[b"e"]).get("t") == "MESSAGE_CREATE"
            ]
            assert after == [payload], f"cut at {cut}: {after}"  # once, with the same bytes
            assert check.xpending(stream, INGEST_GROUP)["pending"] == 0
            check.close()
            outcomes.add("kept" if delivered else "redelivered")
        finally:
            restarted.stop()
            shutil.rmtree(workdir)
    assert outcomes == {"kept", "redelivered"}  # both sides of the fan-out were cut


async def test_appendfsync_is_a_knob_the_embedded_valkey_follows(tmp_path: Path):
    for policy in ("always", "everysec"):
        with ValkeyServer(workdir=tmp_path / policy, appendfsync=policy) as server:
            client = sync_redis.Redis(port=server.port)
            assert client.config_get("appendfsync") == {"appendfsync": policy}
            assert client.config_get("appendonly") == {"appendonly": "yes"}
            client.close()
    assert Settings(valkey_appendfsync="always").valkey_appendfsync == "always"
    with pytest.raises(ValueError, match="valkey_appendfsync"):
        Settings(valkey_appendfsync="no")
