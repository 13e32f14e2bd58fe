"""Prometheus metrics: what one message moves, close codes, queue gauges, the HTTP endpoint.

In-process services (the ``stack`` fixture) share the process's default registry, so these
tests compare scrapes before and after instead of expecting absolute values. Real processes
serving /metrics over HTTP are covered by tests/ops/test_compose_run.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, generate_latest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from chatscale import metrics
from chatscale.config import Settings
from chatscale.keys import INGEST_GROUP, Keys
from chatscale.redisconn import connect
from ops.top import Samples, parse, total
from presence import metrics as presence_metrics
from presence.coalesce import Coalescer, CoalescerStats
from tests.conftest import Stack


def scrape() -> Samples:
    return parse(generate_latest(REGISTRY).decode())


def delta(before: Samples, after: Samples, metric: str, /, **labels: str) -> float:
    return (total(after, metric, **labels) or 0.0) - (total(before, metric, **labels) or 0.0)


async def test_one_message_moves_every_stage_and_hop(stack: Stack):
    alice = await stack.client("alice", gateway=0)
    bob = await stack.client("bob", gateway=1)
    before = scrape()
    assert (total(before, "chatscale_gateway_connections") or 0) >= 2
    ack = await alice.send_message(stack.channels["general"], "measured")
    await stack.drain()
    got = await bob.next_event("MESSAGE_CREATE")
    assert got["d"]["id"] == ack["id"]
    await alice.next_event("MESSAGE_CREATE")
    after = scrape()

    assert delta(before, after, "chatscale_gateway_frames_in_total") >= 1
    assert delta(before, after, "chatscale_gateway_frames_out_total") >= 3  # ack + 2 dispatches
    assert delta(before, after, "chatscale_stage_seconds_count", stage="gateway_publish") == 1
    for stage in ("authorize", "hot_write", "history_write", "fanout", "ack"):
        assert delta(before, after, "chatscale_stage_seconds_count", stage=stage) >= 1, stage
    for hop in ("worker_read", "worker_done"):
        assert delta(before, after, "chatscale_message_age_seconds_count", hop=hop) == 1, hop
    assert delta(before, after, "chatscale_message_age_seconds_count", hop="delivered") == 2
    assert delta(before, after, "chatscale_gateway_deliveries_total", type="MESSAGE_CREATE") == 2
    assert delta(before, after, "chatscale_worker_entries_read_total") == 1
    assert delta(before, after, "chatscale_worker_messages_total", outcome="processed") == 1
    assert delta(before, after, "chatscale_worker_gateway_writes_total") == 2  # one per gateway
    # the age of a message when delivered is at least its age when the worker read it
    assert delta(before, after, "chatscale_message_age_seconds_sum", hop="delivered") >= 0


async def test_error_replies_and_close_codes_are_counted(stack: Stack):
    alice = await stack.client("alice")
    before = scrape()
    with pytest.raises(Exception, match="UNKNOWN_CHANNEL"):
        await alice.send_message(123, "nowhere")
    url = stack.gateways[0].url
    async with ws_connect(url) as ws:
        await ws.recv()  # HELLO
        await ws.send("this is not json")
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 4002
    for _ in range(200):  # the server's handler finishes just after the closing handshake
        after = scrape()
        if delta(before, after, "chatscale_gateway_closes_total", code="4002"):
            break
        await asyncio.sleep(0.01)
    assert (
        delta(before, after, "chatscale_gateway_error_replies_total", code="UNKNOWN_CHANNEL") == 1
    )
    assert delta(
        before, after, "chatscale_gateway_closes_total", code="4002", name="DECODE_ERROR", by="server"
    ) == 1  # fmt: skip


async def test_queue_collector_reports_length_lag_and_pending(settings: Settings):
    keys = Keys(settings.key_prefix)
    redis = connect(settings)
    stream = keys.ingest(0)
    try:
        await redis.xgroup_create(stream, INGEST_GROUP, id="0", mkstream=True)
        for i in range(3):
            await redis.xadd(stream, {"e": str(i)})
        await redis.xreadgroup(INGEST_GROUP, "c1", {stream: ">"}, count=1)  # read, not acked
        await redis.xadd(keys.dead_letter(), {"reason": "test"})
    finally:
        await redis.aclose()
    collector = metrics.QueueCollector(settings)
    families = {f.name: f for f in await asyncio.to_thread(lambda: list(collector.collect()))}
    collector.redis.close()

    def value(name: str, **labels: str) -> float:
        return next(
            s.value
            for s in families[name].samples
            if all(s.labels.get(k) == v for k, v in labels.items())
        )

    assert value("chatscale_stream_length", stream=stream) == 3
    assert value("chatscale_stream_lag", stream=stream, group=INGEST_GROUP) == 2
    assert value("chatscale_stream_pending", stream=stream, group=INGEST_GROUP) == 1
    assert value("chatscale_stream_length", stream=keys.dead_letter()) == 1
    assert value("chatscale_stream_lag", stream=keys.ingest(1), group=INGEST_GROUP) == 0
    assert value("chatscale_stream_scrape_errors") == 0


class _Presence:
    """What the collector reads of a PresenceService: its coalescer's counters."""

    def __init__(self, stats: CoalescerStats) -> None:
        self.coalescer = Coalescer()
        self.coalescer.stats = stats


