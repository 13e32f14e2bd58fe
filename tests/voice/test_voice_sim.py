"""The simulated network, jitter buffer and AIMD: pure, seeded, no clock."""

from __future__ import annotations

import random

import pytest

from voice.sim import Aimd, ImpairedLink, Impairment, JitterBuffer, percentile, unwrap


def _run(imp: Impairment, transport: str, n: int = 3000, seed: int = 1) -> dict[str, float]:
    link = ImpairedLink(imp, transport=transport, rng=random.Random(seed))
    jb = JitterBuffer()
    arrivals = []
    for i in range(n):
        at = link.send(i * 20.0, 160)
        if at is not None:
            arrivals.append((at, i))
    for at, i in sorted(arrivals):  # the receiver sees them in arrival order
        jb.arrive(i, i * 20.0, at)
    out = jb.finish(n)
    out["m2e_p50"] = percentile(jb.mouth_to_ear, 0.5)
    return out


def test_udp_loses_packets_and_tcp_makes_them_late_instead():
    imp = Impairment(loss=0.02, jitter_ms=30)
    udp, tcp = _run(imp, "udp"), _run(imp, "tcp")
    assert 0.01 < udp["lost"] / udp["sent"] < 0.03  # ~2 %, gone
    assert tcp["lost"] == 0  # TCP retransmits everything ...
    assert tcp["late"] + tcp["concealed"] > udp["concealed"]  # ... too late to play, or
    assert tcp["m2e_p50"] > udp["m2e_p50"]  # the buffer grew to wait for retransmissions


def test_bursts_keep_the_average_but_clump_the_losses():
    n = 20000
    for burst in (0.0, 0.6):
        link = ImpairedLink(
            Impairment(loss=0.05, burst=burst), transport="udp", rng=random.Random(3)
        )
        lost = [link.send(i * 20.0, 100) is None for i in range(n)]
        assert 0.04 < sum(lost) / n < 0.06
        runs = sum(1 for a, b in zip(lost, lost[1:], strict=False) if a and not b)
        if burst:
            assert sum(lost) / runs > 2  # mean run length 1 / (1 - 0.6) = 2.5
        else:
            assert sum(lost) / runs < 1.2


def test_a_bottleneck_drops_what_its_queue_cannot_hold():
    link = ImpairedLink(
        Impairment(bandwidth_kbps=32, queue_ms=100), transport="udp", rng=random.Random(0)
    )
    sent = [link.send(i * 20.0, 160) for i in range(500)]  # 64 kbit/s into 32 kbit/s
    assert 0.4 < sum(s is None for s in sent) / 500 < 0.6
    link = ImpairedLink(
        Impairment(bandwidth_kbps=32, queue_ms=100), transport="udp", rng=random.Random(0)
    )
    assert all(link.send(i * 20.0, 60) is not None for i in range(500))  # 24 kbit/s fits


def test_the_jitter_buffer_counts_late_and_lost_and_stalls_when_it_grows():
    jb = JitterBuffer(min_delay_ms=40, adapt_every=5, window=5)
    for i in range(5):
        assert jb.arrive(i, i * 20.0, i * 20.0 + 10)
    assert jb.arrive(5, 100.0, 100.0 + 90) is False  # after its playout time: late
    assert jb.arrive(5, 100.0, 100.0 + 10) is False  # a duplicate
    for i in range(6, 10):  # late too: the delay adapts after these
        assert jb.arrive(i, i * 20.0, i * 20.0 + 90) is False
    assert jb.delay_ms == pytest.approx(95.0)  # p95 of recent transits + 5
    assert jb.arrive(10, 200.0, 200.0 + 90)  # now in time; 11..13 never arrive
    out = jb.finish(14)
    assert (out["late"], out["lost"], out["duplicates"], out["played"]) == (5, 3, 1, 6)
    assert out["concealed"] == 8
    assert out["stall_ms"] >= 55.0  # the delay grew 40 -> 95 ms


def test_aimd_backs_off_multiplicatively_and_probes_additively():
    a = Aimd(kbps=64, floor_kbps=16, ceiling_kbps=80, increase_kbps=8)
    assert a.on_report(0, 0.10) == 48
    assert a.on_report(1, 0.10) == 36
    assert a.on_report(2, 0.0) == 44
    for t in range(10):
        a.on_report(3 + t, 0.0)
    assert a.kbps == 80  # the ceiling
    for t in range(20):
        a.on_report(20 + t, 0.5)
    assert a.kbps == 16  # the floor
    assert a.payload_bytes() == 40  # 16 kbit/s x 20 ms
    b = Aimd(kbps=64, increase_kbps=8, delay_margin_ms=20)
    assert b.on_report(0, 0.0, delay_ms=40) == 72  # the delay's floor: 40 ms
    assert b.on_report(1, 0.0, delay_ms=55) == 80  # +15 ms: within the margin
    assert b.on_report(2, 0.0, delay_ms=70) == 60  # a queue is filling: back off before loss


def test_sequence_numbers_unwrap_across_65535():
    assert unwrap(None, 5) == 5
    assert unwrap(65534, 1) == 65537
    assert unwrap(65537, 65535) == 65535
