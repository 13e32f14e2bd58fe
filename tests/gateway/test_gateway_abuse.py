"""What an abusive or broken client can do to a gateway (issue 10, items 2, 3, 4 and 8).

Every test runs a real gateway on real sockets. The abusers are raw TCP clients that speak just
enough WebSocket to get HELLO and then misbehave the way a lost phone or an attacker does:
stop reading (a small receive buffer, so the gateway's writes back up quickly), flood pings,
or sit unauthenticated. Time that the gateway measures (heartbeats, the IDENTIFY deadline,
resume expiry) is the injected FakeClock; what bounds a close is real time, and the settings
make it short (``close_timeout_s`` 0.5 s) so the file runs in seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import logging
import os
import resource
import secrets
import socket
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.sync.client import connect as ws_connect

from chatscale import tokens
from chatscale.client import ChatClient
from chatscale.closecodes import Close
from chatscale.config import Settings
from chatscale.keys import Keys
from chatscale.redisconn import connect
from chatscale.valkey import ValkeyServer
from chatscale.wire import Delivery, Op
from gateway.server import Gateway
from gateway.session import Session, State
from storage import Store
from tests.conftest import FakeClock, Stack
from workers.worker import Worker

# The acceptance runs 60 s with neighbours talking and 2,000 unauthenticated
# connections. The suite uses the same scenarios scaled down (one round is one second of the
# gateway's clock); raise these to the figures to run it in full.
ROUNDS = int(os.environ.get("CHATSCALE_ABUSE_ROUNDS", "8"))
UNAUTHENTICATED = int(os.environ.get("CHATSCALE_ABUSE_CONNECTIONS", "300"))

SMALL = {
    "heartbeat_interval_ms": 1000,  # times out after 1.5 s of the FakeClock
    "close_timeout_s": 0.5,  # real seconds a close may take before the TCP connection is aborted
    "client_buffer_bytes": 64 * 1024,
    "identify_timeout_s": 5.0,
    "max_connections_per_ip": UNAUTHENTICATED + 50,
}


def with_knobs(settings: Settings, **knobs: Any) -> Settings:
    # A new object rather than model_copy: heartbeat_timeout_s is a cached property.
    return Settings(**{**settings.model_dump(), **knobs})


@pytest.fixture
def settings(valkey: ValkeyServer, tmp_path: Path) -> Settings:
    """conftest's settings with the small limits above (the ``stack`` fixture uses these)."""
    return Settings(
        redis_url=valkey.url,
        storage_url=f"sqlite:///{tmp_path}/chatscale.db",
        key_prefix=f"t{uuid.uuid4().hex[:10]}",
        token_secret="test-secret",
        worker_block_ms=100,
        events_per_window=1000,
        user_messages_per_window=100_000,
        identifies_per_window=1000,
        control_timeout_s=10.0,
        **SMALL,
    )


# ---- a raw WebSocket client that misbehaves -----------------------------------------------------


class RawClient:
    """Just enough of RFC 6455 to get HELLO, send masked frames and read unmasked ones."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.hello: dict[str, Any] = {}

    @classmethod
    async def connect(cls, port: int, *, rcvbuf: int = 4096) -> RawClient:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: the window
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        client = cls(reader, writer)
        async with asyncio.timeout(10):  # waiting for the HTTP 101 and the first frame
            status = await reader.readuntil(b"\r\n\r\n")
            assert b" 101 " in status.split(b"\r\n")[0], status
            op, payload = await client.read_frame()
        if op == 0x1:
            client.hello = orjson.loads(payload)
        else:  # refused before HELLO: keep the close frame for the test to read
            client.refused = (op, payload)
        return client

    refused: tuple[int, bytes] | None = None

    @property
    def port(self) -> int:
        return self.writer.get_extra_info("sockname")[1]

    async def read_frame(self) -> tuple[int, bytes]:
        head = await self.reader.readexactly(2)
        n = head[1] & 0x7F
        if n == 126:
            n = struct.unpack("!H", await self.reader.readexactly(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", await self.reader.readexactly(8))[0]
        return head[0] & 0x0F, await self.reader.readexactly(n)

    async def close_code(self) -> int:
        """Read frames until the gateway's close frame; its code (1006 if the TCP just ended)."""
        if self.refused is not None:
            op, payload = self.refused
        else:
            try:
                while True:
                    op, payload = await self.read_frame()
                    if op == 0x8:
                        break
            except (asyncio.IncompleteReadError, ConnectionError):
                return 1006
        return struct.unpack("!H", payload[:2])[0]

    @staticmethod
    def frame(op: int, payload: bytes) -> bytes:
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        n = len(payload)
        if n < 126:
            head = bytes([0x80 | op, 0x80 | n])
        else:
            head = bytes([0x80 | op, 0x80 | 126]) + struct.pack("!H", n)
        return head + mask + masked

    async def send_op(self, op: Op, d: Any) -> None:
        self.writer.write(self.frame(0x1, orjson.dumps({"op": int(op), "d": d})))
        await self.writer.drain()

    async def flood_pings(self, *, max_bytes: int) -> int:
        """Send 125-byte pings (never reading) until the gateway drops us; returns bytes sent."""
        ping = self.frame(0x9, b"p" * 125)
        batch = ping * 256
        sent = 0
        with contextlib.suppress(ConnectionError, OSError):
            while sent < max_bytes:
                self.writer.write(batch)
                await self.writer.drain()
                sent += len(batch)
        return sent

    def abort(self) -> None:
        self.writer.transport.abort()


