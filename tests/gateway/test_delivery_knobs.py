"""The two delivery knobs the lab turns: ``fanout_serialize`` and ``slow_client``.

``fanout_serialize=per_recipient`` must put the same frames on the wire as the default (only
the gateway's work differs), with the same sequence numbers and replay buffer. ``slow_client=
unbounded`` must keep a client that stopped reading open past ``client_buffer_bytes`` and lose
nothing for it; the default closes it with 4010 (also covered in ``tests/test_e2e.py``).
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from types import SimpleNamespace

import orjson
import pytest

from chatscale.closecodes import Close
from chatscale.config import Settings
from chatscale.valkey import ValkeyServer
from chatscale.wire import Delivery
from gateway.fanout import LocalFanout
from gateway.session import Session
from tests.conftest import Stack
from tests.recording import RecordingSends

GUILD, CHANNEL = 10, 20


class RecordingGateway(RecordingSends):
    """What ``LocalFanout.deliver`` touches: the sessions, and a ``send`` that records."""

    def __init__(self) -> None:
        super().__init__()
        self.sessions: dict[str, Session] = {}


def fanout_with_sessions(serialize: str, n: int = 3) -> tuple[RecordingGateway, LocalFanout]:
    gw = RecordingGateway()
    fanout = LocalFanout(gw, serialize=serialize)  # type: ignore[arg-type]
    for u in range(n):
        session = Session(u + 1, "desktop", 64, session_id=f"s{u}")
        session.guilds = {GUILD}
        session.channels = {CHANNEL: GUILD}
        session.seq = u + 1  # READY and some earlier dispatches: sequences differ per session
        fanout.by_guild.setdefault(GUILD, set()).add(session)
        gw.sessions[session.session_id] = session
        fanout.attached[session] = SimpleNamespace(user=u + 1)
    return gw, fanout


PAYLOAD = orjson.dumps(
    {
        "id": "123",
        "channel_id": str(CHANNEL),
        "guild_id": str(GUILD),
        "author": {"id": "1", "username": "ana"},
        "content": 'quotes " and unicode ✓ and \\ backslash',
        "timestamp": 1700000000000,
    }
).decode()


def deliveries() -> list[Delivery]:
    return [
        Delivery(t="MESSAGE_CREATE", guild_id=GUILD, channel_id=CHANNEL, payload=PAYLOAD),
        Delivery(
            t="MESSAGE_CREATE",
            guild_id=GUILD,
            channel_id=CHANNEL,
            payload=PAYLOAD,
            trace=[("gateway_receive", 1), ("fanout", 2)],
        ),
        Delivery(t="PRESENCE_UPDATE", guild_id=GUILD, payload='{"user_id":"1","status":"idle"}'),
        Delivery(t="MESSAGE_CREATE", guild_id=GUILD, channel_id=999, payload=PAYLOAD),  # nobody
    ]


def run(serialize: str) -> tuple[dict[int, list[str]], dict[str, list[str] | None], list[int]]:
    gw, fanout = fanout_with_sessions(serialize)
    counts = [fanout.deliver(d) for d in deliveries()]
    by_user: dict[int, list[str]] = {}
    for client, text in gw.sent:
        by_user.setdefault(client.user, []).append(text)  # type: ignore[attr-defined]
    replays = {sid: s.missed_since(0) for sid, s in gw.sessions.items()}
    return by_user, replays, counts


@pytest.fixture
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway_deliver stamp of a traced delivery, the same in both runs."""
    from chatscale import trace

    monkeypatch.setattr(trace, "stamp", lambda tr, hop: tr.append((hop, 42)))


def test_per_recipient_puts_the_same_frames_on_the_wire_as_serialize_once(fixed_clock):
    once = run("once")
    per_recipient = run("per_recipient")
    assert once[2] == per_recipient[2] == [3, 3, 3, 0]
    # byte for byte: every recipient, every frame (trace included), in order
    assert per_recipient[0] == once[0]
    frames = [orjson.loads(t) for t in once[0][1]]
    assert [f["s"] for f in frames] == [2, 3, 4]  # this session's own sequence numbers
    assert frames[1]["trace"][-1] == ["gateway_deliver", 42]
    assert frames[0]["d"]["content"] == 'quotes " and unicode ✓ and \\ backslash'


def test_per_recipient_keeps_the_same_replay_buffer_for_resume(fixed_clock):
    gw_a, fan_a = fanout_with_sessions("once")
    gw_b, fan_b = fanout_with_sessions("per_recipient")
    for d in deliveries():
        fan_a.deliver(d)
        fan_b.deliver(d)
    for sid, a in gw_a.sessions.items():
        b = gw_b.sessions[sid]
        assert a.seq == b.seq
        assert a.replay_held == b.replay_held > 0
        missed = a.missed_since(a.seq - 3)
        assert missed is not None and len(missed) == 3
        assert missed == b.missed_since(b.seq - 3)


def test_defaults_are_todays_behaviour():
    fields = Settings.model_fields
    assert fields["fanout_serialize"].default == "once"
    assert fields["slow_client"].default == "close"
    assert fields["client_writes"].default == "per_frame"  # coalescing bought no measured CPU
    assert LocalFanout(RecordingGateway()).per_recipient is False  # type: ignore[arg-type]


