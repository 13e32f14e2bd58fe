"""``chatscale bench compare``: chatscale's fan-out beside the bare-websockets floor.

One load generator for both systems, in this process: ``subscribers`` light receivers
(``loadtest/lightclient.py``: the websockets sans-I/O protocol inside an ``asyncio.Protocol``;
a frame is only searched for the bench's marker, never parsed) and one sender that sends
``messages`` SEND_MESSAGE frames with ``window`` awaiting their ack (a burst: as fast as the
server acknowledges). Each message goes to every receiver and back to the sender. The systems,
each started fresh per run:

- ``chatscale``: the embedded topology (1 gateway, 1 worker, presence, Valkey, SQLite), every
  receiver a member of one guild on the one gateway;
- ``chatscale-coalesced``: the same with ``CHATSCALE_CLIENT_WRITES=coalesced`` (one write per
  client per event-loop turn instead of one per frame), with ``--coalesced``;
- ``floor``: ``loadtest.floor``, ``websockets.broadcast()`` of one frame built once;
- ``centrifugo``: with ``--peer centrifugo``, a Centrifugo binary built by the documented
  command (``loadtest/centrifugo.py``) with the Redis engine on its own Valkey, every receiver
  subscribed to one channel, the sender publishing into it as a client.

Measured per run, once the servers are idle after the connection setup (``_settle``): server
CPU seconds from ``/proc`` (every chatscale process, and the gateway alone; the floor process)
over the burst, divided by the deliveries received, and deliveries per
second. Runs alternate between systems, ``repeat`` rounds; the summary is the median and the
values of every run, the ratio of medians system / floor and, with the Centrifugo peer,
chatscale's deliveries/s and CPU per delivery as ratios of Centrifugo's medians.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from websockets.protocol import State

from chatscale.discovery import TopologyError
from chatscale.wire import Op
from guilds import community
from loadtest import centrifugo as peer
from loadtest import floor
from loadtest.lightclient import Receiver, cpu_seconds, open_receivers, seeded_topology

SYSTEMS = ("chatscale", "chatscale-coalesced", "floor", "centrifugo")
PEERS = ("centrifugo",)

Command = Callable[[str, int], Any]  # (content, n) -> the n-th message's frame, as an object


def send_message(channel_id: int) -> Command:
    """chatscale's (and the floor's) SEND_MESSAGE of the ``n``-th bench message."""

    def command(body: str, n: int) -> dict[str, Any]:
        d = {"channel_id": str(channel_id), "content": body, "nonce": f"b{n}"}
        return {"op": int(Op.SEND_MESSAGE), "d": d}

    return command


SETTLE_QUIET = 0.05  # of a core: the servers count as idle below this
SETTLE_LIMIT_S = 20.0


async def _settle(procs: dict[str, psutil.Process], window_s: float = 0.5) -> None:
    """Before the burst, wait (at most ``SETTLE_LIMIT_S``) until the servers are idle: the
    connection setup leaves work behind (presence's online events, routes), which would
    otherwise be charged to the deliveries. Both systems wait the same way."""
    deadline = time.monotonic() + SETTLE_LIMIT_S
    while time.monotonic() < deadline:
        before = sum(cpu_seconds(procs).values())
        await asyncio.sleep(window_s)
        if sum(cpu_seconds(procs).values()) - before < SETTLE_QUIET * window_s:
            return


async def _burst(
    url_tokens: list[tuple[str, str]],
    command: Command,
    *,
    messages: int,
    window: int,
    content_chars: int,
    procs: dict[str, psutil.Process],
    factory: type[Receiver] = Receiver,
) -> dict[str, float]:
    """Connect, send the burst, wait for every delivery; CPU of ``procs`` over the burst.
    ``command`` makes each message's frame, ``factory`` speaks the system's protocol."""
    received = 0
    total = len(url_tokens) * messages
    all_in = asyncio.Event()

    def on_message(_raw: bytes) -> None:
        nonlocal received
        received += 1
        if received >= total:
            all_in.set()

    conns = await open_receivers(url_tokens, on_message, factory)
    me = {"load generator": psutil.Process()}
    await _settle(procs)
    sender = conns[0]  # receives its own copies like every other member
    acked = 0
    sent = 0
    nonces = itertools.count()
    body = "B" + "x" * max(0, content_chars - 1)

    def send_one() -> None:
        nonlocal sent
        sent += 1
        sender.send(command(body, next(nonces)))

    def on_ack(_raw: bytes) -> None:
        nonlocal acked
        acked += 1
        if sent < messages:
            send_one()

    sender.on_ack = on_ack
    try:
        before = cpu_seconds(procs)
        client_before = cpu_seconds(me)["load generator"]
        t0 = time.monotonic()
        for _ in range(min(window, messages)):
            send_one()
        try:
            await asyncio.wait_for(all_in.wait(), 120)
        except TimeoutError:
            shut = [c.closed_by() for c in conns if c.proto.state is not State.OPEN]
            raise TopologyError(
                f"{received} of {total} deliveries in 120 s; {len(shut)} receivers closed"
                + (f" (first: {shut[0]})" if shut else "")
            ) from None
        elapsed = time.monotonic() - t0
        after = cpu_seconds(procs)
        client_s = cpu_seconds(me)["load generator"] - client_before
    finally:
        for c in conns:
            c.close()
    spent = {name: after[name] - before[name] for name in before}
    out = {
        "deliveries": float(received),
        "seconds": elapsed,
        "deliveries_per_s": received / elapsed,
        "client_busy": client_s / elapsed,  # the load generator's share of a core
        **{f"cpu_s:{name}": v for name, v in spent.items()},
    }
    frames = sum(getattr(c, "publication_frames", 0) for c in conns)
    if frames:  # a peer that packs several deliveries into one WebSocket frame
        out["deliveries_per_frame"] = received / frames
    return out


def _spec(members: int) -> community.Community:
    names = [f"bench-{i:05d}" for i in range(members)]
    return community.Community(
        name="compare",
        guilds=[
            community.GuildSpec(name="compare", owner=names[0], channels=["bench"], members=names)
        ],
    )


async def run_chatscale(workdir: Path, subscribers: int, *, coalesced: bool, **load: Any) -> dict:
    env = {"CHATSCALE_HEARTBEAT_INTERVAL_MS": "60000"}
    if coalesced:
        env["CHATSCALE_CLIENT_WRITES"] = "coalesced"
    async with seeded_topology(workdir, _spec(subscribers), env=env, start_timeout_s=60) as (
        topo,
        minted,
        channels,
    ):
        pairs = [(topo.urls[0], token) for token in minted.values()]  # the owner first
        out = await _burst(pairs, send_message(channels[0].id), procs=topo.processes(), **load)
    out["server_cpu_s"] = sum(v for k, v in out.items() if k.startswith("cpu_s:"))
    out["gateway_cpu_s"] = sum(v for k, v in out.items() if k.startswith("cpu_s:gateway"))
    return out


async def run_floor(workdir: Path, subscribers: int, **load: Any) -> dict:
    async with floor.running(workdir) as (url, proc):
        pairs = [(url, "-")] * subscribers
        out = await _burst(pairs, send_message(1), procs={"floor": proc}, **load)
    out["server_cpu_s"] = out["gateway_cpu_s"] = out["cpu_s:floor"]
    return out


async def run_centrifugo(workdir: Path, subscribers: int, *, binary: Path, **load: Any) -> dict:
    async with peer.running(binary, workdir) as server:
        pairs = [(server.url, "-")] * subscribers
        out = await _burst(
            pairs,
            peer.publish_command,
            procs=server.processes(),
            factory=peer.CentrifugoReceiver,
            **load,
        )
    out["server_cpu_s"] = out["cpu_s:centrifugo"] + out["cpu_s:valkey"]
    out["gateway_cpu_s"] = out["cpu_s:centrifugo"]
    return out


async def compare(
    *,
    subscribers: int,
    messages: int,
    window: int = 16,
    content_chars: int = 100,
    repeat: int = 3,
    coalesced: bool = False,
    centrifugo: Path | None = None,
    say: Any = print,
) -> dict:
    """Alternate the systems ``repeat`` times; per system the per-run figures and medians.
    ``centrifugo``: the peer's binary (``loadtest/centrifugo.py``), adding it to the rounds."""
    systems = [
        s
        for s in SYSTEMS
        if (coalesced or s != "chatscale-coalesced") and (centrifugo or s != "centrifugo")
    ]
    load = {"messages": messages, "window": window, "content_chars": content_chars}
    runs: dict[str, list[dict]] = {s: [] for s in systems}
    with tempfile.TemporaryDirectory(prefix="chatscale-compare-") as tmp:
        for r in range(repeat):
            for i, system in enumerate(systems):
                workdir = Path(tmp) / f"{system}-{r}-{i}"
                workdir.mkdir()
                if system == "floor":
                    out = await run_floor(workdir, subscribers, **load)
                elif system == "centrifugo":
                    assert centrifugo is not None
                    out = await run_centrifugo(workdir, subscribers, binary=centrifugo, **load)
                else:
                    co = system == "chatscale-coalesced"
                    out = await run_chatscale(workdir, subscribers, coalesced=co, **load)
                d = out["deliveries"]
                out["server_us_per_delivery"] = out["server_cpu_s"] / d * 1e6
                out["gateway_us_per_delivery"] = out["gateway_cpu_s"] / d * 1e6
                runs[system].append(out)
                say(
                    f"  round {r + 1} {system}: {out['server_us_per_delivery']:.2f} µs server "
                    f"CPU per delivery ({out['gateway_us_per_delivery']:.2f} gateway/floor/"
                    f"centrifugo process), {out['deliveries_per_s']:,.0f} deliveries/s, load "
                    f"generator {out['client_busy']:.0%} of a core"
                    + (
                        f", {out['deliveries_per_frame']:.2f} deliveries per frame"
                        if "deliveries_per_frame" in out
                        else ""
                    )
                )
    summary: dict[str, dict[str, Any]] = {}
    for system, rs in runs.items():
        summary[system] = {
            key: {"median": statistics.median(r[key] for r in rs), "runs": [r[key] for r in rs]}
            for key in (
                "server_us_per_delivery",
                "gateway_us_per_delivery",
                "deliveries_per_s",
                "client_busy",
                "deliveries_per_frame",
            )
            if all(key in r for r in rs)
        }
    floor = summary["floor"]["server_us_per_delivery"]["median"]
    if floor <= 0:  # CPU time moves in clock ticks (10 ms): a burst too small to read
        raise ValueError("the floor's CPU read 0 s: use a larger --burst or --members")
    ratios = {
        s: {
            "server": summary[s]["server_us_per_delivery"]["median"] / floor,
            "gateway": summary[s]["gateway_us_per_delivery"]["median"] / floor,
        }
        for s in summary
        if s != "floor"
    }
    result = {
        "subscribers": subscribers,
        "messages": messages,
        "window": window,
        "content_chars": content_chars,
        "repeat": repeat,
        "summary": summary,
        "ratio_to_floor": ratios,
    }
    if "centrifugo" in summary:
        if summary["centrifugo"]["server_us_per_delivery"]["median"] <= 0:
            raise ValueError("Centrifugo's CPU read 0 s: use a larger --burst or --members")
        result["ratio_to_centrifugo"] = ratio_to_peer(summary, "centrifugo")
    return result


def ratio_to_peer(summary: dict[str, dict[str, Any]], name: str) -> dict[str, dict[str, float]]:
    """Each chatscale system's medians over the peer's: deliveries/s (higher is better) and
    server CPU per delivery (lower is better)."""
    p = summary[name]
    return {
        s: {
            "deliveries_per_s": m["deliveries_per_s"]["median"] / p["deliveries_per_s"]["median"],
            "server": m["server_us_per_delivery"]["median"] / p["server_us_per_delivery"]["median"],
        }
        for s, m in summary.items()
        if s.startswith("chatscale")
    }


def render(result: dict) -> str:
    def fmt(m: dict, digits: int) -> str:
        runs = ", ".join(f"{v:,.{digits}f}" for v in m["runs"])
        return f"{m['median']:,.{digits}f} ({runs})"

    lines = [
        f"bench compare: {result['subscribers']:,} subscribers, {result['messages']} messages of "
        f"{result['content_chars']} characters, {result['window']} awaiting their ack; median "
        f"of {result['repeat']} alternating runs (every run's value in brackets)",
    ]
    for system, s in result["summary"].items():
        lines.append(
            f"  {system:<20} server CPU per delivery {fmt(s['server_us_per_delivery'], 2)} µs; "
            f"gateway {fmt(s['gateway_us_per_delivery'], 2)} µs; "
            f"deliveries/s {fmt(s['deliveries_per_s'], 0)}; "
            f"load generator busy {fmt(s['client_busy'], 2)} of a core"
            + (
                f"; deliveries per frame {fmt(s['deliveries_per_frame'], 2)}"
                if "deliveries_per_frame" in s
                else ""
            )
        )
    for system, r in result["ratio_to_floor"].items():
        lines.append(
            f"  {system} / floor: {r['server']:.2f}x server CPU per delivery "
            f"(gateway alone {r['gateway']:.2f}x)"
        )
    for system, r in result.get("ratio_to_centrifugo", {}).items():
        lines.append(
            f"  {system} / centrifugo: {r['deliveries_per_s']:.2f}x deliveries/s, "
            f"{r['server']:.2f}x server CPU per delivery"
        )
    return "\n".join(lines)
