"""The voice relay's Prometheus metrics (docs/metrics.md), read from the relay at scrape time:
sessions, admissions, what was forwarded and what was dropped, by reason."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from chatscale.metrics import Watched


class _RelayCollector(Watched):
    def collect(self) -> Iterator[Any]:
        relays = list(self.alive())
        yield GaugeMetricFamily(
            "chatscale_voice_sessions",
            "Relay sessions (authenticated clients) now.",
            value=sum(len(r.router.sessions) for r in relays),
        )
        yield CounterMetricFamily(
            "chatscale_voice_admitted",
            "Clients admitted (valid token, current grant) and reported to presence.",
            value=sum(r.admitted for r in relays),
        )
        yield CounterMetricFamily(
            "chatscale_voice_refused",
            "AUTH packets refused (bad token, or a grant replaced or removed).",
            value=sum(r.refused for r in relays),
        )
        yield CounterMetricFamily(
            "chatscale_voice_forwarded_packets",
            "Media copies sent (one packet to three listeners: three).",
            value=sum(r.router.counters.forwarded for r in relays),
        )
        dropped = CounterMetricFamily(
            "chatscale_voice_dropped_packets",
            "Packets not forwarded, by reason.",
            labels=["reason"],
        )
        for reason in ("not_speaking", "too_old", "unknown", "slow_receiver"):
            value = sum(getattr(r.router.counters, f"dropped_{reason}") for r in relays)
            dropped.add_metric([reason], value)
        yield dropped


_RELAY = _RelayCollector()
REGISTRY.register(_RELAY)


def watch_relay(relay: Any) -> None:
    _RELAY.objects.add(relay)
