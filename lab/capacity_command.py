"""``chatscale capacity``: the command over ``lab.capacity`` (the arithmetic) and
``lab.experiments.capacity`` (measuring the per-unit costs here)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lab.capacity import Load, Machine, costs_from_result, plan, plan_json, render


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``chatscale capacity``."""
    from chatscale.commandline import DefaultsHelp

    d, m = Load(), Machine()
    c = sub.add_parser(
        "capacity",
        help="machines per tier for a stated load, from per-unit costs measured here",
        description="Measure what one connection, message, delivery and presence change cost "
        "each tier here (short runs on a real embedded topology), or read them from a "
        "`chatscale lab run capacity` result, and turn a stated load into machines per tier. "
        "Every assumption is printed with the answer.",
        formatter_class=DefaultsHelp,
    )
    c.add_argument("--connections", type=int, default=d.connections, help="concurrent connections")
    c.add_argument(
        "--messages-per-s", type=float, default=d.messages_per_s, help="inbound messages per second"
    )
    c.add_argument(
        "--recipients", type=float, default=d.recipients, help="mean online recipients per message"
    )
    c.add_argument(
        "--presence-per-s", type=float, default=d.presence_per_s, help="presence changes per second"
    )
    c.add_argument(
        "--presence-audience",
        type=float,
        default=d.presence_audience,
        help="online members who see one presence change",
    )
    c.add_argument(
        "--largest-guild", type=int, default=d.largest_guild, help="members of the largest guild"
    )
    c.add_argument(
        "--largest-online",
        type=int,
        default=d.largest_online,
        help="online members of the largest guild",
    )
    c.add_argument(
        "--heartbeat-s", type=float, default=d.heartbeat_s, help="clients' heartbeat interval"
    )
    c.add_argument("--cores", type=int, default=m.cores, help="cores per machine")
    c.add_argument("--memory-gib", type=float, default=m.memory_gib, help="memory per machine")
    c.add_argument(
        "--target-cpu", type=float, default=m.target_cpu, help="busiest a machine's CPU may be"
    )
    c.add_argument(
        "--target-memory",
        type=float,
        default=m.target_memory,
        help="fullest a machine's memory may be",
    )
    c.add_argument(
        "--from",
        dest="source",
        type=Path,
        metavar="RESULT_JSON",
        help="read the per-unit costs from a `chatscale lab run capacity` result.json instead of measuring",
    )
    c.add_argument(
        "--size",
        choices=["tiny", "quick", "full"],
        default="quick",
        help="how long the measurement runs (tiny ≈ 5 s, quick ≈ 15 s)",
    )
    c.add_argument("--json", action="store_true", help="print the plan as JSON")
    c.set_defaults(fn=cmd_capacity)


async def cmd_capacity(args: argparse.Namespace) -> int:
    from chatscale.commandline import UsageError

    load = Load(
        connections=args.connections,
        messages_per_s=args.messages_per_s,
        recipients=args.recipients,
        presence_per_s=args.presence_per_s,
        presence_audience=args.presence_audience,
        largest_guild=args.largest_guild,
        largest_online=args.largest_online,
        heartbeat_s=args.heartbeat_s,
    )
    machine = Machine(args.cores, args.memory_gib, args.target_cpu, args.target_memory)
    if args.source is not None:
        try:
            costs = costs_from_result(args.source)
        except OSError as exc:
            raise UsageError(
                f"cannot read {args.source} ({exc.strerror or exc}); give the result.json of a "
                "`chatscale lab run capacity`"
            ) from None
        except (ValueError, KeyError) as exc:
            raise UsageError(str(exc)) from None
    else:
        from lab.experiments.capacity import measure_costs

        print(f"measuring per-unit costs on a fresh embedded topology (size {args.size}) ...")
        costs = await measure_costs(size=args.size, say=print)
    p = plan(costs, load, machine)
    if args.json:
        print(json.dumps(plan_json(p), indent=2))
    else:
        print(render(p))
    return 0
