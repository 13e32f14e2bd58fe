"""Latency percentiles that stay exact-enough over millions of samples and several processes.

Send→receive latencies go into an HdrHistogram (the `hdrhistogram` package) in whole
microseconds with 3 significant figures: every reported percentile is within 0.1% of a value
actually recorded, memory is fixed (~190 KB) whatever the sample count, and histograms from
several generator processes add exactly (`merge`, or `to_dict`/`from_dict` across a process
boundary). Averaging per-process percentiles would be wrong; adding histograms is not.

Coordinated omission: a fixed-rate scenario that stalls for 1 s sends nothing during the stall,
so it records one slow sample where real users, who keep arriving, would have seen about
rate × 1 s slow messages. `record(..., expected_interval=...)` lets hdrh back-fill them
(value, value - interval, value - 2·interval, … while above the interval), as wrk2 does.
`count` includes those synthetic samples; `measured` counts only real ones.

`TimeSeries` buckets the run (one second by default) for the "throughput over time" and
"latency over time" charts. Its per-bucket histograms use 2 significant figures (1%, ~26 KB,
made only for buckets that have samples): enough for a chart, small enough for a long run.
"""

from __future__ import annotations

import math
from typing import Any

from hdrh.histogram import HdrHistogram

_US = 1_000_000
_MAX_LATENCY_S = 3600.0
_PERCENTILES = {"p50_ms": 50.0, "p90_ms": 90.0, "p99_ms": 99.0, "p999_ms": 99.9}


def _histogram(significant_figures: int, max_latency_s: float = _MAX_LATENCY_S) -> HdrHistogram:
    return HdrHistogram(1, int(max_latency_s * _US), significant_figures)


def _encode(hist: HdrHistogram) -> str:
    return hist.encode().decode("ascii")


def _decode(blob: str) -> HdrHistogram:
    return HdrHistogram.decode(blob.encode("ascii"))


