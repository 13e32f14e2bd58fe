"""Redis commands issued during one event-loop turn, sent as one pipeline.

A gateway serves many connections; for each message one of them sends, it awaits Redis a few
times (the nonce claim, the rate-limit script, the XADD that queues it). Awaited one by one,
every command is its own ``send()`` on a pooled connection and its own wake-up for the reply:
under load the gateway spends its time in system calls, not in Python (docs/benchmarks.md,
"Where the CPU goes"). ``AutoPipeline.execute`` queues the command instead; the first one
queued in a loop turn schedules a flush for the end of the turn, which sends everything queued
meanwhile as one non-transactional pipeline and hands each caller its own reply. The idea is
the one behind ioredis' and rueidis' auto-pipelining.

Guarantees, the same as awaiting the command alone on ``redis``:

- a caller gets its own command's reply, or the error that command got (a Redis error is
  raised to that caller only);
- a connection failure fails every command of that pipeline with the same exception: each may
  or may not have been applied, which is what a caller of a single command must assume too;
- commands of one turn are sent in call order; no atomicity between them (no MULTI).

What it costs: a command waits for the end of the loop turn in which it was issued, never for
a timer. ``REDIS_AUTOPIPELINE=false`` (``chatscale.config``) sends each command on its own,
for the comparison (``chatscale bench ingest``, docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis

MAX_BATCH = 1024  # commands per pipeline; a larger turn is sent as several


class AutoPipeline:
    def __init__(self, redis: aioredis.Redis, *, enabled: bool = True) -> None:
        self.redis = redis
        self.enabled = enabled
        self._queue: list[tuple[tuple[Any, ...], dict[str, Any], asyncio.Future[Any]]] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.pipelines = 0  # pipelines sent (a metric for tests and benchmarks)
        self.commands = 0  # commands sent in them

    async def execute(self, *args: Any, **options: Any) -> Any:
        """``redis.execute_command(*args, **options)``, batched with this turn's others."""
        if not self.enabled:
            return await self.redis.execute_command(*args, **options)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((args, options, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._scheduled = False
        queue, self._queue = self._queue, []
        for start in range(0, len(queue), MAX_BATCH):
            task = asyncio.ensure_future(self._send(queue[start : start + MAX_BATCH]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[tuple[Any, ...], dict[str, Any], Any]]) -> None:
        live = [(a, o, f) for a, o, f in batch if not f.cancelled()]
        if not live:
            return
        self.pipelines += 1
        self.commands += len(live)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for args, options, _ in live:
                    pipe.execute_command(*args, **options)
                replies = await pipe.execute(raise_on_error=False)
        except asyncio.CancelledError:  # the client is closing: so are its callers
            for _, _, future in live:
                future.cancel()
            raise
        except Exception as exc:  # the connection failed: every command shares its fate
            for _, _, future in live:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, _, future), reply in zip(live, replies, strict=True):
            if future.done():
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def aclose(self) -> None:
        """Wait for the pipelines in flight (each is bounded by the client's timeouts)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
