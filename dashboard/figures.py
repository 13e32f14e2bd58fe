"""What the topology view shows, from two ``ops.top`` snapshots (pure: the tests feed it).

The same sources as ``chatscale top`` — Redis for the queues, workers and presence, each
process's /metrics for connections, rates and latencies — turned into one JSON document the
page draws: rates over the interval between the snapshots, p99s in milliseconds.
"""

from __future__ import annotations

import re
from typing import Any

from ops.top import Samples, Snapshot, buckets, merge, quantile, rate, total, window

#: The samples the page shows; ``parse`` skips every other line of a /metrics page.
SHOWN = frozenset(
    {
        "chatscale_gateway_connections",
        "chatscale_gateway_sessions",
        "chatscale_gateway_frames_in_total",
        "chatscale_gateway_frames_out_total",
        "chatscale_gateway_deliveries_total",
        "chatscale_stage_seconds_bucket",
        "chatscale_message_age_seconds_bucket",
        "chatscale_worker_history_backlog",
    }
)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> Samples:
    """The shown samples of a Prometheus text page, as ``ops.top.parse`` returns them — several
    times cheaper than the full parser, which matters once a second while a page is open."""
    samples: Samples = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        brace = line.find("{")
        space = line.find(" ")
        name = line[: brace if 0 <= brace < space else space]
        if name not in SHOWN:
            continue
        labels: dict[str, str] = {}
        if 0 <= brace < space:
            end = line.rfind("}")
            labels = {k: v.replace('\\"', '"') for k, v in _LABEL.findall(line[brace + 1 : end])}
            value = line[end + 1 :].split()[0]
        else:
            value = line[space + 1 :].split()[0]
        samples.setdefault(name, []).append((labels, float(value)))
    return samples


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def _r(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def figures(
    cur: Snapshot,
    prev: Snapshot | None,
    scraped: Snapshot | None = None,
    scraped_prev: Snapshot | None = None,
) -> dict[str, Any]:
    """``cur``/``prev``: the Redis figures (queues, workers, presence, gateways registered) and
    their rates. ``scraped``/``scraped_prev``: the snapshots whose /metrics scrapes give the
    per-process figures (connections, frames, deliveries, p99s, message ages) — by default
    ``cur``/``prev``; the dashboard scrapes less often than it reads Redis, so it passes its
    last two scrapes, and their rates and p99s are over the interval between those."""
    dt = cur.at - prev.at if prev else 0.0
    if scraped is None:
        scraped, scraped_prev = cur, prev
    sdt = scraped.at - scraped_prev.at if scraped_prev else 0.0

    def scrape_of(name: str) -> tuple[Samples | None, Samples | None]:
        s = scraped.scrapes.get(name)
        p = scraped_prev.scrapes.get(name) if scraped_prev else None
        return (s.samples if s and not s.error else None), (
            p.samples if p and not p.error else None
        )

    def p99(name: str, metric: str, **match: str) -> float | None:
        s, p = scrape_of(name)
        if s is None:
            return None
        return _ms(quantile(0.99, window(buckets(s, metric, **match), buckets(p, metric, **match))))

    def per_s(name: str, metric: str, **match: str) -> float | None:
        s, p = scrape_of(name)
        return _r(rate(total(s, metric, **match), total(p, metric, **match), sdt))

    gateways = []
    for gw_id, info in sorted(cur.gateways.items()):
        s, _ = scrape_of(gw_id)
        gateways.append(
            {
                "id": gw_id,
                "url": info.get("url", ""),
                "alive": bool(info.get("alive", True)),
                "connections": total(s, "chatscale_gateway_connections"),
                "sessions": total(s, "chatscale_gateway_sessions"),
                "frames_in_s": per_s(gw_id, "chatscale_gateway_frames_in_total"),
                "frames_out_s": per_s(gw_id, "chatscale_gateway_frames_out_total"),
                "deliveries_s": per_s(
                    gw_id, "chatscale_gateway_deliveries_total", type="MESSAGE_CREATE"
                ),
                "publish_p99_ms": p99(gw_id, "chatscale_stage_seconds", stage="gateway_publish"),
                "deliver_p99_ms": p99(gw_id, "chatscale_message_age_seconds", hop="delivered"),
            }
        )
    workers = []
    for consumer, health in sorted(cur.workers.items()):
        before = prev.workers.get(consumer) if prev else None
        s, _ = scrape_of(consumer)
        workers.append(
            {
                "id": consumer,
                "shards": list(health.get("shards", [])),
                "messages_s": _r(
                    rate(health.get("processed"), (before or {}).get("processed"), dt)
                ),
                "rejected": health.get("rejected"),
                "dead_lettered": health.get("dead_lettered"),
                "backlog": total(s, "chatscale_worker_history_backlog"),
                "hot_p99_ms": p99(consumer, "chatscale_stage_seconds", stage="hot_write"),
                "history_p99_ms": p99(consumer, "chatscale_stage_seconds", stage="history_write"),
                "fanout_p99_ms": p99(consumer, "chatscale_stage_seconds", stage="fanout"),
            }
        )
    presence = None
    if cur.presence is not None:
        st, before = cur.presence, (prev.presence if prev and prev.presence else {})
        name = next((n for n, sc in scraped.scrapes.items() if sc.role == "presence"), "")
        presence = {
            "online_users": cur.online_users,
            "changes_s": _r(rate(st.get("changes_in"), before.get("changes_in"), dt)),
            "deliveries_s": _r(rate(st.get("deliveries_out"), before.get("deliveries_out"), dt)),
            "raw_deliveries_s": _r(
                rate(st.get("raw_deliveries"), before.get("raw_deliveries"), dt)
            ),
            "amplification": _r(st.get("amplification")),
            "publish_p99_ms": p99(name, "chatscale_stage_seconds", stage="presence_publish"),
        }
    ages = {}
    for hop in ("worker_read", "worker_done", "delivered"):
        cur_h = merge(
            buckets(s.samples, "chatscale_message_age_seconds", hop=hop)
            for s in scraped.scrapes.values()
            if not s.error
        )
        prev_h = (
            merge(
                buckets(s.samples, "chatscale_message_age_seconds", hop=hop)
                for s in scraped_prev.scrapes.values()
                if not s.error
            )
            if scraped_prev
            else None
        )
        ages[hop] = _ms(quantile(0.99, window(cur_h, prev_h)))
    return {
        "at": cur.wall,
        "interval_s": round(dt, 3),
        "gateways": gateways,
        "workers": workers,
        "queues": [{"stream": stream, "group": group, **q} for stream, group, q in cur.queues],
        "dead_letters": cur.dead_letters,
        "presence": presence,
        "message_age_p99_ms": ages,
        "unreachable": sorted(n for n, s in scraped.scrapes.items() if s.error),
        # when the per-process figures were scraped, and the window of their rates and p99s
        "metrics_at": scraped.wall,
        "metrics_interval_s": round(sdt, 3),
    }
