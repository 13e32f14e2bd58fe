"""``chatscale loadtest``: the command line of the load tester (wired into ``chatscale.cli``)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

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


class DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows every option's default, except options without one (None/False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False) or action.help is None:
            return action.help
        return super()._get_help_string(action)


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
        required=True,
        metavar="NAME",
        help="behaviour file: a name in seeds/ (study-group, gaming-50k, streamer-live) or a path",
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
        "--storage-url",
        default=storage,
        help=f"embedded topology: history/metadata store (default {storage}; kept between "
        "runs so a big community loads once)",
    )
    lt.set_defaults(fn=cmd_loadtest)


async def cmd_loadtest(args: argparse.Namespace) -> int:
    from loadtest import engine, report

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
        storage_url=args.storage_url,
        command="chatscale " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    )
    cfg.out = args.out or engine.default_out(cfg)
    try:
        result = await engine.run(cfg)
    except (engine.LoadTestError, ValueError) as exc:  # expected failures: one line, no traceback
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2
    json_path, html_path = report.write(result, cfg.out)
    print()
    print(report.text(result))
    print(f"\nfiles: {json_path}  {html_path}")
    return 0 if result["verdict"]["clean"] else 1
