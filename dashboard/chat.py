"""The small built-in chat the dashboard runs, and its delivery ledger.

Two seeded users of the demo community (carol and dave, on different gateways) post in one
channel at a steady, rate-limit-friendly pace. Every acknowledged message goes into a
``loadtest.accounting.DeliveryLedger`` with both users as its audience, every MESSAGE_CREATE
either of them receives is a receipt, and acknowledged messages are looked up in history
storage — so a fault from the page is followed by an exact "acknowledged / delivered / stored /
lost / duplicated". A client whose gateway dies IDENTIFYs on a live one and reloads the
channel's history, as a real client does: what it finds there counts as *recovered* (delivered,
not lost). Messages younger than ``grace_s`` are in flight, not judged.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from chatscale import tokens
from chatscale.client import ChatClient, GatewayError
from chatscale.config import Settings
from loadtest.accounting import DeliveryLedger, StoredCheck, content_key
from storage import open_store

USERS = ("carol", "dave")
CHANNEL = ("interview-prep", "system-design")


def _cancelled() -> bool:
    """Whether this task itself is being cancelled (not a waiter the client cancelled)."""
    task = asyncio.current_task()
    return bool(task and task.cancelling())


class BuiltInChat:
    def __init__(
        self,
        settings: Settings,
        gateways: Callable[[], list[str]],
        *,
        period_s: float = 1.2,  # per user: under the default 5 messages per 5 s
        grace_s: float = 5.0,
    ) -> None:
        self.settings = settings
        self.gateways = gateways  # live gateway URLs, looked up at each (re)connect
        self.period_s = period_s
        self.grace_s = grace_s
        self.ledger = DeliveryLedger()
        self.counters: Counter[str] = Counter()
        self.acked: dict[tuple[int, int], str] = {}
        self.stored: set[tuple[int, int]] = set()
        self.stored_ids: dict[str, set[tuple[int, int]]] = {}
        self.channel_id = 0
        self.guild_id = 0
        self.running = False
        self._users: dict[str, int] = {}
        self._clients: dict[str, ChatClient] = {}
        self._seen: dict[str, set[str]] = {u: set() for u in USERS}
        self._recovered: dict[str, set[str]] = {u: set() for u in USERS}
        self._tasks: list[asyncio.Task[None]] = []
        self._seq = itertools.count(1)
        self._run_id = f"{int(time.time()) % 100000:05d}"

    # ---- life cycle ------------------------------------------------------------------------

    async def setup(self) -> None:
        s = self.settings
        store = await open_store(s.storage_url, bucket_span_ms=s.bucket_span_ms)
        try:
            for name in USERS:
                user = await store.find_user(name)
                if user is None:
                    raise LookupError(f"the demo community has no user {name!r}")
                self._users[name] = user.id
            guild = next(iter(await store.find_guilds(CHANNEL[0])), None)
            if guild is None:
                raise LookupError(f"no guild {CHANNEL[0]!r}")
            self.guild_id = guild.id
            channel = next(
                (c for c in await store.guild_channels(guild.id) if c.name == CHANNEL[1]), None
            )
            if channel is None:
                raise LookupError(f"no channel #{CHANNEL[1]}")
            self.channel_id = channel.id
        finally:
            await store.close()

    def start(self) -> None:
        if self.running:
            return
        self.running = True
        for i, name in enumerate(USERS):
            self._tasks.append(asyncio.create_task(self._user(name, i)))
        self._tasks.append(asyncio.create_task(self._check_history()))

    async def stop(self) -> None:
        self.running = False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for client in self._clients.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 5)
        self._clients.clear()

    # ---- one user: connect, send, receive, reconnect ---------------------------------------

    def _token(self, name: str) -> str:
        return tokens.mint(
            self._users[name], secret=self.settings.token_secret, ttl_s=3600, now=time.time()
        )

    async def _connect(self, name: str, index: int) -> ChatClient:
        while True:
            urls = self.gateways()
            if urls:
                url = urls[index % len(urls)]
                try:
                    client = await ChatClient.identify(url, self._token(name))
                    client.url = url  # type: ignore[attr-defined]
                    return client
                except Exception:  # noqa: BLE001 - a dead or refusing gateway: try again
                    self.counters["connect_failures"] += 1
            await asyncio.sleep(0.5)

    async def _user(self, name: str, index: int) -> None:
        first = True
        while self.running:
            client = await self._connect(name, index)
            self._clients[name] = client
            if not first:
                self.counters["reconnects"] += 1
                await self._recover(name, client)
            first = False
            reader = asyncio.create_task(self._receive(name, client))
            try:
                while not client.closed.is_set():
                    await self._send(name, client)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(client.closed.wait(), self.period_s)
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.close(), 5)

    async def _send(self, name: str, client: ChatClient) -> None:
        key = f"d{self._run_id}-{name}-{next(self._seq)}"
        deadline = time.monotonic() + 30
        while True:
            try:
                ack = await client.send_message(
                    self.channel_id, f"{key} hello from the dashboard", nonce=key, timeout=10
                )
            except GatewayError as exc:
                code, message = exc.d.get("code"), str(exc.d.get("message", ""))
                if code == "UNAVAILABLE" and time.monotonic() < deadline:
                    self.counters["unavailable_retries"] += 1  # same nonce: idempotent
                    await asyncio.sleep(float(exc.d.get("retry_after") or 1.0))
                    continue
                kind = "slowmode" if "slowmode" in message else str(code).lower()
                self.counters[f"refused_{kind}"] += 1
                return
            except (TimeoutError, ConnectionError, asyncio.CancelledError) as exc:
                if isinstance(exc, asyncio.CancelledError) and _cancelled():
                    raise
                # the socket closed under the send (the client cancels its waiter): maybe
                # queued, maybe not — history will say
                self.counters["unacknowledged"] += 1
                return
            except Exception:  # noqa: BLE001 - the socket died under the send
                self.counters["unacknowledged"] += 1
                return
            self.ledger.record_send(
                key, channel_id=self.channel_id, sender=name, sent_at=time.time(), recipients=USERS
            )
            self.acked[(self.channel_id, int(ack["id"]))] = key
            self.counters["sent"] += 1
            return

    async def _receive(self, name: str, client: ChatClient) -> None:
        while True:
            msg = await client.events.get()
            if msg.get("t") != "MESSAGE_CREATE":
                continue
            key = content_key(msg["d"].get("content"))
            if key and key.startswith("d"):
                if key in self._recovered[name]:
                    # found in history at the reconnect, then delivered live too (it was in
                    # flight): a client dedupes this by id, it is not a duplicate delivery
                    self._recovered[name].discard(key)
                    self.counters["recovered_then_live"] += 1
                    continue
                self._seen[name].add(key)
                self.ledger.record_receipt(name, key, time.time())

    async def _recover(self, name: str, client: ChatClient) -> None:
        """After a reconnect: what the channel's history holds that this client missed."""
        with contextlib.suppress(Exception):
            for m in await client.history(self.channel_id, limit=100):
                key = content_key(m.get("content"))
                if key and key.startswith(f"d{self._run_id}") and key not in self._seen[name]:
                    self._seen[name].add(key)
                    self._recovered[name].add(key)
                    self.ledger.record_receipt(name, key, time.time())
                    self.counters["recovered"] += 1

    # ---- is every acknowledged message in history? -----------------------------------------

    async def _check_history(self) -> None:
        s = self.settings
        store = await open_store(s.storage_url, bucket_span_ms=s.bucket_span_ms)
        try:
            while True:
                await asyncio.sleep(2.0)
                todo = {w: k for w, k in self.acked.items() if w not in self.stored}
                if not todo:
                    continue
                check = StoredCheck(todo)
                floor = min(mid for _, mid in todo)
                before = None
                with contextlib.suppress(Exception):  # a paused store: look again later
                    while True:
                        page = await store.page(self.channel_id, before=before, limit=200)
                        for m in page:
                            check.see(self.channel_id, m.message_id, m.payload)
                        if len(page) < 200 or page[-1].message_id < floor:
                            break
                        before = page[-1].message_id
                self.stored |= check.found
                for key, where in check.ids.items():
                    self.stored_ids.setdefault(key, set()).update(where)
        finally:
            await store.close()

    # ---- the figures -----------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        now = time.time()
        report = self.ledger.report(now - self.grace_s, max_examples=3)
        return {
            "running": self.running,
            "users": list(USERS),
            "channel": f"#{CHANNEL[1]}",
            "connected": {
                n: getattr(c, "url", "") for n, c in self._clients.items() if not c.closed.is_set()
            },
            "judged_until": report.grace_deadline,
            "acknowledged": self.ledger.sent_count,
            "judged": report.sent,
            "expected": report.expected,
            "delivered": report.delivered,
            "lost": report.lost,
            "duplicated": report.duplicated,
            "reordered": report.reordered,
            "in_flight": report.in_flight_sent,
            "stored": len(self.stored),
            "stored_twice": sum(1 for ids in self.stored_ids.values() if len(ids) > 1),
            "not_yet_stored": len(self.acked) - len(self.stored),
            "refused_slowmode": self.counters["refused_slowmode"],
            "refused_other": sum(
                v
                for k, v in self.counters.items()
                if k.startswith("refused_") and k != "refused_slowmode"
            ),
            "unavailable_retries": self.counters["unavailable_retries"],
            "unacknowledged": self.counters["unacknowledged"],
            "reconnects": self.counters["reconnects"],
            "recovered": self.counters["recovered"],
            "examples": {k: v for k, v in report.examples.items() if v},
        }
