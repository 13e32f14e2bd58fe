"""``chatscale top``: a live terminal view of a running topology, for a mock interview.

Two sources, read every interval:

- **Redis**, which is authoritative for the queues and works without any metrics endpoint:
  registered gateways (and whether their liveness key is still there), each worker's health
  key (its shards and counters), the presence service's amplification counters, and XINFO
  GROUPS of every ingest shard and the presence stream (length, lag, pending).
- **Each process's /metrics**, found through the registrations ``chatscale.metrics.serve``
  renews in Redis (so only when ``CHATSCALE_METRICS_PORT`` is set): connections, frames in
  and out, deliveries, close codes, and the latency histograms.

Rates and p99s are over the last interval (the difference of two scrapes, as Prometheus's
``rate`` and ``histogram_quantile`` would compute them); the first frame shows what is known
without a previous one. Collecting does I/O; ``render`` is a pure function of two snapshots,
which is what the tests exercise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from chatscale.config import Settings
from chatscale.keys import INGEST_GROUP, PRESENCE_GROUP, Keys
from chatscale.redisconn import connect

Labels = dict[str, str]
Samples = dict[str, list[tuple[Labels, float]]]  # sample name -> [(labels, value)]

CLEAR = "\x1b[H\x1b[2J"


@dataclass
class Scrape:
    role: str
    name: str
    url: str
    samples: Samples = field(default_factory=dict)
    error: str = ""


@dataclass
class Snapshot:
    at: float  # monotonic seconds
    wall: float
    redis_url: str = ""
    prefix: str = "cs"
    gateways: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> {url, alive}
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)  # consumer -> health
    presence: dict[str, Any] | None = None  # the presence service's stats JSON
    online_users: int = 0
    queues: list[tuple[str, str, dict[str, int]]] = field(default_factory=list)
    dead_letters: int = 0
    scrapes: dict[str, Scrape] = field(default_factory=dict)  # process name -> scrape


# ---- parsing and arithmetic (pure) ----------------------------------------------------------


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return samples


def total(samples: Samples | None, name: str, /, **match: str) -> float | None:
    """Sum of the samples of ``name`` whose labels include ``match``; None if there are none."""
    if not samples or name not in samples:
        return None
    values = [v for labels, v in samples[name] if all(labels.get(k) == x for k, x in match.items())]
    return sum(values) if values else None


def buckets(samples: Samples | None, name: str, /, **match: str) -> dict[float, float]:
    """Cumulative histogram buckets (upper bound -> count) of ``name``, summed over matches."""
    out: dict[float, float] = {}
    for labels, value in (samples or {}).get(f"{name}_bucket", []):
        if all(labels.get(k) == x for k, x in match.items()):
            le = float(labels["le"])
            out[le] = out.get(le, 0.0) + value
    return out


def merge(parts: Iterable[dict[float, float]]) -> dict[float, float]:
    out: dict[float, float] = {}
    for part in parts:
        for le, count in part.items():
            out[le] = out.get(le, 0.0) + count
    return out


def window(cur: dict[float, float], prev: dict[float, float] | None) -> dict[float, float]:
    """What was observed between two scrapes (a counter that went down means a restart)."""
    if not prev:
        return cur
    delta = {le: cur[le] - prev.get(le, 0.0) for le in cur}
    return cur if any(v < 0 for v in delta.values()) else delta


def quantile(q: float, hist: dict[float, float]) -> float | None:
    """Prometheus's histogram_quantile: linear inside the bucket; None without observations."""
    if not hist:
        return None
    bounds = sorted(hist)
    count = hist[bounds[-1]]
    if count <= 0:
        return None
    rank = q * count
    lower, below = 0.0, 0.0
    for le in bounds:
        if hist[le] >= rank:
            if math.isinf(le):
                return lower  # the highest finite bound, as Prometheus does
            inside = hist[le] - below
            return lower + (le - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = le, hist[le]
    return lower


def rate(cur: float | None, prev: float | None, seconds: float) -> float | None:
    if cur is None or prev is None or seconds <= 0 or cur < prev:
        return None
    return (cur - prev) / seconds


# ---- rendering (pure) -----------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return f"{seconds * 1000:.1f} ms"


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    fmt = lambda cells: "  ".join(  # noqa: E731
        c.ljust(w) if i == 0 else c.rjust(w)
        for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )
    return [fmt(headers), *(fmt(r) for r in rows)]


def render(cur: Snapshot, prev: Snapshot | None = None, *, interval: float | None = None) -> str:
    """The whole screen for ``cur``; rates and p99s over the time since ``prev``."""
    dt = cur.at - prev.at if prev else 0.0
    lines = [
        f"chatscale top  {cur.redis_url}  prefix {cur.prefix}  "
        f"{time.strftime('%H:%M:%S', time.localtime(cur.wall))}"
        + (f"  every {interval:g} s (Ctrl-C quits)" if interval else ""),
        "rates and p99 over the last interval" if prev else "first sample: rates need two",
        "",
    ]

    def scrape_of(name: str) -> tuple[Samples | None, Samples | None]:
        s = cur.scrapes.get(name)
        p = prev.scrapes.get(name) if prev else None
        return (s.samples if s and not s.error else None), (
            p.samples if p and not p.error else None
        )

    def p99(name: str, metric: str, **match: str) -> str:
        s, p = scrape_of(name)
        if s is None:
            return "-"
        return _ms(quantile(0.99, window(buckets(s, metric, **match), buckets(p, metric, **match))))

    def per_s(name: str, metric: str, **match: str) -> str:
        s, p = scrape_of(name)
        return _num(rate(total(s, metric, **match), total(p, metric, **match), dt), 1)

    # -- gateways
    rows = []
    for gw_id, info in sorted(cur.gateways.items()):
        s, p = scrape_of(gw_id)
        closes = _closes(s, p)
        rows.append(
            [
                gw_id + ("" if info.get("alive", True) else " (down)"),
                _num(total(s, "chatscale_gateway_connections")),
                _num(total(s, "chatscale_gateway_sessions")),
                per_s(gw_id, "chatscale_gateway_frames_in_total"),
                per_s(gw_id, "chatscale_gateway_frames_out_total"),
                per_s(gw_id, "chatscale_gateway_deliveries_total", type="MESSAGE_CREATE"),
                p99(gw_id, "chatscale_stage_seconds", stage="gateway_publish"),
                p99(gw_id, "chatscale_message_age_seconds", hop="delivered"),
                closes,
            ]
        )
    lines.append(f"GATEWAYS ({len(cur.gateways)})")
    lines += _table(
        ["gateway", "conns", "sessions", "in/s", "out/s", "msg deliv/s", "publish p99",
         "recv->deliver p99", "closes by code"],
        rows,
    )  # fmt: skip

    # -- workers
    rows = []
    for consumer, health in sorted(cur.workers.items()):
        before = prev.workers.get(consumer) if prev else None
        s, _p = scrape_of(consumer)
        rows.append(
            [
                consumer,
                ",".join(str(x) for x in health.get("shards", [])) or "-",
                _num(rate(health.get("processed"), (before or {}).get("processed"), dt), 1),
                _num(health.get("rejected")),
                _num(health.get("dead_lettered")),
                _num(total(s, "chatscale_worker_history_backlog")),
                p99(consumer, "chatscale_stage_seconds", stage="hot_write"),
                p99(consumer, "chatscale_stage_seconds", stage="history_write"),
                p99(consumer, "chatscale_stage_seconds", stage="fanout"),
                p99(consumer, "chatscale_message_age_seconds", hop="worker_done"),
            ]
        )
    lines += ["", f"WORKERS ({len(cur.workers)})"]
    lines += _table(
        ["worker", "shards", "msg/s", "rejected", "dead", "backlog", "hot p99", "history p99",
         "fanout p99", "recv->done p99"],
        rows,
    )  # fmt: skip

    # -- queues
    rows = []
    for stream, group, q in cur.queues:
        rows.append([stream, group, _num(q["length"]), _num(q["lag"]), _num(q["pending"])])
    rows.append([f"{cur.prefix}:dead", "-", _num(cur.dead_letters), "-", "-"])
    lines += ["", "QUEUES (lag: not yet read by the group; pending: read, not acked)"]
    lines += _table(["stream", "group", "length", "lag", "pending"], rows)

    # -- presence
    lines += ["", "PRESENCE"]
    st = cur.presence
    if st is None:
        lines.append("no presence stats in Redis (is `chatscale presence` running?)")
    else:
        before = prev.presence if prev and prev.presence else None

        def pr(key: str) -> str:
            return _num(rate(st.get(key), (before or {}).get(key), dt), 1)

        presence_name = next((n for n, sc in cur.scrapes.items() if sc.role == "presence"), "")
        lines += _table(
            ["online users", "changes/s", "updates/s", "deliveries/s", "raw would be/s",
             "deliveries per change", "publish p99"],
            [[
                _num(cur.online_users), pr("changes_in"), pr("updates_out"), pr("deliveries_out"),
                pr("raw_deliveries"), _num(st.get("amplification"), 1),
                p99(presence_name, "chatscale_stage_seconds", stage="presence_publish"),
            ]],
        )  # fmt: skip

    # -- the whole path: message age at each hop, every process merged
    hops = []
    for hop in ("worker_read", "worker_done", "delivered"):
        cur_h = merge(buckets(s.samples, "chatscale_message_age_seconds", hop=hop)
                      for s in cur.scrapes.values() if not s.error)  # fmt: skip
        prev_h = (
            merge(
                buckets(s.samples, "chatscale_message_age_seconds", hop=hop)
                for s in prev.scrapes.values()
                if not s.error
            )  # fmt: skip
            if prev
            else None
        )
        hops.append(f"{hop} {_ms(quantile(0.99, window(cur_h, prev_h)))}")
    lines += ["", "MESSAGE AGE p99 since gateway receipt: " + " -> ".join(hops)]

    missing = [n for n, s in cur.scrapes.items() if s.error]
    if not cur.scrapes:
        lines.append(
            "no /metrics endpoints registered: start services with CHATSCALE_METRICS_PORT set "
            "for connections, rates and latencies (queues and workers above come from Redis)"
        )
    elif missing:
        lines.append("unreachable /metrics: " + ", ".join(sorted(missing)))
    return "\n".join(lines)


def _closes(cur: Samples | None, prev: Samples | None) -> str:
    """Connections closed in the window by code, e.g. ``4009x2 1000x5``."""
    if not cur:
        return "-"
    counts: dict[str, float] = {}
    before: dict[str, float] = {}
    for labels, value in cur.get("chatscale_gateway_closes_total", []):
        counts[labels["code"]] = counts.get(labels["code"], 0.0) + value
    for labels, value in (prev or {}).get("chatscale_gateway_closes_total", []):
        before[labels["code"]] = before.get(labels["code"], 0.0) + value
    parts = [
        f"{code}x{int(n - before.get(code, 0.0))}"
        for code, n in sorted(counts.items())
        if n - before.get(code, 0.0) > 0
    ]
    return " ".join(parts) or "-"


# ---- collecting (I/O) -----------------------------------------------------------------------


def _scrape(
    url: str, timeout: float, parse_text: Callable[[str], Samples] | None = None
) -> Samples:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - our own URLs
        return (parse_text or parse)(response.read().decode())


async def _scan(redis: Any, pattern: str) -> list[bytes]:
    # a large COUNT: one round trip per few thousand keys (1,000 clients leave ~10k keys)
    return [key async for key in redis.scan_iter(match=pattern, count=5000)]


async def collect(
    settings: Settings,
    *,
    timeout: float = 1.0,
    redis: Any = None,
    parse_text: Callable[[str], Samples] | None = None,
    scrape: bool = True,
    names: Iterable[str] = (),
) -> Snapshot:
    """One snapshot. A caller that collects every second (the dashboard) passes its own
    ``redis`` connection (kept open) and may pass a ``parse_text`` that keeps only the samples
    it shows. ``scrape`` False reads Redis only (no /metrics: ``scrapes`` stays empty);
    ``names`` asks each /metrics page for those samples only (prometheus_client's ``name[]``
    filter: the process renders only the families asked for)."""
    keys = Keys(settings.key_prefix)
    snap = Snapshot(
        at=time.monotonic(),
        wall=time.time(),
        redis_url=str(settings.redis_url),
        prefix=settings.key_prefix,
    )
    own = redis is None
    if own:
        redis = connect(settings)
    try:
        # Two round trips of pipelined reads (plus the SCANs), not one per key: the dashboard
        # does this every second.
        streams = [(s, INGEST_GROUP) for s in keys.ingest_all(settings.ingest_shards)]
        parts = settings.presence_partitions
        streams += [(s, PRESENCE_GROUP) for s in keys.presence_in_all(parts)]
        pipe = redis.pipeline(transaction=False)
        pipe.hgetall(keys.gateways())
        pipe.hlen(keys.presence_users())
        pipe.xlen(keys.dead_letter())
        for p in range(parts):
            pipe.get(keys.presence_stats_of(p))
        for stream, _group in streams:
            pipe.xinfo_groups(stream)
            pipe.xlen(stream)
        first = await pipe.execute(raise_on_error=False)
        registered, online, dead = first[:3]
        stats, first = first[3 : 3 + parts], first[3 + parts :]
        for i, (stream, group) in enumerate(streams):
            groups, length = first[2 * i], first[1 + 2 * i]
            snap.queues.append((stream, group, _queue_of(groups, length, group)))
        snap.presence = _summed([json.loads(s) for s in stats if isinstance(s, bytes | str) and s])
        snap.online_users = int(online) if isinstance(online, int) else 0
        snap.dead_letters = int(dead) if isinstance(dead, int) else 0
        health_keys = await _scan(redis, keys.worker_health("*"))
        endpoint_keys = await _scan(redis, keys.metrics_endpoint("*")) if scrape else []
        gateway_ids = [g.decode() for g in registered] if isinstance(registered, dict) else []
        pipe = redis.pipeline(transaction=False)
        for gw_id in gateway_ids:
            pipe.exists(keys.gateway_alive(gw_id))
        for key in [*health_keys, *endpoint_keys]:
            pipe.get(key)
        second = await pipe.execute(raise_on_error=False)
        for gw_id, alive in zip(gateway_ids, second, strict=False):
            info = json.loads(registered[gw_id.encode()])
            info["alive"] = alive is True or (isinstance(alive, int) and alive > 0)
            snap.gateways[gw_id] = info
        values = second[len(gateway_ids) :]
        head, tail = keys.worker_health("\0").split("\0")
        for key, raw in zip(health_keys, values[: len(health_keys)], strict=True):
            if isinstance(raw, bytes) and raw:
                snap.workers[key.decode()[len(head) : -len(tail)]] = json.loads(raw)
        endpoints = [
            json.loads(raw) for raw in values[len(health_keys) :] if isinstance(raw, bytes) and raw
        ]
    finally:
        if own:
            await redis.aclose()

    query = ("?" + urllib.parse.urlencode([("name[]", n) for n in sorted(names)])) if names else ""

    async def one(ep: dict[str, Any]) -> Scrape:
        got = Scrape(ep["role"], ep["name"], ep["url"])
        try:
            url = ep["url"] + query
            got.samples = await asyncio.to_thread(_scrape, url, timeout, parse_text)
        except Exception as exc:  # noqa: BLE001 - shown as unreachable, never fatal
            got.error = str(exc) or type(exc).__name__
        return got

    for got in await asyncio.gather(*(one(ep) for ep in endpoints)):
        snap.scrapes[got.name] = got
    return snap


def _queue_of(groups: Any, length: Any, group: str) -> dict[str, int]:
    """Length, lag and pending of ``group`` from XINFO GROUPS and XLEN answers (an error
    answer, as for a stream that does not exist yet, reads as an empty queue)."""
    if isinstance(groups, Exception) or not isinstance(length, int):
        return {"length": 0, "lag": 0, "pending": 0}
    for g in groups:
        name = g.get("name")
        if (name.decode() if isinstance(name, bytes) else name) == group:
            lag = g.get("lag")
            return {
                "length": length,
                "lag": int(lag) if lag is not None else length,
                "pending": int(g.get("pending", 0)),
            }
    return {"length": length, "lag": length, "pending": 0}


async def run(
    settings: Settings,
    *,
    interval: float = 2.0,
    once: bool = False,
    out: Callable[[str], Any] = sys.stdout.write,
) -> None:
    """Redraw every ``interval`` seconds until Ctrl-C; ``once`` prints one frame (two samples
    ``interval`` apart, so it has rates) without clearing the screen."""
    prev = await collect(settings)
    if once:
        await asyncio.sleep(interval)
        out(render(await collect(settings), prev) + "\n")
        return
    out(CLEAR + render(prev, None, interval=interval) + "\n")
    with contextlib.suppress(asyncio.CancelledError, KeyboardInterrupt):
        while True:
            await asyncio.sleep(interval)
            cur = await collect(settings)
            out(CLEAR + render(cur, prev, interval=interval) + "\n")
            sys.stdout.flush()
            prev = cur


def _summed(parts: list[dict]) -> dict | None:
    """The presence partitions' counters added up (one partition: its counters as they are)."""
    if len(parts) <= 1:
        return parts[0] if parts else None
    total: dict = {}
    for part in parts:
        for name, value in part.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                total[name] = total.get(name, 0) + value
            else:
                total.setdefault(name, value)
    return total
