"""Simulated voice, pure logic (no sockets, no clock of its own): the network a sender sees,
the receiver's jitter buffer, and bitrate adaptation. ``voice/loadgen.py`` drives it with real
time and real packets through the relay.

**The link** (``ImpairedLink``) is applied in-process at the sender, so it runs without root
(no ``tc netem``): each 20 ms packet is lost with probability ``loss`` (``burst`` > 0 makes
losses come in runs, a two-state Gilbert model with the same average), gets an extra delay
uniform in ``[0, jitter_ms]``, and with ``bandwidth_kbps`` set waits in a bottleneck queue of
at most ``queue_ms`` (beyond it: dropped, as a router's tail drop).

On the **TCP arm** a loss is not a loss: TCP retransmits, after ``rto_ms`` (Linux's minimum
RTO is 200 ms), and delivers in order, so every packet sent after a lost one waits for its
retransmission — head-of-line blocking. The link models exactly that: the lost packet arrives
``rto_ms`` late and no later packet is delivered before it. It is a model of TCP's behaviour
under loss (one retransmission, no congestion-window collapse), not a kernel TCP under netem;
the relay's TCP arm then carries the packets over a real TCP connection.

**The jitter buffer** (``JitterBuffer``, one per received stream) plays packet ``seq`` at
``capture + delay``; a packet arriving after that is *late* (useless: its slot was already
concealed). ``delay`` adapts once a second to the 95th percentile of recent transit times
(between ``min_delay_ms`` and ``max_delay_ms``); growing it pauses playout (*stall*). Each slot
is played, or *concealed* (its packet was lost or late). Mouth-to-ear latency of a played
packet is the delay it was played at.

**Bitrate adaptation** (``Aimd``): receivers report their loss+late share and their playout
delay each second; the sender adds ``increase_kbps`` when the share is under ``threshold`` and
the delay near its floor, and multiplies by ``decrease`` otherwise, between a floor and a
ceiling (AIMD, as TCP's congestion control, with a delay signal as WebRTC's).
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field

PACKET_MS = 20  # one packet per 20 ms, as Opus in Discord
SAMPLE_RATE = 48_000
TS_PER_PACKET = SAMPLE_RATE * PACKET_MS // 1000  # RTP timestamp step: 960


@dataclass(frozen=True)
class Impairment:
    loss: float = 0.0  # average share of packets lost (0..1)
    jitter_ms: float = 0.0  # extra delay, uniform in [0, jitter_ms]
    burst: float = 0.0  # P(lost | previous lost): 0 independent losses, 0.5 runs of ~2
    bandwidth_kbps: float = 0.0  # 0: no bottleneck
    queue_ms: float = 100.0  # the bottleneck's buffer, in time at its rate
    rto_ms: float = 200.0  # TCP: when a lost segment arrives (its retransmission)

    def __post_init__(self) -> None:
        if not 0 <= self.loss < 1 or not 0 <= self.burst < 1:
            raise ValueError("loss and burst are shares in [0, 1)")
        if self.jitter_ms < 0 or self.bandwidth_kbps < 0 or self.queue_ms < 0:
            raise ValueError("jitter, bandwidth and queue are not negative")


class ImpairedLink:
    """``send(now_ms, size)`` -> when the packet arrives (ms), or None if it never does."""

    def __init__(self, imp: Impairment, *, transport: str, rng: random.Random) -> None:
        self.imp = imp
        self.tcp = transport == "tcp"
        self.rng = rng
        self._last_lost = False
        self._link_free_at = 0.0
        self._last_arrival = 0.0
        # P(lost | previous not lost), so that the long-run share is ``loss`` with bursts
        self._p_first = imp.loss * (1 - imp.burst) / (1 - imp.loss) if imp.loss else 0.0

    def send(self, now_ms: float, size_bytes: int) -> float | None:
        at = now_ms
        if self.imp.bandwidth_kbps:
            tx_ms = size_bytes * 8 / self.imp.bandwidth_kbps  # kbit/s = bit/ms
            queued = max(0.0, self._link_free_at - now_ms)
            if queued > self.imp.queue_ms:
                return None  # tail drop (TCP would back off; the relay's arm sees the same)
            self._link_free_at = max(now_ms, self._link_free_at) + tx_ms
            at = self._link_free_at
        lost = self.rng.random() < (self.imp.burst if self._last_lost else self._p_first)
        self._last_lost = lost
        at += self.rng.uniform(0, self.imp.jitter_ms) if self.imp.jitter_ms else 0.0
        if lost:
            if not self.tcp:
                return None
            at += self.imp.rto_ms  # retransmitted
        if self.tcp:  # in order: nothing overtakes a packet still being retransmitted
            at = max(at, self._last_arrival + 0.001)  # (1 us apart: timers keep the order)
            self._last_arrival = at
        return at


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


@dataclass
class JitterBuffer:
    min_delay_ms: float = 40.0
    max_delay_ms: float = 400.0
    adapt_every: int = 50  # packets (1 s)
    window: int = 100  # transit samples the target is computed over
    delay_ms: float = field(init=False)
    played: int = 0
    late: int = 0
    duplicates: int = 0
    stall_ms: float = 0.0
    mouth_to_ear: list[float] = field(default_factory=list)
    _seen: set[int] = field(default_factory=set)
    _transits: deque[float] = field(default_factory=deque)
    _since_adapt: int = 0
    _late_seqs: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.delay_ms = self.min_delay_ms

    def arrive(self, index: int, capture_ms: float, arrival_ms: float) -> bool:
        """A packet (``index``: its sequence number unwrapped). True if it is played."""
        if index in self._seen:
            self.duplicates += 1
            return False
        self._seen.add(index)
        transit = arrival_ms - capture_ms
        self._transits.append(transit)
        if len(self._transits) > self.window:
            self._transits.popleft()
        on_time = transit <= self.delay_ms
        if on_time:
            self.played += 1
            self.mouth_to_ear.append(self.delay_ms)
        else:
            self.late += 1
            self._late_seqs.add(index)
        self._since_adapt += 1
        if self._since_adapt >= self.adapt_every:
            self._since_adapt = 0
            self._adapt()
        return on_time

    def _adapt(self) -> None:
        p95 = percentile(list(self._transits), 0.95) or 0.0
        target = min(self.max_delay_ms, max(self.min_delay_ms, p95 + 5.0))
        if target > self.delay_ms:
            self.stall_ms += target - self.delay_ms  # playout pauses while the buffer fills
        self.delay_ms = target

    def finish(self, sent: int) -> dict[str, float]:
        """Counters once ``sent`` packets (indices 0..sent-1) were sent to this stream."""
        received = len([i for i in self._seen if i < sent])
        lost = sent - received
        concealed = lost + len([i for i in self._late_seqs if i < sent])
        # runs of 3+ concealed slots (60 ms and more) are heard as a gap: stall time too
        gap_ms = 0.0
        run = 0
        for i in range(sent):
            if i in self._seen and i not in self._late_seqs:
                if run >= 3:
                    gap_ms += run * PACKET_MS
                run = 0
            else:
                run += 1
        if run >= 3:
            gap_ms += run * PACKET_MS
        return {
            "sent": sent,
            "played": self.played,
            "lost": lost,
            "late": self.late,
            "concealed": concealed,
            "duplicates": self.duplicates,
            "stall_ms": self.stall_ms + gap_ms,
        }


@dataclass
class Aimd:
    floor_kbps: float = 16.0
    ceiling_kbps: float = 128.0
    kbps: float = 64.0
    increase_kbps: float = 4.0
    decrease: float = 0.75
    threshold: float = 0.02  # loss+late share above which the sender backs off
    delay_margin_ms: float = 20.0  # reported buffer delay this far above its floor: backs off
    timeline: list[tuple[float, float]] = field(default_factory=list)  # (t ms, kbps)
    _delay_floor: float | None = None

    def on_report(self, t_ms: float, bad_share: float, delay_ms: float | None = None) -> float:
        """A second's worst receiver report: its loss+late share and, if given, the receiver's
        playout delay — growing delay means a queue is filling somewhere, so the sender backs
        off before that queue overflows (a delay signal, as WebRTC's congestion control)."""
        queueing = False
        if delay_ms is not None:
            self._delay_floor = min(delay_ms, self._delay_floor or delay_ms)
            queueing = delay_ms > self._delay_floor + self.delay_margin_ms
        if bad_share > self.threshold or queueing:
            self.kbps = max(self.floor_kbps, self.kbps * self.decrease)
        else:
            self.kbps = min(self.ceiling_kbps, self.kbps + self.increase_kbps)
        self.timeline.append((t_ms, self.kbps))
        return self.kbps

    def payload_bytes(self) -> int:
        """One 20 ms packet's payload at the current bitrate."""
        return max(8, int(self.kbps * PACKET_MS / 8))


def unwrap(last: int | None, seq: int) -> int:
    """A 16-bit sequence number as an ever-growing index, given the last index seen."""
    if last is None:
        return seq
    base = last - (last & 0xFFFF)
    candidates = (base - 0x10000 + seq, base + seq, base + 0x10000 + seq)
    return min(candidates, key=lambda c: abs(c - last))
