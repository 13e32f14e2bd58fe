"""Light benchmark clients: many connections in one process, a frame searched, never parsed.

Each ``Receiver`` is websockets' sans-I/O ``ClientProtocol`` inside an ``asyncio.Protocol``:
no task and no queue per connection, so one process holds thousands of them. It identifies,
then hands each text frame to a callback by a byte search: frames holding ``MARK`` (a bench
message, whose content starts with "B") to ``on_message``, MESSAGE_ACKs to ``on_ack``,
anything else after READY to ``on_other`` (when set). Each callback gets the raw frame.
Used by ``chatscale bench compare`` (``loadtest/compare.py``; its Centrifugo peer subclasses
``Receiver``, ``loadtest/centrifugo.py``) and ``chatscale bench ingest``
(``loadtest/ingest_bench.py``); ``cpu_seconds`` reads the server processes' CPU time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import psutil
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from chatscale import tokens
from chatscale.discovery import TopologyError
from chatscale.wire import Op
from guilds import community
from loadtest.topology import Embedded

MARK = b'"content":"B'  # every bench message's content starts with "B"

FrameHandler = Callable[[bytes], None]


class Receiver(asyncio.Protocol):
    """One connection: identifies, then hands the frames it receives to the callbacks."""

    def __init__(self, url: str, token: str, on_message: FrameHandler) -> None:
        self.proto = ClientProtocol(parse_uri(url), max_size=None)
        self.token = token
        self.on_message = on_message
        self.transport: asyncio.Transport | None = None
        self.ready = asyncio.get_running_loop().create_future()
        self.on_ack: FrameHandler | None = None
        self.on_other: FrameHandler | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.proto.send_request(self.proto.connect())
        self.flush()

    def flush(self) -> None:
        for data in self.proto.data_to_send():
            if data:
                self.transport.write(data)  # type: ignore[union-attr]
            else:
                self.transport.close()  # type: ignore[union-attr]

    @property
    def open(self) -> bool:
        return self.proto.state is State.OPEN

    def send(self, obj: Any) -> None:
        if not self.open:
            raise TopologyError(
                f"the server closed a bench connection mid-run ({self.closed_by()}); "
                "the machine may be too busy for this load: retry, or use a smaller one"
            )
        self.proto.send_text(orjson.dumps(obj))
        self.flush()

    def closed_by(self) -> str:
        close = self.proto.close_rcvd
        return f"close {close.code} {close.reason!r}" if close else "connection lost"

    def data_received(self, data: bytes) -> None:
        self.proto.receive_data(data)
        for event in self.proto.events_received():
            if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                raw = event.data
                if MARK in raw:
                    self.on_message(raw)
                elif b'"MESSAGE_ACK"' in raw:
                    if self.on_ack is not None:
                        self.on_ack(raw)
                elif not self.ready.done():
                    if b'"op":10' in raw:
                        self.send({"op": int(Op.IDENTIFY), "d": {"token": self.token}})
                    elif b'"READY"' in raw:
                        self.ready.set_result(None)
                elif self.on_other is not None:
                    self.on_other(raw)
            elif isinstance(event, Response) and self.proto.handshake_exc is not None:
                if not self.ready.done():
                    self.ready.set_exception(self.proto.handshake_exc)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("closed before READY"))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def open_receiver(
    url: str, token: str, on_message: FrameHandler, factory: type[Receiver] = Receiver
) -> Receiver:
    """One connection, ready; ``factory``: a ``Receiver`` speaking another system's protocol
    (``loadtest.centrifugo.CentrifugoReceiver``)."""
    loop = asyncio.get_running_loop()
    uri = parse_uri(url)
    _, rcv = await loop.create_connection(
        lambda: factory(url, token, on_message), uri.host, uri.port
    )
    await asyncio.wait_for(rcv.ready, 30)
    return rcv


async def open_receivers(
    urls_tokens: list[tuple[str, str]],
    on_message: FrameHandler,
    factory: type[Receiver] = Receiver,
) -> list[Receiver]:
    """One identified connection per (url, token), at most 64 handshakes at a time."""
    gate = asyncio.Semaphore(64)

    async def one(url: str, token: str) -> Receiver:
        async with gate:
            return await open_receiver(url, token, on_message, factory)

    got = await asyncio.gather(*(one(u, t) for u, t in urls_tokens), return_exceptions=True)
    failed = [r for r in got if isinstance(r, BaseException)]
    if failed:  # close the ones that opened: no connection outlives a failed start
        for r in got:
            if isinstance(r, Receiver):
                r.close()
        raise failed[0]
    return got  # type: ignore[return-value]


def cpu_seconds(procs: dict[str, psutil.Process]) -> dict[str, float]:
    """User + system CPU seconds of each process so far."""
    out = {}
    for name, p in procs.items():
        t = p.cpu_times()
        out[name] = t.user + t.system
    return out


@contextlib.asynccontextmanager
async def seeded_topology(
    workdir: Path, spec: community.Community, *, env: dict[str, str], start_timeout_s: float
) -> AsyncIterator[tuple[Embedded, dict[str, str], list[Any]]]:
    """A fresh embedded topology (1 gateway, 1 worker, presence, Valkey, SQLite history) with
    ``spec`` seeded: the topology, each user's name -> a token for it (in the plan's order)
    and the plan's channels. Stopped on exit, and if it failed to start."""
    topo = Embedded(
        workdir, storage_url=f"sqlite:///{workdir}/history.db", gateways=1, workers=1, env=env
    )
    try:
        await asyncio.wait_for(topo.start(say=lambda _t: None), start_timeout_s)
    except BaseException as exc:  # what did start is stopped
        await topo.stop()
        if isinstance(exc, TimeoutError):
            raise TopologyError(
                f"the embedded topology did not start within {start_timeout_s:.0f} s"
            ) from None
        raise
    try:
        settings = topo.settings
        await community.apply_to(spec, settings)
        users, _, channels, _ = spec.plan()
        now = time.time()
        minted = {
            u.username: tokens.mint(u.id, secret=settings.token_secret, ttl_s=3600, now=now)
            for u in users
        }
        yield topo, minted, channels
    finally:
        await topo.stop()
