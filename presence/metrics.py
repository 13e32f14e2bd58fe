"""The presence service's Prometheus metrics (names and meaning in docs/metrics.md): batches
applied, and the coalescer's counters read at scrape time. The registry, the endpoint and the
shared stage histogram are the core's (``chatscale.metrics``).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, ParamSpec, Protocol

from prometheus_client import REGISTRY, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from chatscale.metrics import Watched


class Watchable(Protocol):
    """What the collector reads of the presence service at scrape time: its coalescer's
    ``CoalescerStats``."""

    coalescer: Any


P = ParamSpec("P")

PRESENCE_BATCHES = Counter(
    "chatscale_presence_batches_total", "Gateway presence batches the presence service applied."
)


def presence_step(
    fn: Callable[P, Awaitable[int]],
) -> Callable[P, Awaitable[int]]:
    """Decorate ``PresenceService.step``: count the gateway batches it applied. (Not timed:
    a step blocks for up to a tick waiting for input; its publish and save stages are.)"""

    @functools.wraps(fn)
    async def inner(*args: P.args, **kwargs: P.kwargs) -> int:
        n = await fn(*args, **kwargs)
        PRESENCE_BATCHES.inc(n)
        return n

    return inner


class _PresenceCollector(Watched):
    def collect(self) -> Iterator[Any]:
        stats = [s.coalescer.stats for s in self.alive()]
        for field, help_text in (
            ("changes_in", "Visible status changes submitted, per (change, guild) pair."),
            ("updates_out", "Per-guild PRESENCE_UPDATEs emitted."),
            ("deliveries_out", "Recipients reached by those updates (the real fan-out cost)."),
            ("raw_deliveries", "What raw broadcast would have cost for the same changes."),
            ("net_zero", "Per-user entries dropped because the user flapped back in the window."),
        ):
            yield CounterMetricFamily(
                f"chatscale_presence_{field}",
                help_text,
                value=sum(getattr(s, field) for s in stats),
            )
        changes = sum(s.changes_in for s in stats)
        yield GaugeMetricFamily(
            "chatscale_presence_amplification",
            "Deliveries per visible status change since start (raw broadcast: about the online "
            "members per guild; coalesced: far less).",
            value=sum(s.deliveries_out for s in stats) / changes if changes else 0.0,
        )


_PRESENCE = _PresenceCollector()
REGISTRY.register(_PRESENCE)


def watch_presence(service: Watchable) -> None:
    _PRESENCE.objects.add(service)
