"""Bad input over real sockets: each case gets its documented close code, and a neighbour on
the same gateway keeps sending and receiving throughout."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from websockets.asyncio.client import connect

from chatscale import tokens
from chatscale.closecodes import Close
from chatscale.wire import Op
from tests.conftest import Stack


def f(op: int, d: object = None) -> str:
    return json.dumps({"op": op, "d": d})


def identify_with(token: str) -> str:
    return f(Op.IDENTIFY, {"token": token, "device": "web"})


def identify(stack: Stack, name: str = "carol") -> str:
    return f(Op.IDENTIFY, {"token": stack.token(name), "device": "web"})


CASES = {
    "garbage-bytes": (False, lambda s: [b"\x00\xffgarbage\x10"], Close.DECODE_ERROR),
    "garbage-text": (False, lambda s: ["hello there"], Close.DECODE_ERROR),
    "truncated-json": (False, lambda s: ['{"op": 2, "d": {"token": "ab'], Close.DECODE_ERROR),
    "wrong-shape": (False, lambda s: ['{"op": 2, "d": {"token": 12345}}'], Close.INVALID_PAYLOAD),
    "not-an-object": (False, lambda s: ["[2, {}]"], Close.INVALID_PAYLOAD),
    "unknown-op": (False, lambda s: [f(77, {})], Close.UNKNOWN_OPCODE),
    "op-before-identify": (
        False,
        lambda s: [f(Op.SEND_MESSAGE, {"channel_id": "1", "content": "x"})],
        Close.NOT_AUTHENTICATED,
    ),
    "second-identify": (True, lambda s: [identify(s)], Close.ALREADY_AUTHENTICATED),
    "bad-token": (
        False,
        lambda s: [f(Op.IDENTIFY, {"token": "forged.token"})],
        Close.AUTHENTICATION_FAILED,
    ),
    "tampered-token": (
        False,
        lambda s: [f(Op.IDENTIFY, {"token": s.token("carol")[:-2] + "xx"})],
        Close.AUTHENTICATION_FAILED,
    ),
    "expired-token": (
        False,
        lambda s: [
            f(
                Op.IDENTIFY,
                {
                    "token": tokens.mint(
                        s.users["carol"], secret=s.settings.token_secret, ttl_s=1, now=0
                    )
                },
            )
        ],
        Close.AUTHENTICATION_FAILED,
    ),
    # Both crashed the connection handler (1011 + traceback) before tokens.verify was strict.
    "token-non-ascii-signature": (
        False,
        lambda s: [identify_with(s.token("carol").split(".")[0] + ".sigé")],
        Close.AUTHENTICATION_FAILED,
    ),
    "token-user-2^64": (
        False,
        lambda s: [
            identify_with(
                tokens.mint(1 << 64, secret=s.settings.token_secret, ttl_s=60, now=time.time())
            )
        ],
        Close.AUTHENTICATION_FAILED,
    ),
    "oversized-frame": (
        True,
        lambda s: [f(Op.SEND_MESSAGE, {"channel_id": "1", "content": "x" * 40_000})],
        Close.MESSAGE_TOO_BIG,
    ),
    "heartbeat-flood": (
        True,
        lambda s: [f(Op.HEARTBEAT)] * (s.settings.events_per_window + 5),
        Close.RATE_LIMITED,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_bad_input_gets_its_close_code_and_the_neighbour_is_unaffected(
    stack: Stack, case: str
):
    identified_first, frames, expected = CASES[case]
    neighbour = await stack.client("alice", gateway=0)
    listener = await stack.client("bob", gateway=0)
    async with connect(stack.gateways[0].url, compression=None, max_size=None) as ws:
        await ws.recv()  # HELLO
        if identified_first:
            await ws.send(identify(stack))
            ready = json.loads(await ws.recv())
            assert ready["t"] == "READY"
        for raw in frames(stack):
            try:
                await ws.send(raw)
            except Exception:  # noqa: BLE001 - the server may close mid-flood; the code is what matters
                break
        with pytest.raises(Exception):  # noqa: B017,PT011 - drain until the close frame arrives
            while True:
                await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == expected, (case, ws.close_code, ws.close_reason)
        assert ws.close_reason  # every close says why
    ack = await neighbour.send_message(stack.channels["general"], f"still fine after {case}")
    await stack.drain()
    got = await listener.next_event("MESSAGE_CREATE")
    assert got["d"]["id"] == ack["id"]