def server_side(gw: Gateway, raw: RawClient) -> Any:
    """The gateway's Client for this raw connection, or None once the gateway let it go."""
    return next(
        (c for c in gw.clients if c.ws.remote_address and c.ws.remote_address[1] == raw.port),
        None,
    )


async def gone(gw: Gateway, raw: RawClient, what: str, timeout: float = 5.0) -> None:
    """Wait (bounded) until the gateway has let go of ``raw``'s connection entirely."""
    deadline = time.monotonic() + timeout
    while server_side(gw, raw) is not None:
        assert time.monotonic() < deadline, f"gateway still holds {what} after {timeout}s"
        await asyncio.sleep(0.02)  # polling a condition with a deadline, not waiting for time


async def heartbeat(*clients: ChatClient) -> None:
    for c in clients:
        await c.send_op(Op.HEARTBEAT, c.seq)


async def raw_heartbeats(raws: list[RawClient]) -> None:
    """HEARTBEAT from each, and read the ACK: the gateway has counted it before we tick."""
    for raw in raws:
        await raw.send_op(Op.HEARTBEAT, None)
    async with asyncio.timeout(20):  # waiting for every HEARTBEAT_ACK
        for raw in raws:
            op, payload = await raw.read_frame()
            assert op == 0x1 and orjson.loads(payload)["op"] == Op.HEARTBEAT_ACK


# ---- item 2: one silent client must not take the gateway down ----------------------------------


async def test_silent_and_ping_flooding_clients_do_not_stall_the_gateway(stack: Stack):
    gw = stack.gateways[0]
    redis = connect(stack.settings)
    alive = Keys(stack.settings.key_prefix).gateway_alive(gw.id)
    alice, bob = await stack.client("alice"), await stack.client("bob")
    general = stack.channels["general"]
    silent = await RawClient.connect(gw.port)  # read HELLO; from now on neither reads nor sends
    flooder = await RawClient.connect(gw.port)  # pings as fast as it can, never reads
    flood = asyncio.create_task(flooder.flood_pings(max_bytes=64 << 20))
    acked, received = [], []
    most_buffered = 0  # the gateway's write buffer towards the flooder (its pongs)
    try:
        for r in range(ROUNDS):
            stack.clock.advance(1.0)
            await heartbeat(alice, bob)
            acked.append((await alice.send_message(general, f"round {r}"))["id"])
            await stack.drain()
            received.append((await bob.next_event("MESSAGE_CREATE", timeout=5))["d"]["id"])
            # One housekeeping pass, as the timer would run it. Before the fix tick() awaited
            # each timed-out client's close(): close_timeout (10 s) or forever in drain().
            try:
                await asyncio.wait_for(gw.control.check(), 2.0)
                await asyncio.wait_for(gw.tick(), 1.0)
            except TimeoutError:
                pytest.fail(f"round {r}: housekeeping waited on one client for over 1 s")
            assert await redis.exists(alive), f"round {r}: the gateway lost its liveness key"
            ours = server_side(gw, flooder)
            if ours is not None and ours.ws.transport is not None:
                most_buffered = max(most_buffered, ours.ws.transport.get_write_buffer_size())
        sent = await asyncio.wait_for(flood, 10)
        assert sent < 64 << 20, "the gateway never dropped the ping flooder"
        await gone(gw, flooder, "the ping flooder")
        await gone(gw, silent, "the silent client")
        assert acked == received  # nothing lost, in order
        # The limit is checked after each read: one read's worth of pongs past it at most.
        assert most_buffered <= stack.settings.client_buffer_bytes + (256 << 10), most_buffered
        assert not alice.closed.is_set() and not bob.closed.is_set()  # nobody got 4000
        assert alice.session_id in gw.sessions and bob.session_id in gw.sessions
    finally:
        flood.cancel()
        silent.abort()
        flooder.abort()
        await redis.aclose()