# ---- the real gateway -------------------------------------------------------------------------


@pytest.fixture
def settings(valkey: ValkeyServer, storage_url: str, request: pytest.FixtureRequest) -> Settings:
    """conftest's settings, a small per-client buffer, and this test's knobs."""
    return Settings(
        redis_url=valkey.url,
        storage_url=storage_url,
        key_prefix=f"t{uuid.uuid4().hex[:10]}",
        token_secret="test-secret",
        worker_block_ms=100,
        heartbeat_interval_ms=30_000,
        events_per_window=1000,
        user_messages_per_window=100_000,
        identifies_per_window=1000,
        control_timeout_s=10.0,
        client_buffer_bytes=32 * 1024,
        **getattr(request, "param", {}),
    )


@pytest.mark.parametrize("settings", [{"fanout_serialize": "per_recipient"}], indirect=True)
async def test_gateway_with_per_recipient_delivers_every_message_in_order(stack: Stack):
    assert stack.gateways[0].fanout.per_recipient
    alice = await stack.client("alice", gateway=0)
    bob = await stack.client("bob", gateway=0)
    general = stack.channels["general"]
    sent = [(await alice.send_message(general, f"m{i}"))["id"] for i in range(5)]
    await stack.drain()
    got = [(await bob.next_event("MESSAGE_CREATE", timeout=5)) for _ in sent]
    assert [e["d"]["id"] for e in got] == sent
    seqs = [e["s"] for e in got]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


@pytest.mark.parametrize(
    "settings", [{"slow_client": "close"}, {"slow_client": "unbounded"}], indirect=True
)
async def test_a_reader_that_stopped_is_closed_or_kept_as_the_knob_says(stack: Stack):
    gw = stack.gateways[0]
    unbounded = gw.settings.slow_client == "unbounded"
    slow = await stack.client("carol", gateway=0)
    # Stop reading, and shrink the kernel buffers on both ends so the gateway's buffer grows.
    slow.ws.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.ws.transport.pause_reading()
    server_side = next(c for c in gw.clients if c.session and c.session.username == "carol")
    server_side.ws.transport.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
    )
    fast = await stack.client("dave", gateway=0)
    alice = await stack.client("alice", gateway=1)
    limit = gw.settings.client_buffer_bytes
    big = "x" * 1900
    sent = 0
    most_buffered = 0
    for _ in range(40):
        for _ in range(10):
            await alice.send_message(stack.channels["general"], big)
            sent += 1
        await stack.drain()
        for _ in range(10):
            await fast.next_event("MESSAGE_CREATE", timeout=5)  # the neighbour keeps receiving
        transport = server_side.ws.transport
        most_buffered = max(most_buffered, transport.get_write_buffer_size() if transport else 0)
        if server_side.conn.state.name == "CLOSED" or most_buffered > 2 * limit:
            break
    if not unbounded:
        assert server_side.conn.state.name == "CLOSED", "the slow client was never closed"
        slow.ws.transport.resume_reading()
        await asyncio.wait_for(slow.closed.wait(), 20)
        assert slow.close_code == Close.SLOW_CONSUMER
        return
    # unbounded: past twice the limit, still open, and it gets every message once it reads again
    assert most_buffered > 2 * limit, (sent, most_buffered)
    assert server_side.conn.state.name == "READY" and not server_side.closing
    slow.ws.transport.resume_reading()
    for _ in range(sent):
        assert (await slow.next_event("MESSAGE_CREATE", timeout=10))["d"]["content"] == big
    assert slow.close_code is None


@pytest.mark.parametrize(
    "settings", [{"client_writes": "coalesced"}, {"client_writes": "per_frame"}], indirect=True
)
async def test_frames_of_one_loop_turn_go_out_in_one_write_or_one_each(stack: Stack):
    """``client_writes``: coalesced writes nothing while a burst is queued and the burst in
    order afterwards (in one write or a few); per_frame writes each frame as it is queued."""
    gw = stack.gateways[0]
    bob = await stack.client("bob", gateway=0)
    server_side = next(c for c in gw.clients if c.session and c.session.username == "bob")
    transport = server_side.ws.transport
    writes = 0
    real_write = transport.write

    def counting(data: bytes) -> None:
        nonlocal writes
        writes += 1
        real_write(data)

    transport.write = counting
    try:
        general = stack.channels["general"]
        guild = server_side.session.channels[general]
        burst = 20
        for i in range(burst):  # one loop turn: no await between the deliveries
            payload = orjson.dumps({"id": str(1000 + i), "channel_id": str(general)}).decode()
            gw.fanout.deliver(
                Delivery(t="MESSAGE_CREATE", guild_id=guild, channel_id=general, payload=payload)
            )
        during = writes
        got = [(await bob.next_event("MESSAGE_CREATE", timeout=5)) for _ in range(burst)]
    finally:
        transport.write = real_write
    assert [e["d"]["id"] for e in got] == [str(1000 + i) for i in range(burst)]
    seqs = [e["s"] for e in got]
    assert seqs == list(range(seqs[0], seqs[0] + burst))
    if gw.settings.client_writes == "coalesced":
        assert during == 0
        assert 1 <= writes <= 3, writes
    else:
        assert during == burst
