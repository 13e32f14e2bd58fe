"""Client-side helpers of the ``polling`` and ``bans`` experiments (candidates for the harness).

- ``CountingClient``: a ``ChatClient`` that counts the bytes of every frame it receives (the
  text of each WebSocket message; compression is off in the lab, so this is what crossed the
  socket minus 2-14 bytes of framing per message).
- ``connect``: like ``harness.connect``, with IDENTIFY ``intents`` and counting clients.
"""

from __future__ import annotations

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
    settings: Settings, urls: list[str], user_ids: list[int], *, intents: int | None = None
) -> list[CountingClient]:
    """``harness.connect`` with counting clients that IDENTIFY with ``intents``."""
    return await harness.connect(
        settings, urls, user_ids, client_cls=CountingClient, intents=intents
    )
