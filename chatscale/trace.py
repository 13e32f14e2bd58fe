"""Hop-by-hop timing of one message.

A traced message carries a list of ``(hop, wall-clock ns)`` stamps in its stream envelopes
(never in the stored payload, so tracing does not change what is persisted). Every service runs
on the same host in the embedded topology, so wall clocks agree; across machines the deltas are
only as good as clock sync, which the timeline says.
"""

from __future__ import annotations

import time

HOPS = (
    "gateway_receive",
    "gateway_publish",
    "worker_read",
    "worker_checks",
    "hot_write",
    "history_write",
    "fanout",
    "gateway_deliver",
    "client_receive",
)


def stamp(trace: list[tuple[str, int]] | None, hop: str) -> None:
    if trace is not None:
        trace.append((hop, time.time_ns()))


def format_timeline(trace: list[tuple[str, int]]) -> str:
    """A table of hops with the time since the first hop and since the previous one."""
    if not trace:
        return "(no trace)"
    start = trace[0][1]
    prev = start
    lines = [f"{'hop':<18}{'t (ms)':>10}{'delta (ms)':>12}"]
    for hop, ns in trace:
        lines.append(f"{hop:<18}{(ns - start) / 1e6:>10.3f}{(ns - prev) / 1e6:>12.3f}")
        prev = ns
    lines.append(f"{'total':<18}{(trace[-1][1] - start) / 1e6:>10.3f}")
    return "\n".join(lines)
