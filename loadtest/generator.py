"""One load-generator process: many simulated clients on one event loop, lean on the receive side.

Each simulated client is a real WebSocket client speaking ``docs/protocol.md`` (HELLO,
IDENTIFY/READY, heartbeats, SEND_MESSAGE/MESSAGE_ACK, RESUME/RESUMED, INVALID_SESSION, history
after a lost session), built on the *sans-I/O* half of the ``websockets`` library
(``websockets.client.ClientProtocol``) inside a plain ``asyncio.Protocol``. That is where the
receive path saves: no task wake-up, no queue and no ``asyncio.timeout`` per received frame —
``data_received`` parses the frames and handles them in place. A ``MESSAGE_CREATE`` is not
JSON-decoded at all: the gateway builds it around a payload of fixed key order
(``chatscale.wire.dispatch_frame``/``message_payload``), so ``s``, ``id``, ``channel_id`` and
the message's key (below) are sliced out of the bytes (any other layout falls back to
``orjson``). Measured on the project's machine: ~7.5 µs of CPU per received frame, against
~13 µs for the ``websockets`` asyncio client with ``orjson`` (``docs/benchmarks.md``).

What the generator knows about a message travels in its *key*, ``"<sender>.<n>.<intended µs>"``
(the time in base 36, so the key fits the protocol's 25-character nonce), which is both the
message's nonce and the first word of its content: MESSAGE_CREATE and history carry no nonce
(``docs/protocol.md``), so receivers and the stored-message check read the key from the
content, and the sender matches MESSAGE_ACKs by nonce. The receiver gets the sender, the
sender's order number and the *intended* send time (the schedule's, not the moment the frame
went out), so latency is measured from when a user would have pressed Enter — a generator
that falls behind shows up as latency instead of hiding it (no coordinated omission). A client
has at most ``window`` messages awaiting MESSAGE_ACK (default 1: stop-and-wait, like a careful
client, so a retried message never overtakes a later one); a sender that cannot keep its
schedule shows up as *send lag* (actual minus intended send time), and its messages' latency
includes that wait.

Who should receive a message is decided afterwards by the parent (``loadtest.engine``): every
client whose first READY arrived before the message's intended send time. A receiver drops
(counts as ``early``) messages intended before its own READY, the same rule from the other
side, so a message racing a connect is neither expected nor a leak.

A client that loses its session (INVALID_SESSION after a dropped connection, a killed gateway)
identifies again, sends its unacknowledged messages again unchanged (same nonce and content:
the gateway answers a retry within ``nonce_ttl_s`` with the first attempt's id, so a message
that was queued is not stored twice), and reloads each channel's history newer than the last
message it saw, as a real client does; messages found that way are *recovered* (counted, and
their age recorded separately from live latency). Live messages that arrive while history
loads are held back and recorded after it, so order is judged as the user would see it.

Test-only fault injection (``inject``) drops, duplicates or reorders receipts on purpose so the
tests can check that the accounting catches each kind.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import os
import random
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson
import psutil
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from chatscale import backoff, snowflake
from loadtest.accounting import content_key
from loadtest.latency import LatencyRecorder, TimeSeries

MC = b'{"op":0,"t":"MESSAGE_CREATE","s":'
DISPATCH = b'{"op":0,"t":"'
TERMINAL = {4004}
BUSY = 4017  # GATEWAY_BUSY: refused by admission, retry after retry_after (not a failure)
MAX_REFUSALS = 40  # refusals one client honours before they count as failed attempts
Item = tuple[str, int, str, float, int]  # key (nonce), channel id, content, intended time, order
CONTENT = b'"content":"'
SETTLING = frozenset({"connecting", "identifying", "resuming", "backoff"})
VISIBLE = {"online": "online", "idle": "idle", "dnd": "dnd", "invisible": "offline"}


@dataclass(frozen=True, slots=True)
class ClientPlan:
    cid: int  # member index in the simulated community
    user_id: int
    token: str
    device: str
    url: str
    connect_at: float | None = None  # seconds after the run starts; None: during setup
    observer: bool = False  # parses presence updates to measure propagation latency
    watch: tuple[int, ...] = ()  # user ids whose presence it watches in a large guild (op 14)


@dataclass
class Part:
    """This process's share of a scenario: its clients and their part of the timeline."""

    index: int
    clients: list[ClientPlan]
    urls: list[str]
    channels: list[int]
    sends: list[tuple[float, int, int, str]] = field(default_factory=list)  # at, cid, ch, text
    statuses: list[tuple[float, int, str]] = field(default_factory=list)  # at, cid, status
    drops: list[tuple[float, int, bool, float]] = field(
        default_factory=list
    )  # at, cid, resume, delay
    watch: list[tuple[float, int, str]] = field(default_factory=list)  # all status changes
    user_cids: dict[int, int] = field(default_factory=dict)  # user id -> cid (observers)
    connect_rate: float = 500.0  # setup: new connections per second (this process)
    connect_window: int = 50  # setup: clients connecting at once (this process)
    setup_timeout: float = 600.0
    ready_timeout: float = 30.0
    ack_timeout: float = 15.0
    window: int = 1  # messages in flight per client (1: stop-and-wait, order kept on retries)
    max_attempts: int = 8
    jitter: bool = True  # CHATSCALE_RECONNECT_JITTER: spread reconnect delays (chatscale/backoff)
    bucket_s: float = 1.0
    report_s: float = 0.5  # progress reports to the parent
    inject: dict[str, int] = field(default_factory=dict)  # tests: drop/dup/reorder every Nth