async def test_liveness_renewal_never_undoes_a_fence(stack: Stack):
    """Renewal runs on its own task now, so it must not re-create a key the control plane
    deleted to fence this gateway before ``control.check()`` has dropped the sessions."""
    gw = stack.gateways[0]
    redis = connect(stack.settings)
    alive = Keys(stack.settings.key_prefix).gateway_alive(gw.id)
    alice = await stack.client("alice")
    try:
        await redis.delete(alive)  # what ControlPlane does to a gateway that did not confirm
        assert not await gw._refresh_alive()
        assert not await redis.exists(alive)
        await gw.control.check()
        await asyncio.wait_for(alice.closed.wait(), 5)
        assert alice.close_code == Close.UNKNOWN_ERROR  # its sessions may have missed deliveries
        assert await redis.exists(alive)  # and only then is it live again
    finally:
        await redis.aclose()


# ---- item 3: memory per session is bounded --------------------------------------------------------


async def test_history_answers_are_not_kept_for_resume(stack: Stack):
    gw = stack.gateways[0]
    alice = await stack.client("alice")
    general = stack.channels["general"]
    for i in range(20):
        await alice.send_message(general, f"filler {i} " + "x" * 1500)
    await stack.drain()
    for _ in range(20):
        await alice.next_event("MESSAGE_CREATE")
    session = gw.sessions[alice.session_id]
    seq_before = session.seq
    for _ in range(10):
        assert len(await alice.history(general, limit=100)) == 20
    assert session.seq == seq_before + 10  # the answers were numbered and sent...
    assert session.missed_since(seq_before) == []  # ...but are not owed on RESUME


def test_replay_buffer_is_bounded_in_bytes_and_resume_fails_past_it():
    session = Session(7, "web", replay_size=10_000, replay_bytes=64 * 1024)
    payload = '{"content":"' + "y" * 10_000 + '"}'
    for _ in range(1000):  # ~10 MB of dispatches
        session.dispatch("MESSAGE_CREATE", payload)
    assert session.replay_held <= 64 * 1024
    assert session.missed_since(1) is None  # evicted: the client must IDENTIFY again
    recent = session.missed_since(session.seq - 3)
    assert recent is not None and len(recent) == 3


async def test_slow_consumer_is_aborted_after_a_bounded_wait_and_its_session_expires(
    stack: Stack,
):
    gw = stack.gateways[0]
    raw = await RawClient.connect(gw.port)
    await raw.send_op(Op.IDENTIFY, {"token": stack.token("bob"), "device": "mobile"})
    async with asyncio.timeout(10):  # READY, then bob stops reading
        while True:
            op, payload = await raw.read_frame()
            if op == 0x1 and orjson.loads(payload).get("t") == "READY":
                break
    ours = server_side(gw, raw)
    session = ours.session
    guild = next(iter(session.guilds))
    channel = next(c for c, g in session.channels.items() if g == guild)
    payload = orjson.dumps({"content": "z" * 8000}).decode()
    delivered = 0
    while (
        ours.conn.state is not State.CLOSED and delivered < 4000
    ):  # up to ~32 MB: past any kernel buffer
        gw.fanout.deliver(
            Delivery(t="MESSAGE_CREATE", guild_id=guild, channel_id=channel, payload=payload)
        )
        delivered += 1
        if delivered % 64 == 0:
            await asyncio.sleep(0)  # let the transport write what the kernel takes
    assert ours.conn.state is State.CLOSED, "never detected as a slow consumer"
    # Before the fix the 4010 close waited in drain() forever: the connection never ended,
    # the session stayed attached and never expired.
    await gone(gw, raw, "the slow consumer", timeout=SMALL["close_timeout_s"] + 5)
    assert session.detached_at is not None
    stack.clock.advance(stack.settings.resume_timeout_s + 1)
    await gw.tick()
    assert session.session_id not in gw.sessions
    raw.abort()


# ---- item 4: unauthenticated connections, caps, open files, log floods --------------------------


