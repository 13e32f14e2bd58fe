"""A real worker process is SIGKILLed mid-batch; another worker reclaims its entries.

The victim is started with a fault hook: after fanning out the first entries of a batch (but
before acking them) it SIGSTOPs itself. The test waits for that with ``waitpid(WUNTRACED)``
(no polling, no sleeps), SIGKILLs it, evicts its shard leases as the supervisor would, and
drains a second worker. Every message must arrive exactly once, in order, and be stored.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

from chatscale.keys import INGEST_GROUP, Keys
from chatscale.redisconn import connect
from tests.conftest import Stack, on_redis_cluster_too
from workers.leases import evict

pytestmark = pytest.mark.slow


def _env(stack: Stack) -> dict[str, str]:
    s = stack.settings
    return {
        **os.environ,
        "CHATSCALE_REDIS_URL": str(s.redis_url),
        "CHATSCALE_STORAGE_URL": s.storage_url,
        "CHATSCALE_KEY_PREFIX": s.key_prefix,
        "CHATSCALE_WORKER_BLOCK_MS": "100",
    }


@on_redis_cluster_too
async def test_worker_killed_mid_batch_loses_nothing_and_duplicates_nothing(stack: Stack, tmp_path):
    alice = await stack.client("alice", gateway=0)
    bob = await stack.client("bob", gateway=1)
    general = stack.channels["general"]
    sent = [(await alice.send_message(general, f"m{i}"))["id"] for i in range(20)]

    victim_log = (tmp_path / "victim.log").open("w")  # read back if the first fan-outs never come
    victim = subprocess.Popen(
        [sys.executable, "-m", "chatscale", "worker", "--consumer", "victim", "--stop-after", "7"],
        env=_env(stack),
        stdout=subprocess.DEVNULL,
        stderr=victim_log,
    )
    try:
        _, status = await asyncio.to_thread(os.waitpid, victim.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status), "the worker should have stopped itself mid-batch"
        # The first 7 were fanned out before the stop: recipients already have them.
        first = []
        try:  # a loaded machine: a generous bound, and the victim's own account if it expires
            for _ in range(7):
                first.append(await bob.next_event("MESSAGE_CREATE", timeout=30))
        except TimeoutError:
            log = (tmp_path / "victim.log").read_text()[-3000:]
            raise AssertionError(
                f"bob got {len(first)} of the 7 messages the victim fanned out before stopping; "
                f"its log:\n{log}"
            ) from None
        assert [m["d"]["id"] for m in first] == sent[:7]
        redis = connect(stack.settings)
        keys = Keys(stack.settings.key_prefix)
        stream = keys.ingest(general % stack.settings.ingest_shards)
        assert (await redis.xpending(stream, INGEST_GROUP))["pending"] == 20  # nothing was acked
        victim.kill()
        victim.wait()
        assert await evict(redis, keys, shards=stack.settings.ingest_shards, consumer="victim") >= 1
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
        victim_log.close()

    await stack.drain()  # the survivor takes the shard and reclaims the 20 pending entries
    sentinel = (await alice.send_message(general, "sentinel"))["id"]
    await stack.drain()
    rest = []
    while True:
        m = await bob.next_event("MESSAGE_CREATE")
        if m["d"]["content"] == "sentinel":
            break
        rest.append(m["d"]["id"])
    assert rest == sent[7:]  # no duplicate of the first 7, nothing lost, in order
    assert stack.worker.stats.fanout_skipped == 7
    assert (await redis.xpending(stream, INGEST_GROUP))["pending"] == 0
    stored = await stack.store.page(general, before=None, limit=100)
    assert sorted(str(m.message_id) for m in stored) == sorted(
        [*sent, sentinel]
    )  # each stored once
    await redis.aclose()
