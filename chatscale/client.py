"""A small client of the gateway protocol, used by the demo, ``chatscale trace`` and tests.

It is written only from ``docs/protocol.md``'s rules: HELLO, IDENTIFY, READY, heartbeats at the
interval HELLO gives, MESSAGE_ACK matched by nonce, RESUME with the last seen sequence.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from chatscale import backoff
from chatscale.closecodes import CATALOGUE, Close
from chatscale.wire import Op, dumps

_nonces = itertools.count(1)


class GatewayError(Exception):
    def __init__(self, d: dict[str, Any]) -> None:
        super().__init__(f"{d.get('code')}: {d.get('message')}")
        self.d = d


class Refused(Exception):
    """The connection closed before READY; ``retry_after`` from the ERROR before the close."""

    def __init__(self, code: int | None, retry_after: float | None, reason: str = "") -> None:
        super().__init__(f"closed {code} before READY ({reason or 'no reason'})")
        self.code = code
        self.retry_after = retry_after


class ChatClient:
    def __init__(self, ws: ClientConnection, *, heartbeat: bool = True) -> None:
        self.ws = ws
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.seq = 0
        self.session_id = ""
        self.resume_url = ""
        self.ready: dict[str, Any] = {}
        self.heartbeat_interval = 0.0
        self._waiters: dict[Any, asyncio.Future[dict[str, Any]]] = {}
        self._chunks: dict[Any, list[dict[str, Any]]] = {}  # GUILD_MEMBERS_CHUNKs by nonce
        self._heartbeat = heartbeat
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.last_error: dict[str, Any] | None = None  # the last ERROR without a request nonce

    # ---- connecting -------------------------------------------------------------------------

    @classmethod
    async def open(
        cls, url: str, *, heartbeat: bool = True, max_size: int | None = 1 << 22
    ) -> ChatClient:
        ws = await connect(
            url, compression=None, max_size=max_size, ping_interval=None, open_timeout=10
        )
        client = cls(ws, heartbeat=heartbeat)
        hello = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        client.heartbeat_interval = hello["d"]["heartbeat_interval"] / 1000
        client._start(client._reader())
        if heartbeat:
            client._start(client._beat())
        return client

    @classmethod
    async def identify(
        cls,
        url: str,
        token: str,
        *,
        device: str = "desktop",
        intents: int | None = None,
        **kw: Any,
    ) -> ChatClient:
        """``intents``: the event groups to receive (``wire.Intent`` bits); None = all."""
        client = await cls.open(url, **kw)
        d: dict[str, Any] = {"token": token, "device": device}
        if intents is not None:
            d["intents"] = intents
        await client.send_op(Op.IDENTIFY, d)
        ready = await client._until_ready()
        client.ready = ready["d"]
        client.session_id = ready["d"]["session_id"]
        client.resume_url = ready["d"]["resume_gateway_url"]
        return client

    @classmethod
    async def identify_with_backoff(
        cls,
        url: str,
        token: str,
        *,
        attempts: int = 8,
        jitter: bool = True,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        **kw: Any,
    ) -> ChatClient:
        """IDENTIFY, and on a refusal or failed attempt wait and try again (``chatscale.backoff``:
        a server's ``retry_after`` is honoured, else jittered exponential backoff); a terminal
        close (4004) or the last attempt's failure is raised."""
        for attempt in range(1, attempts + 1):
            try:
                return await cls.identify(url, token, **kw)
            except Refused as exc:
                terminal = exc.code in CATALOGUE and not CATALOGUE[Close(exc.code)].resumable
                if terminal or attempt == attempts:  # 4004: the token is refused for good
                    raise
                wait = backoff.delay(attempt, exc.retry_after, jitter=jitter, rand=rand)
            except (OSError, TimeoutError, ConnectionClosed):
                if attempt == attempts:
                    raise
                wait = backoff.delay(attempt, jitter=jitter, rand=rand)
            await sleep(wait)
        raise AssertionError("unreachable")

    async def _until_ready(self, timeout: float = 10) -> dict[str, Any]:
        """READY, or ``Refused`` if the connection closes first (e.g. 4017 GATEWAY_BUSY)."""
        async with asyncio.timeout(timeout):
            while True:
                if not self.events.empty():
                    msg = self.events.get_nowait()
                    if msg.get("t") == "READY":
                        return msg
                    continue
                if self.closed.is_set():
                    retry = (self.last_error or {}).get("retry_after")
                    reason = self.ws.close_reason or ""
                    raise Refused(self.close_code, float(retry) if retry else None, reason)
                getter = asyncio.ensure_future(self.events.get())
                closing = asyncio.ensure_future(self.closed.wait())
                done, pending = await asyncio.wait(
                    {getter, closing}, return_when=asyncio.FIRST_COMPLETED
                )
                for fut in pending:
                    fut.cancel()
                if getter in done:
                    msg = getter.result()
                    if msg.get("t") == "READY":
                        return msg

    async def resume(self, token: str) -> ChatClient:
        """Open a new connection and RESUME this session from the last sequence seen."""
        other = await ChatClient.open(self.resume_url, heartbeat=self._heartbeat)
        other.seq, other.session_id, other.resume_url, other.ready = (
            self.seq,
            self.session_id,
            self.resume_url,
            self.ready,
        )
        await other.send_op(
            Op.RESUME, {"token": token, "session_id": self.session_id, "seq": self.seq}
        )
        return other

    def _start(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _beat(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await asyncio.sleep(self.heartbeat_interval)
                await self.send_op(Op.HEARTBEAT, self.seq)

    async def _reader(self) -> None:
        try:
            async for raw in self.ws:
                received_ns = time.time_ns()
                msg = orjson.loads(raw)
                if msg.get("op") == Op.DISPATCH:
                    self.seq = msg["s"]
                    if "trace" in msg:
                        msg["trace"].append(["client_receive", received_ns])
                    key = (msg["t"], msg["d"].get("nonce")) if isinstance(msg["d"], dict) else None
                    if key in self._waiters and msg["t"] == "GUILD_MEMBERS_CHUNK":
                        self._chunk(key, msg["d"])
                        continue
                    if key in self._waiters and msg["t"] in (
                        "MESSAGE_ACK",
                        "HISTORY",
                        "DISCOVERY",
                        "SEARCH_RESULTS",
                        "MESSAGE_DELETE_ACK",
                    ):
                        self._waiters.pop(key).set_result(msg)
                        continue
                elif msg.get("op") == Op.ERROR and ("ERR", msg["d"].get("nonce")) in self._waiters:
                    self._waiters.pop(("ERR", msg["d"]["nonce"])).set_exception(
                        GatewayError(msg["d"])
                    )
                    continue
                if msg.get("op") == Op.ERROR and isinstance(msg.get("d"), dict):
                    self.last_error = msg["d"]
                await self.events.put(msg)
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code
            self.closed.set()
            for key, fut in self._waiters.items():
                if fut.done():
                    continue
                if key[0] == "ERR":  # one failure per request, on its error future
                    fut.set_exception(ConnectionError(f"closed with {self.close_code}"))
                else:
                    fut.cancel()

    # ---- requests ----------------------------------------------------------------------------

    async def send_op(self, op: Op, d: Any) -> None:
        await self.ws.send(dumps({"op": int(op), "d": d}))

    async def _request(
        self, op: Op, d: dict[str, Any], reply: str, timeout: float
    ) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        ok, err = loop.create_future(), loop.create_future()
        self._waiters[(reply, d["nonce"])] = ok
        self._waiters[("ERR", d["nonce"])] = err
        try:
            await self.send_op(op, d)
            done, _ = await asyncio.wait(
                {ok, err}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                raise TimeoutError(f"no {reply} within {timeout}s")
            return done.pop().result()
        finally:
            self._waiters.pop((reply, d["nonce"]), None)
            self._waiters.pop(("ERR", d["nonce"]), None)
            for fut in (ok, err):  # whichever did not win is settled here, never left dangling
                if fut.done() and not fut.cancelled():
                    fut.exception()
                else:
                    fut.cancel()

    async def send_message(
        self,
        channel_id: int | str,
        content: str,
        *,
        nonce: str | None = None,
        trace: bool = False,
        timeout: float = 10,
    ) -> dict[str, Any]:
        """Send and wait for MESSAGE_ACK (the message is queued durably); returns its ``d``."""
        d = {
            "channel_id": str(channel_id),
            "content": content,
            "nonce": nonce or f"n{next(_nonces)}",
        }
        if trace:
            d["trace"] = True
        return (await self._request(Op.SEND_MESSAGE, d, "MESSAGE_ACK", timeout))["d"]

    async def history(
        self,
        channel_id: int | str,
        *,
        before: int | str | None = None,
        limit: int = 50,
        timeout: float = 10,
        after: int | str | None = None,
        around: int | str | None = None,
    ) -> list[dict[str, Any]]:
        d: dict[str, Any] = {
            "channel_id": str(channel_id),
            "limit": limit,
            "nonce": f"h{next(_nonces)}",
        }
        for name, value in (("before", before), ("after", after), ("around", around)):
            if value is not None:
                d[name] = str(value)
        return (await self._request(Op.REQUEST_HISTORY, d, "HISTORY", timeout))["d"]["messages"]

    async def discover(
        self, kind: str, *, timeout: float = 10, **fields: Any
    ) -> list[dict[str, Any]]:
        """DISCOVER (list, search, top, suggest); returns the DISCOVERY's ``guilds``."""
        d: dict[str, Any] = {"kind": kind, "nonce": f"d{next(_nonces)}", **fields}
        return (await self._request(Op.DISCOVER, d, "DISCOVERY", timeout))["d"]["guilds"]

    async def request_members(
        self,
        guild_id: int | str,
        *,
        query: str | None = None,
        user_ids: list[int | str] | None = None,
        limit: int = 100,
        presences: bool = False,
        timeout: float = 10,
    ) -> list[dict[str, Any]]:
        """REQUEST_GUILD_MEMBERS (op 8): every GUILD_MEMBERS_CHUNK ``d`` of the answer, in
        order (give ``query``, a username prefix, or ``user_ids``; default: query "")."""
        d: dict[str, Any] = {"guild_id": str(guild_id), "nonce": f"m{next(_nonces)}"}
        if user_ids is not None:
            d["user_ids"] = [str(u) for u in user_ids]
        else:
            d["query"], d["limit"] = query or "", limit
        if presences:
            d["presences"] = True
        answer = await self._request(Op.REQUEST_GUILD_MEMBERS, d, "GUILD_MEMBERS_CHUNK", timeout)
        return answer["chunks"]

    async def subscribe(self, guild_id: int | str, user_ids: list[int | str]) -> None:
        """GUILD_SUBSCRIPTIONS (op 14): in a large guild, hear the presence of these members
        only (at most 100; replaces the previous list; ``[]`` stops)."""
        d = {"guild_id": str(guild_id), "user_ids": [str(u) for u in user_ids]}
        await self.send_op(Op.GUILD_SUBSCRIPTIONS, d)

    def _chunk(self, key: Any, d: dict[str, Any]) -> None:
        got = self._chunks.setdefault(key, [])
        got.append(d)
        if len(got) >= d["chunk_count"]:
            del self._chunks[key]
            self._waiters.pop(key).set_result(
                {"chunks": sorted(got, key=lambda c: c["chunk_index"])}
            )

    async def search(self, *, timeout: float = 10, **fields: Any) -> list[dict[str, Any]]:
        """SEARCH (op 25): ``content``, ``author_id``, ``channel_id``, ``guild_id``, ``before``,
        ``after``, ``limit``; the SEARCH_RESULTS messages, newest first."""
        d: dict[str, Any] = {"nonce": f"s{next(_nonces)}"}
        for name, value in fields.items():
            if value is not None:
                d[name] = (
                    str(value) if name.endswith("_id") or name in ("before", "after") else value
                )
        return (await self._request(Op.SEARCH, d, "SEARCH_RESULTS", timeout))["d"]["messages"]

    async def delete_message(
        self, channel_id: int | str, message_id: int | str, *, timeout: float = 10
    ) -> dict[str, Any]:
        """DELETE_MESSAGE (op 26): wait for MESSAGE_DELETE_ACK (the deletion is queued; every
        viewer, this session too, then gets MESSAGE_DELETE); raises GatewayError if refused."""
        d = {
            "channel_id": str(channel_id),
            "message_id": str(message_id),
            "nonce": f"x{next(_nonces)}",
        }
        return (await self._request(Op.DELETE_MESSAGE, d, "MESSAGE_DELETE_ACK", timeout))["d"]

    async def next_event(self, t: str | None = None, *, timeout: float = 10) -> dict[str, Any]:
        """The next dispatch (of type ``t`` if given, skipping others); raises TimeoutError."""
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.events.get()
                if t is None or msg.get("t") == t:
                    return msg

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.ws.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)
