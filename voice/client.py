"""A voice client's connection to the relay (UDP or the TCP arm): AUTH, READY, send, receive.

Used by tests, the load generator and the lab. What arrives is queued with its arrival time
(``loop.time()``) so a jitter buffer can judge it; nothing here decides what to play.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from voice import packet


class VoiceRefused(Exception):
    """The relay ended the session (or never admitted it); ``reason`` is an ENDED_* code."""

    def __init__(self, reason: int) -> None:
        super().__init__(f"relay refused the voice session (reason {reason})")
        self.reason = reason


@dataclass
class VoiceConnection:
    transport_kind: str
    received: asyncio.Queue[tuple[float, bytes]] = field(default_factory=asyncio.Queue)
    ssrc: int = 0
    speak: bool = False
    ended: int | None = None  # ENDED reason once the relay ended us
    ended_event: asyncio.Event = field(default_factory=asyncio.Event)
    _ready: asyncio.Future[tuple[int, bool]] | None = None
    _udp: asyncio.DatagramTransport | None = None
    _writer: asyncio.StreamWriter | None = None
    _reader_task: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls, endpoint: str, token: str, *, transport: str = "udp", timeout: float = 10.0
    ) -> VoiceConnection:
        """Connect and authenticate; raises VoiceRefused or TimeoutError (after ``timeout``)."""
        host, _, port = endpoint.rpartition(":")
        conn = cls(transport)
        loop = asyncio.get_running_loop()
        conn._ready = loop.create_future()
        if transport == "udp":
            conn._udp, _ = await loop.create_datagram_endpoint(
                lambda: _Proto(conn), remote_addr=(host, int(port))
            )
        else:
            reader, conn._writer = await asyncio.open_connection(host, int(port))
            conn._reader_task = asyncio.create_task(conn._read_tcp(reader))
        try:
            async with asyncio.timeout(timeout):
                while True:  # UDP may lose the AUTH or the READY: ask again every 200 ms
                    conn._send(packet.auth(token))
                    done, _ = await asyncio.wait({conn._ready}, timeout=0.2)
                    if done:
                        break
            conn.ssrc, conn.speak = conn._ready.result()
        except BaseException:
            await conn.close()
            raise
        return conn

    def _send(self, data: bytes) -> None:
        if self._udp is not None:
            self._udp.sendto(data)
        elif self._writer is not None and not self._writer.transport.is_closing():
            self._writer.write(packet.frame(data))

    def send_media(self, seq: int, timestamp: int, payload: bytes) -> None:
        self._send(packet.media(seq, timestamp, self.ssrc, payload))

    def send_raw(self, data: bytes) -> None:
        self._send(data)

    def keepalive(self) -> None:
        self._send(packet.keepalive())

    def report(self, r: packet.Report) -> None:
        self._send(packet.report(r))

    def _got(self, data: bytes) -> None:
        if not data:
            return
        kind = data[0]
        if kind == packet.READY:
            parsed = packet.parse_ready(data)
            if parsed and self._ready is not None and not self._ready.done():
                self._ready.set_result(parsed)
        elif kind == packet.ENDED:
            self.ended = data[1] if len(data) > 1 else 0
            self.ended_event.set()
            if self._ready is not None and not self._ready.done():
                self._ready.set_exception(VoiceRefused(self.ended))
        elif kind == packet.SPEAK and len(data) > 1:
            self.speak = bool(data[1])
        else:
            self.received.put_nowait((asyncio.get_running_loop().time(), data))

    async def _read_tcp(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = await reader.readexactly(2)
                self._got(await reader.readexactly(int.from_bytes(head, "big")))

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._writer is not None:
            self._writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
        if self._ready is not None and not self._ready.done():
            self._ready.cancel()


class _Proto(asyncio.DatagramProtocol):
    def __init__(self, conn: VoiceConnection) -> None:
        self.conn = conn

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.conn._got(data)

    def error_received(self, exc: Exception) -> None:
        pass