def test_presence_amplification_is_read_from_the_coalescer():
    collector = presence_metrics._PresenceCollector()
    service = _Presence(
        CoalescerStats(changes_in=10, updates_out=2, deliveries_out=30, raw_deliveries=300)
    )
    collector.objects.add(service)
    samples = {s.name: s.value for f in collector.collect() for s in f.samples}
    assert samples["chatscale_presence_changes_in_total"] == 10
    assert samples["chatscale_presence_deliveries_out_total"] == 30
    assert samples["chatscale_presence_raw_deliveries_total"] == 300
    assert samples["chatscale_presence_amplification"] == 3.0


async def test_timed_counts_failures_apart_from_durations():
    @metrics.timed("test_stage")
    async def stage(fail: bool) -> int:
        if fail:
            raise ValueError("boom")
        return 7

    before = scrape()
    assert await stage(False) == 7
    with pytest.raises(ValueError):
        await stage(True)
    after = scrape()
    assert delta(before, after, "chatscale_stage_seconds_count", stage="test_stage") == 1
    assert delta(before, after, "chatscale_stage_failures_total", stage="test_stage") == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_serve_exposes_http_and_registers_for_top(settings: Settings):
    assert metrics.serve(settings, role="worker", name="off") is None  # port 0: off
    port = _free_port()
    on = settings.model_copy(update={"metrics_port": port})
    exporter = metrics.serve(on, role="worker", name="w-http")
    assert exporter is not None
    redis = connect(settings)
    key = Keys(settings.key_prefix).metrics_endpoint("w-http")
    try:
        for _ in range(500):  # the registration thread writes at once
            raw = await redis.get(key)
            if raw:
                break
            await asyncio.sleep(0.01)
        registration = json.loads(raw)
        assert registration["role"] == "worker"
        assert registration["url"] == f"http://127.0.0.1:{port}/metrics"
        body = await asyncio.to_thread(
            lambda: urllib.request.urlopen(registration["url"], timeout=5).read().decode()
        )
        samples = parse(body)
        assert total(samples, "chatscale_service_info", role="worker", name="w-http") == 1
        assert total(samples, "chatscale_stream_lag") is not None  # workers export the queues
        assert total(samples, "process_resident_memory_bytes")  # the client's process metrics
        await asyncio.to_thread(exporter.close)
        assert await redis.get(key) is None  # deregistered on a clean stop
    finally:
        await redis.aclose()
        if metrics._queues is not None:  # keep later scrapes in this process off this prefix
            REGISTRY.unregister(metrics._queues)
            metrics._queues.redis.close()
            metrics._queues = None


def test_chatscale_run_gives_each_child_its_own_metrics_port():
    assert metrics.child_port(Settings(metrics_port=0), 3) == 0
    assert [metrics.child_port(Settings(metrics_port=9100), i) for i in range(3)] == [
        9100,
        9101,
        9102,
    ]


def _exposed_names(settings: Settings) -> set[str]:
    """Every chatscale_* name a process can expose, as written in queries and docs."""
    import gateway.server  # noqa: F401 - registers the stages their decorators name
    import presence.service  # noqa: F401
    import voice.relay  # noqa: F401 - the relay's collector
    import workers.pipeline  # noqa: F401

    queues = metrics.QueueCollector(settings)
    families = [*REGISTRY.collect(), *queues.collect()]
    queues.redis.close()
    suffix = {"counter": "_total", "info": "_info"}
    return {f.name + suffix.get(f.type, "") for f in families if f.name.startswith("chatscale_")}


def test_every_metric_is_documented_and_every_query_names_a_real_metric(settings: Settings):
    root = Path(__file__).resolve().parents[2]
    exposed = _exposed_names(settings)
    docs = (root / "docs" / "metrics.md").read_text()
    undocumented = {name for name in exposed if f"`{name}" not in docs}
    assert not undocumented, f"add to docs/metrics.md: {sorted(undocumented)}"
    referenced = {
        "docs/metrics.md": docs,
        "deploy/grafana/dashboards/chatscale.json": (
            root / "deploy" / "grafana" / "dashboards" / "chatscale.json"
        ).read_text(),
        "ops/top.py": (root / "ops" / "top.py").read_text(),
    }
    for where, text in referenced.items():
        for name in set(re.findall(r"\bchatscale_[a-z_*]*[a-z*]", text)) - {"chatscale_*"}:
            if name.endswith("_*"):  # a family of names, e.g. chatscale_stream_*
                assert any(e.startswith(name[:-1]) for e in exposed), f"{where}: {name}"
                continue
            base = re.sub(r"_(bucket|count|sum)$", "", name)
            assert base in exposed or name in exposed, f"{where} names unknown metric {name}"
    dashboard = json.loads(referenced["deploy/grafana/dashboards/chatscale.json"])
    assert all(
        t["datasource"]["uid"] == "prometheus" for p in dashboard["panels"] for t in p["targets"]
    )
