"""Client-side helpers of the ``polling`` and ``bans`` experiments (candidates for the harness).

- ``CountingClient``: a ``ChatClient`` that counts the bytes of every frame it receives (the
  text of each WebSocket message; compression is off in the lab, so this is what crossed the
  socket minus 2-14 bytes of framing per message).
- ``connect``: like ``harness.connect``, with IDENTIFY ``intents`` and counting clients.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from chatscale.client import ChatClient
from chatscale.config import Settings
from lab import harness


class _CountingSocket:
    """Delegates to a websockets connection; iterating it counts the received bytes."""

    def __init__(self, ws: Any) -> None:
        self._ws = ws
        self.bytes_in = 0
        self.frames_in = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ws, name)

    async def __aiter__(self) -> AsyncIterator[str | bytes]:
        async for raw in self._ws:
            self.bytes_in += len(raw.encode() if isinstance(raw, str) else raw)
            self.frames_in += 1
            yield raw


class CountingClient(ChatClient):
    def __init__(self, ws: Any, *, heartbeat: bool = True) -> None:
        super().__init__(_CountingSocket(ws), heartbeat=heartbeat)  # type: ignore[arg-type]

    @property
    def bytes_in(self) -> int:
        return self.ws.bytes_in  # type: ignore[attr-defined]


async def connect(
    settings: Settings,
    urls: list[str],
    user_ids: list[int],
    *,
    intents: int | None = None,
    concurrency: int = 32,
    timeout: float = 60.0,
) -> list[CountingClient]:
    """IDENTIFY every user (round-robin over the gateways) with ``intents``; READY for all
    within ``timeout`` or none are left open."""
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int, uid: int) -> CountingClient:
        async with gate:
            client = await CountingClient.identify(
                urls[i % len(urls)], harness.token(settings, uid), intents=intents
            )
            assert isinstance(client, CountingClient)
            return client

    tasks = [asyncio.create_task(one(i, u)) for i, u in enumerate(user_ids)]
    try:
        async with asyncio.timeout(timeout):
            return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        await harness.close_all([c for c in done if isinstance(c, ChatClient)])
        raise
