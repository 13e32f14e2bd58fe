"""The gateway state machine, frame by frame, without sockets or sleeps."""

from __future__ import annotations

import json

import pytest

from chatscale import tokens
from chatscale.closecodes import CATALOGUE, Close, is_resumable
from chatscale.wire import Op
from gateway.session import (
    Authenticate,
    CloseConnection,
    Connection,
    FetchHistory,
    ProtocolLimits,
    ProtocolMisuse,
    PublishMessage,
    ResumeRequest,
    SendFrame,
    Session,
    State,
)
from tests.conftest import FakeClock

SECRET = "k"
WALL = 1_000_000.0


def make(clock: FakeClock | None = None, **limits: float) -> Connection:
    return Connection(
        limits=ProtocolLimits(**limits),  # type: ignore[arg-type]
        token_secret=SECRET,
        clock=clock or FakeClock(),
        wall_clock=lambda: WALL,
    )


def tok(user: int = 7) -> str:
    return tokens.mint(user, secret=SECRET, ttl_s=60, now=WALL)


def f(op: int, d: object = None) -> str:
    return json.dumps({"op": op, "d": d})


def frames(actions: list) -> list[dict]:
    return [json.loads(a.text) for a in actions if isinstance(a, SendFrame)]


def ready(conn: Connection, user: int = 7) -> Session:
    [auth] = conn.receive(f(Op.IDENTIFY, {"token": tok(user), "device": "mobile"}))
    assert auth == Authenticate(user, "mobile")
    session = Session(user, "mobile", replay_size=4)
    [ready_frame] = frames(conn.identified(session, {"user": {"id": str(user)}}))
    assert ready_frame["t"] == "READY" and ready_frame["s"] == 1
    assert ready_frame["d"]["session_id"] == session.session_id
    return session


def test_hello_announces_heartbeat_interval():
    [hello] = frames(make(heartbeat_interval_ms=1234).hello())
    assert hello == {"op": Op.HELLO, "d": {"heartbeat_interval": 1234}}


def test_identify_then_requests_become_actions():
    conn = make()
    ready(conn)
    [pub] = conn.receive(f(Op.SEND_MESSAGE, {"channel_id": "5", "content": "hi", "nonce": "n1"}))
    assert isinstance(pub, PublishMessage) and pub.request.channel_id == 5
    [hist] = conn.receive(f(Op.REQUEST_HISTORY, {"channel_id": 5, "before": "99", "limit": 10}))
    assert isinstance(hist, FetchHistory) and hist.request.before == 99
    assert frames(conn.receive(f(Op.HEARTBEAT, 1))) == [{"op": Op.HEARTBEAT_ACK, "d": None}]


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"\x00\xff\x10", Close.DECODE_ERROR),
        ("not json at all", Close.DECODE_ERROR),
        ('{"op": 2, "d": {"tok', Close.DECODE_ERROR),
        ("[1, 2, 3]", Close.INVALID_PAYLOAD),
        ('{"op": "2"}', Close.INVALID_PAYLOAD),
        (f(Op.IDENTIFY, {"device": "desktop"}), Close.INVALID_PAYLOAD),
        (f(Op.IDENTIFY, {"token": "x", "device": "fridge"}), Close.INVALID_PAYLOAD),
        (f(99), Close.UNKNOWN_OPCODE),
        (f(Op.HELLO), Close.UNKNOWN_OPCODE),  # a server op sent by a client
        (f(Op.SEND_MESSAGE, {"channel_id": 1, "content": "x"}), Close.NOT_AUTHENTICATED),
        (f(Op.IDENTIFY, {"token": "garbage"}), Close.AUTHENTICATION_FAILED),
        (
            f(Op.IDENTIFY, {"token": tokens.mint(7, secret="other", ttl_s=60, now=WALL)}),
            Close.AUTHENTICATION_FAILED,
        ),
        (
            f(Op.IDENTIFY, {"token": tokens.mint(7, secret=SECRET, ttl_s=60, now=WALL - 61)}),
            Close.AUTHENTICATION_FAILED,
        ),
    ],
    ids=[
        "binary",
        "garbage",
        "truncated",
        "array",
        "string-op",
        "missing-token",
        "bad-device",
        "unknown-op",
        "server-op",
        "before-identify",
        "malformed-token",
        "wrong-key-token",
        "expired-token",
    ],
)
def test_bad_input_before_identify_closes_with_its_code(raw, code):
    conn = make()
    [action] = conn.receive(raw)
    assert isinstance(action, CloseConnection) and action.code == code
    assert conn.state is State.CLOSED
    assert conn.receive(f(Op.HEARTBEAT)) == []  # nothing more is processed after a close


