"""The worker's Prometheus metrics (names and meaning in docs/metrics.md): the pipeline's own
counters (``Stats``), read at scrape time, and the entries read. The registry, the endpoint and
the shared stage/age histograms are the core's (``chatscale.metrics``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from prometheus_client import REGISTRY, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from chatscale.metrics import Watched, messages_at


class Watchable(Protocol):
    """What the collector reads of a worker (``workers.worker.Worker``) at scrape time: the
    pipeline's ``Stats``, the history backlog and the leases held."""

    stats: Any
    history_backlog: int
    leases: Any


WORKER_READ = Counter(
    "chatscale_worker_entries_read_total", "Ingest entries a worker decoded and started on."
)


def entries_read(messages: Iterable[Any]) -> None:
    """Ingest entries decoded and started on: their age at ``worker_read``, and the count."""
    WORKER_READ.inc(messages_at("worker_read", messages))


class _WorkerCollector(Watched):
    def collect(self) -> Iterator[Any]:
        workers = self.alive()
        outcomes = CounterMetricFamily(
            "chatscale_worker_messages",
            "Messages a worker finished, by outcome (processed: stored and fanned out; "
            "rejected: failed authorization; dead_lettered: moved to the dead-letter stream).",
            labels=["outcome"],
        )
        for outcome in ("processed", "rejected", "dead_lettered"):
            outcomes.add_metric([outcome], sum(getattr(w.stats, outcome) for w in workers))
        yield outcomes
        yield CounterMetricFamily(
            "chatscale_worker_gateway_writes",
            "Delivery-stream entries written by fan-out (one per message per gateway).",
            value=sum(w.stats.gateway_writes for w in workers),
        )
        yield CounterMetricFamily(
            "chatscale_worker_inbox_writes",
            "Per-user inbox entries written (fanout_mode=inbox only: one per member per message).",
            value=sum(w.stats.inbox_writes for w in workers),
        )
        yield CounterMetricFamily(
            "chatscale_worker_fanout_skipped",
            "Redelivered messages whose fan-out had already happened (the marker was set).",
            value=sum(w.stats.fanout_skipped for w in workers),
        )
        yield GaugeMetricFamily(
            "chatscale_worker_history_backlog",
            "Messages fanned out but not yet stored in history (so not acked).",
            value=sum(w.history_backlog for w in workers),
        )
        yield GaugeMetricFamily(
            "chatscale_worker_shards_owned",
            "Ingest shards this worker holds the lease of (ordering=shard).",
            value=sum(len(w.leases.owned) for w in workers),
        )


_WORKERS = _WorkerCollector()
REGISTRY.register(_WORKERS)


def watch_worker(worker: Watchable) -> None:
    _WORKERS.objects.add(worker)


# ---- the moderation stage and the spam-bot detector (docs/safety.md) ---------------------------

MODERATION_VERDICTS = Counter(
    "chatscale_moderation_verdicts",
    "Moderation verdicts by mode (shadow: counted, never acted on; enforce) and action.",
    ["mode", "action"],
)
MODERATION_FAILURES = Counter(
    "chatscale_moderation_failures",
    "Batches the classifier failed (error) or overran its budget (timeout), by fail mode.",
    ["kind", "fail"],
)
MODERATION_SECONDS = Counter(
    "chatscale_moderation_seconds",
    "Wall time spent in the moderation stage (rules read, scoring); divided by "
    "chatscale_moderation_messages it is the cost per message.",
)
MODERATION_MESSAGES = Counter(
    "chatscale_moderation_messages", "Messages the moderation stage scored (or tried to)."
)


def moderation_verdict(mode: str, action: str) -> None:
    MODERATION_VERDICTS.labels(mode, action).inc()


def moderation_failed(kind: str, fail: str) -> None:
    MODERATION_FAILURES.labels(kind, fail).inc()


def moderation_cost(seconds: float, messages: int) -> None:
    MODERATION_SECONDS.inc(seconds)
    MODERATION_MESSAGES.inc(messages)
