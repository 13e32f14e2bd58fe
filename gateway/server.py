"""The gateway process: WebSockets in, Redis Streams out, deliveries back to sockets.

This module only moves frames. Protocol rules live in ``gateway.session`` (pure); what a
delivery means for local sessions lives in ``gateway.fanout``. The gateway never waits on a
worker: a SEND_MESSAGE is acknowledged (``MESSAGE_ACK``) as soon as its stream entry exists,
with an id fixed here so a client retry with the same nonce cannot make a second message.
With ``processing=inline`` (the lab's other arm, ``gateway/inline.py``) the gateway instead
authorizes, stores and fans out the message itself before the ack, and writes no stream entry.

Writes to clients never await one client: every frame is serialized into the connection's
websockets protocol synchronously and, at the end of the loop turn, everything queued for one
client goes to its transport buffer in one write (``client_writes=per_frame``: one
``websockets.broadcast`` write per frame). A client whose buffer grows
past ``client_buffer_bytes`` is closed with 4010 (SLOW_CONSUMER) instead of slowing the rest —
the trade-off the websockets docs describe for broadcast: memory is bounded per client and a
slow reader loses its connection, not the others' latency. (``slow_client=unbounded``, a lab
arm, turns the close off: the buffer then grows with every frame the client does not read.) permessage-deflate is off by default
(``compression``): it costs 3-4x the CPU per frame and ~3x the memory per idle connection.

No background step ever awaits one client. Closing a connection (heartbeat or IDENTIFY timeout,
slow consumer, fencing, shutdown) runs in its own task and is bounded: after
``close_timeout_s`` the TCP connection is aborted, whether the peer stopped reading (``drain()``
would wait forever) or just never answers the close frame. The liveness key is renewed by its
own task, so housekeeping work cannot make this gateway look dead. What the library writes on
its own — pongs to a peer's pings — counts against the same per-client buffer as our frames
(``GatewayConnection``): a peer that floods pings and never reads is closed like any slow one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import itertools
import logging
import os
import resource
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from websockets import broadcast
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State as WsState

from chatscale import metrics, snowflake, trace
from chatscale.autopipe import AutoPipeline
from chatscale.cancel import cancel_and_wait
from chatscale.closecodes import Close
from chatscale.config import Settings
from chatscale.keys import Keys
from chatscale.redisconn import TRANSIENT, connect, is_cluster
from chatscale.wire import (
    Author,
    DeleteMessage,
    Discover,
    IngestMessage,
    Intent,
    Op,
    PresenceUpdate,
    RequestHistory,
    Search,
    SendMessage,
    Typing,
    VoiceStateUpdate,
    dumps,
    encode_entry,
    message_payload,
)
from gateway import discover
from gateway import metrics as gateway_metrics
from gateway.control import GatewayControl, Refusal
from gateway.delete import delete_message
from gateway.fanout import LocalFanout
from gateway.host import Client
from gateway.inline import InlineProcessor
from gateway.lazy import LazyGuilds
from gateway.presence import PresenceReporter
from gateway.search import SearchDesk
from gateway.session import (
    Action,
    Authenticate,
    ClientEvent,
    CloseConnection,
    Connection,
    FetchHistory,
    ProtocolLimits,
    PublishMessage,
    ResumeRequest,
    SendFrame,
    Session,
    State,
)
from gateway.storm import StormGuard
from gateway.voice import VoiceSignaling
from gateway.wsframe import DispatchBytes
from guilds.permissions import Permission
from storage import StorageUnavailable, Store
from storage.hot import HotCache
from storage.paging import read_page
from storage.tiers import history_reader

LAZY_OPS = frozenset({Op.REQUEST_GUILD_MEMBERS, Op.GUILD_SUBSCRIPTIONS})  # gateway/lazy.py
log = logging.getLogger("chatscale.gateway")

ALIVE_TTL_S = 10  # the liveness key's expiry; renewed every ALIVE_EVERY_S by its own task
ALIVE_EVERY_S = 1.0
FD_RESERVE = 128  # open files kept back from clients: Redis pools, storage, metrics, logs


def raise_open_file_limit() -> tuple[int, int]:
    """Raise this process's open-file soft limit to its hard limit; returns (soft, hard).

    Distributions start processes at 1024 open files, which ~1,000 idle connections exhaust;
    the hard limit (often 2^19 or more) is what the administrator actually allows.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):  # e.g. macOS caps at OPEN_MAX
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