def test_second_identify_and_resume_after_ready_are_refused():
    conn = make()
    ready(conn)
    [action] = conn.receive(f(Op.IDENTIFY, {"token": tok()}))
    assert action.code == Close.ALREADY_AUTHENTICATED
    conn2 = make()
    ready(conn2)
    [action] = conn2.receive(f(Op.RESUME, {"token": tok(), "session_id": "x", "seq": 0}))
    assert action.code == Close.ALREADY_AUTHENTICATED


def test_wrong_shape_after_ready_closes_with_invalid_payload():
    conn = make()
    ready(conn)
    [action] = conn.receive(f(Op.SEND_MESSAGE, {"channel_id": "abc", "content": "x"}))
    assert action.code == Close.INVALID_PAYLOAD


def test_heartbeat_timeout_uses_the_injected_clock():
    clock = FakeClock()
    conn = make(clock, heartbeat_timeout_s=30)
    ready(conn)
    clock.advance(29)
    assert conn.tick() == []
    conn.receive(f(Op.HEARTBEAT))
    clock.advance(29)
    assert conn.tick() == []
    clock.advance(2)
    [action] = conn.tick()
    assert action.code == Close.SESSION_TIMED_OUT


def test_event_rate_limit_and_window_reset():
    clock = FakeClock()
    conn = make(clock, events_per_window=5, event_window_s=60)
    for _ in range(5):
        assert frames(conn.receive(f(Op.HEARTBEAT)))[0]["op"] == Op.HEARTBEAT_ACK
        clock.advance(10)
    clock.advance(11)  # a new window: the counter starts again
    for _ in range(5):
        assert frames(conn.receive(f(Op.HEARTBEAT)))
    [action] = conn.receive(f(Op.HEARTBEAT))
    assert action.code == Close.RATE_LIMITED


def test_resume_replays_exactly_what_was_missed():
    conn = make()
    session = ready(conn)  # s=1 READY
    session.dispatch("MESSAGE_CREATE", '{"n":1}')  # s=2
    session.dispatch("MESSAGE_CREATE", '{"n":2}')  # s=3
    conn.closed()
    again = make()
    [req] = again.receive(
        f(Op.RESUME, {"token": tok(), "session_id": session.session_id, "seq": 1})
    )
    assert req == ResumeRequest(7, session.session_id, 1)
    out = frames(again.resumed(session, 1))
    assert [(m["s"], m["t"]) for m in out] == [
        (2, "MESSAGE_CREATE"),
        (3, "MESSAGE_CREATE"),
        (4, "RESUMED"),
    ]
    assert again.state is State.READY


def test_resume_with_a_sequence_ahead_of_the_session_is_invalid_seq():
    session = Session(7, "web", replay_size=4)
    session.dispatch("READY", "{}")
    conn = make()
    conn.receive(f(Op.RESUME, {"token": tok(), "session_id": session.session_id, "seq": 5}))
    [action] = conn.resumed(session, 5)
    assert action.code == Close.INVALID_SEQ


def test_resume_too_far_behind_the_replay_buffer_is_invalid_session():
    session = Session(7, "web", replay_size=2)
    for i in range(5):
        session.dispatch("MESSAGE_CREATE", f'{{"n":{i}}}')
    conn = make()
    conn.receive(f(Op.RESUME, {"token": tok(), "session_id": session.session_id, "seq": 1}))
    assert frames(conn.resumed(session, 1)) == [{"op": Op.INVALID_SESSION, "d": False}]
    assert conn.state is State.AWAIT_IDENTIFY  # the client may IDENTIFY on the same socket


def test_server_misuse_raises_instead_of_answering_the_client():
    conn = make()
    with pytest.raises(ProtocolMisuse):
        conn.identified(Session(7, "web", replay_size=4), {})


def test_every_close_code_is_catalogued():
    assert set(CATALOGUE) == set(Close)
    assert not is_resumable(Close.AUTHENTICATION_FAILED)
    assert is_resumable(Close.SESSION_TIMED_OUT)
    assert not is_resumable(1000)


def test_ready_is_not_kept_for_replay_but_resume_after_it_works():
    conn = make()
    session = ready(conn)  # READY is s=1
    assert session.missed_since(1) == []
    session.dispatch("MESSAGE_CREATE", '{"n":1}')
    assert [json.loads(t)["s"] for t in session.missed_since(1)] == [2]
    assert all(json.loads(t)["t"] != "READY" for t in session.missed_since(0) or [])
