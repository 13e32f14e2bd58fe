"""The delivery reader serves a big audience a chunk at a time (``YIELD_EVERY`` sessions), so
a sender's Redis replies and ack are handled between the chunks of a fan-out, not after it."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import orjson

from chatscale.wire import Delivery
from gateway import fanout as fanout_module
from gateway.fanout import LocalFanout
from gateway.session import Session
from tests.recording import RecordingSends

GUILD, CHANNEL = 10, 20


class Host(RecordingSends):
    def __init__(self) -> None:
        super().__init__()
        self.sessions: dict[str, Session] = {}


def audience(n: int) -> tuple[Host, LocalFanout]:
    host = Host()
    fanout = LocalFanout(host)  # type: ignore[arg-type]
    for u in range(n):
        session = Session(u + 1, "desktop", 64, session_id=f"s{u}")
        session.guilds, session.channels, session.seq = {GUILD}, {CHANNEL: GUILD}, 1
        fanout.by_guild.setdefault(GUILD, set()).add(session)
        fanout.attached[session] = SimpleNamespace(user=u + 1)
    return host, fanout


def message(i: int) -> Delivery:
    payload = orjson.dumps({"id": str(i), "channel_id": str(CHANNEL)}).decode()
    return Delivery(t="MESSAGE_CREATE", guild_id=GUILD, channel_id=CHANNEL, payload=payload)


async def test_other_work_runs_between_the_chunks_of_one_big_delivery():
    chunk = fanout_module.YIELD_EVERY
    host, fanout = audience(2 * chunk + 50)

    async def an_ack() -> None:  # ready while the delivery starts: runs at its first yield
        host.sent.append(("ack", "MESSAGE_ACK"))

    ack = asyncio.create_task(an_ack())
    served_since_yield = await fanout._deliver_yielding(message(1))
    await ack
    where = [i for i, (client, _) in enumerate(host.sent) if client == "ack"]
    assert where == [chunk], "the ack ran after the first chunk, not after the whole audience"
    assert len(host.sent) == 2 * chunk + 50 + 1
    assert served_since_yield == 50  # what the reader counts towards its next yield
    assert fanout.delivered == 2 * chunk + 50


async def test_chunked_and_whole_deliveries_give_each_session_the_same_frames_in_order():
    host_a, fan_a = audience(450)
    host_b, fan_b = audience(450)
    for i in range(3):
        fan_a.deliver(message(i))
        await fan_b._deliver_yielding(message(i))
    by_session_a: dict[object, list[str]] = {}
    by_session_b: dict[object, list[str]] = {}
    for client, text in host_a.sent:
        by_session_a.setdefault(client.user, []).append(text)  # type: ignore[attr-defined]
    for client, text in host_b.sent:
        by_session_b.setdefault(client.user, []).append(text)  # type: ignore[attr-defined]
    assert by_session_a == by_session_b
    assert all(len(frames) == 3 for frames in by_session_b.values())
