"""``WORKER_LINGER_MS``: after a read that found entries but no full batch, the worker waits
before reading again, so the next batch gathers more messages (fewer round trips per message);
after a full batch it reads again at once. The wait is the worker's injected ``sleep``: the
test records it and stops the worker there, so nothing here waits on a clock."""

from __future__ import annotations

import asyncio

from tests.conftest import Stack
from workers.worker import Worker


async def test_the_worker_lingers_after_a_partial_batch_only(stack: Stack):
    general = stack.channels["general"]  # one channel: one shard
    alice = await stack.client("alice", gateway=0)
    for i in range(5):
        await alice.send_message(general, f"m{i}")
    settings = stack.settings.model_copy(update={"worker_batch": 4, "worker_linger_ms": 7.0})
    lingered: list[tuple[float, int]] = []  # (seconds, messages processed before the wait)

    async def sleep(seconds: float) -> None:
        lingered.append((seconds, worker.stats.processed))
        worker.stop()

    # "parallel" reads every shard without leases (the stack's own worker holds them)
    worker = Worker(
        settings, store=stack.store, consumer="w-linger", ordering="parallel", sleep=sleep
    )
    try:
        await asyncio.wait_for(worker.run(), timeout=20)
    except TimeoutError:
        msg = f"the worker never lingered; it processed {worker.stats.processed}"
        raise AssertionError(msg) from None
    finally:
        await worker.close()
    # the first read was a full batch of 4 (no wait), the second held the fifth (a wait)
    assert lingered == [(0.007, 5)]
    stored = await stack.store.page(general, before=None, limit=10)
    assert len(stored) == 5


async def test_no_linger_when_it_is_zero(stack: Stack):
    general = stack.channels["general"]
    alice = await stack.client("alice", gateway=0)
    await alice.send_message(general, "alone")  # a partial batch
    settings = stack.settings.model_copy(update={"worker_linger_ms": 0.0})
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    worker = Worker(
        settings, store=stack.store, consumer="w-no-linger", ordering="parallel", sleep=sleep
    )
    process = worker.pipeline.process

    async def process_then_stop(batch, **kw):  # noqa: ANN001, ANN003, ANN202
        await process(batch, **kw)
        worker.stop()  # the loop ends after this step: a linger would come before that

    worker.pipeline.process = process_then_stop  # type: ignore[method-assign]
    try:
        await asyncio.wait_for(worker.run(), timeout=20)
    finally:
        await worker.close()
    assert worker.stats.processed == 1
    assert slept == []
