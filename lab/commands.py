"""``chatscale lab``: list the experiments, run one or all, and index a results folder."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from chatscale.commandline import DefaultsHelp, UsageError

EPILOG = """\
examples:
  chatscale lab list                         # every experiment, its claim, arms and time
  chatscale lab run slowmode --quick         # one experiment, one round per arm
  chatscale lab run serialize --repeat 5     # five alternating rounds per arm
  chatscale lab run all --quick              # the whole tour (about {tour} min here)
  chatscale lab report lab-results           # an index page of everything in the folder

Every arm runs on a real topology started for it (Valkey, gateway, worker, presence as separate
processes, SQLite history in the results folder), with the arm's settings; nothing needs to be
running. Each experiment writes OUT/NAME/result.json and OUT/NAME/index.html (offline).
"""


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from lab.experiments import all_experiments

    tour = sum(e.quick_seconds for e in all_experiments()) / 60
    lab = sub.add_parser(
        "lab",
        help="the trade-off lab: each design-guide claim as a two-arm experiment, measured",
        description="Run each claim of the design guide as an experiment with two (or more) arms "
        "on a real embedded topology, alternating the arms, and report medians, spreads, ratios "
        "and what the numbers show.",
        epilog=EPILOG.format(tour=f"{tour:.0f}"),
        formatter_class=DefaultsHelp,
    )
    lsub = lab.add_subparsers(dest="lab_command", required=True, metavar="{list,run,report}")
    ls = lsub.add_parser("list", help="the experiments", formatter_class=DefaultsHelp)
    ls.add_argument("--json", action="store_true", help="a JSON list for tools")
    ls.set_defaults(fn=cmd_list)
    run = lsub.add_parser("run", help="run an experiment (or all)", formatter_class=DefaultsHelp)
    run.add_argument("name", metavar="NAME", help="an experiment (see `lab list`) or `all`")
    run.add_argument(
        "--quick", action="store_true", help="small sizes, one round per arm (the tour)"
    )
    run.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="rounds per arm, alternating (default: 3, or 1 with --quick)",
    )
    run.add_argument("--out", type=Path, default=Path("lab-results"), help="results folder")
    run.add_argument(
        "--size", choices=["tiny", "quick", "full"], default=None, help=argparse.SUPPRESS
    )
    run.set_defaults(fn=cmd_run)
    rep = lsub.add_parser(
        "report",
        help="write DIR/index.html linking every experiment run in DIR",
        formatter_class=DefaultsHelp,
    )
    rep.add_argument("dir", type=Path, metavar="DIR", help="a results folder")
    rep.add_argument(
        "--markdown",
        action="store_true",
        help="also print every result as Markdown tables (medians, ratios, conclusion)",
    )
    rep.set_defaults(fn=cmd_report)

    from lab import capacity_command

    capacity_command.add_commands(sub)  # chatscale capacity


async def cmd_list(args: argparse.Namespace) -> int:
    from lab.experiments import all_experiments

    exps = all_experiments()
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "name": e.name,
                        "title": e.title,
                        "claim": e.claim,
                        "claim_ids": list(e.claim_ids),
                        "arms": [a.name for a in e.arms],
                        "quick_seconds": e.quick_seconds,
                    }
                    for e in exps
                ],
                indent=2,
            )
        )
        return 0
    width = max(len(e.name) for e in exps)
    for e in exps:
        arms = " vs ".join(a.name for a in e.arms)
        print(f"{e.name:<{width}}  {e.title}  [{arms}]  ~{e.quick_seconds}s quick")
        print(f"{'':<{width}}  claim {', '.join(map(str, e.claim_ids))}: {e.claim}")
    total = sum(e.quick_seconds for e in exps)
    print(
        f"\n{len(exps)} experiments; `chatscale lab run all --quick` takes about {total / 60:.0f} min here"
    )
    return 0


def _pick(name: str) -> list:  # type: ignore[type-arg]
    from lab.experiments import all_experiments

    exps = all_experiments()
    if name == "all":
        return exps
    for e in exps:
        if e.name == name:
            return [e]
    raise UsageError(f"no experiment {name!r}; one of: {', '.join(e.name for e in exps)} (or all)")


async def cmd_run(args: argparse.Namespace) -> int:
    from lab import page, runner

    exps = _pick(args.name)
    if args.repeat is not None and args.repeat < 1:
        raise UsageError("--repeat must be at least 1")
    size = args.size or ("quick" if args.quick else "full")
    started = time.monotonic()
    failed: list[str] = []
    for i, exp in enumerate(exps, 1):
        if len(exps) > 1:
            print(
                f"\n=== {i}/{len(exps)} · {time.monotonic() - started:.0f}s so far ===", flush=True
            )
        try:
            await runner.run(exp, size=size, repeat=args.repeat, out=args.out, say=_say)
        except Exception as exc:  # one broken experiment must not end the tour
            if len(exps) == 1:
                raise
            failed.append(exp.name)
            print(f"[{exp.name}] failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    text, n = page.report_page(args.out)
    (args.out / "index.html").write_text(text)
    print(
        f"\n{len(exps) - len(failed)}/{len(exps)} experiment(s) in {time.monotonic() - started:.0f}s;"
        f" index: {args.out / 'index.html'}"
    )
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


async def cmd_report(args: argparse.Namespace) -> int:
    from lab import page

    if not args.dir.is_dir():
        raise UsageError(f"{args.dir} is not a folder; give the --out of a `chatscale lab run`")
    text, n = page.report_page(args.dir)
    if n == 0:
        raise UsageError(
            f"no */result.json in {args.dir}; run `chatscale lab run ... --out {args.dir}` first"
        )
    (args.dir / "index.html").write_text(text)
    if args.markdown:
        from lab.experiments import MODULES
        from lab.tables import markdown

        order = [m.replace("_", "-") for m in MODULES]
        found = [json.loads(p.read_text()) for p in args.dir.glob("*/result.json")]
        found.sort(key=lambda r: order.index(r["experiment"]) if r["experiment"] in order else 99)
        print(markdown(found))
    print(
        f"{args.dir / 'index.html'}: {n} experiment(s)",
        file=sys.stderr if args.markdown else sys.stdout,
    )
    return 0


def _say(text: str) -> None:
    print(text, flush=True)
