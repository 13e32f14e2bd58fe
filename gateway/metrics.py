"""The gateway's Prometheus metrics (names and meaning in docs/metrics.md).

Hooks in the hot path are one counter increment each; connection and session counts are read
from the live ``Gateway`` objects at scrape time. The registry, the endpoint and the shared
stage/age histograms are the core's (``chatscale.metrics``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sized
from typing import Any, Protocol

from prometheus_client import REGISTRY, Counter
from prometheus_client.core import GaugeMetricFamily

from chatscale.closecodes import Close
from chatscale.metrics import AGE, STAGE, Watched, age_s


class Counted(Protocol):
    """What the collector reads of a gateway (``gateway.server.Gateway``) at scrape time."""

    clients: Sized
    sessions: Sized


FRAMES_IN = Counter("chatscale_gateway_frames_in_total", "WebSocket frames received from clients.")
FRAMES_OUT = Counter(
    "chatscale_gateway_frames_out_total", "WebSocket frames queued to clients (all ops)."
)
DELIVERIES = Counter(
    "chatscale_gateway_deliveries_total",
    "Delivery-stream entries dispatched to local sessions, by event type, counted once per "
    "recipient session.",
    ["type"],
)
CLOSES = Counter(
    "chatscale_gateway_closes_total",
    "Closed WebSocket connections by close code and by who closed first.",
    ["code", "name", "by"],
)
ERRORS = Counter(
    "chatscale_gateway_error_replies_total",
    "ERROR replies sent to clients (the connection stays open), by code.",
    ["code"],
)
PAGE_READS = Counter(
    "chatscale_gateway_page_reads_total",
    "Reads made to answer REQUEST_HISTORY, by source (hot: the Redis hot cache; history: "
    "history storage). A page the hot cache fills is one hot read; one it cannot (or, with "
    "hot_size=0, every page) also reads history.",
    ["source"],
)
PAGE_ROWS = Counter(
    "chatscale_gateway_page_rows_total",
    "Messages those reads returned, by source.",
    ["source"],
)
ADMISSION = Counter(
    "chatscale_gateway_identify_admission_total",
    "IDENTIFYs by admission verdict: run (a slot was free), queue (waited for one), refuse "
    "(ERROR GATEWAY_BUSY with retry_after, close 4017). STORM_MITIGATIONS=on only.",
    ["verdict"],
)
SHED = Counter(
    "chatscale_gateway_shed_total",
    "Dispatches a degraded gateway did not send (presence and typing only, never messages), "
    "by event type, counted once per recipient session.",
    ["type"],
)
_CLOSE_NAMES = {int(c): c.name for c in Close} | {
    1000: "NORMAL",
    1001: "GOING_AWAY",
    1006: "ABNORMAL",
    1011: "INTERNAL_ERROR",
}


def delivered(delivery: Any, recipients: int) -> None:
    """One delivery-stream entry dispatched to ``recipients`` local sessions."""
    DELIVERIES.labels(delivery.t).inc(recipients)
    if delivery.t == "MESSAGE_CREATE":
        # The payload is built by wire.message_payload and starts with {"id":"<snowflake>".
        payload = delivery.payload
        end = payload.find('"', 7)
        if payload.startswith('{"id":"') and end > 7:
            AGE.labels("delivered").observe(age_s(int(payload[7:end]), time.time() * 1000))


def page_read(source: str, rows: int, seconds: float) -> None:
    """One read made for a history page (``storage.paging.read_page``'s hook); its time goes to
    ``chatscale_stage_seconds{stage="page_hot"|"page_history"}``."""
    PAGE_READS.labels(source).inc()
    PAGE_ROWS.labels(source).inc(rows)
    STAGE.labels(f"page_{source}").observe(seconds)


def admission(verdict: str) -> None:
    ADMISSION.labels(verdict).inc()


def shed(t: str, recipients: int) -> None:
    SHED.labels(t).inc(recipients)


def frame_in() -> None:
    FRAMES_IN.inc()


def frame_out(frames: int = 1) -> None:
    FRAMES_OUT.inc(frames)


def error_reply(code: str) -> None:
    ERRORS.labels(code).inc()


def connection_closed(ws: Any) -> None:
    """Count a finished connection by its close code (1006: no close frame at all)."""
    protocol = getattr(ws, "protocol", None)
    code = getattr(ws, "close_code", None)
    if code is None:
        return
    by = "client" if getattr(protocol, "close_rcvd_then_sent", None) else "server"
    name = _CLOSE_NAMES.get(code, "OTHER")
    CLOSES.labels(str(code) if name != "OTHER" else "other", name, by).inc()


class _GatewayCollector(Watched):
    def collect(self) -> Iterator[Any]:
        gateways = self.alive()
        yield GaugeMetricFamily(
            "chatscale_gateway_connections",
            "Open WebSocket connections.",
            value=sum(len(g.clients) for g in gateways),
        )
        yield GaugeMetricFamily(
            "chatscale_gateway_sessions",
            "Identified sessions, attached or detached but still resumable.",
            value=sum(len(g.sessions) for g in gateways),
        )
        storms = [g.storm for g in gateways if getattr(g, "storm", None) is not None]
        yield GaugeMetricFamily(
            "chatscale_gateway_degraded",
            "1 while a gateway sheds presence and typing (degrade mode), else 0.",
            value=sum(1 for s in storms if s.degrade.active),
        )
        yield GaugeMetricFamily(
            "chatscale_gateway_loop_lag_seconds",
            "How late the gateway's 100 ms event-loop probe last woke (the worst gateway).",
            value=max((s.lag_s for s in storms), default=0.0),
        )
        yield GaugeMetricFamily(
            "chatscale_gateway_identify_queue",
            "IDENTIFYs waiting for an admission slot.",
            value=sum(len(s.admission.waiting) for s in storms),
        )


_GATEWAYS = _GatewayCollector()
REGISTRY.register(_GATEWAYS)


def watch_gateway(gateway: Counted) -> None:
    _GATEWAYS.objects.add(gateway)