async def _connect_batch(port: int, n: int) -> list[RawClient]:
    """``n`` raw connections at once. On a loaded machine a handshake can be dropped (EOF before
    the 101: the server's opening handshake timed out): such a one is made again, sequentially,
    at most 3 times, so the test still holds ``n`` live connections or says why it cannot."""
    got = await asyncio.gather(
        *(RawClient.connect(port, rcvbuf=65536) for _ in range(n)), return_exceptions=True
    )
    raws = [g for g in got if isinstance(g, RawClient)]
    for failed in [g for g in got if not isinstance(g, RawClient)]:
        for attempt in range(3):
            try:
                raws.append(await RawClient.connect(port, rcvbuf=65536))
                break
            except (asyncio.IncompleteReadError, ConnectionError, TimeoutError) as exc:
                if attempt == 2:
                    for raw in raws:
                        raw.abort()
                    raise AssertionError(
                        f"a handshake failed 4 times ({failed!r}, {exc!r})"
                    ) from exc
    return raws


async def test_unauthenticated_connections_close_at_the_identify_deadline(stack: Stack):
    gw = stack.gateways[0]
    raws: list[RawClient] = []
    try:
        for i in range(0, UNAUTHENTICATED, 50):
            raws += await _connect_batch(gw.port, min(50, UNAUTHENTICATED - i))
        for step in range(4):  # heartbeats do not extend the deadline (5 s)
            stack.clock.advance(1.0)
            await raw_heartbeats(raws)
            await gw.tick()
            if step == 2:  # a real user arrives while they wait
                alice = await stack.client("alice")
                await heartbeat(alice)
        assert len(gw.clients) == UNAUTHENTICATED + 1  # nobody closed before the deadline
        stack.clock.advance(1.5)
        await heartbeat(alice)
        await raw_heartbeats(raws)
        await gw.tick()
        try:
            codes = await asyncio.wait_for(asyncio.gather(*(r.close_code() for r in raws)), 20)
        except TimeoutError:
            pytest.fail("unauthenticated connections still open 20 s after the IDENTIFY deadline")
        assert set(codes) == {Close.IDENTIFY_TIMEOUT}
        deadline = time.monotonic() + 10
        while len(gw.clients) > 1:
            assert time.monotonic() < deadline, f"{len(gw.clients)} connections still open"
            await asyncio.sleep(0.02)
        ack = await alice.send_message(stack.channels["general"], "still here")
        await stack.drain()
        assert (await alice.next_event("MESSAGE_CREATE"))["d"]["id"] == ack["id"]
        assert not alice.closed.is_set()
    finally:
        for raw in raws:
            raw.abort()


@pytest.fixture
async def capped(settings: Settings, store: Store) -> AsyncIterator[Any]:
    """A factory of started gateways with given knobs (stopped at the end of the test)."""
    started: list[Gateway] = []

    async def make(**knobs: Any) -> Gateway:
        gw = Gateway(with_knobs(settings, **knobs), store=store, clock=FakeClock())
        await gw.start()
        started.append(gw)
        return gw

    yield make
    for gw in started:
        await gw.stop()


async def test_connections_per_address_are_capped(capped: Any):
    gw = await capped(max_connections_per_ip=3)
    raws = [await RawClient.connect(gw.port) for _ in range(3)]
    assert all(r.hello.get("op") == Op.HELLO for r in raws)
    extra = await RawClient.connect(gw.port)
    assert await asyncio.wait_for(extra.close_code(), 5) == Close.TOO_MANY_CONNECTIONS
    raws[0].abort()  # a slot frees when one closes
    await gone(gw, raws[0], "the aborted connection")
    again = await RawClient.connect(gw.port)
    assert again.hello.get("op") == Op.HELLO
    for r in [*raws, extra, again]:
        r.abort()


async def test_connections_per_gateway_are_capped(capped: Any):
    gw = await capped(max_connections=2, max_connections_per_ip=0)
    raws = [await RawClient.connect(gw.port) for _ in range(2)]
    extra = await RawClient.connect(gw.port)
    assert await asyncio.wait_for(extra.close_code(), 5) == Close.GATEWAY_FULL
    for r in [*raws, extra]:
        r.abort()


