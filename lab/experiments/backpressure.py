"""One slow reader among N (claim 3): fan-out on write needs backpressure.

One gateway holds N fast members and one slow one (a 4 KiB receive window, and it stops
reading after READY: a phone in a tunnel). A sender bursts messages of 15,000 characters (both
arms raise the content limit so a short burst gets past the kernel's socket buffers) to the channel.
Arm ``close`` (today, ``CHATSCALE_SLOW_CLIENT=close``): once the slow member's send buffer
passes ``client_buffer_bytes`` (1 MiB) the gateway closes it with 4010 SLOW_CONSUMER
(resumable). Arm ``unbounded``: the gateway keeps queueing for it without limit. Measured: the
fast members' delivery latency, the gateway's memory growth during the burst, whether the slow
member was closed, and deliveries the fast members lost (0 in both arms, or the run says so).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import psutil

from lab import delivery_util as du
from lab import harness
from lab.experiment import Arm, Experiment, Measurement, Metric, Outcome, fmt
from loadtest.latency import LatencyRecorder

MIB = 1 << 20
#: Both arms allow messages of up to 15,000 characters (the default is 2,000). The kernel keeps
#: up to ~4 MiB unsent per socket before the gateway's own buffer grows at all; with large
#: messages a burst of hundreds (not thousands) gets past it, which keeps the runs short.
LARGE = {"CHATSCALE_MAX_CONTENT_CHARS": "15000", "CHATSCALE_MAX_FRAME_BYTES": "32768"}


async def measure(trial: harness.Trial) -> Measurement:
    p = trial.params
    n_fast, n_messages = p["fast"], p["messages"]
    spec = harness.lab_community(n_fast + 2)  # the sender, the fast members, the slow one
    async with trial.topology(gateways=1, workers=1) as topo:
        seeded = await harness.seed(topo.settings, spec)
        channel = seeded.channel_ids[0]
        url = topo.urls[0]
        gateway: psutil.Process = du.gateway_process(topo)  # type: ignore[assignment]
        [sender] = await harness.connect(topo.settings, topo.urls, seeded.user_ids[:1])
        fast = await du.members(topo.settings, url, seeded.user_ids[1 : n_fast + 1])
        slow = await du.Member.identify(
            url, harness.token(topo.settings, seeded.user_ids[-1]), slow=True
        )
        sent_at = [0.0] * n_messages
        latency = LatencyRecorder()
        total = n_fast * n_messages
        received = 0
        all_in = asyncio.Event()

        def on_message(k: int, now: float) -> None:
            nonlocal received
            if 0 <= k < n_messages:
                latency.record(now - sent_at[k])
                received += 1
                if received >= total:
                    all_in.set()

        rss: list[tuple[float, float]] = []
        peak = 0.0

        async def sample(t0: float, base: float) -> None:
            nonlocal peak
            while True:
                with contextlib.suppress(psutil.Error):
                    grown = (gateway.memory_info().rss - base) / MIB
                    peak = max(peak, grown)
                    rss.append((round(time.monotonic() - t0, 3), round(grown, 2)))
                await asyncio.sleep(p["sample_s"])

        readers = [asyncio.create_task(m.receive(on_message)) for m in fast]
        sampler = None
        try:
            base = gateway.memory_info().rss
            t0 = time.monotonic()
            sampler = asyncio.create_task(sample(t0, base))
            await harness.bounded(
                du.send_all(sender, channel, n_messages, p["content_chars"], p["window"], sent_at),
                120,
                "the burst's acks",
            )
            try:
                await harness.bounded(all_in.wait(), 30, f"{total} deliveries to the fast members")
            except TimeoutError:
                pass  # what is missing is counted as lost below, not hidden
            with contextlib.suppress(psutil.Error):
                peak = max(peak, (gateway.memory_info().rss - base) / MIB)
            sampler.cancel()
            closed = await slow.drain(n_messages, 60)
            du.own_copies(sender)  # the sender's own copies, not measured
        finally:
            if sampler is not None:
                sampler.cancel()
            for t in readers:
                t.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            await du.close_members([*fast, slow])
            await harness.close_all([sender])
    notes = [
        f"{n_fast} fast members and 1 slow one on one gateway, {n_messages} messages of "
        f"{p['content_chars']} characters ({p['window']} sends in flight)"
    ]
    if closed:
        notes.append(f"the slow member's connection ended with code {slow.close_code}")
    else:
        notes.append(f"the slow member stayed open and later read all {n_messages} messages")
    return Measurement(
        {
            "fast_p50_ms": latency.percentile_ms(50),
            "fast_p99_ms": latency.percentile_ms(99),
            "gateway_rss_growth_mib": peak,
            "slow_closed": 1.0 if closed else 0.0,
            "fast_lost": float(total - received),
        },
        series={"gateway memory growth during the burst": rss},
        notes=notes,
    )


def conclude(o: Outcome) -> str:
    mem = o.verdict("gateway_rss_growth_mib", "close", "unbounded")
    mem_text = o.compare("gateway_rss_growth_mib", "close", "unbounded")
    lost = [o.median(a, "fast_lost") for a in ("close", "unbounded")]
    closed = [o.median(a, "slow_closed") for a in ("close", "unbounded")]
    if mem == "holds":
        first = (
            f"Backpressure bounds the gateway's memory: {mem_text}. Closing the slow reader "
            "(4010, it may RESUME) caps what one client can cost; without it the gateway holds "
            "every frame the slow reader has not read, and a big server's burst times many slow "
            "phones is how a gateway runs out of memory"
        )
    elif mem == "reversed":
        first = (
            f"Against the guide, the gateway grew more with the bounded buffer ({mem_text}); the "
            "burst was too small for the unread frames to outweigh the rest of its memory"
        )
    else:
        first = (
            f"The gateway's memory growth did not differ clearly ({mem_text}): at this size the "
            "unread frames stayed in the kernel's socket buffers or were small next to the rest "
            "of the gateway; a larger burst shows the unbounded queue growing with every message"
        )
    if closed[0] is not None and closed[1] is not None:
        first += (
            f". Slow member closed (1 = yes, median over runs): {fmt(closed[0])} with close, "
            f"{fmt(closed[1])} with unbounded"
        )
        if closed[0] < 1:
            first += (
                " — the burst did not push its send buffer past client_buffer_bytes (the kernel "
                "held the rest), so even the close arm kept it; a longer burst is needed"
            )
    lat = o.verdict("fast_p99_ms", "close", "unbounded")
    lat_text = o.compare("fast_p99_ms", "close", "unbounded")
    if lat == "holds":
        second = f". The fast members also fared better with the slow one closed ({lat_text})."
    elif lat == "reversed":
        second = (
            f". The fast members' latency did not suffer from the unbounded queue ({lat_text}): "
            "queueing to one socket costs the gateway little time, only memory."
        )
    else:
        second = (
            f". The fast members did not notice either way ({lat_text}): the gateway never waits "
            "on one socket, so the cost of the slow reader is memory, not the others' latency."
        )
    if any(x is None for x in lost):
        third = " Lost deliveries could not be counted."
    elif all(x == 0 for x in lost):
        third = " No fast member lost a delivery in either arm."
    else:
        third = (
            f" Fast members lost deliveries ({fmt(lost[0])} with close, {fmt(lost[1])} with "
            "unbounded): that is a bug, not a trade-off."
        )
    return first + second + third


EXPERIMENT = Experiment(
    name="backpressure",
    title="One slow reader among N",
    claim=(
        "Reads dwarf writes: one message in a big server goes to tens of thousands of online "
        "users. Fan-out on write needs backpressure."
    ),
    claim_ids=(3,),
    hop="fanout",
    knob="CHATSCALE_SLOW_CLIENT=close|unbounded with CHATSCALE_CLIENT_BUFFER_BYTES (gateway)",
    arms=(
        Arm(
            "close",
            "today's gateway: a client past client_buffer_bytes (1 MiB) is closed with 4010",
            settings={"CHATSCALE_SLOW_CLIENT": "close", **LARGE},
        ),
        Arm(
            "unbounded",
            "no backpressure: the gateway queues for the slow client without limit",
            settings={"CHATSCALE_SLOW_CLIENT": "unbounded", **LARGE},
        ),
    ),
    metrics=(
        Metric("fast_p50_ms", "fast members' delivery p50", "ms"),
        Metric("fast_p99_ms", "fast members' delivery p99", "ms"),
        Metric("gateway_rss_growth_mib", "gateway memory growth (RSS)", "MiB"),
        Metric("slow_closed", "slow member closed", "count", better="none"),
        Metric("fast_lost", "deliveries lost by fast members", "count"),
    ),
    sizes={
        "tiny": {
            "fast": 5,
            "messages": 100,
            "content_chars": 15000,
            "window": 8,
            "sample_s": 0.05,
        },
        "quick": {
            "fast": 20,
            "messages": 800,
            "content_chars": 15000,
            "window": 8,
            "sample_s": 0.1,
        },
        "full": {
            "fast": 50,
            "messages": 2000,
            "content_chars": 15000,
            "window": 8,
            "sample_s": 0.1,
        },
    },
    quick_seconds=25,
    measure=measure,
    conclude=conclude,
)
