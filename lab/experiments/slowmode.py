"""Slowmode under a flood (claim 16): a channel rate limit sheds a flood at the gateway.

A few members flood one channel as fast as acks return while others chat at a steady pace in
a neighbouring channel of the same guild. Arm ``off``: the flooded channel has no slowmode;
arm ``on``: it has a slowmode of ``slowmode_s`` (one message per member per interval, checked
at the gateway before anything reaches the log). Measured: flood messages accepted and refused
per second, the neighbours' delivery latency, and what the servers spent.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from chatscale.client import GatewayError
from guilds.community import ChannelSpec
from lab import harness
from lab.experiment import Arm, Experiment, Measurement, Metric, Outcome, fmt
from loadtest.latency import LatencyRecorder


async def measure(trial: harness.Trial) -> Measurement:
    p = trial.params
    flooders, neighbours, duration = p["flooders"], p["neighbours"], p["duration_s"]
    spec = harness.lab_community(
        flooders + neighbours,
        channels=[ChannelSpec(name="flooded", slowmode=p["slowmode_s"]), "quiet"],
    )
    async with trial.topology() as topo:
        seeded = await harness.seed(topo.settings, spec)
        flooded, quiet = seeded.channel_ids
        clients = await harness.connect(topo.settings, topo.urls, seeded.user_ids)
        # the owner (user 0) bypasses slowmode, as anyone who may manage messages: a neighbour
        chat_clients, flood_clients = clients[:neighbours], clients[neighbours:]
        latency = LatencyRecorder()
        accepted = refused = 0
        stop_at = time.monotonic() + duration

        async def flood(c) -> None:  # noqa: ANN001
            nonlocal accepted, refused
            n = 0
            while time.monotonic() < stop_at:
                n += 1
                try:
                    await c.send_message(flooded, f"flood {n}", timeout=10)
                    accepted += 1
                except GatewayError as exc:
                    if exc.d.get("code") != "RATE_LIMITED":
                        raise
                    refused += 1

        async def chat(i: int, c) -> None:  # noqa: ANN001
            interval = p["chat_interval_s"]
            await asyncio.sleep(interval * i / max(1, neighbours))
            while time.monotonic() < stop_at:
                await c.send_message(quiet, f"{time.time_ns()} chat", timeout=10)
                await asyncio.sleep(interval)

        async def listen(c) -> None:  # noqa: ANN001
            while True:
                ev = await c.next_event("MESSAGE_CREATE", timeout=3600)
                content = ev["d"]["content"]
                if content.endswith(" chat"):
                    latency.record(time.time() - int(content.split(" ", 1)[0]) / 1e9)

        listeners = [asyncio.create_task(listen(c)) for c in chat_clients]
        cpu = harness.Cpu(topo).start()
        try:
            await harness.bounded(
                asyncio.gather(
                    *(flood(c) for c in flood_clients),
                    *(chat(i, c) for i, c in enumerate(chat_clients)),
                ),
                duration + 30,
                "the flood and the chat",
            )
            await asyncio.sleep(0.5)  # the last chat messages' deliveries
            spent = cpu.total()
        finally:
            for t in listeners:
                t.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(*listeners, return_exceptions=True)
            await harness.close_all(clients)
    return Measurement(
        {
            "flood_accepted_per_s": accepted / duration,
            "flood_refused_per_s": refused / duration,
            "neighbour_p99_ms": latency.percentile_ms(99),
            "neighbour_p50_ms": latency.percentile_ms(50),
            "server_cpu_s": spent,
        }
    )


def conclude(o: Outcome) -> str:
    shed = o.verdict("flood_accepted_per_s", "on", "off")
    calm = o.verdict("neighbour_p99_ms", "on", "off")
    acc = o.compare("flood_accepted_per_s", "on", "off")
    if shed == "holds":
        first = (
            f"Slowmode sheds the flood at the gateway: {acc}. Refused messages never reach the "
            f"log, the workers or the other members"
        )
    elif shed == "reversed":
        first = f"Unexpectedly, more of the flood got through with slowmode on ({acc})"
    else:
        first = f"Slowmode made no clear difference to the flood here ({acc})"
    if calm == "holds":
        second = (
            "; the neighbours in the quiet channel felt it: "
            + o.compare("neighbour_p99_ms", "on", "off")
            + ". As the guide says, a channel rate limit protects the rest of the server."
        )
    elif calm == "reversed":
        second = (
            "; but the neighbours did not benefit — "
            + o.compare("neighbour_p99_ms", "on", "off")
            + " — so at this size the flood was not what slowed them."
        )
    else:
        second = (
            f"; the neighbours' p99 barely moved ({fmt(o.median('on', 'neighbour_p99_ms'), 'ms')} "
            f"on vs {fmt(o.median('off', 'neighbour_p99_ms'), 'ms')} off): this machine absorbed "
            "the flood either way, and what slowmode saved shows in server CPU ("
            + o.compare("server_cpu_s", "on", "off")
            + ")."
        )
    return first + second


EXPERIMENT = Experiment(
    name="slowmode",
    title="Slowmode under a flood",
    claim="Channel-specific rate limiting (slowmode) is part of the design.",
    claim_ids=(16,),
    hop="gateway",
    knob="`chatscale slowmode CHANNEL SECONDS` (per channel, in force when the call returns)",
    arms=(
        Arm("off", "no slowmode in the flooded channel", params={"slowmode_s": 0}),
        Arm("on", "slowmode in the flooded channel", params={"slowmode_s": 10}),
    ),
    metrics=(
        Metric("flood_accepted_per_s", "flood messages accepted", "msg/s"),
        Metric("flood_refused_per_s", "flood messages refused", "msg/s", better="none"),
        Metric("neighbour_p50_ms", "neighbours' delivery p50", "ms"),
        Metric("neighbour_p99_ms", "neighbours' delivery p99", "ms"),
        Metric("server_cpu_s", "server CPU", "s"),
    ),
    sizes={
        "tiny": {"flooders": 2, "neighbours": 3, "duration_s": 2.0, "chat_interval_s": 0.2},
        "quick": {"flooders": 4, "neighbours": 20, "duration_s": 10.0, "chat_interval_s": 0.5},
        "full": {"flooders": 8, "neighbours": 50, "duration_s": 20.0, "chat_interval_s": 0.5},
    },
    quick_seconds=30,
    measure=measure,
    conclude=conclude,
)
