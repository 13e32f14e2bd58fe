"""The whole path on a real Valkey: client -> gateway -> stream -> worker -> stores -> gateways.

Workers are drained (burst mode) instead of waited for; clients wait on events, never sleep.
"""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from websockets.asyncio.client import connect

from chatscale.client import ChatClient, GatewayError
from chatscale.closecodes import Close
from chatscale.wire import Op
from tests.conftest import Stack, on_redis_cluster_too


@pytest.fixture(
    params=["sqlite", pytest.param("cassandra", marks=[pytest.mark.cassandra, pytest.mark.slow])]
)
def storage_url(request, tmp_path) -> str:
    """Every end-to-end test runs on the embedded SQLite backend and on a real Cassandra node."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/chatscale.db"
    return request.getfixturevalue("cassandra_url")


@on_redis_cluster_too
async def test_two_users_on_two_gateways_see_the_same_messages_in_order(stack: Stack):
    alice = await stack.client("alice", gateway=0)
    bob = await stack.client("bob", gateway=1)
    general = stack.channels["general"]
    sent = []
    for i in range(10):
        sender = alice if i % 2 == 0 else bob
        sent.append((await sender.send_message(general, f"message {i}"))["id"])
    await stack.drain()
    for client in (alice, bob):
        got = [await client.next_event("MESSAGE_CREATE") for _ in sent]
        assert [m["d"]["id"] for m in got] == sent
        assert [m["d"]["content"] for m in got] == [f"message {i}" for i in range(10)]
        seqs = [m["s"] for m in got]
        assert seqs == sorted(seqs)
    assert stack.worker.stats.processed == 10


async def test_sender_gets_its_nonce_back_and_a_retry_with_the_same_nonce_is_one_message(
    stack: Stack,
):
    alice = await stack.client("alice", gateway=0)
    bob = await stack.client("bob", gateway=1)
    first = await alice.send_message(stack.channels["general"], "once", nonce="n-42")
    again = await alice.send_message(stack.channels["general"], "once", nonce="n-42")
    assert first["id"] == again["id"] and first["nonce"] == "n-42"
    await alice.send_message(stack.channels["general"], "sentinel")
    await stack.drain()
    got = await bob.next_event("MESSAGE_CREATE")
    assert got["d"]["id"] == first["id"] and "nonce" not in got["d"]  # the sender's token only
    assert (await bob.next_event("MESSAGE_CREATE"))["d"]["content"] == "sentinel"


async def test_non_members_do_not_see_a_guild_and_cannot_post_in_it(stack: Stack):
    bob = await stack.client("bob", gateway=1)  # not in ml-reading-group
    erin = await stack.client("erin", gateway=0)
    assert {g["name"] for g in bob.ready["guilds"]} == {"interview-prep"}
    with pytest.raises(GatewayError, match="UNKNOWN_CHANNEL"):
        await bob.send_message(stack.channels["papers"], "let me in")
    await erin.send_message(stack.channels["papers"], "attention is all you need")
    await bob.send_message(stack.channels["general"], "sentinel")
    await stack.drain()
    assert (await bob.next_event("MESSAGE_CREATE"))["d"]["content"] == "sentinel"


@on_redis_cluster_too
async def test_history_pages_across_the_hot_cold_boundary_without_gap_or_duplicate(stack: Stack):
    alice = await stack.client("alice")
    channel = stack.channels["system-design"]
    ids = []
    for i in range(130):
        ids.append(int((await alice.send_message(channel, f"m{i}"))["id"]))
        if i % 40 == 39:
            await stack.drain()
    await stack.drain()
    newest_first = sorted(ids, reverse=True)
    hot = await stack.gateways[0].hot.page(channel, before=None, limit=100)
    assert [i for i, _ in hot] == newest_first[:50]  # the hot cache holds exactly the latest 50
    for limit in (50, 30, 7):
        seen, before = [], None
        while True:
            page = await alice.history(channel, before=before, limit=limit)
            if not page:
                break
            seen += [int(m["id"]) for m in page]
            before = page[-1]["id"]
        assert seen == newest_first, f"limit={limit}"


async def test_a_dropped_client_resumes_without_a_gap(stack: Stack):
    alice = await stack.client("alice", gateway=0)
    bob = await stack.client("bob", gateway=1)
    general = stack.channels["general"]
    await alice.send_message(general, "before the drop")
    await stack.drain()
    await bob.next_event("MESSAGE_CREATE")
    await bob.ws.close()  # the connection drops; the session stays resumable on gateway 1
    for i in range(5):
        await alice.send_message(general, f"missed {i}")
    await stack.drain()
    await alice.next_event("MESSAGE_CREATE")  # fan-out has reached the gateways
    for _ in range(5):
        await alice.next_event("MESSAGE_CREATE")
    resumed = await bob.resume(stack.token("bob"))
    stack.clients.append(resumed)
    replay = [await resumed.next_event() for _ in range(6)]
    assert [m["t"] for m in replay] == ["MESSAGE_CREATE"] * 5 + ["RESUMED"]
    assert [m["d"]["content"] for m in replay[:5]] == [f"missed {i}" for i in range(5)]
    assert [m["s"] for m in replay] == list(range(bob.seq + 1, bob.seq + 7))
    await alice.send_message(general, "after")
    await stack.drain()
    assert (await resumed.next_event("MESSAGE_CREATE"))["d"]["content"] == "after"


async def test_resume_with_bad_seq_or_unknown_session(stack: Stack):
    bob = await stack.client("bob", gateway=1)
    token = stack.token("bob")
    ahead = await ChatClient.open(stack.gateways[1].url, heartbeat=False)
    await ahead.send_op(
        Op.RESUME, {"token": token, "session_id": bob.session_id, "seq": bob.seq + 10}
    )
    await asyncio.wait_for(ahead.closed.wait(), 10)
    assert ahead.close_code == Close.INVALID_SEQ
    unknown = await ChatClient.open(stack.gateways[1].url, heartbeat=False)
    stack.clients.append(unknown)
    await unknown.send_op(Op.RESUME, {"token": token, "session_id": "no-such-session", "seq": 1})
    msg = await asyncio.wait_for(unknown.events.get(), 10)
    assert msg == {"op": Op.INVALID_SESSION, "d": False}
    # a session on gateway 1 is unknown to gateway 0: the client must IDENTIFY again
    other = await ChatClient.open(stack.gateways[0].url, heartbeat=False)
    stack.clients.append(other)
    await other.send_op(Op.RESUME, {"token": token, "session_id": bob.session_id, "seq": bob.seq})
    assert await asyncio.wait_for(other.events.get(), 10) == {"op": Op.INVALID_SESSION, "d": False}


async def test_heartbeat_timeout_closes_with_session_timed_out(stack: Stack):
    bob = await stack.client("bob")
    stack.clock.advance(stack.settings.heartbeat_timeout_s + 1)
    await stack.gateways[0].tick()
    await asyncio.wait_for(bob.closed.wait(), 10)
    assert bob.close_code == Close.SESSION_TIMED_OUT


async def test_traced_message_stamps_every_hop(stack: Stack):
    # Tracing is an operator capability (tests/gateway/test_gateway_abuse.py checks the refusal).
    alice = await stack.client("alice", operator=True)
    bob = await stack.client("bob", gateway=1)
    await alice.send_message(stack.channels["general"], "trace me", trace=True)
    await stack.drain()
    got = await bob.next_event("MESSAGE_CREATE")
    hops = [hop for hop, _ in got["trace"]]
    assert hops == [
        "gateway_receive",
        "gateway_publish",
        "worker_read",
        "worker_checks",
        "hot_write",
        "history_write",
        "fanout",
        "gateway_deliver",
        "client_receive",
    ]
    times = [ns for _, ns in got["trace"]]
    assert times == sorted(times)


async def test_slow_reader_is_closed_with_slow_consumer_and_others_keep_receiving(
    stack: Stack, settings
):
    gw = stack.gateways[0]
    gw.settings = settings.model_copy(update={"client_buffer_bytes": 32 * 1024})
    slow = await stack.client("carol", gateway=0)
    # Stop reading, and shrink the kernel buffers on both ends so backpressure shows up soon.
    slow.ws.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.ws.transport.pause_reading()
    server_side = next(c for c in gw.clients if c.session and c.session.username == "carol")
    server_side.ws.transport.get_extra_info("socket").setsockopt(
        socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
    )
    fast = await stack.client("dave", gateway=0)
    alice = await stack.client("alice", gateway=1)
    big = "x" * 1900
    for _ in range(40):
        for _ in range(10):
            await alice.send_message(stack.channels["general"], big)
        await stack.drain()
        for _ in range(10):
            await fast.next_event("MESSAGE_CREATE")  # the neighbour keeps receiving throughout
        if server_side.conn.state.name == "CLOSED":
            break
    else:
        pytest.fail("the slow client was never closed")
    slow.ws.transport.resume_reading()
    await asyncio.wait_for(slow.closed.wait(), 20)
    assert slow.close_code == Close.SLOW_CONSUMER


class _GatedStore:
    """The real store, except that ``get_user`` waits for the test to open a gate."""

    def __init__(self, store) -> None:
        self._store = store
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def get_user(self, user_id):
        self.entered.set()
        await self.gate.wait()
        return await self._store.get_user(user_id)

    def __getattr__(self, name):
        return getattr(self._store, name)


async def test_a_connection_closed_during_identify_leaves_no_session_and_no_error(stack: Stack):
    gw = stack.gateways[0]
    gated = _GatedStore(gw.store)
    gw.store = gated
    async with connect(gw.url, compression=None) as ws:
        await ws.recv()  # HELLO
        await ws.send(json.dumps({"op": Op.IDENTIFY, "d": {"token": stack.token("carol")}}))
        await asyncio.wait_for(gated.entered.wait(), 10)  # the gateway is loading carol
        stack.clock.advance(stack.settings.heartbeat_timeout_s + 1)
        await gw.tick()  # ... and her connection times out meanwhile
        gated.gate.set()
        with pytest.raises(Exception):  # noqa: B017,PT011 - drain to the close frame
            while True:
                await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == Close.SESSION_TIMED_OUT
    gw.store = gated._store
    assert all(s.username != "carol" for s in gw.sessions.values())
    bob = await stack.client("bob", gateway=0)  # the gateway is fine
    assert bob.session_id
