"""docs/protocol.md is the contract: every frame shape it refuses is refused, over a real socket.

One table: each case is the frames a client sends (after IDENTIFY when ``identified``) and
either the close code it must get or the answer it must get with the connection left open.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from chatscale.closecodes import Close
from chatscale.wire import MAX_NONCE_CHARS, Op
from tests.conftest import Stack

ARABIC_INDIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")


def f(op: int, d: object = None) -> str:
    return json.dumps({"op": op, "d": d})


def send(channel: Callable[[Stack], object], **extra: object) -> Callable[[Stack], list]:
    return lambda s: [f(Op.SEND_MESSAGE, {"channel_id": channel(s), "content": "x", **extra})]


def history(**d: object) -> Callable[[Stack], list]:
    return lambda s: [f(Op.REQUEST_HISTORY, {"channel_id": str(s.channels["general"]), **d})]


def general(s: Stack) -> str:
    return str(s.channels["general"])


@dataclass(frozen=True)
class Answer:
    """The connection stays open and the next frame matches (op, t, and ``d`` keys given)."""

    op: Op
    t: str | None = None
    d: dict[str, Any] | None = None


@dataclass(frozen=True)
class Case:
    identified: bool
    frames: Callable[[Stack], list[str | bytes]]
    expect: Close | Answer


ACK = Answer(Op.DISPATCH, "MESSAGE_ACK")
HB_ACK = Answer(Op.HEARTBEAT_ACK)

CASES: dict[str, Case] = {
    # IDENTIFY: device is optional and defaults to "desktop" (documented); a wrong one is refused.
    "identify-without-device": Case(
        False, lambda s: [f(Op.IDENTIFY, {"token": s.token("carol")})], Answer(Op.DISPATCH, "READY")
    ),
    "identify-device-null": Case(
        False,
        lambda s: [f(Op.IDENTIFY, {"token": s.token("carol"), "device": None})],
        Close.INVALID_PAYLOAD,
    ),
    # HEARTBEAT: d is the last s seen or null (as Discord); key required, nothing else.
    "heartbeat-null": Case(False, lambda s: [f(Op.HEARTBEAT, None)], HB_ACK),
    "heartbeat-int": Case(True, lambda s: [f(Op.HEARTBEAT, 1)], HB_ACK),
    "heartbeat-without-d": Case(False, lambda s: ['{"op": 1}'], Close.INVALID_PAYLOAD),
    "heartbeat-string": Case(False, lambda s: [f(Op.HEARTBEAT, "1")], Close.INVALID_PAYLOAD),
    "heartbeat-bool": Case(False, lambda s: [f(Op.HEARTBEAT, True)], Close.INVALID_PAYLOAD),
    "heartbeat-float": Case(False, lambda s: [f(Op.HEARTBEAT, 1.5)], Close.INVALID_PAYLOAD),
    "heartbeat-negative": Case(False, lambda s: [f(Op.HEARTBEAT, -1)], Close.INVALID_PAYLOAD),
    "heartbeat-object": Case(False, lambda s: [f(Op.HEARTBEAT, {})], Close.INVALID_PAYLOAD),
    # The frame itself: exactly "op" and "d".
    "frame-unknown-key": Case(
        False, lambda s: ['{"op": 1, "d": null, "s": null}'], Close.INVALID_PAYLOAD
    ),
    "frame-bool-op": Case(False, lambda s: ['{"op": true, "d": null}'], Close.INVALID_PAYLOAD),
    # Ids: a string of ASCII digits or an integer, nothing else.
    "id-string": Case(True, send(general), ACK),
    "id-int": Case(True, send(lambda s: s.channels["general"]), ACK),
    "id-float": Case(True, send(lambda s: float(s.channels["general"])), Close.INVALID_PAYLOAD),
    "id-small-float": Case(True, send(lambda s: 5.0), Close.INVALID_PAYLOAD),
    "id-bool": Case(True, send(lambda s: True), Close.INVALID_PAYLOAD),
    "id-non-ascii-digits": Case(
        True, send(lambda s: general(s).translate(ARABIC_INDIC)), Close.INVALID_PAYLOAD
    ),
    "id-leading-space": Case(True, send(lambda s: " " + general(s)), Close.INVALID_PAYLOAD),
    "id-trailing-newline": Case(True, send(lambda s: general(s) + "\n"), Close.INVALID_PAYLOAD),
    "id-underscore": Case(
        True, send(lambda s: general(s)[:3] + "_" + general(s)[3:]), Close.INVALID_PAYLOAD
    ),
    "id-2^63": Case(True, send(lambda s: str(1 << 63)), Close.INVALID_PAYLOAD),
    # Nonces: a string of at most 25 characters or an integer, echoed as given.
    "nonce-25-chars": Case(
        True,
        send(general, nonce="é" * MAX_NONCE_CHARS),
        Answer(Op.DISPATCH, "MESSAGE_ACK", {"nonce": "é" * MAX_NONCE_CHARS}),
    ),
    "nonce-int": Case(
        True, send(general, nonce=17), Answer(Op.DISPATCH, "MESSAGE_ACK", {"nonce": 17})
    ),
    "nonce-26-chars": Case(
        True, send(general, nonce="n" * (MAX_NONCE_CHARS + 1)), Close.INVALID_PAYLOAD
    ),
    "nonce-14000-chars": Case(True, send(general, nonce="n" * 14_000), Close.INVALID_PAYLOAD),
    "nonce-bool": Case(True, send(general, nonce=True), Close.INVALID_PAYLOAD),
    "nonce-float": Case(True, send(general, nonce=1.5), Close.INVALID_PAYLOAD),
    "nonce-object": Case(True, send(general, nonce={}), Close.INVALID_PAYLOAD),
    "history-nonce-too-long": Case(
        True, history(nonce="h" * (MAX_NONCE_CHARS + 1)), Close.INVALID_PAYLOAD
    ),
    "trace-int": Case(True, send(general, trace=1), Close.INVALID_PAYLOAD),
    "empty-content": Case(
        True,
        lambda s: [f(Op.SEND_MESSAGE, {"channel_id": general(s), "content": ""})],
        Close.INVALID_PAYLOAD,
    ),
    # History limit: an integer 1..100.
    "limit-int": Case(True, history(limit=5), Answer(Op.DISPATCH, "HISTORY")),
    "limit-string": Case(True, history(limit="5"), Close.INVALID_PAYLOAD),
    "limit-bool": Case(True, history(limit=True), Close.INVALID_PAYLOAD),
    "limit-float": Case(True, history(limit=5.0), Close.INVALID_PAYLOAD),
    "before-float": Case(True, history(before=5.0), Close.INVALID_PAYLOAD),
    "resume-seq-string": Case(
        False,
        lambda s: [f(Op.RESUME, {"token": s.token("carol"), "session_id": "x", "seq": "1"})],
        Close.INVALID_PAYLOAD,
    ),
    # Invalid UTF-8 in a text frame: the WebSocket library answers 1007 (RFC 6455) before the
    # gateway sees the frame, as it answers 1009 for an oversized one (documented).
    "invalid-utf8-text": Case(False, lambda s: [b'{"op": 1, "d": "\xff"}'], Close.INVALID_DATA),
}


async def _closed(ws: ClientConnection) -> bool:
    """Read until the server closes; False if it did not within 10 s."""
    try:
        async with asyncio.timeout(10):
            while True:
                await ws.recv()
    except TimeoutError:
        return False
    except Exception:  # noqa: BLE001 - ConnectionClosed*: the code is what we assert
        return True


async def _next(ws: ClientConnection) -> dict[str, Any] | None:
    """The next frame other than a presence tick; None if none came within 10 s."""
    try:
        async with asyncio.timeout(10):
            while True:
                msg = json.loads(await ws.recv())
                if msg.get("t") != "PRESENCE_UPDATE":  # presence ticks may interleave
                    return msg
    except TimeoutError:
        return None


@pytest.mark.parametrize("case", list(CASES))
async def test_protocol_md_is_enforced_frame_by_frame(stack: Stack, case: str):
    # Assertions run after the socket is closed: a failing case must not leave it open.
    c = CASES[case]
    got: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    async with connect(stack.gateways[0].url, compression=None, max_size=None) as ws:
        await ws.recv()  # HELLO
        if c.identified:
            await ws.send(f(Op.IDENTIFY, {"token": stack.token("carol"), "device": "web"}))
            ready = await _next(ws)
            assert ready is not None and ready["t"] == "READY", ready
        for raw in c.frames(stack):
            if isinstance(raw, bytes):
                await ws.send(raw, text=True)  # a text frame whose bytes are not UTF-8
            else:
                await ws.send(raw)
        if isinstance(c.expect, Close):
            closed = await _closed(ws)
        else:
            got = await _next(ws)
            if got is not None and ws.close_code is None:
                await ws.send(f(Op.HEARTBEAT, None))  # ... and the connection is still usable
                after = await _next(ws)
    if isinstance(c.expect, Close):
        assert closed, f"{case}: no close within 10 s"
        assert ws.close_code == c.expect, (case, ws.close_code, ws.close_reason)
        assert ws.close_reason  # every close says why
        return
    assert got is not None, f"{case}: no answer within 10 s (close {ws.close_code})"
    assert got["op"] == c.expect.op and got.get("t") == c.expect.t, (case, got)
    for key, value in (c.expect.d or {}).items():
        assert got["d"][key] == value and type(got["d"][key]) is type(value), (case, got)
    assert after is not None and after["op"] == Op.HEARTBEAT_ACK, (case, after)
    if case == "identify-without-device":
        [session] = [s for s in stack.gateways[0].sessions.values() if s.username == "carol"]
        assert session.device == "desktop"