class LatencyRecorder:
    """One latency distribution: record seconds, read milliseconds.

    Samples above `max_latency_s` are recorded as `max_latency_s` and counted in `clamped`;
    negative ones (clock skew between processes) as 0 and counted in `negative`, so neither
    vanishes silently.
    """

    def __init__(self, *, max_latency_s: float = _MAX_LATENCY_S, significant_figures: int = 3):
        self._hist = _histogram(significant_figures, max_latency_s)
        self.measured = 0
        self.clamped = 0
        self.negative = 0

    def _to_us(self, latency_s: float) -> int:
        value = round(latency_s * _US)
        if value < 0:
            self.negative += 1
            return 0
        if value > self._hist.highest_trackable_value:
            self.clamped += 1
            return self._hist.highest_trackable_value
        return value

    def record(self, latency_s: float, expected_interval: float | None = None) -> None:
        """Record one latency; give the scenario's send interval (seconds) to correct for CO."""
        value = self._to_us(latency_s)
        self.measured += 1
        if expected_interval is None:
            self._hist.record_value(value)
            return
        if expected_interval <= 0:
            raise ValueError(f"expected_interval must be positive seconds: {expected_interval!r}")
        self._hist.record_corrected_value(value, max(1, round(expected_interval * _US)))

    @property
    def count(self) -> int:
        """Samples including coordinated-omission back-fill."""
        return self._hist.get_total_count()

    @property
    def synthetic(self) -> int:
        return self.count - self.measured

    def mean_ms(self) -> float:
        return self._hist.get_mean_value() / 1000 if self.count else 0.0

    def max_ms(self) -> float:
        return self._hist.get_max_value() / 1000

    def percentile_ms(self, percentile: float) -> float:
        """Latency at `percentile` (0–100) in ms; 0.0 when nothing was recorded."""
        return self._hist.get_value_at_percentile(percentile) / 1000 if self.count else 0.0

    def summary(self) -> dict[str, float | int]:
        """count, measured, mean and p50/p90/p99/p99.9/max in ms — the report's latency block."""
        values = self._hist.get_percentile_to_value_dict(list(_PERCENTILES.values()))
        out: dict[str, float | int] = {
            "count": self.count,
            "measured": self.measured,
            "mean_ms": self.mean_ms(),
        }
        for name, pct in _PERCENTILES.items():
            out[name] = values.get(pct, 0) / 1000 if self.count else 0.0
        out["max_ms"] = self.max_ms()
        out["clamped"] = self.clamped
        out["negative"] = self.negative
        return out

    def buckets(self, *, first_ms: float = 0.125, base: float = 2.0) -> list[tuple[float, int]]:
        """(upper bound ms, count) per log-spaced bucket, up to the max: a histogram chart."""
        if not self.count:
            return []
        first = max(1, round(first_ms * 1000))
        return [
            (item.value_iterated_to / 1000, item.count_added_in_this_iter_step)
            for item in self._hist.get_log_iterator(first, base)
        ]

    def percentile_curve(self) -> list[tuple[float, float]]:
        """(percentile, ms) from p0 to p99.999 and the max: the classic HDR plot."""
        if not self.count:
            return []
        points = [0.0, 10, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 99.95, 99.99, 99.999]
        values = self._hist.get_percentile_to_value_dict(points)
        return [(p, values[p] / 1000) for p in points] + [(100.0, self.max_ms())]

    def merge(self, other: LatencyRecorder) -> None:
        """Add `other`'s samples; exact when both use the same range and precision."""
        self._hist.add(other._hist)
        self.measured += other.measured
        self.clamped += other.clamped
        self.negative += other.negative

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: the hdr histogram as its standard base64 'HISTF…' blob plus counters."""
        return {
            "hdr": _encode(self._hist),
            "measured": self.measured,
            "clamped": self.clamped,
            "negative": self.negative,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyRecorder:
        recorder = cls()
        recorder._hist = _decode(data["hdr"])  # range and precision travel in the blob
        recorder.measured = data["measured"]
        recorder.clamped = data["clamped"]
        recorder.negative = data["negative"]
        return recorder


class TimeSeries:
    """Per-bucket sends, deliveries and latency, relative to a shared run `start` time.

    Deliveries are bucketed by receive time (throughput is what clients saw per second);
    latency by *send* time, so a stall shows up where it began — where a fault was injected —
    rather than when the backlog drained. No coordinated-omission correction here: the chart
    shows what was measured. Buckets before `start` get negative indices rather than being
    folded into the first second.
    """

    SIGNIFICANT_FIGURES = 2

    def __init__(self, *, start: float, bucket_s: float = 1.0) -> None:
        if bucket_s <= 0:
            raise ValueError(f"bucket_s must be positive: {bucket_s!r}")
        self.start = float(start)
        self.bucket_s = float(bucket_s)
        self._sends: dict[int, int] = {}
        self._deliveries: dict[int, int] = {}
        self._latency: dict[int, HdrHistogram] = {}

    def _bucket(self, at: float) -> int:
        # 1 µs of tolerance: times that went through integer microseconds (a nonce) come back
        # a hair early, and must not fall into the previous bucket
        return math.floor((at - self.start + 1e-6) / self.bucket_s)

    def _hist(self, bucket: int) -> HdrHistogram:
        hist = self._latency.get(bucket)
        if hist is None:
            hist = self._latency[bucket] = _histogram(self.SIGNIFICANT_FIGURES)
        return hist

    def record_send(self, at: float, count: int = 1) -> None:
        bucket = self._bucket(at)
        self._sends[bucket] = self._sends.get(bucket, 0) + count

    def record_delivery(self, sent_at: float, received_at: float) -> None:
        bucket = self._bucket(received_at)
        self._deliveries[bucket] = self._deliveries.get(bucket, 0) + 1
        hist = self._hist(self._bucket(sent_at))
        hist.record_value(
            min(max(0, round((received_at - sent_at) * _US)), hist.highest_trackable_value)
        )

    def rows(self) -> list[dict[str, Any]]:
        """One row per bucket from the first to the last with data, gaps included.

        `t` is the bucket's start in seconds since `start`; p50_ms/p99_ms are None for a bucket
        with no latency samples, so a chart shows a gap instead of a false zero.
        """
        used = self._sends.keys() | self._deliveries.keys() | self._latency.keys()
        if not used:
            return []
        out = []
        for bucket in range(min(used), max(used) + 1):
            hist = self._latency.get(bucket)
            samples = hist.get_total_count() if hist is not None else 0
            row: dict[str, Any] = {
                "t": bucket * self.bucket_s,
                "sends": self._sends.get(bucket, 0),
                "deliveries": self._deliveries.get(bucket, 0),
                "latency_samples": samples,
                "p50_ms": None,
                "p99_ms": None,
            }
            if hist is not None and samples:
                values = hist.get_percentile_to_value_dict([50.0, 99.0])
                row["p50_ms"] = values[50.0] / 1000
                row["p99_ms"] = values[99.0] / 1000
            out.append(row)
        return out

    def merge(self, other: TimeSeries) -> None:
        """Add another process's series; both must share `start` and `bucket_s`."""
        if (other.start, other.bucket_s) != (self.start, self.bucket_s):
            raise ValueError(
                f"time series differ: start/bucket {self.start}/{self.bucket_s} vs "
                f"{other.start}/{other.bucket_s}"
            )
        for bucket, count in other._sends.items():
            self._sends[bucket] = self._sends.get(bucket, 0) + count
        for bucket, count in other._deliveries.items():
            self._deliveries[bucket] = self._deliveries.get(bucket, 0) + count
        for bucket, hist in other._latency.items():
            self._hist(bucket).add(hist)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: [bucket, sends, deliveries, hdr blob or None] per bucket with data."""
        used = sorted(self._sends.keys() | self._deliveries.keys() | self._latency.keys())
        return {
            "start": self.start,
            "bucket_s": self.bucket_s,
            "buckets": [
                [
                    b,
                    self._sends.get(b, 0),
                    self._deliveries.get(b, 0),
                    _encode(self._latency[b]) if b in self._latency else None,
                ]
                for b in used
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TimeSeries:
        series = cls(start=data["start"], bucket_s=data["bucket_s"])
        for bucket, sends, deliveries, blob in data["buckets"]:
            if sends:
                series._sends[bucket] = sends
            if deliveries:
                series._deliveries[bucket] = deliveries
            if blob is not None:
                series._latency[bucket] = _decode(blob)
        return series
