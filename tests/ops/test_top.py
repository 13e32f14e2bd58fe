"""``chatscale top``: the arithmetic and the screen, on data; then one collect() against a
real Valkey and in-process services (no metrics endpoints: the Redis half still shows)."""

from __future__ import annotations

import math

from ops import top
from ops.top import Scrape, Snapshot, quantile, render, window
from tests.conftest import Stack


def hist(name: str, labels: str, counts: dict[float, int]) -> str:
    """Exposition text of one cumulative histogram."""
    lines = []
    for le, n in counts.items():
        bound = "+Inf" if math.isinf(le) else repr(le)
        lines.append(f'{name}_bucket{{{labels},le="{bound}"}} {n}')
    lines.append(f"{name}_count{{{labels}}} {max(counts.values())}")
    lines.append(f"{name}_sum{{{labels}}} 1.0")
    return "\n".join(lines)


def gateway_text(frames_in: int, delivered: int, publish: dict[float, int], closes: int) -> str:
    return "\n".join(
        [
            "# TYPE chatscale_gateway_connections gauge",
            "chatscale_gateway_connections 12",
            "# TYPE chatscale_gateway_sessions gauge",
            "chatscale_gateway_sessions 13",
            "# TYPE chatscale_gateway_frames_in_total counter",
            f"chatscale_gateway_frames_in_total {frames_in}",
            "# TYPE chatscale_gateway_frames_out_total counter",
            f"chatscale_gateway_frames_out_total {frames_in * 10}",
            "# TYPE chatscale_gateway_deliveries_total counter",
            f'chatscale_gateway_deliveries_total{{type="MESSAGE_CREATE"}} {delivered}',
            "# TYPE chatscale_gateway_closes_total counter",
            f'chatscale_gateway_closes_total{{code="4010",name="SLOW_CONSUMER",by="server"}} {closes}',
            "# TYPE chatscale_stage_seconds histogram",
            hist("chatscale_stage_seconds", 'stage="gateway_publish"', publish),
            "# TYPE chatscale_message_age_seconds histogram",
            hist(
                "chatscale_message_age_seconds",
                'hop="delivered"',
                {0.005: delivered // 2, 0.01: delivered, math.inf: delivered},
            ),
        ]
    )


def snapshot(at: float, *, frames_in: int, processed: int, publish: dict[float, int], closes: int):
    text = gateway_text(frames_in, processed * 2, publish, closes)
    return Snapshot(
        at=at,
        wall=1_700_000_000 + at,
        redis_url="redis://valkey:6379/0",
        prefix="cs",
        gateways={
            "gw-0": {"url": "ws://localhost:8765", "alive": True},
            "gw-1": {"url": "ws://localhost:8766", "alive": False},
        },
        workers={
            "worker-a": {"shards": [0, 2], "processed": processed, "rejected": 1},
            "worker-b": {"shards": [1, 3], "processed": 0, "rejected": 0},
        },
        presence={
            "changes_in": 100 + at,
            "updates_out": 10,
            "deliveries_out": 400,
            "raw_deliveries": 4000,
            "amplification": 4.0,
        },
        online_users=42,
        queues=[
            ("cs:ingest:0", "workers", {"length": 120, "lag": 7, "pending": 3}),
            ("cs:presence:in", "presence", {"length": 4, "lag": 0, "pending": 0}),
        ],
        dead_letters=2,
        scrapes={
            "gw-0": Scrape("gateway", "gw-0", "http://a:9100/metrics", top.parse(text)),
            "gw-1": Scrape("gateway", "gw-1", "http://b:9100/metrics", error="refused"),
        },
    )


def test_quantile_is_prometheus_histogram_quantile():
    assert quantile(0.99, {}) is None
    assert quantile(0.99, {0.01: 0, math.inf: 0}) is None
    # linear inside the bucket: rank 75 of 100 lies halfway through (0.01, 0.02]
    assert quantile(0.75, {0.01: 50, 0.02: 100, math.inf: 100}) == 0.015
    # ranks in the +Inf bucket report the highest finite bound
    assert quantile(0.99, {0.01: 50, 0.02: 60, math.inf: 100}) == 0.02
    assert quantile(0.5, {0.001: 100, math.inf: 100}) == 0.0005


def test_window_subtracts_the_previous_scrape_unless_a_counter_was_reset():
    prev = {0.01: 10.0, math.inf: 12.0}
    assert window({0.01: 15.0, math.inf: 20.0}, prev) == {0.01: 5.0, math.inf: 8.0}
    assert window({0.01: 1.0, math.inf: 1.0}, prev) == {0.01: 1.0, math.inf: 1.0}  # restarted
    assert window({0.01: 1.0}, None) == {0.01: 1.0}


def test_render_shows_rates_p99_lag_and_what_is_missing():
    prev = snapshot(0.0, frames_in=100, processed=1000, publish={0.001: 10, math.inf: 10}, closes=1)
    cur = snapshot(
        2.0,
        frames_in=300,
        processed=1100,
        publish={0.001: 10, 0.0025: 99, 0.005: 110, math.inf: 110},
        closes=3,
    )
    screen = render(cur, prev, interval=2.0)
    lines = screen.splitlines()
    gw0 = next(line for line in lines if line.startswith("gw-0 "))
    cells = gw0.split()
    assert cells[1:3] == ["12", "13"]  # connections, sessions
    assert cells[3] == "100.0"  # frames in: (300 - 100) / 2 s
    assert cells[4] == "1,000.0"  # frames out
    assert cells[5] == "100.0"  # MESSAGE_CREATE deliveries: (2200 - 2000) / 2 s
    # publish p99 over the window: 100 new observations, rank 99 in (0.001, 0.0025]
    assert "2.5 ms" in gw0
    assert gw0.rstrip().endswith("4010x2")  # closes in the window, by code
    assert any(line.startswith("gw-1 (down)") for line in lines)
    worker = next(line for line in lines if line.startswith("worker-a"))
    assert worker.split()[1:3] == ["0,2", "50.0"]  # shards, (1100 - 1000) / 2 s
    ingest = next(line for line in lines if line.startswith("cs:ingest:0"))
    assert ingest.split()[1:] == ["workers", "120", "7", "3"]
    assert next(line for line in lines if line.startswith("cs:dead")).split()[2] == "2"
    presence = lines[lines.index("PRESENCE") + 2].split()
    assert presence[0] == "42" and presence[1] == "1.0" and presence[5] == "4.0"
    assert "MESSAGE AGE p99 since gateway receipt" in screen
    assert "unreachable /metrics: gw-1" in screen


def test_render_without_a_previous_sample_or_any_endpoint():
    cur = snapshot(0.0, frames_in=1, processed=1, publish={0.001: 1, math.inf: 1}, closes=0)
    cur.scrapes = {}
    cur.presence = None
    screen = render(cur)
    assert "first sample: rates need two" in screen
    assert "no /metrics endpoints registered" in screen
    assert "no presence stats in Redis" in screen
    gw0 = next(line for line in screen.splitlines() if line.startswith("gw-0 "))
    assert set(gw0.split()[1:]) == {"-"}


async def test_collect_reads_gateways_workers_and_queues_from_redis(stack: Stack):
    alice = await stack.client("alice", gateway=0)
    await alice.send_message(stack.channels["general"], "counted")
    await stack.drain()  # burst mode writes the worker's health key
    snap = await top.collect(stack.settings)
    assert sorted(snap.gateways) == ["gw-0", "gw-1"]
    assert all(info["alive"] for info in snap.gateways.values())
    assert snap.workers["w-test"]["processed"] == 1
    shard = stack.channels["general"] % stack.settings.ingest_shards
    queues = {stream: q for stream, _, q in snap.queues}
    assert queues[stack.worker.keys.ingest(shard)]["pending"] == 0
    assert queues[stack.worker.keys.ingest(shard)]["lag"] == 0
    assert snap.scrapes == {}
    screen = render(snap)
    assert "w-test" in screen and "gw-1" in screen
