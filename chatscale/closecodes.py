"""The catalogue of WebSocket close codes, each resumable or terminal.

Resumable: the client may reconnect and RESUME (or IDENTIFY again) — the fault was transient
or its own mistake and a fresh attempt can work. Terminal: reconnecting with the same
credentials will fail the same way; the client must stop and tell its user.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class Close(IntEnum):
    UNKNOWN_ERROR = 4000
    UNKNOWN_OPCODE = 4001
    DECODE_ERROR = 4002
    NOT_AUTHENTICATED = 4003
    AUTHENTICATION_FAILED = 4004
    ALREADY_AUTHENTICATED = 4005
    INVALID_PAYLOAD = 4006
    INVALID_SEQ = 4007
    RATE_LIMITED = 4008
    SESSION_TIMED_OUT = 4009
    SLOW_CONSUMER = 4010
    GATEWAY_SHUTDOWN = 4011
    SESSION_REPLACED = 4012
    IDENTIFY_TIMEOUT = 4013
    GATEWAY_FULL = 4014
    TOO_MANY_CONNECTIONS = 4015
    ACCOUNT_QUARANTINED = 4016
    GATEWAY_BUSY = 4017
    MESSAGE_TOO_BIG = 1009  # sent by the websockets library itself when max_size is exceeded
    INVALID_DATA = 1007  # sent by the websockets library itself: a text frame not UTF-8


@dataclass(frozen=True, slots=True)
class CloseInfo:
    code: Close
    resumable: bool
    meaning: str


CATALOGUE: dict[Close, CloseInfo] = {
    info.code: info
    for info in (
        CloseInfo(Close.UNKNOWN_ERROR, True, "Something went wrong on our side. Reconnect."),
        CloseInfo(Close.UNKNOWN_OPCODE, True, "The client sent an op this gateway does not know."),
        CloseInfo(
            Close.DECODE_ERROR,
            True,
            "The frame was not UTF-8 JSON text (binary, garbage, truncated).",
        ),
        CloseInfo(
            Close.NOT_AUTHENTICATED, True, "An op other than IDENTIFY/RESUME came before IDENTIFY."
        ),
        CloseInfo(
            Close.AUTHENTICATION_FAILED,
            False,
            "The token is unsigned, tampered, expired or unknown.",
        ),
        CloseInfo(
            Close.ALREADY_AUTHENTICATED,
            True,
            "IDENTIFY or RESUME was sent twice on one connection.",
        ),
        CloseInfo(Close.INVALID_PAYLOAD, True, "Valid JSON of the wrong shape for its op."),
        CloseInfo(
            Close.INVALID_SEQ, True, "RESUME named a sequence ahead of what the session sent."
        ),
        CloseInfo(
            Close.RATE_LIMITED, True, "Too many gateway events in the window (120/60 s). Slow down."
        ),
        CloseInfo(Close.SESSION_TIMED_OUT, True, "No HEARTBEAT within interval x grace. Resume."),
        CloseInfo(
            Close.SLOW_CONSUMER,
            True,
            "The client read too slowly; its send buffer overflowed. Resume.",
        ),
        CloseInfo(
            Close.GATEWAY_SHUTDOWN,
            True,
            "The gateway is stopping. Reconnect to another and resume or identify.",
        ),
        CloseInfo(Close.SESSION_REPLACED, True, "The session was resumed on another connection."),
        CloseInfo(
            Close.IDENTIFY_TIMEOUT,
            True,
            "No IDENTIFY or RESUME within the deadline after HELLO (heartbeats do not extend it).",
        ),
        CloseInfo(
            Close.GATEWAY_FULL,
            True,
            "The gateway is at its connection cap. Back off, or connect to another gateway.",
        ),
        CloseInfo(
            Close.TOO_MANY_CONNECTIONS,
            True,
            "Too many connections from your address. Close some, back off, then reconnect.",
        ),
        CloseInfo(
            Close.ACCOUNT_QUARANTINED,
            False,
            "The account was quarantined (the spam-bot detector or an admin). Do not reconnect.",
        ),
        CloseInfo(
            Close.GATEWAY_BUSY,
            True,
            "The gateway is admitting too many sessions (or timed out on this IDENTIFY). Wait "
            "retry_after (from the ERROR before the close) with jitter, then IDENTIFY again.",
        ),
        CloseInfo(
            Close.MESSAGE_TOO_BIG,
            True,
            "A frame exceeded the gateway's max frame size (library close).",
        ),
        CloseInfo(
            Close.INVALID_DATA,
            True,
            "A text frame was not valid UTF-8 (library close, RFC 6455 section 7.4.1).",
        ),
    )
}


def is_resumable(code: int) -> bool:
    info = CATALOGUE.get(Close(code)) if code in Close._value2member_map_ else None
    return bool(info and info.resumable)