def test_gateway_process_raises_its_open_file_limit(settings: Settings, tmp_path: Path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"hard open-file limit {hard} leaves nothing to raise")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATSCALE_")}
    env |= {
        "CHATSCALE_REDIS_URL": settings.redis_url or "",
        "CHATSCALE_STORAGE_URL": f"sqlite:///{tmp_path}/gw.db",
        "CHATSCALE_KEY_PREFIX": settings.key_prefix,
        "CHATSCALE_TOKEN_SECRET": secrets.token_urlsafe(48),  # a gateway refuses a weak one
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
    }
    with subprocess.Popen(
        [sys.executable, "-m", "chatscale", "gateway", "--port", "0"],
        env=env,
        cwd=tmp_path,  # no run.json of this checkout is found
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)),
    ) as proc:
        try:
            assert proc.stdout is not None
            deadline = time.monotonic() + 60
            lines = []
            while time.monotonic() < deadline:
                line = proc.stdout.readline()
                lines.append(line)
                if not line or "ready on" in line:
                    break
            assert "ready on" in lines[-1], "gateway did not start:\n" + "".join(lines)
            with ws_connect(lines[-1].split("ready on ")[1].strip(), open_timeout=10) as ws:
                assert orjson.loads(ws.recv(timeout=10))["op"] == Op.HELLO  # it serves
            limits = Path(f"/proc/{proc.pid}/limits").read_text()
            row = next(line for line in limits.splitlines() if line.startswith("Max open files"))
            got_soft, got_hard = row.split()[3:5]
            assert got_soft == got_hard, row
        finally:
            # Killed, not SIGTERMed: a graceful stop is not what this test is about
            # (tests/gateway/test_stop.py is); communicate is bounded so a wedge fails here.
            proc.kill()
            proc.communicate(timeout=30)


def test_repeated_log_lines_are_counted_not_printed():
    from chatscale.logfilter import RepeatFilter

    clock = FakeClock()
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    handler.addFilter(RepeatFilter(limit=3, window_s=10.0, clock=clock))
    logger = logging.getLogger(f"test.repeat.{uuid.uuid4().hex}")
    logger.propagate = False
    logger.addHandler(handler)
    for i in range(1000):
        logger.error("accept failed: %s", f"Too many open files ({i})")
    logger.warning("something else")
    assert len(records) == 4
    clock.advance(10.0)
    logger.error("accept failed: %s", "Too many open files (later)")
    assert len(records) == 5
    assert "997 identical lines suppressed" in records[-1].getMessage()


# ---- item 8: tracing is an operator capability --------------------------------------------------


async def test_trace_is_ignored_unless_the_token_is_an_operators(stack: Stack):
    alice = await stack.client("alice", gateway=0)
    bob = await stack.client("bob", gateway=1)
    general = stack.channels["general"]
    await alice.send_message(general, "look at my timings", trace=True)
    await stack.drain()
    got = await bob.next_event("MESSAGE_CREATE")
    assert "trace" not in got  # no hop timings for bob (or anyone) from a plain user

    operator = await stack.client("alice", operator=True)
    await operator.send_message(general, "traced by an operator", trace=True)
    await stack.drain()
    got = await bob.next_event("MESSAGE_CREATE")
    assert [hop for hop, _ in got["trace"]][0] == "gateway_receive"


def test_a_forged_operator_claim_does_not_verify():
    token = tokens.mint(1, secret="s", ttl_s=60, now=time.time())
    body, sig = token.split(".")
    claims = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    forged = base64.urlsafe_b64encode(orjson.dumps({**claims, "op": 1})).rstrip(b"=").decode()
    with pytest.raises(tokens.TokenError):
        tokens.verify(f"{forged}.{sig}", secret="s", now=time.time())


async def test_chatscale_trace_command_still_prints_a_timeline(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    from ops.commands import cmd_trace

    s = stack.settings
    monkeypatch.setenv("CHATSCALE_REDIS_URL", s.redis_url or "")
    monkeypatch.setenv("CHATSCALE_STORAGE_URL", s.storage_url)
    monkeypatch.setenv("CHATSCALE_KEY_PREFIX", s.key_prefix)
    monkeypatch.setenv("CHATSCALE_TOKEN_SECRET", s.token_secret)
    worker = Worker(s, store=stack.store, consumer="w-trace")
    running = asyncio.create_task(worker.run())
    args = argparse.Namespace(
        sender="alice",
        to="bob",
        channel="general",
        content="traced hello",
        gateway=[stack.gateways[0].url, stack.gateways[1].url],
        timeout=10.0,
    )
    try:
        assert await asyncio.wait_for(cmd_trace(args), 30) == 0
    finally:
        worker.stop()
        await asyncio.wait_for(running, 10)
        await worker.close()
    out = capsys.readouterr().out
    assert "gateway_receive" in out and "client_receive" in out
