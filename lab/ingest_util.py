"""What the ingest experiments (log-split, ordering, history-mode) share: one reader per
client that sorts its frames — MESSAGE_CREATE to a callback, MESSAGE_ACK and HEARTBEAT_ACK to
whoever waits for them — so a client can have heartbeats and pipelined sends in flight at once.

(A candidate for ``lab/harness.py``: other experiments that time heartbeats or count acks
could use it.)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from chatscale.client import ChatClient
from chatscale.wire import Op


class Reader:
    """Consumes ``client.events``; call ``start()`` once, ``stop()`` at the end."""

    def __init__(
        self, client: ChatClient, on_create: Callable[[dict[str, Any], float], None] | None = None
    ) -> None:
        self.client = client
        self.on_create = on_create
        self.acks = 0
        self.errors: list[dict[str, Any]] = []
        self._heartbeats: deque[asyncio.Future[float]] = deque()
        self._acked = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> Reader:
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task

    async def _run(self) -> None:
        while True:
            msg = await self.client.events.get()
            now = time.time()
            op, t = msg.get("op"), msg.get("t")
            if op == Op.HEARTBEAT_ACK:
                while self._heartbeats:
                    fut = self._heartbeats.popleft()
                    if not fut.done():
                        fut.set_result(now)
                        break
            elif t == "MESSAGE_CREATE" and self.on_create is not None:
                self.on_create(msg["d"], now)
            elif t == "MESSAGE_ACK":
                self.acks += 1
                self._acked.set()
            elif op == Op.ERROR:
                self.errors.append(msg.get("d") or {})
                self._acked.set()

    async def heartbeat_s(self, timeout: float = 30.0) -> float:
        """Send one HEARTBEAT and return the seconds until its HEARTBEAT_ACK."""
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._heartbeats.append(fut)
        started = time.time()
        await self.client.send_op(Op.HEARTBEAT, self.client.seq)
        return await asyncio.wait_for(fut, timeout) - started

    async def until_acked(self, n: int, timeout: float) -> None:
        """Wait until ``n`` MESSAGE_ACKs (or ERRORs) arrived on this client (sends pipelined
        with ``send_op``, not ``send_message``)."""
        async with asyncio.timeout(timeout):
            while self.acks + len(self.errors) < n:
                self._acked.clear()
                await self._acked.wait()


async def stop_all(readers: list[Reader]) -> None:
    await asyncio.gather(*(r.stop() for r in readers), return_exceptions=True)