class _Conn(asyncio.Protocol):
    """One WebSocket connection of a client; stale callbacks of a replaced one are ignored."""

    __slots__ = ("client", "proto", "transport", "open", "lost")

    def __init__(self, client: SimClient, url: str) -> None:
        self.client = client
        self.proto = ClientProtocol(parse_uri(url), max_size=None)
        self.transport: asyncio.Transport | None = None
        self.open = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.client.conn is not self or self.client.closing:
            # The attempt was given up (timeout, client closed) while the TCP connect was
            # still under way: close what arrived late instead of leaving it open forever.
            self.lost = True
            transport.abort()
            return
        self.proto.send_request(self.proto.connect())
        self.flush()

    def flush(self) -> None:
        for data in self.proto.data_to_send():
            if data:
                self.transport.write(data)  # type: ignore[union-attr]
            else:  # end of stream: the closing handshake is over
                self.transport.close()  # type: ignore[union-attr]

    def send(self, text: bytes) -> None:
        if self.open and not self.lost:
            self.proto.send_text(text)
            self.flush()

    def data_received(self, data: bytes) -> None:
        proto = self.proto
        proto.receive_data(data)
        client = self.client
        for event in proto.events_received():
            if client.conn is not self:
                break
            if isinstance(event, Response):
                if proto.handshake_exc is not None:
                    client.fail(self, f"handshake {event.status_code}")
                    return
                self.open = True
            elif isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                client.on_text(event.data)  # type: ignore[arg-type]  # bytes from the parser
        self.flush()

    def eof_received(self) -> bool | None:
        self.proto.receive_eof()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        rcvd = self.proto.close_rcvd
        self.client.on_lost(
            self, rcvd.code if rcvd is not None else 1006, rcvd.reason if rcvd else ""
        )