class GatewayConnection(ServerConnection):
    """A server connection that reports after each input what it made the library write.

    websockets answers a peer's ping with a pong straight from ``data_received``, bypassing our
    ``Gateway.send``. Without this hook a peer that floods pings and never reads grows our
    write buffer without bound; with it, the gateway applies the same per-client limit.
    """

    def __init__(
        self, *args: Any, after_input: Callable[[GatewayConnection], None], **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._after_input = after_input
        self.client: Client | None = None  # set once the gateway's handler runs

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._after_input(self)


class Gateway:
    """One gateway process. ``start()`` binds (port 0 allowed) and returns; ``stop()`` drains."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store,
        gateway_id: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        # the lab's arm: never close a slow consumer (its buffer grows without bound)
        self.slow_unbounded = settings.slow_client == "unbounded"
        # client_writes=coalesced: frames queued this loop turn, written by _flush (one write
        # per client); client -> bytes buffered for it (transport's at its first frame + ours)
        self.coalesce = settings.client_writes == "coalesced"
        self._pending: dict[Client, int] = {}
        self._flush_handle: asyncio.Handle | None = None
        self.id = gateway_id or f"gw-{secrets.token_hex(4)}"
        self.keys = Keys(settings.key_prefix)
        self.store = store
        self.clock = clock
        self.wall_clock = wall_clock
        self.redis: aioredis.Redis = connect(settings)
        self._reader_redis: aioredis.Redis = connect(settings, block_ms=1000)
        self.hot = HotCache(self.redis, self.keys, size=settings.hot_size)
        self.search = SearchDesk(self)  # SEARCH (op 25): gateway/search.py
        self.history_source = history_reader(  # the store, or store + cold tier (cold_url)
            store, cold_url=settings.cold_url, bucket_span_ms=settings.bucket_span_ms
        )
        self.limits = ProtocolLimits(
            heartbeat_interval_ms=settings.heartbeat_interval_ms,
            heartbeat_timeout_s=settings.heartbeat_timeout_s,
            events_per_window=settings.events_per_window,
            event_window_s=settings.event_window_s,
            replay_size=settings.replay_buffer,
        )
        self.fanout = LocalFanout(self, serialize=settings.fanout_serialize)
        self.lazy = LazyGuilds(self, self.fanout.watchers)
        self.inline = (  # processing=inline: the lab's gateway that does the work itself
            InlineProcessor(settings, redis=self.redis, keys=self.keys, store=store)
            if settings.processing == "inline"
            else None
        )
        # per-message commands (nonce claim, rate-limit script, XADD): one pipeline per turn
        self.batched = AutoPipeline(self.redis, enabled=settings.redis_autopipeline)
        # one Redis node and processing=log: those three are one script call (lua/send.lua)
        self.one_step = self.inline is None and not is_cluster(self.redis)
        self.control = GatewayControl(self)  # permissions of sessions, rate limits
        self.voice = VoiceSignaling(self, self.control)  # VOICE_STATE_UPDATE, grants, relays
        self.presence = PresenceReporter(
            self.redis,
            self.keys,
            gateway_id=self.id,
            heartbeat_every_s=settings.presence_timeout_s / 3,
            partitions=settings.presence_partitions,
        )
        self.storm = StormGuard(self)  # IDENTIFY admission, degrade mode, off-loop liveness
        self.clients: set[Client] = set()
        # (when tick() must next look at a client, n, client): a min-heap, so a tick costs the
        # clients that are due, not all of them. Heartbeats do not touch it: an entry popped
        # early is pushed back with the client's new deadline.
        self._due: list[tuple[float, int, Client]] = []
        self._due_n = itertools.count()
        self.per_address: dict[str, int] = {}  # open connections by remote address
        self.max_connections = settings.max_connections  # lowered to the fd limit in start()
        self.sessions: dict[str, Session] = {}
        self._ids: snowflake.SnowflakeGenerator | None = None
        self._server: Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.stopping = False  # set by stop(): background loops end at their next turn
        self.port = 0
        self.url = ""

    # ---- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        node = await self.redis.incr(self.keys.node_ids()) % (snowflake.MAX_NODE + 1)
        self._ids = snowflake.SnowflakeGenerator(node)
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft - FD_RESERVE < self.max_connections:
            self.max_connections = max(soft - FD_RESERVE, 1)
            log.info(
                "open-file limit %d caps this gateway at %d connections", soft, self.max_connections
            )
        self._server = await serve(
            self._handle,
            self.settings.gateway_host,
            self.settings.gateway_port,
            max_size=self.settings.max_frame_bytes,
            compression="deflate" if self.settings.compression else None,
            ping_interval=None,  # liveness is the protocol's HEARTBEAT, counted per session
            close_timeout=self.settings.close_timeout_s,
            open_timeout=self.settings.close_timeout_s,  # the HTTP upgrade, before HELLO
            create_connection=functools.partial(  # type: ignore[arg-type]
                GatewayConnection, after_input=self._after_input
            ),
        )
        sock = next(iter(self._server.sockets))
        self.port = sock.getsockname()[1]
        self.url = (
            self.settings.gateway_public_url or f"ws://{self.settings.gateway_host}:{self.port}"
        )
        await self.control.start()  # hear every control-plane change before we count as live
        await self.redis.hset(
            self.keys.gateways(),
            self.id,
            dumps({"url": self.url, "pid": os.getpid(), "started": self.wall_clock()}),
        )
        # where delivery reading starts: before the liveness key exists, so no worker can have
        # written an entry for this gateway's sessions before it (workers skip dead gateways)
        start_id = await self.fanout.start_id(self._reader_redis)
        await self._refresh_alive(create=True)
        self._spawn(self.fanout.run(self._reader_redis, start_id))
        self._spawn(self.control.run())
        self._spawn(self._liveness())
        self._spawn(self._housekeeping())
        self._spawn(self._presence_ticks())
        self.storm.start(self.keys.gateway_alive(self.id), ALIVE_TTL_S, ALIVE_EVERY_S)
        gateway_metrics.watch_gateway(self)  # connections and sessions, read at scrape time
        log.info("gateway %s listening on %s", self.id, self.url)

    async def stop(self) -> None:
        """Close clients with GATEWAY_SHUTDOWN (resumable), drop routes, stop background tasks.

        Every step is bounded and whatever a step gives up on is logged, never waited for
        silently. Background tasks are cancelled again until they end: on Python 3.11 a
        cancellation that lands while redis-py is sending a command is lost (it sends through
        ``asyncio.wait_for``, which drops a cancellation arriving as the send completes —
        CPython gh-86296), and the task's loop would then run forever.
        """
        self.stopping = True  # the background loops end at their next turn even if not cancelled
        self.storm.stop()
        await self.search.close()
        if self._server is not None:
            self._server.close(close_connections=False)
        await asyncio.gather(  # all at once, each bounded: one silent client cannot hold us up
            *(
                self._close_bounded(c.ws, Close.GATEWAY_SHUTDOWN, "gateway stopping")
                for c in list(self.clients)
            ),
            return_exceptions=True,
        )
        redis_bound = self.settings.redis_timeout_s * (self.settings.redis_retries + 1) + 1.0
        if self._server is not None:
            handlers = self.settings.close_timeout_s + redis_bound  # a handler ends its call
            try:
                async with asyncio.timeout(handlers):
                    await self._server.wait_closed()
            except TimeoutError:
                log.error(
                    "gateway %s: %d connection handlers still running after %.0f s; not "
                    "waiting for them",
                    self.id,
                    len(self._server.handler_tasks),
                    handlers,
                )
        await cancel_and_wait(self._tasks, self.settings.close_timeout_s, f"gateway {self.id}")
        try:
            async with asyncio.timeout(redis_bound):
                for session in list(self.sessions.values()):
                    await self.voice.forget(session)
                    self.presence.offline(session)
                await self.presence.flush([], self.clock())
                await self.fanout.drop_all_routes()
                await self.redis.delete(
                    self.keys.gateway_alive(self.id), self.keys.deliver(self.id)
                )
                await self.redis.hdel(self.keys.gateways(), self.id)
        except TRANSIENT as exc:  # TRANSIENT includes OSError, so the timeout above too
            log.error(
                "gateway %s: could not unregister within %.0f s (%r); its liveness key expires "
                "in %d s and workers skip it from then on",
                self.id,
                redis_bound,
                exc,
                ALIVE_TTL_S,
            )
        for what, closing in (
            ("the control subscription", self.control.close),
            ("the voice waiter", self.voice.close),
            ("the batched commands in flight", self.batched.aclose),
            ("the Redis client", self.redis.aclose),
            ("the delivery reader", self._reader_redis.aclose),
        ):
            try:
                async with asyncio.timeout(redis_bound):
                    await closing()
            except TRANSIENT as exc:
                log.error("gateway %s: closing %s failed (%r)", self.id, what, exc)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _refresh_alive(self, *, create: bool = False) -> bool:
        """Renew the liveness key; only ``create`` (start, or after a fence was handled) may make
        it anew. A renewal never resurrects a key the control plane deleted to fence us: that
        deletion must stay visible until ``control.check()`` has dropped the sessions."""
        key = self.keys.gateway_alive(self.id)
        if create:
            return bool(await self.redis.set(key, b"1", ex=ALIVE_TTL_S))
        return bool(await self.redis.set(key, b"1", ex=ALIVE_TTL_S, xx=True))

    async def _liveness(self) -> None:
        """Its own task: nothing housekeeping does (store reloads, many clients) can starve it."""
        while not self.stopping:
            with contextlib.suppress(*TRANSIENT):
                await self._refresh_alive()
            await asyncio.sleep(ALIVE_EVERY_S)

    async def _housekeeping(self) -> None:
        while not self.stopping:
            await asyncio.sleep(1.0)
            with contextlib.suppress(*TRANSIENT, StorageUnavailable):
                await self.control.check()  # fenced? missed a change? (re-creates liveness)
            await self.tick()

    #: The presence tick's timer (a test steps it instead of waiting for wall time).
    presence_sleep: Callable[[float], Awaitable[None]] = staticmethod(asyncio.sleep)

    async def _presence_ticks(self) -> None:
        """One presence batch every ``presence_tick_ms`` (its own task: a shorter tick makes
        presence fresher without running the rest of housekeeping more often)."""
        while not self.stopping:
            await self.presence_sleep(self.settings.presence_tick_ms / 1000)
            with contextlib.suppress(*TRANSIENT):
                await self.flush_presence()

    async def flush_presence(self) -> None:
        """One presence batch for this tick (tests call it instead of waiting for the timer)."""
        await self.presence.flush(list(self.fanout.attached), self.clock())

    async def tick(self) -> None:
        """Heartbeat and IDENTIFY timeouts, expiry of detached sessions (tests call it with a
        fake clock). Closing never awaits the client: ``close_client`` runs in the background."""
        now = self.clock()
        while self._due and self._due[0][0] <= now:
            _, _, client = heapq.heappop(self._due)
            if client not in self.clients:
                continue  # gone: its entry ends here
            for action in client.conn.tick():
                assert isinstance(action, CloseConnection)
                self.close_client(client, action.code, action.reason)
            if (
                client.conn.state is State.AWAIT_IDENTIFY
                and now - client.opened_at > self.settings.identify_timeout_s
            ):
                self.close_client(client, Close.IDENTIFY_TIMEOUT, "IDENTIFY within the deadline")
            self._watch(client, now)
        for session in list(self.sessions.values()):
            if (
                session.detached_at is not None
                and now - session.detached_at > self.settings.resume_timeout_s
            ):
                await self._forget(session)

    def _watch(self, client: Client, now: float) -> None:
        """Queue the client's next look: at its heartbeat deadline once READY; before that
        (IDENTIFY pending, or a failed RESUME) at the next tick, as a scan of all would."""
        due = client.conn.heartbeat_deadline()
        if client.conn.state is not State.READY or due <= now:  # (closing: until it is gone)
            due = min(due, now + 1.0) if due > now else now + 1.0
        heapq.heappush(self._due, (due, next(self._due_n), client))

    # ---- closing ------------------------------------------------------------------------------

    def close_client(self, client: Client, code: Close, reason: str) -> None:
        """Close in the background, bounded; the caller never waits on this client."""
        client.conn.closed()
        if client.closing:
            return
        client.closing = True
        self._spawn(self._close_bounded(client.ws, code, reason))

    async def _close_bounded(self, ws: ServerConnection, code: Close, reason: str) -> None:
        """The close handshake for at most ``close_timeout_s``, then abort the TCP connection.

        ``ws.close()`` alone can wait forever: it drains our write buffer first, and a peer
        that stopped reading never lets it drain. Aborting drops what is still buffered.
        """
        try:
            async with asyncio.timeout(self.settings.close_timeout_s):
                await ws.close(code, reason)
        except (TimeoutError, ConnectionClosed, OSError):
            pass
        finally:
            if ws.protocol.state is not WsState.CLOSED and ws.transport is not None:
                ws.transport.abort()

    def _after_input(self, ws: GatewayConnection) -> None:
        """After every read: whatever the library queued on its own (pongs) is bounded too."""
        if self.slow_unbounded or (
            ws.transport is None
            or ws.transport.get_write_buffer_size() <= self.settings.client_buffer_bytes
        ):
            return
        client = ws.client
        if client is None or client.closing:  # not ours yet, or a close did not get through
            ws.transport.abort()
        else:
            self.close_client(client, Close.SLOW_CONSUMER, "send buffer overflow")

    # ---- per connection -----------------------------------------------------------------------

    def _refusal(self, address: str) -> tuple[Close, str] | None:
        """The connection caps, checked before HELLO (a refused connection costs one close)."""
        if len(self.clients) >= self.max_connections:
            return Close.GATEWAY_FULL, "gateway full; try another gateway or retry later"
        limit = self.settings.max_connections_per_ip
        if limit and self.per_address.get(address, 0) >= limit:
            return Close.TOO_MANY_CONNECTIONS, f"at most {limit} connections per address"
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        address = str(ws.remote_address[0]) if ws.remote_address else ""
        refusal = self._refusal(address)
        if refusal is not None:
            await self._close_bounded(ws, *refusal)
            gateway_metrics.connection_closed(ws)
            return
        conn = Connection(
            limits=self.limits,
            token_secret=self.settings.token_secret,
            clock=self.clock,
            wall_clock=self.wall_clock,
        )
        client = Client(ws, conn, opened_at=self.clock(), address=address)
        if isinstance(ws, GatewayConnection):
            ws.client = client
        self.clients.add(client)
        self._watch(client, client.opened_at)
        self.per_address[address] = self.per_address.get(address, 0) + 1
        try:
            await self._apply(client, conn.hello())
            async for raw in ws:
                gateway_metrics.frame_in()
                await self._apply(client, conn.receive(raw))
        except ConnectionClosed:
            pass
        finally:
            self.clients.discard(client)
            left = self.per_address.get(address, 1) - 1
            if left > 0:
                self.per_address[address] = left
            else:
                self.per_address.pop(address, None)
            gateway_metrics.connection_closed(ws)  # by close code
            conn.closed()
            session = client.session
            if session is not None and self.fanout.attached.get(session) is client:
                del self.fanout.attached[session]
                session.detached_at = self.clock()

    async def _apply(self, client: Client, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, SendFrame):
                self.send(client, action.text)
            elif isinstance(action, CloseConnection):
                self.close_client(client, action.code, action.reason)
            elif isinstance(action, Authenticate):
                await self._identify(client, action)
            elif isinstance(action, ResumeRequest):
                await self._resume(client, action)
            elif isinstance(action, PublishMessage):
                await self._publish(client, action.request)
            elif isinstance(action, FetchHistory):
                await self._history(client, action.request)
            elif isinstance(action, ClientEvent) and isinstance(action.request, Discover):
                await discover.answer(self, client, action.request)
            elif isinstance(action, ClientEvent) and action.op in LAZY_OPS:
                await self.lazy.handle(client, action.request)  # members, subscriptions
            elif isinstance(action, ClientEvent) and isinstance(action.request, Search):
                await self.search.answer(client, action.request)
            elif isinstance(action, ClientEvent) and isinstance(action.request, DeleteMessage):
                await delete_message(self, client, action.request)  # op 26: gateway/delete.py
            elif isinstance(action, ClientEvent):
                self._client_event(client, action)

    def send(self, client: Client, text: str) -> None:
        """Queue a frame without awaiting; close the client if it is not reading.

        With ``client_writes=coalesced`` the frame is serialized into the connection's protocol
        now (its place in the client's order is fixed here) and written at the end of this loop
        turn, together with every other frame queued for the client meanwhile: one ``send()``
        per client per turn. Bytes queued and not yet written count against
        ``client_buffer_bytes`` like the transport's own buffer. Anything the library writes on
        its own meanwhile (a pong, a close frame) drains the same queue first, in order."""
        ws = client.ws
        if ws.protocol.state is not WsState.OPEN:
            return
        if not self.coalesce:
            buffered = ws.transport.get_write_buffer_size() if ws.transport else 0
            if buffered > self.settings.client_buffer_bytes and not self.slow_unbounded:
                self.close_client(client, Close.SLOW_CONSUMER, "send buffer overflow")
                return
            broadcast([ws], text)
            gateway_metrics.frame_out()
            return
        if ws.send_in_progress is not None:  # a fragmented message (never ours): as broadcast
            return
        pending = self._pending.get(client)
        if pending is None:
            pending = ws.transport.get_write_buffer_size() if ws.transport else 0
        if pending > self.settings.client_buffer_bytes and not self.slow_unbounded:
            self.close_client(client, Close.SLOW_CONSUMER, "send buffer overflow")
            return
        data = text.encode()
        ws.protocol.send_text(data)
        self._pending[client] = pending + len(data)
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)
        gateway_metrics.frame_out()

    def send_dispatches(
        self, dispatch: DispatchBytes, sessions: list[Session], attached: dict[Session, Client]
    ) -> None:
        """One fan-out dispatch to ``sessions``: each numbers it and keeps it for RESUME
        (``Session.number``); each attached one's client is sent its frame — the delivery's
        shared bytes around the session's number (``gateway/wsframe.py``), written straight to
        the transport: one join and one ``write`` per client, none of the library's per-frame
        objects. Only while the library has nothing of its own queued for the connection and
        no extension was negotiated (``compression``); otherwise, and with
        ``client_writes=coalesced``, the library's path (``send``). The same buffer bound as
        ``send``; a failed write never stops the rest. One loop: it runs per recipient."""
        t, d_json, trace_json = dispatch.t, dispatch.d_json, dispatch.trace_json
        limit = self.settings.client_buffer_bytes if not self.slow_unbounded else None
        frame, open_, coalesce, written = dispatch.frame, WsState.OPEN, self.coalesce, 0
        for session in sessions:
            seq = session.number(t, d_json, trace_json)
            client = attached.get(session)
            if client is None:  # detached: kept for RESUME only
                continue
            ws = client.ws
            protocol, transport = ws.protocol, ws.transport
            if (
                coalesce
                or protocol.extensions
                or protocol.writes
                or ws.send_in_progress is not None
                or transport is None
                or protocol.state is not open_
            ):
                self.send(client, dispatch.text(seq))
                continue
            if limit is not None and transport.get_write_buffer_size() > limit:
                self.close_client(client, Close.SLOW_CONSUMER, "send buffer overflow")
                continue
            try:
                transport.write(frame(seq))
                written += 1
            except Exception as exc:  # as broadcast: one failed connection never stops the rest
                log.debug("write to a client failed: %s", exc)
        if written:
            gateway_metrics.frame_out(written)  # one counter update per delivery

    def _flush(self) -> None:
        """Write what ``send`` queued this turn: one write per client (``client_writes``)."""
        self._flush_handle = None
        pending, self._pending = self._pending, {}
        for client in pending:
            ws = client.ws
            transport = ws.transport
            data = ws.protocol.data_to_send()
            if not data or transport is None:
                continue
            try:
                if all(data):
                    transport.write(data[0] if len(data) == 1 else b"".join(data))
                else:  # an end-of-stream marker among them: the library's own path
                    ws.protocol.writes[:0] = data
                    ws.send_data()
            except Exception as exc:  # as broadcast: one failed connection never stops the rest
                log.debug("write to a client failed: %s", exc)

    def send_error(self, client: Client, code: str, message: str, **extra: Any) -> None:
        gateway_metrics.error_reply(code)
        for action in client.conn.error(code, message, **extra):
            assert isinstance(action, SendFrame)
            self.send(client, action.text)

    # ---- identify / resume ------------------------------------------------------------------------

    async def _identify(self, client: Client, request: Authenticate) -> None:
        """Admission first (gateway/storm.py: run, queue or 4017 with retry_after)."""
        if not self.storm.on:
            await self._identify_admitted(client, request)
            return
        started = await self.storm.admit(client)
        if started is None:
            return
        try:
            async with asyncio.timeout(self.storm.budget_s):  # bounded work per IDENTIFY
                await self._identify_admitted(client, request)
        except TimeoutError:
            self.storm.unavailable(client, "IDENTIFY took longer than its budget")
            for session, c in list(self.fanout.attached.items()):
                if c is client and not session.seq:  # registered, never READY: forget it
                    await self._forget(session)
        finally:
            # only an IDENTIFY that ended in READY is a sample of what one costs: one that timed
            # out on Redis or ran out of budget would make the next refusals' appointments long
            self.storm.finish(started, served=not client.closing)

    async def _identify_admitted(self, client: Client, request: Authenticate) -> None:
        if not await self.control.admit_identify(client, request.user_id):  # identify rate
            return
        try:
            user = await self.store.get_user(request.user_id)
            views, version = await self.control.load_views(request.user_id) if user else ([], 0)
        except (StorageUnavailable, *TRANSIENT):
            self.storm.unavailable(client, "metadata store unavailable")  # 4017 or 4000
            return
        guilds = [v.guild for v in views]
        if user is None:
            self.close_client(client, Close.AUTHENTICATION_FAILED, "unknown user")
            return
        session = Session(
            user.id,
            request.device,
            self.settings.replay_buffer,
            username=user.username,
            replay_bytes=self.settings.replay_buffer_bytes,
            operator=request.operator,
            intents=request.intents,
        )
        # No channels yet, so nothing is delivered to it: control.settle() installs them once
        # no permission change can have raced the load (gateway/control.py).
        session.guilds = {g.id for g in guilds}
        ready: dict[str, Any] = {
            "v": 1,
            "user": {"id": str(user.id), "username": user.username},
            "resume_gateway_url": self.url,
            "gateway_id": self.id,
        }
        ready["presences"] = {}
        if client.conn.state is not State.AUTHENTICATING:
            return  # closed while we loaded; nothing registered yet
        self.sessions[session.session_id] = session
        self.presence.online(session)
        try:
            await self.fanout.attach(session, client)
            # Presences are read after the attach: an update published from the attach on is
            # held for this session and released after READY (fanout.release), so the snapshot
            # and the held updates together miss no one who came online meanwhile.
            if request.intents & Intent.GUILD_PRESENCES:  # without the intent, none (as Discord)
                ready["presences"] = {
                    str(g): p
                    for g, p in (
                        await self.presence.ready_presences(
                            self.store, guilds, self.settings.large_guild_threshold
                        )
                    ).items()
                }
            views = await self.control.settle(session, views, version)
        except (StorageUnavailable, *TRANSIENT):
            self.storm.unavailable(client, "routing table or metadata unavailable")
            if self.storm.on:  # registered above: never READY, so nobody can resume it
                await self._forget(session)
            return
        if client.conn.state is not State.AUTHENTICATING:
            # The connection was closed while we loaded (heartbeat timeout, fencing, a client
            # that gave up): nobody will RESUME a session that never got READY.
            await self._forget(session)
            return
        ready["guilds"] = [v.guild_object() for v in views]  # no await from settle() to READY
        ready["presences"] = {
            g: p for g, p in ready["presences"].items() if int(g) in session.guilds
        }
        await self._apply(client, client.conn.identified(session, ready))
        self.fanout.release(session)

    async def _resume(self, client: Client, request: ResumeRequest) -> None:
        session = self.sessions.get(request.session_id)
        if session is None or session.user_id != request.user_id:
            await self._apply(client, client.conn.resume_failed())
            return
        previous = self.fanout.attached.get(session)
        if previous is not None and previous is not client:
            self.close_client(previous, Close.SESSION_REPLACED, "resumed elsewhere")
        actions = client.conn.resumed(session, request.seq)
        if client.conn.session is session:
            session.detached_at = None
            self.fanout.attached[session] = client
        await self._apply(client, actions)

    def _client_event(self, client: Client, event: ClientEvent) -> None:
        """Presence, voice and typing go to the presence service in this tick's batch."""
        session = client.session
        assert session is not None
        request = event.request
        if isinstance(request, PresenceUpdate):
            self.presence.status(session, request.status)
        elif isinstance(request, VoiceStateUpdate):  # checks, grant, VOICE_SERVER_UPDATE
            self._spawn(self.voice.request(client, session, request.guild_id, request.channel_id))
        elif isinstance(request, Typing):
            guild_id = session.channels.get(request.channel_id)
            if guild_id is None:
                self.send_error(client, "UNKNOWN_CHANNEL", "no such channel visible to you")
                return
            if not session.perms.get(request.channel_id, 0) & Permission.SEND_MESSAGES:
                # Typing announces a message to come: only those who may send may type.
                self.send_error(client, "MISSING_PERMISSIONS", "you cannot send messages here")
                return
            self.presence.typing(session, guild_id, request.channel_id)

    async def _forget(self, session: Session) -> None:
        with contextlib.suppress(*TRANSIENT):
            await self.voice.forget(session)  # its relay session ends before it goes offline
        self.presence.offline(session)
        self.sessions.pop(session.session_id, None)
        with contextlib.suppress(*TRANSIENT):
            await self.fanout.detach(session)

    # ---- requests ---------------------------------------------------------------------------------

    def _unavailable(self, client: Client, request: SendMessage) -> None:
        """Redis did not answer while queueing: the send may or may not have been queued, and a
        retry with the same nonce and content is safe (it gets the first attempt's id)."""
        self.send_error(
            client,
            "UNAVAILABLE",
            "could not queue the message; retry with the same nonce",
            nonce=request.nonce,
            retry_after=1.0,
        )

    async def _publish(self, client: Client, request: SendMessage) -> None:
        session = client.session
        assert session is not None and self._ids is not None
        started = metrics.clock()  # gateway_publish: receive -> XADD acknowledged
        # Tracing exposes internal hop timings to every recipient: operators only (token claim);
        # anyone else's ``trace`` is ignored.
        tr: list[tuple[str, int]] | None = (
            [("gateway_receive", time.time_ns())] if request.trace and session.operator else None
        )
        guild_id = session.channels.get(request.channel_id)
        if guild_id is None:
            self.send_error(
                client, "UNKNOWN_CHANNEL", "no such channel visible to you", nonce=request.nonce
            )
            return
        if len(request.content) > self.settings.max_content_chars:
            self.send_error(
                client,
                "CONTENT_TOO_LONG",
                f"at most {self.settings.max_content_chars} characters",
                nonce=request.nonce,
            )
            return
        # A retry (same user, channel, nonce and content within nonce_ttl_s, from any session
        # or gateway) reuses the id the first attempt claimed: the worker stores and fans out
        # an id once, so a client may retry an UNAVAILABLE or unanswered send after reconnecting.
        message_id = self._ids.next()
        nonce_key = (
            self.keys.send_nonce(
                session.user_id, request.channel_id, request.nonce, request.content
            )
            if request.nonce is not None
            else ""
        )
        queue = self._queue_one_step if self.one_step else self._queue_steps
        queued = await queue(client, request, guild_id, message_id, nonce_key, tr)
        if queued is None:  # the client was answered with an ERROR
            return
        message_id = queued  # a retry's: the id its first attempt claimed
        metrics.stage("gateway_publish", started)
        ack = dumps(
            {"id": str(message_id), "channel_id": str(request.channel_id), "nonce": request.nonce}
        )
        self.send(client, session.dispatch("MESSAGE_ACK", ack))

    def _envelope(
        self,
        session: Session,
        request: SendMessage,
        guild_id: int,
        message_id: int,
        tr: list[tuple[str, int]] | None,
    ) -> IngestMessage:
        payload = message_payload(
            message_id=message_id,
            channel_id=request.channel_id,
            guild_id=guild_id,
            author=Author(id=str(session.user_id), username=session.username),
            content=request.content,
            timestamp_ms=snowflake.timestamp_ms(message_id),
        )  # no nonce: only the sender's MESSAGE_ACK carries it (stored and fanned out as is)
        return IngestMessage(
            id=message_id,
            channel_id=request.channel_id,
            guild_id=guild_id,
            author_id=session.user_id,
            gateway_id=self.id,
            session_id=session.session_id,
            nonce=request.nonce,
            payload=payload,
            trace=tr,
        )

    def _refuse(self, client: Client, request: SendMessage, refusal: Refusal) -> None:
        self.send_error(
            client,
            refusal.code,
            refusal.message,
            nonce=request.nonce,
            retry_after=refusal.retry_after,
        )

    async def _queue_one_step(
        self,
        client: Client,
        request: SendMessage,
        guild_id: int,
        message_id: int,
        nonce_key: str,
        tr: list[tuple[str, int]] | None,
    ) -> int | None:
        """One Redis node, processing=log: permissions from the session, then the nonce claim,
        the rate limits and the XADD in one script call (``lua/send.lua``): one round trip per
        message. The id queued, or None when the client was answered with an ERROR."""
        session = client.session
        assert session is not None
        refusal = self.control.send_permission(session, request.channel_id)
        if refusal is not None:
            self._refuse(client, request, refusal)
            return None
        shard = self.keys.ingest(request.channel_id % self.settings.ingest_shards)
        trace.stamp(tr, "gateway_publish")
        envelope = self._envelope(session, request, guild_id, message_id, tr)
        try:
            refusal, claimed = await self.control.queue_send(
                session,
                request.channel_id,
                stream=shard,
                entry=encode_entry(envelope)["e"],
                message_id=message_id,
                nonce_key=nonce_key,
            )
        except TRANSIENT:
            self._unavailable(client, request)
            return None
        if refusal is not None:
            self._refuse(client, request, refusal)
            return None
        if claimed is None:
            return message_id
        # a retry of a message already queued: queued again under its id, not counted again
        envelope = self._envelope(session, request, guild_id, claimed, tr)
        return claimed if await self._xadd(client, request, shard, envelope) else None

    async def _queue_steps(
        self,
        client: Client,
        request: SendMessage,
        guild_id: int,
        message_id: int,
        nonce_key: str,
        tr: list[tuple[str, int]] | None,
    ) -> int | None:
        """A Redis Cluster (the keys are in different slots), or processing=inline: the nonce
        claim, then permissions and rate limits, then the XADD (or the inline processing), each
        its own command. The id queued, or None when the client was answered with an ERROR."""
        session = client.session
        assert session is not None
        retry = False
        if nonce_key:
            try:
                claimed = await self.batched.execute(  # SET NX GET EX, batched with the turn's
                    "SET",
                    nonce_key,
                    message_id,
                    "NX",
                    "GET",
                    "EX",
                    self.settings.nonce_ttl_s,
                    get=True,
                )
            except TRANSIENT:
                self._unavailable(client, request)
                return None
            if claimed is not None:
                message_id, retry = int(claimed), True
        # SEND_MESSAGES here is a fast answer; the worker re-checks with current metadata.
        # Rate limits count new messages only, not retries of one already queued.
        refusal = await self.control.send_refusal(session, request.channel_id, count=not retry)
        if refusal is not None:
            if nonce_key and not retry:  # not queued: free the nonce, or a retry would skip limits
                with contextlib.suppress(*TRANSIENT):
                    await self.redis.delete(nonce_key)
            self._refuse(client, request, refusal)
            return None
        trace.stamp(tr, "gateway_publish")
        envelope = self._envelope(session, request, guild_id, message_id, tr)
        if self.inline is not None:
            return message_id if await self._process_inline(client, request, envelope) else None
        shard = self.keys.ingest(request.channel_id % self.settings.ingest_shards)
        return message_id if await self._xadd(client, request, shard, envelope) else None

    async def _xadd(
        self, client: Client, request: SendMessage, shard: str, envelope: IngestMessage
    ) -> bool:
        """XADD the envelope to its ingest shard, batched with the loop turn's other commands;
        False when Redis failed and the client was told to retry (UNAVAILABLE)."""
        try:
            await self.batched.execute("XADD", shard, "*", "e", encode_entry(envelope)["e"])
        except TRANSIENT:
            self._unavailable(client, request)
            return False
        return True

    async def _process_inline(
        self, client: Client, request: SendMessage, envelope: IngestMessage
    ) -> bool:
        """processing=inline: authorize, accept, store and fan out before the ack
        (``gateway/inline.py``); False when the client was answered with an ERROR instead."""
        assert self.inline is not None
        self.inline.gateway_id = self.id
        try:
            code = await self.inline.process(envelope)
        except (*TRANSIENT, StorageUnavailable):
            self._unavailable(client, request)
            return False
        if code is not None:
            self.send_error(
                client, code, "the message was refused when it was processed", nonce=request.nonce
            )
            return False
        return True

    async def _history(self, client: Client, request: RequestHistory) -> None:
        session = client.session
        assert session is not None
        if request.channel_id not in session.channels:
            self.send_error(
                client, "UNKNOWN_CHANNEL", "no such channel visible to you", nonce=request.nonce
            )
            return
        refusal = self.control.history_refusal(session, request.channel_id)
        if refusal is not None:  # READ_MESSAGE_HISTORY
            self.send_error(client, refusal.code, refusal.message, nonce=request.nonce)
            return
        try:
            page = await read_page(
                self.hot,
                self.history_source,
                request.channel_id,
                before=request.before,
                after=request.after,
                around=request.around,
                limit=request.limit,
                on_read=gateway_metrics.page_read,
            )
        except (*TRANSIENT, StorageUnavailable):
            self.send_error(
                client,
                "UNAVAILABLE",
                "history is unavailable",
                nonce=request.nonce,
                retry_after=1.0,
            )
            return
        body = ",".join(payload for _, payload in page)
        d = f'{{"channel_id":"{request.channel_id}","nonce":{dumps(request.nonce)},"messages":[{body}]}}'
        # An answer, not an event: never kept for RESUME (a page can be ~1.5 MB at the maximum).
        self.send(client, session.dispatch("HISTORY", d, replay=False))
