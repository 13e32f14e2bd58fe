"""Centrifugo as a peer in ``chatscale bench compare --peer centrifugo``.

Centrifugo (https://github.com/centrifugal/centrifugo, Go) is optional and never vendored: it is
built from the Go module proxy into ``~/.cache/chatscale/centrifugo/`` by ``BUILD_COMMAND``.
Each run starts its own Valkey (``chatscale.valkey.ValkeyServer``, the way the embedded topology
starts one) and the binary as its own process with a generated config (``config``): the Redis
engine against that Valkey (so a publication goes through Valkey PUBLISH and back, as chatscale's
does through its delivery stream), anonymous connections without a token, channels without a
namespace open to anonymous subscribe and publish-by-subscribers, no history, no presence. The
HTTP port is a free one picked just before the start (``valkey.free_port``) and passed in the
config: Centrifugo cannot report a port it chose itself.

The load generator is the same one as for chatscale and the floor (``loadtest/lightclient.py``):
``CentrifugoReceiver`` is its ``Receiver`` with Centrifugo's JSON protocol over
``/connection/websocket`` instead of chatscale's HELLO/IDENTIFY: a connect and a subscribe
command sent in one frame once the WebSocket is open, ready on the subscribe reply. Frames are
searched, never parsed: Centrifugo batches several replies and pushes into one frame
(newline-delimited JSON), so publications are counted with ``bytes.count(MARK)`` (the bench
content starts with "B", as for chatscale) and publish replies with ``bytes.count(ACK)``.
A frame holding only ``{}`` (or such a line) is the server's ping, answered with ``{}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
from websockets.frames import Frame, Opcode
from websockets.http11 import Response

from chatscale.discovery import TopologyError
from chatscale.procutil import die_with_parent
from chatscale.valkey import ValkeyServer, free_port
from loadtest.lightclient import MARK, FrameHandler, Receiver

VERSION = "v6.9.1"
DEFAULT_BINARY = Path("~/.cache/chatscale/centrifugo/centrifugo").expanduser()
BUILD_COMMAND = (
    "GOBIN=~/.cache/chatscale/centrifugo go install -ldflags "
    '"-s -w -X github.com/centrifugal/centrifugo/v6/internal/build.Version=6.9.1" '
    f"github.com/centrifugal/centrifugo/v6@{VERSION}"
)
CHANNEL = "bench"
ACK = b'"publish":{}'  # the reply to a client's publish command
HANDSHAKE = b'{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"' + CHANNEL.encode() + b'"}}'
SUBSCRIBED = b'{"id":2,"subscribe":'
PING = b"{}"
FIRST_PUBLISH_ID = 3  # ids 1 and 2 are the connect and subscribe commands


def missing_binary(path: Path) -> str | None:
    """The one line to print when ``path`` is not a runnable Centrifugo, else None."""
    if path.is_file() and os.access(path, os.X_OK):
        return None
    return f"no Centrifugo binary at {path}: build it with `{BUILD_COMMAND}` (needs Go >= 1.26)"


def config(http_port: int, redis_url: str) -> dict[str, Any]:
    """Centrifugo v6's config for one bench run (v6 key names: ``http_server``, ``engine``,
    ``channel.without_namespace``). Pings every 60 s, like chatscale's heartbeat interval in
    the bench (``CHATSCALE_HEARTBEAT_INTERVAL_MS=60000``), so none lands in a burst."""
    return {
        "http_server": {"address": "127.0.0.1", "port": str(http_port)},
        "log": {"level": "error"},
        "usage_stats": {"disabled": True},
        "engine": {"type": "redis", "redis": {"address": [redis_url]}},
        "client": {
            "allow_anonymous_connect_without_token": True,
            "ping_interval": "60s",
            "pong_timeout": "20s",
        },
        "channel": {
            "without_namespace": {
                "allow_subscribe_for_client": True,
                "allow_subscribe_for_anonymous": True,
                "allow_publish_for_subscriber": True,
                "allow_publish_for_anonymous": True,
            }
        },
    }


def publish_command(body: str, n: int) -> dict[str, Any]:
    """The ``n``-th bench message as a client publish (same content and nonce as chatscale's)."""
    data = {"content": body, "nonce": f"b{n}"}
    return {"id": FIRST_PUBLISH_ID + n, "publish": {"channel": CHANNEL, "data": data}}


def is_ping(raw: bytes) -> bool:
    """A ping: the frame is ``{}``, or one of its lines is (every other line starts ``{"``)."""
    return raw == PING or raw.startswith(b"{}\n") or b"\n{}" in raw


class CentrifugoReceiver(Receiver):
    """``Receiver`` speaking Centrifugo's JSON protocol; the token is not used.
    ``publication_frames``: the frames that held at least one publication."""

    def __init__(self, url: str, token: str, on_message: FrameHandler) -> None:
        super().__init__(url, token, on_message)
        self.publication_frames = 0

    def data_received(self, data: bytes) -> None:
        self.proto.receive_data(data)
        for event in self.proto.events_received():
            if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                raw = event.data
                n = raw.count(MARK)
                if n:
                    self.publication_frames += 1
                    for _ in range(n):
                        self.on_message(raw)
                if ACK in raw:
                    if self.on_ack is not None:
                        for _ in range(raw.count(ACK)):
                            self.on_ack(raw)
                elif not self.ready.done():
                    if SUBSCRIBED in raw:
                        self.ready.set_result(None)
                    elif b'"error"' in raw or b'"disconnect"' in raw:
                        self.ready.set_exception(
                            TopologyError(f"centrifugo refused: {raw[:200]!r}")
                        )
                if is_ping(raw) and self.open:
                    self.proto.send_text(PING)
            elif isinstance(event, Response):
                if self.proto.handshake_exc is not None:
                    if not self.ready.done():
                        self.ready.set_exception(self.proto.handshake_exc)
                else:
                    self.proto.send_text(HANDSHAKE)
        self.flush()


class Centrifugo:
    """One Centrifugo process with its own Valkey, in ``workdir``."""

    def __init__(self, binary: Path, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.valkey = ValkeyServer(workdir=workdir / "valkey")
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/connection/websocket"

    def processes(self) -> dict[str, psutil.Process]:
        assert self.proc is not None and self.valkey.proc is not None
        return {
            "centrifugo": psutil.Process(self.proc.pid),
            "valkey": psutil.Process(self.valkey.proc.pid),
        }

    def _log_tail(self) -> str:
        log = self.workdir / "centrifugo.log"
        return log.read_text(errors="replace")[-1500:] if log.exists() else ""

    def _launch(self) -> subprocess.Popen[bytes]:
        """Valkey started, then the binary with a config naming a free port picked here."""
        self.valkey.start()
        self.port = free_port()
        conf = self.workdir / "config.json"
        conf.write_text(json.dumps(config(self.port, self.valkey.url), indent=2))
        with open(self.workdir / "centrifugo.log", "wb") as log:
            return subprocess.Popen(
                [str(self.binary), "--config", str(conf)],
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(),  # a killed bench takes its Centrifugo with it
            )

    async def start(self, timeout_s: float = 30.0) -> None:
        self.proc = self._launch()  # on this thread: die_with_parent needs the main one
        deadline = time.monotonic() + timeout_s
        while True:  # listening once a TCP connect succeeds
            if self.proc.poll() is not None:
                raise TopologyError(
                    f"centrifugo exited ({self.proc.returncode}):\n{self._log_tail()}"
                )
            with contextlib.suppress(OSError):
                _, w = await asyncio.open_connection("127.0.0.1", self.port)
                w.close()
                await w.wait_closed()
                return
            if time.monotonic() > deadline:
                raise TopologyError(
                    f"centrifugo did not listen on port {self.port} in {timeout_s:.0f} s:\n"
                    + self._log_tail()
                )
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.valkey.stop()


@contextlib.asynccontextmanager
async def running(binary: Path, workdir: Path) -> AsyncIterator[Centrifugo]:
    """A started ``Centrifugo`` (and its Valkey), stopped on exit and if it failed to start."""
    server = Centrifugo(binary, workdir)
    try:
        await server.start()
        yield server
    finally:
        await asyncio.to_thread(server.stop)
