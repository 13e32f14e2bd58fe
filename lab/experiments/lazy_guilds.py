"""Lazy guilds: tell everyone about every arrival, or only those who watch (claim 4).

A crowd arrives in one guild: ``members`` clients connect one after another. Arm ``eager``
(``CHATSCALE_LARGE_GUILD_THRESHOLD`` far above the guild): every arrival is told to every
member already online, and READY lists every online member's presence — an arrival costs
O(online), the crowd O(n²). Arm ``lazy`` (the threshold below the guild's size): READY carries
counts only, and each client watches a sidebar of ``loadtest.memberlist.SIDEBAR`` members
(GUILD_SUBSCRIPTIONS, op 14: the next members of the online list, so everyone has that many
watchers), so an arrival costs O(watchers).

Measured at the lab's clients (frames as they came off the wire): PRESENCE_UPDATE bytes and
frames per arrival; READY's size for the last arrival (everyone else online) and the median
time from IDENTIFY to READY; the gateways' CPU. The end: the last arrival seen by a client that
watches it (in both arms), then two presence ticks for the others' copies to land. A client
subscribes right after its READY; an arrival published before a watcher's subscription is
processed would be missed by it, which would flatter the lazy arm — the next member arrives
after a full IDENTIFY and at least one presence tick, far later than one frame.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from lab import harness
from lab.experiment import Arm, Experiment, Measurement, Metric, Outcome
from lab.presence_util import CountingClient, tick_env, totals
from loadtest.memberlist import SIDEBAR, watch_list

EAGER = str(10**9)  # a threshold no guild reaches: lazy guilds off
LAZY = "2"  # every guild of more than 2 members is lazy


async def measure(trial: harness.Trial) -> Measurement:
    p = trial.params
    members = p["members"]
    lazy = trial.arm.name == "lazy"
    env, notes = tick_env(p)
    async with trial.topology(env=env) as topo:
        tick_s = topo.settings.presence_tick_ms / 1000
        seeded = await harness.seed(topo.settings, harness.lab_community(members))
        users, guild = seeded.user_ids, seeded.guild_id
        order = list(range(members))
        sidebar = p.get("sidebar", SIDEBAR)
        ready_ms: list[float] = []
        cpu = harness.Cpu(topo).start()

        async def arrive(k: int) -> CountingClient:
            url = topo.urls[k % len(topo.urls)]
            started = time.monotonic()
            c = await CountingClient.identify(url, harness.token(topo.settings, users[k]))
            ready_ms.append((time.monotonic() - started) * 1000)
            if lazy:  # the rows of its member list: the next ``sidebar`` members
                await c.subscribe(guild, [users[j] for j in watch_list(order, k, size=sidebar)])
            return c

        clients: list[CountingClient] = []
        try:
            for k in range(members):  # one after another: each arrival meets the ones before
                clients.append(await harness.bounded(arrive(k), 60, f"member {k} reaching READY"))
            last = str(users[-1])
            seen = {"last": False}

            def watch_last(t: str, d: dict[str, Any], at: float) -> None:
                if any(x["user_id"] == last for x in d.get("presences", ())):
                    seen["last"] = True

            clients[-2].on_dispatch = watch_last  # watches the last in both arms
            await clients[-2].until(lambda: seen["last"], 30, "the last arrival being seen")
            await asyncio.sleep(2 * tick_s)  # the other watchers' copies of it land
            frames, nbytes = totals(clients, "PRESENCE_UPDATE")
            # One more arrival with everyone online: what READY costs in a full guild.
            probe = await CountingClient.identify(
                topo.urls[0], harness.token(topo.settings, users[0])
            )
            clients.append(probe)
            full_ready = probe.bytes["READY"]
            spent = cpu.stop()
        finally:
            await harness.close_all(clients)
    gateway_cpu = round(sum(v for k, v in spent.items() if k.startswith("gateway")), 4)
    return Measurement(
        {
            "presence_bytes_per_arrival": nbytes / members,
            "presence_frames_per_arrival": frames / members,
            "ready_bytes_full": float(full_ready),
            "ready_ms_p50": statistics.median(ready_ms),
            "gateway_cpu_s": gateway_cpu,
        },
        notes=notes,
    )


def conclude(o: Outcome) -> str:
    verdict = o.verdict("presence_bytes_per_arrival", "lazy", "eager")
    per = o.compare("presence_bytes_per_arrival", "lazy", "eager")
    ready = o.compare("ready_bytes_full", "lazy", "eager")
    if verdict == "holds":
        first = (
            f"Lazy guilds cut what one arrival costs in presence: {per}. Eagerly, each arrival "
            "is told to everyone already online, so its cost grows with the crowd (the crowd's "
            f"with its square); lazily only its watchers hear of it ({SIDEBAR} each at quick and full size)"
        )
    elif verdict == "reversed":
        first = f"Against the claim, lazy guilds sent more presence per arrival here ({per})"
    elif verdict == "tie":
        first = (
            f"Lazy guilds made no clear difference per arrival here ({per}): the crowd is not "
            f"much larger than the {SIDEBAR} watchers each member has"
        )
    else:
        first = "One of the arms produced no numbers, so nothing can be concluded"
    second = (
        f". READY for an arrival into the full guild: {ready} — eagerly it lists every online "
        "member's presence, lazily only counts (members come on request, op 8)"
    )
    third = (
        f". Time to READY: {o.compare('ready_ms_p50', 'lazy', 'eager')}; gateway CPU: "
        f"{o.compare('gateway_cpu_s', 'lazy', 'eager')}."
    )
    return first + second + third


EXPERIMENT = Experiment(
    name="lazy-guilds",
    title="Lazy guilds: presence to everyone vs to watchers only",
    claim=(
        "When a streamer goes live, thousands of viewers connect at once; the system must "
        "absorb the thundering herd instead of collapsing."
    ),
    claim_ids=(4,),
    hop="presence",
    knob="CHATSCALE_LARGE_GUILD_THRESHOLD (members; above it a guild is lazy: op 8 / op 14, "
    "docs/protocol.md *Lazy guilds*); a huge value turns it off",
    arms=(
        Arm(
            "eager",
            "every arrival told to every online member; READY lists presences",
            settings={"CHATSCALE_LARGE_GUILD_THRESHOLD": EAGER},
        ),
        Arm(
            "lazy",
            f"READY has counts; each member watches {SIDEBAR} others (op 14)",
            settings={"CHATSCALE_LARGE_GUILD_THRESHOLD": LAZY},
        ),
    ),
    metrics=(
        Metric("presence_bytes_per_arrival", "presence bytes received per arrival", "B"),
        Metric("presence_frames_per_arrival", "PRESENCE_UPDATE frames per arrival", "count"),
        Metric("ready_bytes_full", "READY size, arriving into the full guild", "B"),
        Metric("ready_ms_p50", "IDENTIFY to READY p50", "ms"),
        Metric("gateway_cpu_s", "gateway CPU", "s"),
    ),
    sizes={
        "tiny": {"members": 10, "sidebar": 2, "tick_ms": 200},
        "quick": {"members": 150},
        "full": {"members": 400},
    },
    quick_seconds=45,
    measure=measure,
    conclude=conclude,
)