class SimClient:
    """One simulated user device: connects, keeps its session, sends its schedule, receives."""

    def __init__(self, gen: Generator, plan: ClientPlan) -> None:
        self.gen = gen
        self.plan = plan
        self.cid = plan.cid
        self.conn: _Conn | None = None
        self.state = "idle"  # idle connecting identifying resuming ready gone
        self.session_id: str | None = None
        self.resume_url = plan.url
        self.url = plan.url
        self.seq = 0
        self.ready_at: float | None = None  # first READY (wall clock)
        self.hb_interval = 20.0
        self.last_hb = 0.0
        self.outbox: deque[Item] = deque()  # due, not sent yet
        self.inflight: dict[str, Item] = {}  # sent, awaiting MESSAGE_ACK (in send order)
        self.sent_at: dict[str, float] = {}
        self.ack_timers: dict[str, asyncio.TimerHandle] = {}
        self.timeout_timer: asyncio.TimerHandle | None = None
        self.sent_n = 0
        self.last_id: dict[int, int] = {}
        self.backfill: dict[int, list[tuple[int, bytes, float, float]]] | None = None
        self.shown: set[int] | None = None  # message ids shown from history after a new session
        self.history: dict[str, tuple[int, int, list[dict[str, Any]]]] = {}
        self.attempt_started = 0.0
        self.first_attempt = 0.0
        self.attempts = 0
        self.resuming_since = 0.0  # when the connection was lost
        self.reconnect_started: float | None = None  # first attempt after that
        self.dropping = False
        self.want_resume = True
        self.reconnect_delay = 0.0
        self.closing = False
        self.retry_after: float | None = None  # from the ERROR before a 4017 / 4008 close
        self.refusals = 0

    # ---- connecting ------------------------------------------------------------------------

    def start(self) -> bool:
        """Begin connecting (once); False if this client was already started."""
        if self.state != "idle":
            return False
        self.gen.counters["connect_started"] += 1
        self.first_attempt = time.time()
        self._open(self.url)
        return True

    def _open(self, url: str) -> None:
        self.state = "connecting"
        self.attempts += 1
        self.attempt_started = time.time()
        conn = _Conn(self, url)
        self.conn = conn
        self.gen.spawn(self._connect(conn, url))
        self._arm_timeout()

    async def _connect(self, conn: _Conn, url: str) -> None:
        parts = urlsplit(url)
        try:
            await self.gen.loop.create_connection(
                lambda: conn, parts.hostname or "127.0.0.1", parts.port or 80
            )
        except OSError as exc:
            self.fail(
                conn, "refused" if isinstance(exc, ConnectionRefusedError) else "connect error"
            )
        except Exception:  # noqa: BLE001 - e.g. a bad host name; counted, then retried
            self.fail(conn, "connect error")

    def _arm_timeout(self) -> None:
        if self.timeout_timer is not None:
            self.timeout_timer.cancel()
        self.timeout_timer = self.gen.loop.call_later(
            self.gen.part.ready_timeout, self._timed_out, self.conn
        )

    def _timed_out(self, conn: _Conn | None) -> None:
        if conn is self.conn and self.state in ("connecting", "identifying", "resuming"):
            self.fail(conn, "timeout")

    def fail(self, conn: _Conn | None, reason: str) -> None:
        """A connection attempt failed before READY/RESUMED: count it, back off, try again."""
        if conn is not self.conn or self.state == "gone":
            return
        self.gen.failures[reason] += 1
        self.conn = None
        if conn is not None and conn.transport is not None:
            conn.lost = True
            conn.transport.abort()
        if reason == "refused" and len(self.gen.urls) > 1:  # that gateway is gone: try another
            self.url = self.gen.next_url(self.url)
            self.resume_url = self.url
        if self.attempts >= self.gen.part.max_attempts:
            self.state = "gone"
            self.gen.counters["gave_up"] += 1
            self.gen.settled(self)
            return
        self.state = "backoff"
        delay = backoff.delay(self.attempts, self.retry_after, jitter=self.gen.part.jitter)
        self.retry_after = None
        self.gen.loop.call_later(delay, self._retry)

    def _retry(self) -> None:
        if self.state == "backoff":
            if self.reconnect_started is None and self.ready_at is not None:
                self.reconnect_started = time.time()
            self._open(self.resume_url if self.session_id else self.url)

    def on_lost(self, conn: _Conn, code: int, reason: str = "") -> None:
        if conn is not self.conn:
            return
        if self.closing:
            self.conn = None
            self.state = "gone"
            return
        if self.state in ("connecting", "identifying", "resuming"):
            label = f"closed {code} {reason[:40]}".strip()
            if code == BUSY and self.refusals < MAX_REFUSALS:  # admission: come back later
                self.refusals += 1
                if self.refusals == 1:
                    self.gen.counters["clients_refused"] += 1
                self.gen.retried[label] += 1
                self.attempts -= 1  # a refusal with retry_after is not a failed attempt
                self.conn = None
                self.state = "backoff"
                delay = backoff.delay(1, self.retry_after or 1.0, jitter=self.gen.part.jitter)
                self.retry_after = None
                self.gen.loop.call_later(delay, self._retry)
                return
            if code in TERMINAL:  # e.g. 4004: the token is refused, retrying cannot help
                self.conn = None
                self.state = "gone"
                self.gen.failures[label] += 1
                self.gen.refused[label] += 1
                self.gen.counters["terminal_close"] += 1
                self.gen.settled(self)
                return
            self.fail(conn, label)
            return
        self.conn = None
        if self.dropping:
            self.dropping = False
            delay = self.reconnect_delay
        else:
            self.gen.close_codes[f"{code} {reason[:40]}".strip()] += 1
            if code in TERMINAL:
                self.state = "gone"
                self.gen.counters["terminal_close"] += 1
                return
            delay = random.uniform(0.05, 0.5) if self.gen.part.jitter else 0.25
        if not self.want_resume:
            self.want_resume = True
            self._forget_session()
        self.state = "backoff"
        self.attempts = 0
        self.resuming_since = time.time()
        self.gen.counters["reconnects"] += 1
        self.gen.loop.call_later(delay, self._retry)

    def _forget_session(self) -> None:
        self.session_id = None
        self.gen.counters["sessions_abandoned"] += 1

    def drop(self, resume: bool, delay: float) -> None:
        """Lose the connection without a closing handshake, as a flaky network does."""
        if self.state != "ready" or self.conn is None or self.conn.transport is None:
            self.gen.counters["drops_skipped"] += 1
            return
        self.gen.counters["drops"] += 1
        self.dropping = True
        self.want_resume = resume
        self.reconnect_delay = delay
        self.conn.transport.abort()

    def close(self) -> None:
        self.closing = True
        for timer in [self.timeout_timer, *self.ack_timers.values()]:
            if timer is not None:
                timer.cancel()
        if self.conn is not None and self.conn.transport is not None:
            self.conn.transport.abort()
        self.state = "gone"

    # ---- frames in ---------------------------------------------------------------------------

    def on_text(self, data: bytes) -> None:
        if data.startswith(MC):
            j = data.find(b",", 33)
            self.seq = int(data[33:j])
            self.gen.on_message(self, data, j)
            return
        if data.startswith(DISPATCH):
            q = data.index(b'"', 13)
            t = data[13:q]
            j = data.find(b",", q + 6)
            self.seq = int(data[q + 6 : j])
            if t == b"PRESENCE_UPDATE":
                self.gen.on_presence(self, data)
            elif t == b"MESSAGE_ACK":
                self.on_ack(orjson.loads(data)["d"])
            elif t == b"READY":
                self.on_ready(orjson.loads(data)["d"])
            elif t == b"RESUMED":
                self.on_resumed()
            elif t == b"HISTORY":
                self.on_history(orjson.loads(data)["d"])
            elif t == b"MESSAGE_REJECTED":
                d = orjson.loads(data)["d"]
                self.gen.rejected.append(d.get("nonce"))
                self.gen.counters[f"rejected {d.get('code')}"] += 1
            else:
                self.gen.counters[f"dispatch {t.decode()}"] += 1
            return
        msg = orjson.loads(data)
        op = msg.get("op")
        if op == 10:  # HELLO
            self.hb_interval = msg["d"]["heartbeat_interval"] / 1000
            self.last_hb = time.monotonic() - random.random() * self.hb_interval * 0.4
            if self.session_id:
                self.state = "resuming"
                self._send(
                    {
                        "op": 6,
                        "d": {
                            "token": self.plan.token,
                            "session_id": self.session_id,
                            "seq": self.seq,
                        },
                    }
                )
            else:
                self._identify()
        elif op == 9:  # INVALID_SESSION: the session is gone, start a new one
            self.gen.counters["invalid_session"] += 1
            self._forget_session()
            self._identify()
        elif op == 23:
            self.on_error(msg["d"])
        elif op == 7:  # RECONNECT
            self.gen.counters["server_reconnect"] += 1
            self.drop(True, 0.0)
        elif op == 1:
            self._send({"op": 1, "d": self.seq})

    def _identify(self) -> None:
        self.state = "identifying"
        self._send({"op": 2, "d": {"token": self.plan.token, "device": self.plan.device}})

    def on_ready(self, d: dict[str, Any]) -> None:
        now = time.time()
        gen = self.gen
        first = self.ready_at is None
        self.session_id = d["session_id"]
        # RESUME where this connection reached the session's gateway, not at READY's
        # resume_gateway_url: that is the gateway's public URL (compose: ws://localhost:876x,
        # the host's port), which a tester given each gateway's own address (--gateway
        # ws://gateway-0:8765) may not reach (docs/protocol.md, "Which URL to resume at").
        self.resume_url = self.url
        self.state = "ready"
        self._subscribe(d)
        self.attempts = 0
        if self.timeout_timer is not None:
            self.timeout_timer.cancel()
        if first:
            self.ready_at = now
            gen.ready_at[self.cid] = now
            gen.ready_latency.record(now - self.first_attempt)  # retries included
            if gen.connect_series is not None:
                gen.connect_series.record_delivery(self.first_attempt, now)
            gen.counters["ready"] += 1
            gen.settled(self)
        else:
            gen.counters["new_sessions"] += 1
            gen.session_gap.record(now - self.resuming_since)
            gen.reconnect_latency.record(now - (self.reconnect_started or self.resuming_since))
            self.reconnect_started = None
            self._start_backfill(now)
            self._resend_inflight()
        self.pump()

    def _subscribe(self, ready: dict[str, Any]) -> None:
        """Lazy guilds (docs/protocol.md): in each large guild, watch the members of this
        client's member-list rows; every new session starts with no subscription."""
        if not self.plan.watch:
            return
        ids = [str(u) for u in self.plan.watch]
        for guild_id, view in ready.get("presences", {}).items():
            if view.get("large"):
                self._send({"op": 14, "d": {"guild_id": guild_id, "user_ids": ids}})

    def on_resumed(self) -> None:
        now = time.time()
        self.state = "ready"
        self.attempts = 0
        if self.timeout_timer is not None:
            self.timeout_timer.cancel()
        self.gen.counters["resumed"] += 1
        self.gen.resume_latency.record(now - (self.reconnect_started or self.resuming_since))
        self.gen.session_gap.record(now - self.resuming_since)
        self.reconnect_started = None
        for nonce in self.inflight:  # ACKs sent before the drop come back with the replay
            self._arm_ack(nonce)
        self.pump()

    # ---- sending ---------------------------------------------------------------------------

    def _send(self, obj: Any) -> None:
        if self.conn is not None:
            self.conn.send(orjson.dumps(obj))

    def heartbeat(self, now: float) -> None:
        if now - self.last_hb >= self.hb_interval * 0.5:
            self.last_hb = now
            self._send({"op": 1, "d": self.seq or None})

    def queue(self, channel_id: int, content: str, intended: float) -> None:
        n = self.sent_n
        self.sent_n += 1
        key = f"{self.cid}.{n}.{_base36(round(intended * 1_000_000))}"
        self.outbox.append((key, channel_id, f"{key} {content}", intended, n))
        self.gen.counters["scheduled"] += 1
        self.pump()

    def pump(self) -> None:
        """Send what is due while fewer than ``window`` messages await their ACK."""
        window = self.gen.part.window
        while self.state == "ready" and self.outbox and len(self.inflight) < window:
            item = self.outbox.popleft()
            self.inflight[item[0]] = item
            self.gen.send_lag.record(max(0.0, time.time() - item[3]))
            self._transmit(item)

    def _transmit(self, item: Item) -> None:
        nonce, channel_id, content, _intended, _n = item
        self.sent_at[nonce] = time.time()
        self._send(
            {"op": 20, "d": {"channel_id": str(channel_id), "content": content, "nonce": nonce}}
        )
        self.gen.counters["send_frames"] += 1
        self._arm_ack(nonce)

    def _arm_ack(self, nonce: str) -> None:
        timer = self.ack_timers.pop(nonce, None)
        if timer is not None:
            timer.cancel()
        self.ack_timers[nonce] = self.gen.loop.call_later(
            self.gen.part.ack_timeout, self._ack_timeout, nonce
        )

    def _disarm(self, nonce: str) -> None:
        timer = self.ack_timers.pop(nonce, None)
        if timer is not None:
            timer.cancel()

    def _ack_timeout(self, nonce: str) -> None:
        self.ack_timers.pop(nonce, None)
        item = self.inflight.get(nonce)
        if item is None:
            return
        self.gen.counters["ack_timeouts"] += 1
        if self.state == "ready":  # same session: the gateway dedupes a retry by nonce
            self._transmit(item)

    def on_ack(self, d: dict[str, Any]) -> None:
        nonce = d.get("nonce")
        item = self.inflight.pop(nonce, None) if isinstance(nonce, str) else None
        if item is None:
            self.gen.counters["stray_acks"] += 1
            return
        now = time.time()
        self._disarm(item[0])
        _nonce, channel_id, _content, intended, n = item
        self.gen.sends.append((item[0], channel_id, self.cid, intended, n, int(d.get("id") or 0)))
        self.gen.ack_latency.record(now - self.sent_at.pop(item[0], now))
        if self.gen.series is not None:
            self.gen.series.record_send(intended)
        self.pump()

    def on_error(self, d: dict[str, Any]) -> None:
        nonce = d.get("nonce")
        code = d.get("code", "?")
        if nonce is None and self.state in ("identifying", "resuming"):  # before a close
            if d.get("retry_after") is not None:
                self.retry_after = float(d["retry_after"])
            self.gen.counters[f"identify_error {code}"] += 1
            return
        self.gen.send_errors[str(code)] += 1
        if isinstance(nonce, str) and nonce in self.history:
            ch, pages, got = self.history.pop(nonce)
            self.gen.loop.call_later(
                float(d.get("retry_after") or 1.0), self._request_history, ch, None, pages, got
            )
            return
        item = self.inflight.get(nonce) if isinstance(nonce, str) else None
        if item is None:
            return
        self._disarm(item[0])
        if d.get("retry_after") is not None:
            self.gen.loop.call_later(float(d["retry_after"]), self._resend, item)
            return
        del self.inflight[item[0]]
        self.sent_at.pop(item[0], None)
        self.gen.failed.append((item[0], str(code)))
        self.pump()

    def _resend(self, item: Item) -> None:
        if self.inflight.get(item[0]) is not item:
            return
        if self.state == "ready":
            self.gen.counters["send_retries"] += 1
            self._transmit(item)
        else:
            self._arm_ack(item[0])

    def set_status(self, status: str) -> None:
        if self.state == "ready":
            self._send({"op": 3, "d": {"status": status}})
            self.gen.counters["status_changes"] += 1
        else:
            self.gen.counters["status_changes_skipped"] += 1

    # ---- history after a lost session ----------------------------------------------------------

    def _start_backfill(self, now: float) -> None:
        assert self.ready_at is not None
        floor = snowflake.from_timestamp_ms(int(self.ready_at * 1000) - 1000)
        self.backfill = {}
        for ch in self.gen.channels:
            self.backfill[ch] = []
            self._request_history(ch, None, 0, [], floor=max(self.last_id.get(ch, 0), floor))

    def _request_history(
        self,
        channel_id: int,
        before: int | None,
        pages: int,
        got: list[dict[str, Any]],
        floor: int | None = None,
    ) -> None:
        if floor is not None:
            self.last_id[channel_id] = floor
        self.gen.counters["history_requests"] += 1
        nonce = f"h.{self.cid}.{self.gen.counters['history_requests']}"
        self.history[nonce] = (channel_id, pages, got)
        d: dict[str, Any] = {"channel_id": str(channel_id), "limit": 100, "nonce": nonce}
        if before is not None:
            d["before"] = str(before)
        self._send({"op": 21, "d": d})

    def on_history(self, d: dict[str, Any]) -> None:
        entry = self.history.pop(str(d.get("nonce")), None)
        if entry is None or self.backfill is None:
            return
        ch, pages, got = entry
        floor = self.last_id.get(ch, 0)
        page = d["messages"]  # newest first
        newer = [m for m in page if int(m["id"]) > floor]
        got += newer
        if len(page) == 100 and len(newer) == len(page) and pages < 20:
            self._request_history(ch, int(page[-1]["id"]), pages + 1, got)
            return
        self._finish_backfill(ch, got)

    def _finish_backfill(self, ch: int, got: list[dict[str, Any]]) -> None:
        assert self.backfill is not None and self.ready_at is not None
        gen = self.gen
        now = time.time()
        seen: set[int] = set()
        top = self.last_id.get(ch, 0)
        for m in reversed(got):  # oldest first, as the user reads them
            mid = int(m["id"])
            seen.add(mid)
            top = max(top, mid)
            key = content_key(m.get("content"))
            intended = _intended(key.encode()) if key is not None else None
            if key is None or intended is None or intended < self.ready_at:
                continue
            gen.record(self, key.encode(), now, intended, live=False)
        for mid, nonce_b, received, intended in self.backfill.pop(ch):
            if mid in seen:
                gen.counters["history_overlap"] += 1
                continue
            top = max(top, mid)
            gen.latency.record(received - intended)
            gen.record(self, nonce_b, now, intended, live=None)
        self.last_id[ch] = top
        # The history page can hold a message whose live copy is still on its way (the worker
        # writes the hot cache before it fans out): remember what was shown, skip it live.
        self.shown = (self.shown or set()) | seen
        if not self.backfill:
            self.backfill = None

    def _resend_inflight(self) -> None:
        """A new session: the messages awaiting their ACK lost it with the old session. Each
        is sent again unchanged — same nonce, same content — at once: if its first attempt was
        queued, the gateway answers with that attempt's id (within ``nonce_ttl_s``, on any
        session or gateway) and the worker stores and delivers it once; if not, this is the
        message. No need to look for it in history (messages there carry no nonce anyway)."""
        for item in list(self.inflight.values()):  # in send order
            self.gen.counters["resent_after_new_session"] += 1
            self._transmit(item)


