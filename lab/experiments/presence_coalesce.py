"""Presence: raw broadcast vs one coalesced update per guild per tick (claims 7 and 8).

Every member of one guild is online; a share of them (``restless``) flip between idle and
online every ``change_interval_s``, as AFK detectors and flaky phones do. Arm ``raw``
(``CHATSCALE_PRESENCE_COALESCE=false``): the presence service sends every visible change as its
own PRESENCE_UPDATE to every member. Arm ``coalesced`` (the default): at most one update per
guild per tick, each user netted over the tick (idle -> online inside one tick sends nothing).
Both arms share the gateways' batching (one presence batch per gateway per tick, in which a
user's flaps already cancel), so each member changes status less often than once per tick
(``change_interval_s`` is at least two ticks): every change is then visible in the raw arm,
and what coalescing adds is one update for many users' changes.

Measured at the lab's clients (frames as they came off the wire): PRESENCE_UPDATE deliveries
and bytes per status change sent, the staleness an observer sees (how old the newest state it
shows is when it arrives — coalescing's price), and the CPU of the presence service and the
gateway. A last status change by a quiet member marks the end: once every client has seen it,
everything before it has been delivered. ``chatscale bench presence`` (the seeded simulation of
a 5,000-member guild, ``presence.simulate``) puts the same comparison at a size no laptop can
connect; the conclusion quotes it next to the measured numbers.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any

from chatscale.wire import Op
from lab import harness
from lab.experiment import Arm, Experiment, Measurement, Metric, Outcome, factor, fmt
from lab.presence_util import CountingClient, connect_counting, tick_env, totals
from loadtest.latency import LatencyRecorder


async def measure(trial: harness.Trial) -> Measurement:
    p = trial.params
    members, duration, interval = p["members"], p["duration_s"], p["change_interval_s"]
    restless_n = max(1, round(members * p["restless_share"]))
    env, notes = tick_env(p)
    async with trial.topology(env=env) as topo:
        tick_s = topo.settings.presence_tick_ms / 1000
        seeded = await harness.seed(topo.settings, harness.lab_community(members))
        users = seeded.user_ids
        # The observer is READY before anyone else comes online and keeps every update from
        # then on, so its view is READY's snapshot plus updates in order (the gateway holds
        # updates for a session between its attach and READY: fanout.release).
        [observer] = await connect_counting(topo.settings, topo.urls, users[:1])
        early: list[tuple[str, dict[str, Any], float]] = []
        observer.on_dispatch = lambda t, d, at: early.append((t, d, at))
        clients = [observer, *await connect_counting(topo.settings, topo.urls, users[1:])]
        sentinel = clients[1]
        restless = clients[-restless_n:]
        uid = {c: u for c, u in zip(clients, users, strict=True)}
        shown: dict[int, str] = {}  # the observer's view: user -> status
        sent: dict[int, list[tuple[float, str]]] = {uid[c]: [] for c in restless}
        staleness = LatencyRecorder()
        finished = {"at": None}  # the sentinel's change, once each client saw it
        seen_end: set[CountingClient] = set()

        def observe(t: str, d: dict[str, Any], at: float) -> None:
            for pres in d.get("presences", ()):
                user, status = int(pres["user_id"]), pres["status"]
                shown[user] = status
                # the newest change to this status sent before it arrived
                history = sent.get(user, ())
                times = [s for s, st in history if st == status and s <= at]
                if times and finished["at"] is None:
                    staleness.record(at - max(times))

        def watch_end(client: CountingClient, t: str, d: dict[str, Any], at: float) -> None:
            for pres in d.get("presences", ()):
                if int(pres["user_id"]) == uid[sentinel] and pres["status"] == "dnd":
                    seen_end.add(client)

        for c in clients:
            c.on_dispatch = functools.partial(watch_end, c)
        for pres in next(iter(observer.ready["presences"].values()), {}).get("presences", []):
            shown[int(pres["user_id"])] = pres["status"]
        observer.on_dispatch = lambda t, d, at: (observe(t, d, at), watch_end(observer, t, d, at))
        for t, d, at in early:  # what arrived while the others were connecting, in order
            observer.on_dispatch(t, d, at)
        await observer.until(
            lambda: all(shown.get(u) == "online" for u in users),
            30,
            "the observer seeing every member online",
        )
        await asyncio.sleep(2 * tick_s)  # the last online updates reach the other clients
        frames0, bytes0 = totals(clients, "PRESENCE_UPDATE")
        cpu = harness.Cpu(topo).start()
        changes = 0
        stop_at = time.monotonic() + duration

        async def restless_member(i: int, c: CountingClient) -> None:
            nonlocal changes
            await asyncio.sleep(interval * i / restless_n)  # spread over the interval
            status = "idle"
            while time.monotonic() < stop_at:
                sent[uid[c]].append((time.monotonic(), status))
                await c.send_op(Op.PRESENCE_UPDATE, {"status": status})
                changes += 1
                status = "online" if status == "idle" else "idle"
                await asyncio.sleep(interval)

        started = time.monotonic()
        await harness.bounded(
            asyncio.gather(*(restless_member(i, c) for i, c in enumerate(restless))),
            duration + 30,
            "the status changes",
        )
        # The end marker: one more real change, by a member who stayed quiet.
        await sentinel.send_op(Op.PRESENCE_UPDATE, {"status": "dnd"})
        changes += 1
        for c in clients:
            await c.until(lambda c=c: c in seen_end, 30, "every client seeing the end marker")
        finished["at"] = time.monotonic()
        elapsed = finished["at"] - started
        spent = cpu.stop()
        frames, nbytes = totals(clients, "PRESENCE_UPDATE")
        frames -= frames0
        nbytes -= bytes0
        await harness.close_all(clients)
    cpu_of = functools.partial(_cpu, spent)
    return Measurement(
        {
            "deliveries_per_change": frames / changes,
            "bytes_per_change": nbytes / changes,
            "staleness_p50_ms": staleness.percentile_ms(50),
            "staleness_p99_ms": staleness.percentile_ms(99),
            "presence_cpu_s": cpu_of("presence"),
            "gateway_cpu_s": cpu_of("gateway"),
            "changes_per_s": changes / elapsed,
        },
        notes=notes,
    )


def _cpu(spent: dict[str, float], prefix: str) -> float:
    return round(sum(v for k, v in spent.items() if k.startswith(prefix)), 4)


@functools.lru_cache(maxsize=1)
def simulated() -> dict[str, float]:
    """The seeded simulation behind ``chatscale bench presence`` (5,000 members, 3,000 online,
    60 s): deliveries per visible change, raw and coalesced with a 1 s tick."""
    from presence.simulate import simulate_guild

    r = simulate_guild(members=5000, online=3000, seconds=60)
    raw, co = r["raw"], r["coalesced"]
    return {
        "raw": raw.deliveries_out / max(1, raw.changes_in),
        "coalesced": co.deliveries_out / max(1, co.changes_in),
    }


def conclude(o: Outcome) -> str:
    verdict = o.verdict("deliveries_per_change", "coalesced", "raw")
    dpc = o.compare("deliveries_per_change", "coalesced", "raw")
    bpc = o.compare("bytes_per_change", "coalesced", "raw")
    if verdict == "holds":
        first = (
            f"Coalescing per guild cuts the fan-out of presence: {dpc}; in bytes, {bpc} — each "
            "coalesced update carries several users, so bytes shrink less than frames"
        )
    elif verdict == "reversed":
        first = f"Against the guide, coalescing delivered more per change here ({dpc}; {bpc})"
    elif verdict == "tie":
        first = (
            f"Coalescing made no clear difference here ({dpc}): changes were too sparse for "
            "one tick to hold more than one"
        )
    else:
        first = "One of the arms produced no numbers, so nothing can be concluded"
    cpu = o.verdict("presence_cpu_s", "coalesced", "raw")
    if cpu == "holds":
        second = f". The presence service spent less too ({o.compare('presence_cpu_s', 'coalesced', 'raw')})"
    elif cpu == "reversed":
        second = (
            f". The presence service itself spent more with coalescing "
            f"({o.compare('presence_cpu_s', 'coalesced', 'raw')}): the saving is downstream, "
            f"in the gateways ({o.compare('gateway_cpu_s', 'coalesced', 'raw')}) and the clients"
        )
    else:
        second = (
            f". The presence service's CPU barely differs ({o.compare('presence_cpu_s', 'coalesced', 'raw')}); "
            f"the saving is downstream: {o.compare('gateway_cpu_s', 'coalesced', 'raw')}"
        )
    # p99: a coalesced change waits for its guild's window only when one was just sent, so
    # the median mostly shows the gateways' own tick, which both arms share.
    stale = o.verdict("staleness_p99_ms", "raw", "coalesced")
    p50 = o.compare("staleness_p50_ms", "coalesced", "raw")
    p99 = o.compare("staleness_p99_ms", "coalesced", "raw")
    if stale == "holds":
        third = (
            f". The price is freshness at the tail: {p99}, while {p50} (a change waits for "
            "its guild's window when an update has just gone out)"
        )
    elif stale == "reversed":
        third = f". Freshness did not suffer — the raw arm was staler ({p99}; {p50})"
    else:
        third = (
            f". Freshness hardly paid for it ({p99}; {p50}): the gateways' own presence tick "
            "delays both arms alike"
        )
    sim = simulated()
    fourth = (
        f". At Discord's scale the seeded simulation (`chatscale bench presence`, 5,000 members, "
        f"3,000 online) gives {fmt(sim['raw'])} deliveries per visible change raw vs "
        f"{fmt(sim['coalesced'])} coalesced ({factor(sim['raw'], sim['coalesced'])}): the cost of "
        "raw broadcast grows with the guild's online members, the coalesced one with its ticks."
    )
    return first + second + third + fourth


EXPERIMENT = Experiment(
    name="presence-coalesce",
    title="Presence: raw broadcast vs per-guild coalescing",
    claim=(
        "Presence should be aggregated per server to cut notification noise; broadcasting "
        "every presence change to every member bankrupts the infrastructure."
    ),
    claim_ids=(7, 8),
    hop="presence",
    knob="CHATSCALE_PRESENCE_COALESCE (and CHATSCALE_PRESENCE_TICK_MS, the window); "
    "`chatscale bench presence` simulates a large guild",
    arms=(
        Arm(
            "raw",
            "every status change broadcast at once to every member",
            settings={"CHATSCALE_PRESENCE_COALESCE": "false"},
        ),
        Arm(
            "coalesced",
            "at most one update per guild per tick, flaps netted (the default)",
            settings={"CHATSCALE_PRESENCE_COALESCE": "true"},
        ),
    ),
    metrics=(
        Metric("deliveries_per_change", "PRESENCE_UPDATE deliveries per status change", "count"),
        Metric("bytes_per_change", "bytes delivered per status change", "B"),
        Metric("staleness_p50_ms", "staleness of the shown status p50", "ms"),
        Metric("staleness_p99_ms", "staleness of the shown status p99", "ms"),
        Metric("presence_cpu_s", "presence service CPU", "s"),
        Metric("gateway_cpu_s", "gateway CPU", "s"),
        Metric("changes_per_s", "status changes sent", "1/s", better="none"),
    ),
    sizes={
        "tiny": {
            "members": 10,
            "restless_share": 0.5,
            "change_interval_s": 0.4,
            "duration_s": 0.8,
            "tick_ms": 200,
        },
        "quick": {
            "members": 100,
            "restless_share": 0.2,
            "change_interval_s": 2.0,
            "duration_s": 8.0,
        },
        "full": {
            "members": 300,
            "restless_share": 0.1,
            "change_interval_s": 2.0,
            "duration_s": 20.0,
        },
    },
    quick_seconds=35,
    measure=measure,
    conclude=conclude,
)
