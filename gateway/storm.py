"""The gateway's herd mitigations wired to sockets, timers and Redis (``CHATSCALE_STORM_MITIGATIONS``).

The decisions are ``gateway.admission``'s (pure); this module holds what they need at run time:

- **Admission**: ``admit`` runs, queues or refuses an IDENTIFY; a refusal is ERROR
  ``GATEWAY_BUSY`` with ``retry_after`` then close 4017 (docs/protocol.md). ``finish`` hands the
  slot to the next queued IDENTIFY. A queued IDENTIFY waits at most ``identify_queue_wait_s``.
- **Transient failures of an IDENTIFY** (a Redis or store call that timed out, the budget
  spent): with mitigations on, answered like a refusal (4017 with ``retry_after``) — under load
  the gateway's own timeouts are not an outage; off, today's 4000 UNKNOWN_ERROR.
- **Degrade mode**: a 100 ms timer measures event-loop lag; the delivery reader reports the age
  of each batch it reads. Above ``degrade_lag_ms`` / ``degrade_backlog_ms`` the local fan-out
  sheds PRESENCE_UPDATE and TYPING_START (``chatscale_gateway_shed_total``), never messages.
- **Liveness off the loop**: workers write a gateway's deliveries only while its liveness key
  exists. Renewed from the event loop, a loop starved of CPU for ``ALIVE_TTL_S`` let the key
  expire, workers skipped the gateway and it had to drop every session (4000, "missed
  deliveries"). A thread now renews it (SET XX, never re-creating a fenced key) as long as the
  loop made progress within ``STALL_LIMIT_S``; a slow gateway keeps receiving its deliveries in
  its stream and catches up from it, in order. A fence by the control plane still deletes the
  key and still drops sessions (a change it did not confirm must not be delivered around).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from typing import Any

import redis
from websockets.protocol import State as WsState

from chatscale.closecodes import Close
from chatscale.redisconn import connect_sync
from gateway import metrics as gateway_metrics
from gateway.admission import Admission, Degrade
from gateway.host import Client

log = logging.getLogger("chatscale.gateway.storm")

LAG_EVERY_S = 0.1  # the loop-lag probe's period
LOG_EVERY_S = 5.0  # admission and degrade figures logged at most this often (when they moved)
STALL_LIMIT_S = 60.0  # a loop silent this long is hung, not slow: the liveness key may expire


class StormGuard:
    """One gateway's admission, degrade mode and off-loop liveness."""

    def __init__(self, gw: Any) -> None:
        self.gw = gw
        s = gw.settings
        self.on = s.storm_mitigations == "on"
        self.budget_s: float | None = s.identify_budget_s if self.on else None
        self.queue_wait_s = s.identify_queue_wait_s
        self.admission = Admission(
            s.identify_concurrency,
            s.identify_queue,
            clock=time.monotonic,
            max_wait_s=s.identify_queue_wait_s,
        )
        self.degrade = Degrade(
            lag_s=s.degrade_lag_ms / 1000,
            age_s=s.degrade_backlog_ms / 1000,
            hold_s=s.degrade_hold_s,
            clock=time.monotonic,
            enabled=self.on,
        )
        self.lag_s = 0.0
        self.beat = time.monotonic()  # the loop's last sign of life (read by the thread)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- lifecycle ------------------------------------------------------------------------

    def start(self, alive_key: str, ttl_s: int, every_s: float) -> None:
        if not self.on:
            return
        self.gw.fanout.shed = self.sheds
        self.gw.fanout.observe_age = self.degrade.observe_age
        self.gw._spawn(self._lag_probe())
        self._thread = threading.Thread(
            target=self._renew, args=(alive_key, ttl_s, every_s), name="liveness", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Tell the renewal thread to end (never waits: it may be inside a Redis call that only
        its socket timeout ends; it is a daemon thread and closes its own client)."""
        self._stop.set()

    def _renew(self, key: str, ttl_s: int, every_s: float) -> None:
        s = self.gw.settings
        client = connect_sync(str(s.redis_url), timeout_s=s.redis_timeout_s)
        try:
            while not self._stop.wait(every_s):
                if time.monotonic() - self.beat > STALL_LIMIT_S:
                    continue  # hung, not slow: let the key expire and workers skip us
                with contextlib.suppress(redis.RedisError, OSError):
                    client.set(key, b"1", ex=ttl_s, xx=True)  # never re-creates a fenced key
        finally:
            client.close()

    async def _lag_probe(self) -> None:
        loop = asyncio.get_running_loop()
        said, worst = (0, 0, 0), 0.0
        next_log = loop.time() + LOG_EVERY_S
        while not self.gw.stopping:
            before = loop.time()
            await asyncio.sleep(LAG_EVERY_S)
            self.beat = time.monotonic()
            self.lag_s = max(0.0, loop.time() - before - LAG_EVERY_S)
            worst = max(worst, self.lag_s)
            self.degrade.observe_lag(self.lag_s)
            if loop.time() >= next_log:  # what a herd did, in the log, only when it happened
                a = self.admission
                now = (a.admitted, a.queued, a.refused)
                if now != said or self.degrade.active:
                    log.info(
                        "admission: %d admitted, %d queued, %d refused so far; %d running, "
                        "%d waiting, IDENTIFY ~%.3f s; loop lag max %.3f s; degraded %s, shed %s",
                        *now,
                        a.running,
                        len(a.waiting),
                        a.cost_s,
                        worst,
                        self.degrade.active,
                        self.degrade.shed,
                    )
                said, worst = now, 0.0
                next_log = loop.time() + LOG_EVERY_S

    # ---- admission --------------------------------------------------------------------------

    async def admit(self, client: Client) -> float | None:
        """Wait for an IDENTIFY slot; the start time to pass to ``finish``, or None if the
        client was refused (answered 4017 with ``retry_after``) or left while queued."""
        ticket: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        verdict = self.admission.offer(ticket)
        gateway_metrics.admission(verdict.kind)
        if verdict.kind == "refuse":
            self.busy(client, "too many IDENTIFYs at once", verdict.retry_after)
            return None
        if verdict.kind == "queue":
            try:
                async with asyncio.timeout(self.queue_wait_s):
                    await asyncio.shield(ticket)
            except TimeoutError:
                if self.admission.withdraw(ticket):
                    self.busy(client, "IDENTIFY queue too slow", self.admission.retry_after())
                    return None
                # the slot was handed over as the wait ended: it is ours
            except asyncio.CancelledError:  # the handler was cancelled: never leak the slot
                if not self.admission.withdraw(ticket):
                    self.finish(None)
                raise
        if client.closing or client.ws.protocol.state is not WsState.OPEN:
            self.finish(None)  # gone while queued (gave up): the slot passes on at once
            return None
        return time.monotonic()

    def finish(self, started: float | None, *, served: bool = True) -> None:
        """Hand the slot to the next queued IDENTIFY still waiting (skipping any gone);
        ``served``: it ended in READY (only then is its duration a cost sample)."""
        nxt = self.admission.finish(started, served=served)
        while nxt is not None:
            if isinstance(nxt, asyncio.Future) and not nxt.done():
                nxt.set_result(None)
                return
            nxt = self.admission.finish(None)

    def busy(self, client: Client, why: str, retry_after: float) -> None:
        """ERROR GATEWAY_BUSY with ``retry_after``, then close 4017 (docs/protocol.md)."""
        self.gw.send_error(
            client, "GATEWAY_BUSY", f"{why}; IDENTIFY again later", retry_after=retry_after
        )
        self.gw.close_client(client, Close.GATEWAY_BUSY, f"{why}; retry after {retry_after:g} s")

    def unavailable(self, client: Client, what: str) -> None:
        """An IDENTIFY's Redis/store call failed or timed out: busy (on) or 4000 (off)."""
        if self.on:
            self.busy(client, f"{what} (timed out under load)", self.admission.retry_after())
        else:
            self.gw.close_client(client, Close.UNKNOWN_ERROR, what)

    # ---- degrade mode -----------------------------------------------------------------------

    def sheds(self, t: str, recipients: int) -> bool:
        if len(self.gw.sessions) < self.gw.settings.degrade_min_sessions:
            return False
        if self.degrade.sheds(t, recipients):
            gateway_metrics.shed(t, recipients)
            return True
        return False
