"""The gateway protocol as a pure state machine: frames in, actions out, no I/O.

Theory of operation. A ``Connection`` is one WebSocket. It starts in AWAIT_IDENTIFY after
sending HELLO. IDENTIFY or RESUME with a valid token moves it to AUTHENTICATING, and it asks
the server (an ``Authenticate`` or ``ResumeRequest`` action) to do the I/O: load the user's
guilds, or find the dropped session. The server answers with ``identified()`` / ``resumed()`` /
``resume_failed()``, which move it to READY. In READY, client requests become actions
(``PublishMessage``, ``FetchHistory``) and dispatches go out through the ``Session``.

A ``Session`` outlives connections: it owns the dispatch sequence and a bounded replay buffer,
so a client that drops can RESUME on the same gateway and receive exactly what it missed.

Two kinds of mistakes are kept apart: the client misbehaving ends in a ``CloseConnection``
with a code from ``chatscale.closecodes`` (never an exception); the server misusing this API
(calling ``identified`` in the wrong state) raises ``ProtocolMisuse``.

Allowed ops per state are one table, ``ALLOWED``; anything else is NOT_AUTHENTICATED,
ALREADY_AUTHENTICATED or UNKNOWN_OPCODE.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from chatscale import tokens
from chatscale.closecodes import Close
from chatscale.wire import (
    ALL_INTENTS,
    FRAME_KEYS,
    HEARTBEAT_D,
    DeleteMessage,
    Discover,
    GuildSubscriptions,
    Identify,
    Op,
    PresenceUpdate,
    RequestGuildMembers,
    RequestHistory,
    Resume,
    Search,
    SendMessage,
    Typing,
    VoiceStateUpdate,
    dispatch_frame,
    dumps,
    frame,
)


class State(Enum):
    AWAIT_IDENTIFY = auto()
    AUTHENTICATING = auto()
    READY = auto()
    CLOSED = auto()


class ProtocolMisuse(Exception):
    """The server called this state machine in a way its rules forbid (our bug, not the client's)."""


# ---- actions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendFrame:
    text: str


@dataclass(frozen=True, slots=True)
class CloseConnection:
    code: Close
    reason: str


@dataclass(frozen=True, slots=True)
class Authenticate:
    user_id: int
    device: str
    operator: bool = False  # the token's operator claim (may trace messages)
    intents: int = ALL_INTENTS  # IDENTIFY's intents (wire.Intent); omitted = every event


@dataclass(frozen=True, slots=True)
class ResumeRequest:
    user_id: int
    session_id: str
    seq: int


@dataclass(frozen=True, slots=True)
class PublishMessage:
    request: SendMessage


@dataclass(frozen=True, slots=True)
class FetchHistory:
    request: RequestHistory


@dataclass(frozen=True, slots=True)
class ClientEvent:
    """A request for other services (typing, presence, voice) the server forwards as is."""

    op: Op
    request: BaseModel


Action = (
    SendFrame
    | CloseConnection
    | Authenticate
    | ResumeRequest
    | PublishMessage
    | FetchHistory
    | ClientEvent
)

PAYLOADS: dict[Op, type[BaseModel]] = {
    Op.IDENTIFY: Identify,
    Op.RESUME: Resume,
    Op.SEND_MESSAGE: SendMessage,
    Op.REQUEST_HISTORY: RequestHistory,
    Op.TYPING: Typing,
    Op.PRESENCE_UPDATE: PresenceUpdate,
    Op.VOICE_STATE_UPDATE: VoiceStateUpdate,
    Op.DISCOVER: Discover,  # answered by gateway/discover.py
    Op.REQUEST_GUILD_MEMBERS: RequestGuildMembers,  # lazy guilds (gateway/lazy.py)
    Op.GUILD_SUBSCRIPTIONS: GuildSubscriptions,
    Op.SEARCH: Search,  # answered by gateway search handler
    Op.DELETE_MESSAGE: DeleteMessage,  # checked and queued by gateway/delete.py
}
CLIENT_OPS = frozenset(PAYLOADS) | {Op.HEARTBEAT}
ALLOWED: dict[State, frozenset[Op]] = {
    State.AWAIT_IDENTIFY: frozenset({Op.IDENTIFY, Op.RESUME, Op.HEARTBEAT}),
    State.AUTHENTICATING: frozenset({Op.HEARTBEAT}),
    State.READY: CLIENT_OPS - {Op.IDENTIFY, Op.RESUME},
    State.CLOSED: frozenset(),
}


# ---- session --------------------------------------------------------------------------------


@dataclass(eq=False)
class Session:
    """Resumable per-user state on one gateway: sequence numbers and the replay buffer.

    ``channels`` maps each channel the user may see to its guild; deliveries for any other
    channel are never dispatched to this session. ``perms`` holds the user's effective
    permission bits in each of those channels. The gateway keeps both current as the control
    plane changes roles, overwrites and memberships (``gateway/control.py``).
    """

    user_id: int
    device: str
    replay_size: int
    session_id: str = field(default_factory=lambda: secrets.token_hex(16))
    seq: int = 0
    guilds: set[int] = field(default_factory=set)
    channels: dict[int, int] = field(default_factory=dict)
    perms: dict[int, int] = field(default_factory=dict)
    username: str = ""
    operator: bool = False  # from the IDENTIFY token: may trace its messages (chatscale trace)
    intents: int = ALL_INTENTS  # event groups it subscribed to (wire.Intent; fanout.py filters)
    status: str = "online"  # the presence status it last set (heartbeats carry it)
    # Bytes of payload the replay buffer may hold (with ``replay_size`` entries, whichever is
    # reached first): the bound on what one session costs its gateway, whatever it receives.
    replay_bytes: int = 512 * 1024
    # (seq, t, d_json, trace_json): references to the payload strings every local session
    # shares, not a per-session copy of the frame — the frame is rebuilt only on RESUME.
    _replay: deque[tuple[int, str, str, str]] = field(init=False)
    _replay_held: int = field(init=False, default=0)  # bytes of d_json + trace_json in _replay
    _evicted_seq: int = field(init=False, default=0)  # newest seq pushed out of the buffer
    detached_at: float | None = None

    def __post_init__(self) -> None:
        self._replay = deque()

    def dispatch(self, t: str, d_json: str, trace_json: str = "", *, replay: bool = True) -> str:
        """Number the next dispatch, remember it for RESUME, return the frame text.

        ``replay=False`` is for frames RESUME never owes: READY (a client can only RESUME with
        the session id READY gave it; keeping it would multiply every idle session's memory)
        and answers to requests (HISTORY: up to a full page per request — a client that lost
        the answer asks again). Only dispatches of events are kept, bounded in entries and bytes.
        """
        return dispatch_frame(
            t, self.number(t, d_json, trace_json, replay=replay), d_json, trace_json
        )

    def number(self, t: str, d_json: str, trace_json: str = "", *, replay: bool = True) -> int:
        """``dispatch`` without building the frame: the next sequence number, the dispatch
        remembered for RESUME (as ``dispatch``); the caller encodes the frame itself."""
        seq = self.seq = self.seq + 1  # (locals: this runs once per recipient of a fan-out)
        if replay:
            kept = self._replay
            kept.append((seq, t, d_json, trace_json))
            held = self._replay_held + len(d_json) + len(trace_json)
            while len(kept) > self.replay_size or (held > self.replay_bytes and len(kept) > 1):
                s, _, d, tr = kept.popleft()
                held -= len(d) + len(tr)
                self._evicted_seq = s
            self._replay_held = held
        return seq

    @property
    def replay_held(self) -> int:
        """Bytes of payload the replay buffer holds now (a bound check for tests and metrics)."""
        return self._replay_held

    def missed_since(self, seq: int) -> list[str] | None:
        """Frames after ``seq``; None if some of them already fell out of the buffer.

        Sequence numbers of frames that were never kept (READY, request answers) are not gaps:
        only an evicted dispatch makes a RESUME impossible.
        """
        if seq == self.seq:
            return []
        if seq < self._evicted_seq:
            return None
        return [dispatch_frame(t, s, d, tr) for s, t, d, tr in self._replay if s > seq]


# ---- connection -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProtocolLimits:
    heartbeat_interval_ms: int = 20_000
    heartbeat_timeout_s: float = 30.0
    events_per_window: int = 120
    event_window_s: float = 60.0
    replay_size: int = 2048


class Connection:
    def __init__(
        self,
        *,
        limits: ProtocolLimits,
        token_secret: str,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
    ) -> None:
        self.state = State.AWAIT_IDENTIFY
        self.session: Session | None = None
        self._limits = limits
        self._secret = token_secret
        self._clock = clock
        self._wall = wall_clock
        self._last_heartbeat = clock()
        self._window_start = clock()
        self._window_count = 0
        self.close_code: Close | None = None

    # ---- inputs ---------------------------------------------------------------------------

    def hello(self) -> list[Action]:
        return [
            SendFrame(frame(Op.HELLO, {"heartbeat_interval": self._limits.heartbeat_interval_ms}))
        ]

    def receive(self, raw: str | bytes) -> list[Action]:
        if self.state is State.CLOSED:
            return []
        if not self._count_event():
            return self._close(Close.RATE_LIMITED, "too many events")
        if isinstance(raw, bytes | bytearray | memoryview):
            return self._close(Close.DECODE_ERROR, "binary frames are not accepted")
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return self._close(Close.DECODE_ERROR, "not valid JSON")
        op_value = message.get("op") if isinstance(message, dict) else None
        if type(op_value) is not int:
            return self._close(Close.INVALID_PAYLOAD, "a frame is an object with an integer op")
        if message.keys() != FRAME_KEYS:  # "d" is required (null where it carries nothing)
            return self._close(Close.INVALID_PAYLOAD, 'a frame has exactly the keys "op" and "d"')
        try:
            op = Op(op_value)
        except ValueError:
            op = None
        if op is None or op not in CLIENT_OPS:
            return self._close(Close.UNKNOWN_OPCODE, f"unknown op {op_value}")
        if op not in ALLOWED[self.state]:
            if self.state is State.AWAIT_IDENTIFY:
                return self._close(Close.NOT_AUTHENTICATED, "IDENTIFY first")
            return self._close(Close.ALREADY_AUTHENTICATED, "already identified")
        return self._handle(op, message["d"])

    def heartbeat_deadline(self) -> float:
        """``tick`` closes this connection only after this time (unless a heartbeat comes)."""
        return self._last_heartbeat + self._limits.heartbeat_timeout_s

    def tick(self) -> list[Action]:
        """Call periodically: closes a connection whose heartbeats stopped."""
        if self.state is State.CLOSED:
            return []
        if self._clock() - self._last_heartbeat > self._limits.heartbeat_timeout_s:
            return self._close(Close.SESSION_TIMED_OUT, "no heartbeat")
        return []

    # ---- answers from the server ------------------------------------------------------------

    def identified(self, session: Session, ready: dict[str, Any]) -> list[Action]:
        self._expect(State.AUTHENTICATING)
        self.state = State.READY
        self.session = session
        ready = {**ready, "session_id": session.session_id}
        return [SendFrame(session.dispatch("READY", dumps(ready), replay=False))]

    def resumed(self, session: Session, seq: int) -> list[Action]:
        self._expect(State.AUTHENTICATING)
        if seq > session.seq:
            return self._close(
                Close.INVALID_SEQ, f"seq {seq} is ahead of the session ({session.seq})"
            )
        missed = session.missed_since(seq)
        if missed is None:
            return self.resume_failed()
        self.state = State.READY
        self.session = session
        actions: list[Action] = [SendFrame(text) for text in missed]
        actions.append(SendFrame(session.dispatch("RESUMED", dumps({"replayed": len(missed)}))))
        return actions

    def resume_failed(self) -> list[Action]:
        """The session is unknown, expired or too far behind: the client must IDENTIFY again."""
        self._expect(State.AUTHENTICATING)
        self.state = State.AWAIT_IDENTIFY
        return [SendFrame(frame(Op.INVALID_SESSION, False))]

    def error(
        self, code: str, message: str, *, nonce: Any = None, retry_after: float | None = None
    ) -> list[Action]:
        """A request failed but the connection is fine (unknown channel, store unavailable)."""
        d: dict[str, Any] = {"code": code, "message": message, "nonce": nonce}
        if retry_after is not None:
            d["retry_after"] = retry_after
        return [SendFrame(frame(Op.ERROR, d))]

    def closed(self) -> None:
        self.state = State.CLOSED

    # ---- internals --------------------------------------------------------------------------

    def _handle(self, op: Op, d: Any) -> list[Action]:
        if op is Op.HEARTBEAT:
            try:
                HEARTBEAT_D.validate_python(d)
            except ValidationError:
                return self._close(
                    Close.INVALID_PAYLOAD, "HEARTBEAT: d is the last s seen (an integer) or null"
                )
            self._last_heartbeat = self._clock()
            return [SendFrame(frame(Op.HEARTBEAT_ACK))]
        try:
            request = PAYLOADS[op].model_validate(d)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "d"
            return self._close(Close.INVALID_PAYLOAD, f"{op.name}: {where}: {first['msg']}"[:120])
        if isinstance(request, Identify | Resume):
            try:
                user_id = tokens.verify(request.token, secret=self._secret, now=self._wall())
            except tokens.TokenError as exc:
                return self._close(Close.AUTHENTICATION_FAILED, f"token {exc.reason}")
            self.state = State.AUTHENTICATING
            if isinstance(request, Identify):
                intents = ALL_INTENTS if request.intents is None else request.intents
                return [
                    Authenticate(
                        user_id, request.device, tokens.is_operator(request.token), intents
                    )
                ]
            return [ResumeRequest(user_id, request.session_id, request.seq)]
        if isinstance(request, SendMessage):
            return [PublishMessage(request)]
        if isinstance(request, RequestHistory):
            return [FetchHistory(request)]
        return [ClientEvent(op, request)]

    def _count_event(self) -> bool:
        now = self._clock()
        if now - self._window_start >= self._limits.event_window_s:
            self._window_start, self._window_count = now, 0
        self._window_count += 1
        return self._window_count <= self._limits.events_per_window

    def _close(self, code: Close, reason: str) -> list[Action]:
        self.state = State.CLOSED
        self.close_code = code
        return [CloseConnection(code, reason)]

    def _expect(self, state: State) -> None:
        if self.state is not state:
            raise ProtocolMisuse(f"expected {state.name}, connection is {self.state.name}")
