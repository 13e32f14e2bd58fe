"""Moderation in the write path (issue 19): off vs shadow vs enforce, a cheap vs a slow classifier.

A few members chat at a fixed offered rate with labelled messages from ``workers/spamdata.py``
(study-group chat and ``spam_share`` raid spam); two other members listen. Then every sender
fires a burst back to back, so the worker has a backlog. Arms turn ``MODERATION_MODE`` and
``MODERATION_CLASSIFIER`` / ``MODERATION_DELAY_MS`` (a classifier that takes that long per batch,
as a remote model server would). Measured: send-to-delivery latency p50/p99 of the chat phase,
worker throughput draining the burst, worker CPU per message, and what was blocked — the share
of spam and the share of ordinary chat (false blocks) refused with ``AUTOMOD_BLOCKED``.

``run_chat`` is shared with ``moderation_down`` (the same workload while the classifier is down).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, field
from typing import Any

from lab import harness
from lab.experiment import Arm, Experiment, Measurement, Metric, Outcome, fmt
from loadtest.latency import LatencyRecorder
from workers import spamdata


@dataclass
class Tally:
    """What one run saw, per message label."""

    sent: dict[bool, int] = field(default_factory=lambda: {True: 0, False: 0})
    delivered: dict[bool, int] = field(default_factory=lambda: {True: 0, False: 0})
    rejected: dict[str, dict[bool, int]] = field(default_factory=dict)
    latency: LatencyRecorder = field(default_factory=LatencyRecorder)
    burst_s: float | None = None

    def refused(self, code: str, spam: bool) -> int:
        return self.rejected.get(code, {}).get(spam, 0)

    def processed(self) -> int:
        return sum(self.delivered.values()) + sum(
            n for per in self.rejected.values() for n in per.values()
        )


def shares(t: Tally) -> dict[str, float]:
    """Pure: the per-label shares of a run (percent of what was sent with that label)."""
    sent_spam, sent_ham = t.sent[True], t.sent[False]
    total = sent_spam + sent_ham

    def pct(n: int, of: int) -> float:
        return round(100 * n / of, 2) if of else 0.0

    all_rejected = sum(n for per in t.rejected.values() for n in per.values())
    return {
        "spam_blocked_pct": pct(t.refused("AUTOMOD_BLOCKED", True), sent_spam),
        "ham_blocked_pct": pct(t.refused("AUTOMOD_BLOCKED", False), sent_ham),
        "delivered_pct": pct(sum(t.delivered.values()), total),
        "rejected_pct": pct(all_rejected, total),
        "spam_delivered_pct": pct(t.delivered[True], sent_spam),
    }


#: The chat each size sends (moderation-down shares it, with smaller bursts).
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"senders": 2, "listeners": 1, "rate": 20, "duration_s": 1.5, "burst": 20, "spam_share": 0.3},
    "quick": {"senders": 4, "listeners": 2, "rate": 40, "duration_s": 8.0, "burst": 150, "spam_share": 0.3},
    "full": {"senders": 8, "listeners": 4, "rate": 80, "duration_s": 20.0, "burst": 400, "spam_share": 0.3},
}  # fmt: skip


async def run_chat(trial: harness.Trial) -> tuple[Tally, float]:
    """The workload: warm-up, a chat phase at ``rate`` msg/s, a burst of ``burst`` per sender.
    Returns the tally and the worker CPU seconds of the chat + burst phases."""
    p = trial.params
    senders, listeners = p["senders"], p["listeners"]
    spec = harness.lab_community(senders + listeners, name="mod")
    rng = random.Random(p.get("seed", 19))
    labelled = spamdata.generate(10_000, seed=p.get("seed", 19), spam_share=p["spam_share"],
                                 noise=0.0)  # fmt: skip
    tally = Tally()
    pending: dict[str, bool] = {}  # nonce -> is spam
    by_stamp: dict[str, bool] = {}  # content stamp -> is spam
    outstanding: set[str] = set()  # stamps not yet delivered or refused
    done = asyncio.Event()
    async with trial.topology() as topo:
        seeded = await harness.seed(topo.settings, spec)
        [channel] = seeded.channel_ids
        clients = await harness.connect(topo.settings, topo.urls, seeded.user_ids)
        talk, hear = clients[:senders], clients[senders:]
        stamps: dict[str, str] = {}  # nonce -> stamp
        counting = False

        sending = True  # a phase is still sending: an empty ``outstanding`` is not its end

        def settle(stamp: str) -> None:
            outstanding.discard(stamp)
            if not outstanding and not sending:
                done.set()

        def sent_all() -> None:
            nonlocal sending
            sending = False
            if not outstanding:
                done.set()

        def next_phase() -> None:
            nonlocal sending
            sending = True
            done.clear()

        async def listen(i: int, c) -> None:  # noqa: ANN001
            while True:
                ev = await c.next_event("MESSAGE_CREATE", timeout=3600)
                stamp = ev["d"]["content"].split(" ", 1)[0]
                if i == 0 and stamp in by_stamp and stamp in outstanding:
                    if counting:
                        tally.latency.record(time.time() - int(stamp) / 1e9)
                    tally.delivered[by_stamp[stamp]] += 1
                    settle(stamp)

        async def refusals(c) -> None:  # noqa: ANN001
            while True:
                ev = await c.next_event("MESSAGE_REJECTED", timeout=3600)
                nonce, code = ev["d"].get("nonce"), ev["d"].get("code", "?")
                if nonce in pending and stamps.get(nonce) in outstanding:
                    per = tally.rejected.setdefault(code, {True: 0, False: 0})
                    per[pending[nonce]] += 1
                    settle(stamps[nonce])

        n = 0

        async def send(c) -> None:  # noqa: ANN001
            nonlocal n
            n += 1
            text, spam = labelled[rng.randrange(len(labelled))]
            stamp, nonce = str(time.time_ns()), f"m{n}"
            pending[nonce], by_stamp[stamp], stamps[nonce] = spam, spam, stamp
            outstanding.add(stamp)
            tally.sent[spam] += 1
            await c.send_message(channel, f"{stamp} {text}", nonce=nonce, timeout=30)

        tasks = [asyncio.create_task(listen(i, c)) for i, c in enumerate(hear)]
        tasks += [asyncio.create_task(refusals(c)) for c in talk]
        try:
            # warm-up: the model (if any) trains at the first moderated batch
            await send(talk[0])
            sent_all()
            await harness.bounded(done.wait(), 60, "the warm-up message")
            tally.__init__()  # the warm-up does not count
            counting = True
            next_phase()
            cpu = harness.Cpu(topo).start()
            interval = senders / p["rate"]
            stop_at = time.monotonic() + p["duration_s"]

            async def chat(i: int, c) -> None:  # noqa: ANN001
                await asyncio.sleep(interval * i / senders)
                while time.monotonic() < stop_at:
                    t0 = time.monotonic()
                    await send(c)
                    await asyncio.sleep(max(0.0, interval - (time.monotonic() - t0)))

            await harness.bounded(
                asyncio.gather(*(chat(i, c) for i, c in enumerate(talk))),
                p["duration_s"] + 60,
                "the chat phase",
            )
            sent_all()
            await harness.bounded(done.wait(), 60, "every chat message delivered or refused")
            counting = False
            next_phase()
            t0 = time.monotonic()

            async def burst(c) -> None:  # noqa: ANN001
                for _ in range(p["burst"]):
                    await send(c)

            await harness.bounded(
                asyncio.gather(*(burst(c) for c in talk)), 120, "the burst's acks"
            )
            sent_all()
            await harness.bounded(done.wait(), 120, "every burst message delivered or refused")
            tally.burst_s = time.monotonic() - t0
            worker_cpu = sum(v for k, v in cpu.stop().items() if k.startswith("worker"))
        finally:
            for t in tasks:
                t.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(*tasks, return_exceptions=True)
            await harness.close_all(clients)
    return tally, worker_cpu


async def measure(trial: harness.Trial) -> Measurement:
    tally, worker_cpu = await run_chat(trial)
    p = trial.params
    burst_total = p["burst"] * p["senders"]
    processed = tally.processed()
    metrics: dict[str, Any] = {
        "p50_ms": tally.latency.percentile_ms(50),
        "p99_ms": tally.latency.percentile_ms(99),
        "burst_msgs_per_s": burst_total / tally.burst_s if tally.burst_s else None,
        "worker_cpu_us_per_msg": 1e6 * worker_cpu / processed if processed else None,
        **shares(tally),
    }
    return Measurement(
        metrics,
        notes=[f"{sum(tally.sent.values())} messages sent (chat + burst), {processed} settled"],
    )


def _cost(o: Outcome, arm: str, base: str, what: str) -> str:
    """One arm's latency against another's, worded by the verdict (lower is better)."""
    v = o.verdict("p99_ms", base, arm)
    text = o.compare("p99_ms", arm, base)
    if v == "holds":
        return f"{what} added latency ({text})"
    if v == "reversed":
        return (
            f"{what} came out faster ({text}): against expectation, so the run-to-run noise of "
            "this machine is larger than its cost here"
        )
    return f"{what} cost no measurable latency ({text})"


def conclude(o: Outcome) -> str:
    parts = [
        "Moderation sits in the write path, so its cost is every message's cost. Here: "
        + _cost(o, "enforce", "off", "enforcing the rules")
        + "; "
        + _cost(o, "slow", "enforce", "a classifier taking 30 ms a batch")
        + "; "
        + _cost(o, "model", "enforce", "adding the trained model")
        + "."
    ]
    parts.append(
        " Shadow scores inline as enforce does but blocks nothing ("
        + o.compare("p99_ms", "shadow", "enforce")
        + "): spam blocked "
        + f"{fmt(o.median('shadow', 'spam_blocked_pct'), '%')} in shadow vs "
        + f"{fmt(o.median('enforce', 'spam_blocked_pct'), '%')} with the rules enforced and "
        + f"{fmt(o.median('model', 'spam_blocked_pct'), '%')} with the model; ordinary chat blocked "
        + f"{fmt(o.median('enforce', 'ham_blocked_pct'), '%')} (rules) and "
        + f"{fmt(o.median('model', 'ham_blocked_pct'), '%')} (model)."
    )
    tp = o.verdict("burst_msgs_per_s", "enforce", "slow")
    parts.append(
        " Draining a backlog: "
        + o.compare("burst_msgs_per_s", "slow", "enforce")
        + (
            " — the slow classifier caps the worker's throughput, because scoring is per batch "
            "and the batch waits for it."
            if tp == "holds"
            else " — batching hides the slow classifier's cost here: a big batch pays the delay "
            "once, so the per-message cost shrinks with the backlog."
        )
    )
    parts.append(" " + o.compare("worker_cpu_us_per_msg", "model", "off") + ".")
    return "".join(parts)


RULES = {"CHATSCALE_MODERATION_CLASSIFIER": "rules"}
EXPERIMENT = Experiment(
    name="moderation",
    title="Moderation inline: off, shadow, enforce; a cheap vs a slow classifier",
    claim="Detect spam in messages within a latency budget: moderation sits in the write path, "
    "so its cost is every message's cost.",
    claim_ids=(21,),
    hop="worker",
    knob="`CHATSCALE_MODERATION_MODE` off|shadow|enforce, `CHATSCALE_MODERATION_CLASSIFIER`",
    arms=(
        Arm("off", "no moderation stage", settings={"CHATSCALE_MODERATION_MODE": "off"}),
        Arm(
            "shadow",
            "rules scored inline, never acted on",
            settings={"CHATSCALE_MODERATION_MODE": "shadow", **RULES},
        ),
        Arm(
            "enforce",
            "rules enforced (the cheap classifier)",
            settings={"CHATSCALE_MODERATION_MODE": "enforce", **RULES},
        ),
        Arm(
            "slow",
            "rules enforced behind a 30 ms-per-batch classifier",
            settings={
                "CHATSCALE_MODERATION_MODE": "enforce",
                **RULES,
                "CHATSCALE_MODERATION_DELAY_MS": "30",
            },
        ),
        Arm(
            "model",
            "rules + the trained text model enforced",
            settings={
                "CHATSCALE_MODERATION_MODE": "enforce",
                "CHATSCALE_MODERATION_CLASSIFIER": "rules+model",
            },
        ),
    ),  # fmt: skip
    metrics=(
        Metric("p50_ms", "delivery p50", "ms"),
        Metric("p99_ms", "delivery p99", "ms"),
        Metric("burst_msgs_per_s", "worker throughput on a backlog", "msg/s", better="higher"),
        Metric("worker_cpu_us_per_msg", "worker CPU per message", "us"),
        Metric("spam_blocked_pct", "spam blocked", "%", better="higher"),
        Metric("ham_blocked_pct", "ordinary chat blocked", "%"),
        Metric("delivered_pct", "delivered", "%", better="none"),
        Metric("rejected_pct", "refused", "%", better="none"),
        Metric("spam_delivered_pct", "spam delivered", "%"),
    ),
    sizes=SIZES,
    quick_seconds=105,
    measure=measure,
    conclude=conclude,
)
