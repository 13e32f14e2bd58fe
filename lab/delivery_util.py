"""Light lab members for the delivery experiments (``serialize``, ``backpressure``).

A ``ChatClient`` parses every frame into dicts and queues it; with hundreds of members in the
lab's one process that parsing, not the gateway, would set the pace. A ``Member`` here is a
plain WebSocket that identifies, then only looks for the lab's marker in each raw frame
(``"content":"L<k>|``) and records when message ``k`` arrived. A ``Member`` made with
``slow=True`` has a 4 KiB receive window and stops reading after READY: the slow reader of
``backpressure``, whose unread frames pile up in the gateway.

(Candidates for ``lab/harness.py`` if other experiments need many cheap receivers.)
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from chatscale.config import Settings
from chatscale.wire import Op
from lab import harness

MARK = re.compile(rb'"content":"L(\d+)\|')


def content(k: int, size: int) -> str:
    """Message ``k``'s content, padded to ``size`` characters (at least the marker)."""
    head = f"L{k}|"
    return head + "x" * max(0, size - len(head))


class Member:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.count = 0  # lab messages received
        self.close_code: int | None = None

    @classmethod
    async def identify(cls, url: str, token: str, *, slow: bool = False) -> Member:
        sock = None
        if slow:  # a small window: the kernel holds little, the gateway's buffer grows
            parts = urlsplit(url)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (parts.hostname, parts.port))
        ws = await connect(
            url,
            sock=sock,
            compression=None,
            ping_interval=None,
            max_size=1 << 22,
            open_timeout=10,
        )
        try:
            async with asyncio.timeout(10):  # HELLO, then READY
                await ws.recv()
                await ws.send(
                    orjson.dumps({"op": int(Op.IDENTIFY), "d": {"token": token}}).decode()
                )
                while True:
                    msg = orjson.loads(await ws.recv(decode=False))
                    if msg.get("t") == "READY":
                        break
        except BaseException:
            await ws.close()
            raise
        if slow:
            ws.transport.pause_reading()
        return cls(ws)

    async def receive(self, on_message: Callable[[int, float], None]) -> None:
        """Until the connection ends: ``on_message(k, monotonic arrival)`` per lab message."""
        try:
            while True:
                raw = await self.ws.recv(decode=False)
                now = time.monotonic()
                m = MARK.search(raw)
                if m is not None:
                    self.count += 1
                    on_message(int(m.group(1)), now)
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code if self.ws.close_code is not None else 1006

    async def drain(self, expected: int, seconds: float) -> bool:
        """A paused reader reads again: True if the gateway had closed it (whatever the code),
        False if it got ``expected`` lab messages and is still open."""
        self.ws.transport.resume_reading()
        done = asyncio.Event()

        def seen(_k: int, _t: float) -> None:
            if self.count >= expected:
                done.set()

        reader = asyncio.create_task(self.receive(seen))
        finished = asyncio.create_task(done.wait())
        try:
            await harness.bounded(
                asyncio.wait({reader, finished}, return_when=asyncio.FIRST_COMPLETED),
                seconds,
                "the slow reader's backlog",
            )
        finally:
            finished.cancel()
        if reader.done():
            return True
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        return False

    async def close(self) -> None:
        if self.ws.transport is not None:
            self.ws.transport.resume_reading()
        try:
            async with asyncio.timeout(2):
                await self.ws.close()
        except TimeoutError:
            if self.ws.transport is not None:
                self.ws.transport.abort()


async def members(
    settings: Settings, url: str, user_ids: list[int], *, concurrency: int = 32
) -> list[Member]:
    """Identify every user on ``url`` (READY for all, bounded)."""
    gate = asyncio.Semaphore(concurrency)

    async def one(uid: int) -> Member:
        async with gate:
            return await Member.identify(url, harness.token(settings, uid))

    tasks = [asyncio.create_task(one(u)) for u in user_ids]
    try:
        return list(await harness.bounded(asyncio.gather(*tasks), 120, "members' READY"))
    except BaseException:
        for t in tasks:
            t.cancel()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        await close_members([m for m in done if isinstance(m, Member)])
        raise


async def close_members(ms: list[Member]) -> None:
    await asyncio.gather(*(m.close() for m in ms), return_exceptions=True)


def gateway_process(topo) -> object:  # noqa: ANN001
    """The (only) gateway's psutil process."""
    procs = [p for name, p in topo.processes().items() if name.startswith("gateway")]
    if len(procs) != 1:
        raise RuntimeError(f"expected one gateway process, found {len(procs)}")
    return procs[0]


def gateway_cpu(spent: dict[str, float]) -> float:
    return sum(v for name, v in spent.items() if name.startswith("gateway"))


async def send_all(
    sender,  # noqa: ANN001  (a ChatClient)
    channel_id: int,
    n: int,
    size: int,
    window: int,
    sent_at: list[float],
) -> None:
    """Send messages 0..n-1 with ``window`` awaiting their ack at once; ``sent_at[k]`` is the
    monotonic time message ``k`` left."""
    next_k = 0

    async def lane() -> None:
        nonlocal next_k
        while next_k < n:
            k = next_k
            next_k += 1
            sent_at[k] = time.monotonic()
            await sender.send_message(channel_id, content(k, size), timeout=30)

    await asyncio.gather(*(lane() for _ in range(window)))


def own_copies(sender) -> int:  # noqa: ANN001  (a ChatClient)
    """How many MESSAGE_CREATE the sender's client has queued (its own messages come back)."""
    n = 0
    while not sender.events.empty():
        if sender.events.get_nowait().get("t") == "MESSAGE_CREATE":
            n += 1
    return n
