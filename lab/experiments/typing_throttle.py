"""Typing indicators: every keystroke broadcast vs one TYPING_START per window (claim 8).

A few members of one guild type in its channel, each sending a typing event every
``keystroke_interval_s`` (a naive client that reports every keystroke). Arm ``off``
(``CHATSCALE_TYPING_WINDOW_S=0``): the presence service forwards every typing event as a
TYPING_START to every member who can see the channel. Arm ``throttled`` (the default, 10 s): at
most one per user and channel per window — an indicator lasts that long on other screens by
itself, so the rest would change nothing anyone sees.

Measured at the lab's clients: TYPING_START deliveries and bytes per typing event sent, how
long the first indicator of each typist takes to reach an observer (the throttle must not
delay it: the first event of a window goes through), and the CPU of the presence service and
the gateway. A typing event by a member who has not typed yet marks the end: once every client
has seen its TYPING_START, everything before it has been delivered.
"""

from __future__ import annotations

import asyncio
import functools
import statistics
import time
from typing import Any

from chatscale.wire import Op
from lab import harness
from lab.experiment import Arm, Experiment, Measurement, Metric, Outcome
from lab.experiments.presence_coalesce import _cpu
from lab.presence_util import CountingClient, connect_counting, tick_env, totals


async def measure(trial: harness.Trial) -> Measurement:
    p = trial.params
    members, typists_n = p["members"], p["typists"]
    duration, interval = p["duration_s"], p["keystroke_interval_s"]
    env, notes = tick_env(p)
    async with trial.topology(env=env) as topo:
        seeded = await harness.seed(topo.settings, harness.lab_community(members))
        channel = str(seeded.channel_ids[0])
        clients = await connect_counting(topo.settings, topo.urls, seeded.user_ids)
        observer, sentinel = clients[0], clients[1]
        typists = clients[-typists_n:]
        uid = {c: u for c, u in zip(clients, seeded.user_ids, strict=True)}
        first_sent: dict[int, float] = {}
        first_seen: dict[int, float] = {}
        seen_end: set[CountingClient] = set()

        def watch(client: CountingClient, t: str, d: dict[str, Any], at: float) -> None:
            if t != "TYPING_START":
                return
            user = int(d["user_id"])
            if user == uid[sentinel]:
                seen_end.add(client)
            elif client is observer:
                first_seen.setdefault(user, at)

        for c in clients:
            c.on_dispatch = functools.partial(watch, c)
        frames0, bytes0 = totals(clients, "TYPING_START")
        cpu = harness.Cpu(topo).start()
        events = 0
        stop_at = time.monotonic() + duration

        async def type_(i: int, c: CountingClient) -> None:
            nonlocal events
            await asyncio.sleep(interval * i / typists_n)  # spread over the interval
            while time.monotonic() < stop_at:
                first_sent.setdefault(uid[c], time.monotonic())
                await c.send_op(Op.TYPING, {"channel_id": channel})
                events += 1
                await asyncio.sleep(interval)

        await harness.bounded(
            asyncio.gather(*(type_(i, c) for i, c in enumerate(typists))),
            duration + 30,
            "the typing",
        )
        await sentinel.send_op(Op.TYPING, {"channel_id": channel})
        events += 1
        for c in clients:
            await c.until(lambda c=c: c in seen_end, 30, "every client seeing the end marker")
        spent = cpu.stop()
        frames, nbytes = totals(clients, "TYPING_START")
        frames -= frames0
        nbytes -= bytes0
        await harness.close_all(clients)
    first = [first_seen[u] - first_sent[u] for u in first_sent if u in first_seen]
    return Measurement(
        {
            "deliveries_per_event": frames / events,
            "bytes_per_event": nbytes / events,
            "first_indicator_ms": statistics.median(first) * 1000 if first else None,
            "presence_cpu_s": _cpu(spent, "presence"),
            "gateway_cpu_s": _cpu(spent, "gateway"),
            "events_per_s": events / duration,
        },
        notes=notes,
    )


def conclude(o: Outcome) -> str:
    verdict = o.verdict("deliveries_per_event", "throttled", "off")
    dpe = o.compare("deliveries_per_event", "throttled", "off")
    bpe = o.compare("bytes_per_event", "throttled", "off")
    if verdict == "holds":
        first = (
            f"Throttling typing cuts what a keystroke costs: {dpe}; {bpe}. Other screens show "
            "the indicator for the whole window anyway, so the dropped events changed nothing "
            "anyone could see"
        )
    elif verdict == "reversed":
        first = f"Against the guide, the throttle delivered more per keystroke here ({dpe})"
    elif verdict == "tie":
        first = (
            f"The throttle made no clear difference here ({dpe}): nobody typed twice within "
            "one window"
        )
    else:
        first = "One of the arms produced no numbers, so nothing can be concluded"
    # The first indicator waits for the gateway's presence tick in both arms (up to one tick,
    # 1 s by default): only a difference well beyond that phase is the throttle's doing.
    late = o.verdict("first_indicator_ms", "off", "throttled", margin=2.0)
    fi = o.compare("first_indicator_ms", "throttled", "off")
    if late == "holds":
        second = (
            f". The first indicator came clearly later with the throttle ({fi}) — unexpected, "
            "as the first event of a window always goes through"
        )
    else:
        second = (
            f". The first indicator was not held back by it ({fi}): the first event of a "
            "window always goes through, and what differs is the phase of the gateways' "
            "presence tick, which both arms wait for"
        )
    cpu = o.verdict("gateway_cpu_s", "throttled", "off")
    if cpu == "holds":
        third = f"; the gateways saved CPU ({o.compare('gateway_cpu_s', 'throttled', 'off')})."
    else:
        third = (
            f"; CPU did not clearly differ at this size ({o.compare('gateway_cpu_s', 'throttled', 'off')}; "
            f"{o.compare('presence_cpu_s', 'throttled', 'off')})."
        )
    return first + second + third


EXPERIMENT = Experiment(
    name="typing-throttle",
    title="Typing indicators: every keystroke vs one per window",
    claim=(
        "Broadcasting every typing event to every member bankrupts the infrastructure; "
        "aggregate and throttle."
    ),
    claim_ids=(8,),
    hop="presence",
    knob="CHATSCALE_TYPING_WINDOW_S (0 turns the throttle off)",
    arms=(
        Arm(
            "off",
            "every typing event becomes a TYPING_START to every member",
            settings={"CHATSCALE_TYPING_WINDOW_S": "0"},
        ),
        Arm(
            "throttled",
            "at most one TYPING_START per user and channel per 10 s (the default)",
            settings={"CHATSCALE_TYPING_WINDOW_S": "10"},
        ),
    ),
    metrics=(
        Metric("deliveries_per_event", "TYPING_START deliveries per typing event", "count"),
        Metric("bytes_per_event", "bytes delivered per typing event", "B"),
        Metric("first_indicator_ms", "first indicator at an observer (median)", "ms"),
        Metric("presence_cpu_s", "presence service CPU", "s"),
        Metric("gateway_cpu_s", "gateway CPU", "s"),
        Metric("events_per_s", "typing events sent", "1/s", better="none"),
    ),
    sizes={
        "tiny": {
            "members": 10,
            "typists": 3,
            "keystroke_interval_s": 0.2,
            "duration_s": 1.0,
            "tick_ms": 200,
        },
        "quick": {"members": 100, "typists": 10, "keystroke_interval_s": 0.3, "duration_s": 8.0},
        "full": {"members": 300, "typists": 20, "keystroke_interval_s": 0.3, "duration_s": 20.0},
    },
    quick_seconds=30,
    measure=measure,
    conclude=conclude,
)