def _base36(n: int) -> str:
    """16 decimal digits of µs become 10 characters: nonces are at most 25 characters."""
    digits = ""
    while True:
        n, r = divmod(n, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[r] + digits
        if not n:
            return digits


def _intended(nonce: bytes) -> float | None:
    parts = nonce.split(b".")
    if len(parts) != 3 or not parts[2].isalnum() or not parts[2].isascii():
        return None
    return int(parts[2], 36) / 1_000_000


class Generator:
    """Every simulated client of one process, their timeline, and what they measured."""

    def __init__(self, part: Part) -> None:
        self.part = part
        self.loop = asyncio.get_running_loop()
        self.urls = list(part.urls)
        self.channels = list(part.channels)
        self.clients = {p.cid: SimClient(self, p) for p in part.clients}
        self.counters: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.close_codes: Counter[str] = Counter()
        self.send_errors: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()  # terminal closes before READY (e.g. 4004)
        self.retried: Counter[str] = Counter()  # refused by admission (4017), retried later
        self.latency = LatencyRecorder()
        self.window = LatencyRecorder()  # since the last progress report
        self.ready_latency = LatencyRecorder()
        self.resume_latency = LatencyRecorder()
        self.session_gap = LatencyRecorder()  # connection lost -> RESUMED or new READY
        self.reconnect_latency = LatencyRecorder()  # first reconnect attempt -> new READY
        self.ack_latency = LatencyRecorder()
        self.send_lag = LatencyRecorder()  # actual send - intended: the generator behind schedule
        self.recovered_age = LatencyRecorder()
        self.presence_latency = LatencyRecorder()
        self.series: TimeSeries | None = None
        self.connect_series: TimeSeries | None = None
        self.receipts: list[tuple[int, bytes, float]] = []
        self.sends: list[tuple[str, int, int, float, int, int]] = []  # acked, with server id
        self.failed: list[tuple[str, str]] = []
        self.rejected: list[Any] = []
        self.ready_at: dict[int, float] = {}
        self.t0 = 0.0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._inject = dict(part.inject)
        self._held: tuple[SimClient, bytes, float, float] | None = None
        self.injected: Counter[str] = Counter()
        # presence observers: target cid -> sorted [(at, visible status)]
        self._watch: dict[int, list[tuple[float, str]]] = {}
        self._observed: set[tuple[int, int, int]] = set()
        self._cpu = psutil.Process(os.getpid())
        self._cpu_at_run = 0.0
        self._unsettled: set[int] = set()
        self._settled = asyncio.Event()
        self.ready_at_finish = 0
        self.closed = False

    def spawn(self, coro: Any) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def next_url(self, url: str) -> str:
        i = self.urls.index(url) if url in self.urls else -1
        return self.urls[(i + 1) % len(self.urls)]

    # ---- receive path (hot) --------------------------------------------------------------------

    def on_message(self, client: SimClient, data: bytes, j: int) -> None:
        try:
            if data[j : j + 12] != b',"d":{"id":"':
                raise ValueError
            q = data.index(b'"', j + 12)
            mid = int(data[j + 12 : q])
            if data[q : q + 16] != b'","channel_id":"':
                raise ValueError
            p = q + 16
            q = data.index(b'"', p)
            ch = int(data[p:q])
            # The key is the content's first word. A quote cannot end it early unescaped, and
            # anything escaped (a backslash) goes to the careful path below.
            i = data.index(CONTENT, q) + 11
            end = data.index(b'"', i)
            space = data.find(b" ", i, end)
            nonce = data[i : end if space < 0 else space]
            if b"\\" in nonce:
                raise ValueError
        except ValueError:  # not the layout we know: decode it properly
            d = orjson.loads(data)["d"]
            mid, ch, raw = int(d["id"]), int(d["channel_id"]), content_key(d.get("content"))
            if raw is None:
                self.counters["foreign_messages"] += 1
                return
            nonce = raw.encode()
        now = time.time()
        intended = _intended(nonce)
        if intended is None:
            self.counters["foreign_messages"] += 1
            return
        ready = client.ready_at
        if ready is None or intended < ready:
            self.counters["early"] += 1
            if mid > client.last_id.get(ch, 0):
                client.last_id[ch] = mid
            return
        backfill = client.backfill
        if backfill is not None and ch in backfill:
            backfill[ch].append((mid, nonce, now, intended))
            return
        shown = client.shown
        if shown is not None and mid in shown:  # already shown from history: a client dedupes
            shown.discard(mid)
            self.counters["history_overlap"] += 1
            return
        if mid > client.last_id.get(ch, 0):
            client.last_id[ch] = mid
        if self._inject:
            self._injected(client, nonce, now, intended)
            return
        self.receipts.append((client.cid, nonce, now))
        latency = now - intended
        self.latency.record(latency)
        self.window.record(latency)
        if self.series is not None:
            self.series.record_delivery(intended, now)

    def record(
        self, client: SimClient, nonce: bytes, at: float, intended: float, *, live: bool | None
    ) -> None:
        """A receipt outside the hot path: recovered from history (live=False) or released
        after a backfill (live=None: its latency was recorded when it arrived)."""
        self.receipts.append((client.cid, nonce, at))
        if live is False:
            self.counters["recovered"] += 1
            self.recovered_age.record(at - intended)
        elif self.series is not None:
            self.series.record_delivery(intended, at)

    def _injected(self, client: SimClient, nonce: bytes, now: float, intended: float) -> None:
        """Tests only: damage the receipt stream on purpose, every Nth delivery of a kind."""
        n = self.counters["inject_seen"] = self.counters["inject_seen"] + 1
        held = self._held
        if held is not None and held[0] is client:  # release after a later one: reordered
            self._held = None
            self.receipts.append((client.cid, nonce, now))
            self.receipts.append((client.cid, held[1], now))
            return
        if self._inject.get("drop") and n % self._inject["drop"] == 0:
            self.injected["drop"] += 1
            return
        if self._inject.get("dup") and n % self._inject["dup"] == 0:
            self.injected["dup"] += 1
            self.receipts.append((client.cid, nonce, now))
        if self._inject.get("reorder") and n % self._inject["reorder"] == 0 and held is None:
            self.injected["reorder"] += 1
            self._held = (client, nonce, now, intended)
            return
        self.receipts.append((client.cid, nonce, now))
        self.latency.record(now - intended)

    def on_presence(self, client: SimClient, data: bytes) -> None:
        self.counters["presence_frames"] += 1
        self.counters["presence_bytes"] += len(data)
        if not client.plan.observer or not self._watch:
            return
        now = time.time()
        for p in orjson.loads(data)["d"].get("presences", ()):
            target = self.part.user_cids.get(int(p["user_id"]))
            if target is None:
                continue
            changes = self._watch.get(target)
            if not changes:
                continue
            k = bisect.bisect_right(changes, (now, "~")) - 1
            if k < 0 or changes[k][1] != p.get("status"):
                continue
            key = (client.cid, target, k)
            if key not in self._observed:
                self._observed.add(key)
                self.presence_latency.record(now - changes[k][0])

    # ---- phases ----------------------------------------------------------------------------------

    async def setup(self, at: float) -> None:
        """Connect the clients that are online before the run: at most ``connect_rate`` new
        attempts per second and ``connect_window`` clients connecting at once (a setup is not
        a storm: it goes as fast as the gateways answer, and a slow IDENTIFY slows it down
        instead of piling up timeouts). Returns when every client is READY or gave up, or
        after ``setup_timeout``."""
        await _sleep_until(at)
        waiting = deque(c for c in self.clients.values() if c.plan.connect_at is None)
        spacing = 1.0 / max(1.0, self.part.connect_rate)
        deadline = time.time() + self.part.setup_timeout
        self._unsettled = set()
        while (waiting or self._unsettled) and time.time() < deadline:
            while waiting and len(self._unsettled) < self.part.connect_window:
                client = waiting.popleft()
                if client.start():
                    self._unsettled.add(client.cid)
                    await asyncio.sleep(spacing)
            self._settled.clear()
            if self._unsettled:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._settled.wait(), max(0.01, deadline - time.time()))

    def settled(self, client: SimClient) -> None:
        """A client reached READY or gave up: room for the next one in the setup window."""
        if client.cid in self._unsettled:
            self._unsettled.discard(client.cid)
            self._settled.set()

    async def run(self, t0: float, bucket_s: float) -> None:
        """Play this process's timeline from ``t0`` (wall clock)."""
        self.t0 = t0
        cpu = self._cpu.cpu_times()
        self._cpu_at_run = cpu.user + cpu.system
        self.series = TimeSeries(start=t0, bucket_s=bucket_s)
        self.connect_series = TimeSeries(start=t0, bucket_s=bucket_s)
        for at, cid, status in self.part.watch:
            self._watch.setdefault(cid, []).append((t0 + at, VISIBLE.get(status, status)))
        events: list[tuple[float, int, Any]] = []
        for c in self.part.clients:
            if c.connect_at is not None:
                events.append((c.connect_at, 0, (c.cid,)))
        events += [(at, 1, (cid, ch, text)) for at, cid, ch, text in self.part.sends]
        events += [(at, 2, (cid, status)) for at, cid, status in self.part.statuses]
        events += [(at, 3, (cid, resume, delay)) for at, cid, resume, delay in self.part.drops]
        events.sort(key=lambda e: (e[0], e[1]))
        channels = self.channels
        clients = self.clients
        i = 0
        while i < len(events):
            now = time.time()
            due = t0 + events[i][0]
            if due > now:
                await asyncio.sleep(due - now)
                continue
            while i < len(events) and t0 + events[i][0] <= now:
                at, kind, args = events[i]
                i += 1
                client = clients[args[0]]
                if kind == 0:
                    if client.start():
                        self.connect_series.record_send(t0 + at)
                elif kind == 1:
                    client.queue(channels[args[1]], args[2], t0 + at)
                elif kind == 2:
                    client.set_status(args[1])
                else:
                    client.drop(args[1], args[2])

    async def heartbeats(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for client in self.clients.values():
                if client.state in ("ready", "identifying", "resuming"):
                    client.heartbeat(now)  # from HELLO on, as the protocol allows

    def progress(self) -> dict[str, Any]:
        window = self.window
        self.window = LatencyRecorder()
        states = Counter(c.state for c in self.clients.values())
        return {
            "part": self.part.index,
            "ready_now": states.get("ready", 0),
            "clients": len(self.clients),
            "scheduled": self.counters["scheduled"],
            "acked": len(self.sends),
            "received": len(self.receipts),
            "recovered": self.counters["recovered"],
            "window_p50_ms": window.percentile_ms(50),
            "window_p99_ms": window.percentile_ms(99),
            "window_count": window.count,
            "errors": sum(self.send_errors.values()) + sum(self.failures.values()),
            "closes": sum(self.close_codes.values()),
            "outbox": sum(len(c.outbox) + len(c.inflight) for c in self.clients.values()),
            "terminal": dict(self.refused),
            # reconnecting, or loading history after a new session: deliveries still to come
            "settling": sum(
                c.state in SETTLING or c.backfill is not None for c in self.clients.values()
            ),
        }

    def close_all(self) -> None:
        """Abort every connection (idempotent: also run when the driver is cancelled)."""
        if not self.closed:
            self.closed = True
            self.ready_at_finish = sum(c.state == "ready" for c in self.clients.values())
        for client in self.clients.values():
            client.close()

    def results(self) -> dict[str, Any]:
        pending = [
            (nonce, "unacknowledged at the end")
            for c in self.clients.values()
            for nonce in c.inflight
        ]
        unsent = sum(len(c.outbox) for c in self.clients.values())
        if self._held is not None:  # an injected reorder never released: not a reorder then
            client, nonce, now, _ = self._held
            self._held = None
            self.receipts.append((client.cid, nonce, now))
            self.injected["reorder"] -= 1
        cpu = self._cpu.cpu_times()
        return {
            "part": self.part.index,
            "pid": os.getpid(),
            "cpu_s": cpu.user + cpu.system - self._cpu_at_run,  # from the run's start
            "rss": self._cpu.memory_info().rss,
            "counters": dict(self.counters),
            "failures": dict(self.failures),
            "refused": dict(self.refused),
            "retried": dict(self.retried),
            "close_codes": dict(self.close_codes),
            "send_errors": dict(self.send_errors),
            "injected": dict(self.injected),
            "latency": self.latency.to_dict(),
            "ready_latency": self.ready_latency.to_dict(),
            "resume_latency": self.resume_latency.to_dict(),
            "session_gap": self.session_gap.to_dict(),
            "reconnect_latency": self.reconnect_latency.to_dict(),
            "ack_latency": self.ack_latency.to_dict(),
            "send_lag": self.send_lag.to_dict(),
            "recovered_age": self.recovered_age.to_dict(),
            "presence_latency": self.presence_latency.to_dict(),
            "series": self.series.to_dict() if self.series else None,
            "connect_series": self.connect_series.to_dict() if self.connect_series else None,
            "receipts": [(c, n.decode(), t) for c, n, t in self.receipts],
            "sends": self.sends,
            "failed": self.failed + pending,
            "unsent": unsent,
            "rejected": [r for r in self.rejected if isinstance(r, str)],
            "ready_at": self.ready_at,
            "ready_now": self.ready_at_finish,
        }


async def _sleep_until(at: float) -> None:
    delay = at - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


# ---- driving a Generator: in this process, or in a child process --------------------------------


async def drive(part: Part, commands: asyncio.Queue[dict[str, Any]], report) -> None:  # noqa: ANN001
    """Run one Generator under a parent's commands (setup, run, finish); ``report(msg)`` sends
    progress and results back. Used as is by the inline mode and inside each child process."""
    gen = Generator(part)
    gen.spawn(gen.heartbeats())
    running: asyncio.Task[None] | None = None

    async def progress() -> None:
        while True:
            await asyncio.sleep(part.report_s)
            report({"type": "progress", **gen.progress()})

    gen.spawn(progress())
    try:
        while True:
            cmd = await commands.get()
            if cmd["cmd"] == "setup":
                await gen.setup(cmd["at"])
                report({"type": "setup_done", **gen.progress()})
            elif cmd["cmd"] == "run":
                running = gen.loop.create_task(gen.run(cmd["t0"], part.bucket_s))
            elif cmd["cmd"] == "finish":
                if running is not None and not running.done():
                    running.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await running
                gen.close_all()
                report({"type": "results", **gen.results()})
                return
    finally:
        # Cancelled or failed as well as finished: no client may keep a socket open after the
        # driver is gone (a leaked transport fails a later test through a ResourceWarning).
        if running is not None and not running.done():
            running.cancel()
        gen.close_all()
        for task in list(gen._tasks):
            task.cancel()
        await asyncio.gather(*gen._tasks, *([running] if running else []), return_exceptions=True)


def child_main(part: Part, conn) -> None:  # noqa: ANN001 - a multiprocessing Connection
    """Entry point of a generator process: commands in and reports out over ``conn``."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        commands: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        def readable() -> None:
            try:
                while conn.poll():
                    commands.put_nowait(conn.recv())
            except EOFError:  # the parent went away: finish
                loop.remove_reader(conn.fileno())
                commands.put_nowait({"cmd": "finish"})

        loop.add_reader(conn.fileno(), readable)
        await drive(part, commands, conn.send)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
