"""``chatscale loadtest``: the command line of the load tester (wired into ``chatscale.cli``)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from chatscale import discovery
from chatscale.commandline import DefaultsHelp, UsageError
from chatscale.discovery import WORKDIR, settings_for_tools
from loadtest import scenarios

EPILOG = """\
scenarios:
{scenarios}

communities: the behaviour files in seeds/ (study-group, gaming-50k, streamer-live) or a path.

examples:
  chatscale loadtest steady --community study-group --duration 30
  chatscale loadtest celebrity --community gaming-50k --online 2000 --rate 0.5
  chatscale loadtest connect-storm --community streamer-live
  chatscale loadtest kill-worker --community study-group --rate 50
  chatscale loadtest steady --community study-group --gateway ws://127.0.0.1:8765 --gateway ws://127.0.0.1:8766

Without --gateway the test starts its own topology the way `chatscale run` does (Valkey,
gateways, workers, presence on free ports; SQLite in {storage}), with the per-connection and
per-user rate limits raised. With --gateway it uses those gateways and finds Redis/storage from
REDIS_URL or .chatscale/run.json (raise CHATSCALE_EVENTS_PER_WINDOW and
CHATSCALE_USER_MESSAGES_PER_WINDOW there). Output: a live line per second, a final table,
DIR/report.json (everything) and DIR/report.html (charts, self-contained).
"""


def add_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from loadtest.engine import RunConfig

    storage = RunConfig("steady", "x").storage_url
    lt = sub.add_parser(
        "loadtest",
        help="load-test with a simulated community: steady chat, storms, faults; JSON + HTML report",
        description="Drive real WebSocket clients of a simulated community against a topology and "
        "report rates, latency percentiles, exact lost/duplicated/reordered counts and the CPU of "
        "every process.",
        epilog=EPILOG.format(
            scenarios="\n".join(f"  {k:16} {v}" for k, v in scenarios.SCENARIOS.items()),
            storage=storage.removeprefix("sqlite:///"),
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    lt.add_argument(
        "scenario",
        choices=list(scenarios.SCENARIOS),
        metavar="SCENARIO",
        help="one of: " + ", ".join(scenarios.SCENARIOS),
    )
    lt.add_argument(
        "--community",
        metavar="NAME",
        help="behaviour file: a name in seeds/ (study-group, gaming-50k, streamer-live) or a "
        "path; required by every scenario but voice",
    )
    lt.add_argument(
        "--duration",
        type=float,
        metavar="S",
        help="seconds of the run phase (default per scenario: "
        + ", ".join(f"{k} {v:g}" for k, v in scenarios.DEFAULT_DURATION.items())
        + ")",
    )
    lt.add_argument(
        "--processes",
        type=int,
        default=2,
        metavar="N",
        help="generator processes (default 2, one per core; 0: in this process)",
    )
    lt.add_argument(
        "--rate",
        type=float,
        metavar="R",
        help="messages/s for the whole community (celebrity: the owner's messages/s, "
        "default 0.5; connect-storm: connections/s instead of the file's arrival)",
    )
    lt.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="where report.json and report.html go (default reports/SCENARIO-COMMUNITY-TIME)",
    )
    lt.add_argument(
        "--gateway",
        action="append",
        metavar="URL",
        help="use this running gateway (repeat) instead of starting a topology",
    )
    lt.add_argument(
        "--online",
        type=int,
        metavar="N",
        help="override the community's online count (same seed, fewer clients)",
    )
    lt.add_argument("--seed", type=int, help="schedule seed (default: the community's)")
    lt.add_argument(
        "--fault-at",
        type=float,
        metavar="S",
        help="faults and reconnect-storm: seconds into the run (default: a third of it)",
    )
    lt.add_argument(
        "--pause",
        type=float,
        default=5.0,
        metavar="S",
        help="pause-redis, pause-cassandra: how long the server stays stopped (default 5)",
    )
    lt.add_argument(
        "--connect-rate",
        type=float,
        default=250.0,
        metavar="N",
        help="connections/s while setting up before the run (default 250)",
    )
    lt.add_argument(
        "--window",
        type=int,
        default=1,
        metavar="N",
        help="messages a client may have awaiting MESSAGE_ACK (default 1: stop-and-wait, "
        "as a careful client; more lets one chatty member exceed 1/ack-latency)",
    )
    lt.add_argument(
        "--connect-window",
        type=int,
        default=64,
        metavar="N",
        help="setup: at most this many clients connecting at once (default 64)",
    )
    lt.add_argument(
        "--drain",
        type=float,
        default=15.0,
        metavar="S",
        help="at most this long after the run for deliveries to arrive (default 15)",
    )
    lt.add_argument(
        "--ready-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="a connection attempt without READY within this is a failure (default 30)",
    )
    lt.add_argument(
        "--gateways", type=int, default=2, help="embedded topology: gateways (default 2)"
    )
    lt.add_argument("--workers", type=int, default=2, help="embedded topology: workers (default 2)")
    lt.add_argument(
        "--presence",
        type=int,
        default=1,
        help="embedded topology: presence processes, sharing CHATSCALE_PRESENCE_PARTITIONS "
        "(default 1)",
    )
    lt.add_argument(
        "--ready-bound",
        type=float,
        default=10.0,
        metavar="S",
        help="storms (connect-storm, reconnect-storm): the verdict is NOT CLEAN when "
        "READY p99 exceeds this",
    )
    lt.add_argument(
        "--talkers-together",
        action="store_true",
        help="the clients that send share the generator processes with everyone else (default: "
        "when they are at most 10%% of the clients they get one process of their own, so their "
        "send lag measures the server, not a generator busy receiving for thousands)",
    )
    lt.add_argument(
        "--cpu-hog",
        action="store_true",
        help="run a competing process that keeps one core busy for the whole run (default off)",
    )
    lt.add_argument(
        "--storage-url",
        default=storage,
        help=f"embedded topology: history/metadata store (default {storage}; kept between "
        "runs so a big community loads once)",
    )
    lt.add_argument(
        "--redis-cluster",
        type=int,
        default=0,
        metavar="N",
        help="embedded topology: a local Valkey Cluster of N masters instead of one Valkey",
    )
    voice = lt.add_argument_group("voice (scenario voice only)")
    voice.add_argument("--speakers", type=int, default=2, help="participants who talk")
    voice.add_argument("--listeners", type=int, default=4, help="participants who only listen")
    voice.add_argument(
        "--loss", type=float, default=0.0, help="share of packets lost at each sender"
    )
    voice.add_argument(
        "--jitter", type=float, default=0.0, metavar="MS", help="extra delay, uniform 0..MS"
    )
    voice.add_argument("--burst", type=float, default=0.0, help="P(lost | previous lost)")
    voice.add_argument(
        "--bandwidth",
        type=float,
        default=0.0,
        metavar="KBPS",
        help="each sender's bottleneck (0: none)",
    )
    voice.add_argument(
        "--transport",
        choices=["udp", "tcp"],
        default="udp",
        help="the relay arm (embedded topology)",
    )
    voice.add_argument("--adapt", action="store_true", help="AIMD bitrate from receiver reports")
    raid = lt.add_argument_group("spam-raid (SPAM_DETECT is turned on in the topology)")
    raid.add_argument("--bots", type=int, default=6, help="bot accounts created")
    raid.add_argument(
        "--bot-every", type=float, default=5.0, metavar="S",
        help="a new bot account every S seconds",
    )  # fmt: skip
    raid.add_argument(
        "--bot-rate", type=float, default=1.0, metavar="R",
        help="messages/s each bot sends",
    )  # fmt: skip
    raid.add_argument(
        "--newcomers",
        type=int,
        default=4,
        metavar="N",
        help="normal accounts created during the run, chatting like people",
    )
    raid.add_argument(
        "--bot-rotate-mentions",
        action="store_true",
        help="bots mention different members in every message (harder: fewer exact duplicates)",
    )  # fmt: skip
    lt.set_defaults(fn=cmd_loadtest)


async def cmd_raid(args: argparse.Namespace) -> int:
    from loadtest import raid

    if args.gateway:
        raise UsageError("spam-raid starts its own topology (SPAM_DETECT on): drop --gateway")
    if args.bots < 1 or args.bot_every <= 0 or args.bot_rate <= 0 or args.newcomers < 0:
        raise UsageError(
            "spam-raid needs --bots >= 1, --bot-every > 0, --bot-rate > 0, --newcomers >= 0"
        )
    cfg = raid.RaidConfig(
        community=args.community,
        duration=args.duration or scenarios.DEFAULT_DURATION["spam-raid"],
        bots=args.bots,
        bot_every_s=args.bot_every,
        bot_rate=args.bot_rate,
        newcomers=args.newcomers,
        bot_rotate=args.bot_rotate_mentions,
        chat_rate=args.rate,
        online=args.online,
        seed=args.seed,
        storage_url=args.storage_url,
        gateways=args.gateways,
        workers=args.workers,
        command="chatscale " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    )
    cfg.out = (
        args.out
        or Path("reports")
        / f"spam-raid-{Path(args.community).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    try:
        result = await raid.run(cfg)
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from None
    path = raid.write(result, cfg.out)
    print()
    print(raid.text(result))
    print(f"\nfile: {path}")
    return 0 if all(result["verdict"].values()) else 1


async def cmd_loadtest(args: argparse.Namespace) -> int:
    from loadtest import engine, report

    if args.scenario == "voice":
        from loadtest.voice import cmd_voice

        return await cmd_voice(args)
    if not args.community:
        raise UsageError(f"loadtest {args.scenario} needs --community NAME")
    if args.scenario == "spam-raid":
        return await cmd_raid(args)

    cfg = engine.RunConfig(
        scenario=args.scenario,
        community=args.community,
        duration=args.duration,
        processes=args.processes,
        rate=args.rate,
        gateways=args.gateway,
        online=args.online,
        seed=args.seed,
        fault_at=args.fault_at,
        pause_s=args.pause,
        connect_rate=args.connect_rate,
        connect_window=args.connect_window,
        window=args.window,
        drain_s=args.drain,
        ready_timeout=args.ready_timeout,
        embedded_gateways=args.gateways,
        embedded_workers=args.workers,
        embedded_presence=args.presence,
        storage_url=args.storage_url,
        ready_bound_s=args.ready_bound,
        cpu_hog=args.cpu_hog,
        talkers_apart=not args.talkers_together,
        redis_cluster=args.redis_cluster,
        command="chatscale " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    )
    cfg.out = args.out or engine.default_out(cfg)
    try:
        result = await engine.run(cfg)
    # expected failures (an unknown community file included): one line, no traceback
    except (engine.LoadTestError, ValueError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from None
    json_path, html_path = report.write(result, cfg.out)
    print()
    print(report.text(result))
    print(f"\nfiles: {json_path}  {html_path}")
    return 0 if result["verdict"]["clean"] else 1


# ---- chatscale bench ----------------------------------------------------------------------


async def cmd_bench(args: argparse.Namespace) -> int:
    from chatscale.trace import ToolError
    from loadtest import bench

    settings = settings_for_tools(need_live=args.mode in ("chat", "idle"))
    for name, per_mode in BENCH_DEFAULTS.items():  # each mode has its own defaults
        if getattr(args, name) is None:
            setattr(args, name, per_mode.get(args.mode, per_mode["chat"]))
    if args.peer is not None and (args.mode, args.peer) not in PEERS:
        modes = ", ".join(f"{peer} with {mode}" for mode, peer in PEERS)
        raise UsageError(f"bench {args.mode}: --peer {args.peer} is not measured here ({modes})")
    if args.mode == "ingest":
        return await _bench_ingest(args)
    try:
        args.rate = float(args.rate)
    except ValueError:
        raise UsageError(f"bench {args.mode}: --rate {args.rate!r} is not a number") from None
    if args.mode == "presence":
        from presence.simulate import simulate_guild

        coalesce_s = args.interval
        r = simulate_guild(
            members=args.members,
            online=args.online,
            seconds=int(args.duration),
            interval_s=coalesce_s,
            seed=args.seed,
        )
        raw, co = r["raw"], r["coalesced"]
        print(
            json.dumps(
                {
                    "members": args.members,
                    "online_at_start": args.online,
                    "seconds": int(args.duration),
                    "seed": args.seed,
                    "events": r["events"],
                    "visible_changes": raw.changes_in,
                    "raw": {
                        "updates": raw.updates_out,
                        "deliveries": raw.deliveries_out,
                        "deliveries_per_change": round(
                            raw.deliveries_out / max(1, raw.changes_in), 1
                        ),
                    },
                    "coalesced": {
                        "interval_s": coalesce_s,
                        "updates": co.updates_out,
                        "deliveries": co.deliveries_out,
                        "deliveries_per_change": round(
                            co.deliveries_out / max(1, co.changes_in), 1
                        ),
                        "flaps_netted": co.net_zero,
                    },
                    "saving": round(raw.deliveries_out / max(1, co.deliveries_out), 1),
                },
                indent=2,
            )
        )
        return 0
    if args.mode == "compare":
        from loadtest import compare

        subscribers = int(args.members)
        binary = None
        if args.peer == "centrifugo":
            from loadtest import centrifugo

            binary = centrifugo.DEFAULT_BINARY
            if missing := centrifugo.missing_binary(binary):
                raise UsageError(f"bench compare: {missing}")
        try:
            result = await compare.compare(
                subscribers=subscribers,
                messages=args.burst or max(1, 200_000 // subscribers),
                window=args.window,
                repeat=args.repeat,
                coalesced=args.coalesced,
                centrifugo=binary,
                say=lambda text: print(text, file=sys.stderr),
            )
        except ValueError as exc:
            print(f"bench compare: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(result, indent=2) if args.json else compare.render(result))
        return 0
    if args.mode == "storage":
        from loadtest import storage_bench

        if args.storage_url:
            settings = settings.model_copy(update={"storage_url": args.storage_url})
        result = await storage_bench.run(settings, messages=args.messages, reads=args.reads)
        print(json.dumps(result, indent=2))
        return 0
    state = WORKDIR / discovery.STATE_FILE
    if not (state.exists() or args.gateway) or settings.redis_url is None:
        raise UsageError(
            "no running topology: start `chatscale run` in this directory first, or set "
            "REDIS_URL and CHATSCALE_STORAGE_URL and pass --gateway ws://host:port"
        )
    run_state = json.loads(state.read_text()) if state.exists() else None
    urls = args.gateway or run_state["gateways"]
    if args.gateway:  # other gateways than run.json's: sample only what Redis registered
        run_state = None
    try:
        if args.mode == "idle":
            result = await bench.idle(
                settings,
                urls,
                connections=args.connections,
                duration=args.duration,
                state=run_state,
                say=lambda text: print(text, file=sys.stderr, flush=True),
            )
        else:
            result = await bench.chat(
                settings,
                urls,
                members=args.members,
                senders=min(args.senders, args.members),
                rate=args.rate,
                duration=args.duration,
                state=run_state,
            )
    except (ToolError, LookupError) as exc:
        print(f"bench {args.mode}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


async def _bench_ingest(args: argparse.Namespace) -> int:
    from loadtest import ingest_bench

    try:
        rates = ingest_bench.parse_rates(args.rate)
        ingest_bench.check(
            rates=rates,
            clients=args.clients,
            group=args.group,
            duration=args.duration,
            warmup=args.warmup,
            repeat=args.repeat,
        )
    except ValueError as exc:
        raise UsageError(f"bench ingest: {exc}") from None
    result = await ingest_bench.ingest(
        rates=rates,
        clients=args.clients,
        group=args.group,
        duration=args.duration,
        warmup=args.warmup,
        repeat=args.repeat,
        peer=args.peer,
        say=lambda text: print(text, file=sys.stderr, flush=True),
    )
    print(json.dumps(result, indent=2) if args.json else ingest_bench.render(result))
    return 0


def add_bench_command(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``chatscale bench``: baseline figures (chat, idle, storage, presence, compare, ingest)."""
    b = sub.add_parser(
        "bench",
        help="baseline figures against the topology `chatscale run` started",
        formatter_class=DefaultsHelp,
    )
    b.add_argument(
        "mode",
        choices=["chat", "idle", "storage", "presence", "compare", "ingest"],
        help="chat: rate/latency/loss; idle: memory per connection and idle server CPU; "
        "storage: history inserts/s, hot vs cold page latency; presence: deliveries per status change, raw vs coalesced; "
        "compare: server CPU per delivery of chatscale's fan-out against a bare websockets "
        "broadcast() server, same load generator, alternating fresh runs; "
        "ingest: the highest msg/s sustained with ack p99 < 100 ms, open loop, clients in "
        "small guilds, and server CPU and Valkey commands per message, a fresh topology per "
        "rate (storage, presence, compare and ingest need no running topology)",
    )
    b.add_argument(
        "--members",
        type=int,
        help="chat: connected members of the bench guild (default 20); presence: guild size "
        "(default 5000)",
    )
    b.add_argument(
        "--online", type=int, default=3000, help="presence mode: members online at the start"
    )
    b.add_argument(
        "--interval", type=float, default=1.0, help="presence mode: coalescing window (s)"
    )
    b.add_argument("--seed", type=int, default=20240611, help="presence mode: simulation seed")
    b.add_argument("--senders", type=int, default=4, help="chat: members that send")
    b.add_argument(
        "--rate",
        help="chat: total messages/s (default 100; 0: as fast as acks return); ingest: target "
        "msg/s, a comma list, one fresh topology each (default 250,500,1000,2000)",
    )
    b.add_argument(
        "--duration",
        type=float,
        help="chat: seconds of sending (default 10); idle: seconds of idle CPU measured (default "
        "20); presence: simulated seconds (default 60); "
        "ingest: measured seconds per rate, after the warm-up (default 10)",
    )
    b.add_argument(
        "--clients", type=int, default=1000, help="ingest mode: clients, every one a sender"
    )
    b.add_argument(
        "--group", type=int, default=4, help="ingest mode: members per guild (one channel each)"
    )
    b.add_argument(
        "--warmup", type=float, default=2.0, help="ingest mode: seconds sent before the window"
    )
    b.add_argument("--connections", type=int, default=1000, help="idle mode: connections to open")
    b.add_argument(
        "--storage-url", help="storage mode: backend to measure (default CHATSCALE_STORAGE_URL)"
    )
    b.add_argument("--messages", type=int, default=20000, help="storage mode: messages to insert")
    b.add_argument("--reads", type=int, default=500, help="storage mode: page reads of each kind")
    b.add_argument(
        "--gateway",
        action="append",
        help="gateway URL to connect to (repeat; default: the gateways in .chatscale/run.json)",
    )
    b.add_argument(
        "--burst",
        type=int,
        help="compare mode: messages per run (default: 200,000 deliveries / members)",
    )
    b.add_argument("--window", type=int, default=16, help="compare mode: sends awaiting an ack")
    b.add_argument(
        "--repeat",
        type=int,
        help="compare and ingest modes: alternating rounds (default 3; ingest 1)",
    )
    b.add_argument(
        "--coalesced",
        action="store_true",
        help="compare mode: also run chatscale with CHATSCALE_CLIENT_WRITES=coalesced",
    )
    b.add_argument(
        "--peer",
        choices=["centrifugo", "floor"],
        help="also run a peer system in the same harness, alternating with chatscale; compare "
        "mode: centrifugo (the binary at ~/.cache/chatscale/centrifugo/centrifugo, built by the "
        "command in docs/benchmarks.md; its Redis engine on its own Valkey); ingest mode: floor "
        "(loadtest/floor.py, a bare websockets server that acknowledges each message and sends "
        "it to its channel's members, nothing behind it)",
    )
    b.add_argument(
        "--json", action="store_true", help="compare and ingest modes: print the result as JSON"
    )
    b.set_defaults(fn=cmd_bench)


#: (mode, --peer) pairs that exist
PEERS = (("compare", "centrifugo"), ("ingest", "floor"))

BENCH_DEFAULTS: dict[str, dict[str, float | str]] = {
    "members": {"chat": 20, "idle": 20, "presence": 5000, "compare": 1000},
    "duration": {"chat": 10.0, "idle": 20.0, "presence": 60.0, "ingest": 10.0},
    "rate": {"chat": "100", "ingest": "250,500,1000,2000"},
    "repeat": {"chat": 3, "ingest": 1},
}
