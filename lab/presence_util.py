"""What the presence experiments' clients need besides ``lab.harness``: counting what arrives.

``CountingClient`` is the ordinary ``ChatClient`` whose socket is wrapped so that every frame
received is counted per dispatch type (frames and bytes as they came off the wire), and every
``PRESENCE_UPDATE`` / ``TYPING_START`` can be watched with a receive timestamp. Those two
dispatch types are not queued in ``events`` (a lab client receives thousands of them and reads
none from the queue). ``cut`` drops a connection without a close frame, as a phone losing its
network does from the gateway's side (the TCP connection ends, nobody says goodbye).

Candidates for ``lab/harness.py`` if other experiments want them: ``CountingClient``,
``connect_counting`` (``harness.connect`` with a client class and a device) and ``cut``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from chatscale.client import ChatClient
from chatscale.config import Settings
from lab import harness

WATCHED = frozenset({"PRESENCE_UPDATE", "TYPING_START"})

#: How the status charts encode a status: online (and dnd, also "here") 2, idle 1, offline 0.
STATUS_LEVEL = {"online": 2.0, "dnd": 2.0, "idle": 1.0, "offline": 0.0}
STATUS_ENCODING = "2 = online, 1 = idle, 0 = offline"


class _Inbox(asyncio.Queue[dict[str, Any]]):
    """The client's event queue without the watched types (they are counted, not kept)."""

    def put_nowait(self, item: dict[str, Any]) -> None:
        if item.get("t") not in WATCHED:
            super().put_nowait(item)


class _CountingSocket:
    """The client's connection, delegating everything, counting frames as they are read."""

    def __init__(self, ws: Any, owner: CountingClient) -> None:
        self._ws = ws
        self._owner = owner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ws, name)

    async def __aiter__(self) -> AsyncIterator[Any]:
        async for raw in self._ws:
            self._owner._received(raw)
            yield raw


class CountingClient(ChatClient):
    """``frames[t]`` / ``bytes[t]``: dispatches of type ``t`` received and their frame sizes.
    ``on_dispatch(t, d, at)`` is called for every watched dispatch (``at``: monotonic seconds
    when it was read)."""

    def __init__(self, ws: Any, *, heartbeat: bool = True) -> None:
        self.frames: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()
        self.on_dispatch: Callable[[str, dict[str, Any], float], None] | None = None
        self.changed = asyncio.Event()
        super().__init__(_CountingSocket(ws, self), heartbeat=heartbeat)
        self.events = _Inbox()

    def _received(self, raw: str | bytes) -> None:
        at = time.monotonic()
        msg = orjson.loads(raw)
        t = msg.get("t")
        if t is None:
            return
        self.frames[t] += 1
        self.bytes[t] += len(raw.encode() if isinstance(raw, str) else raw)
        if t in WATCHED:
            if self.on_dispatch is not None:
                self.on_dispatch(t, msg["d"], at)
            self.changed.set()

    async def until(self, predicate: Callable[[], bool], seconds: float, what: str) -> None:
        """Wait (bounded) until ``predicate()`` holds; it is re-checked after every watched
        dispatch."""

        async def loop() -> None:
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

        await harness.bounded(loop(), seconds, what)


async def connect_counting(
    settings: Settings, urls: list[str], user_ids: list[int], *, device: str = "desktop"
) -> list[CountingClient]:
    """``harness.connect`` with ``CountingClient``s identifying as ``device``."""
    return await harness.connect(settings, urls, user_ids, client_cls=CountingClient, device=device)


async def cut(client: ChatClient) -> None:
    """End the TCP connection without a close frame (the gateway sees it drop, 1006)."""
    transport = client.ws.transport
    if transport is not None:
        transport.abort()
    await client.close()


def totals(clients: list[CountingClient], t: str) -> tuple[int, int]:
    """Frames and bytes of dispatch type ``t`` received by all ``clients``."""
    return sum(c.frames[t] for c in clients), sum(c.bytes[t] for c in clients)


def tick_env(params: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """The size's presence-tick override (tiny runs use a shorter tick) and a note saying so."""
    tick = params.get("tick_ms")
    if not tick:
        return {}, []
    return (
        {"CHATSCALE_PRESENCE_TICK_MS": str(tick)},
        [f"this size runs presence ticks of {tick} ms (CHATSCALE_PRESENCE_TICK_MS) to stay short"],
    )
