"""``chatscale discover ...``: the server directory from a terminal (docs/discovery.md).

- ``list``, ``search PREFIX``, ``top [--approx]``, ``suggest USER``: what the gateway's DISCOVER
  op answers, against the running topology (found like every tool: ``chatscale.discovery``);
- ``publish GUILD`` / ``unpublish GUILD`` / ``rename GUILD NAME``: through the control plane;
- ``eval``: the offline evaluation of suggestions (no topology needed);
- ``bench``: top-K exact (Redis sorted sets, in a throwaway Valkey) against the frequent-items
  sketch on one seeded stream: error and memory (no topology needed).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from chatscale import discovery
from chatscale.commandline import UsageError
from chatscale.config import Settings
from chatscale.keys import Keys
from chatscale.redisconn import connect
from guilds import community, suggest, topk
from guilds.commands import _control, _with_store, resolve_guild, resolve_user
from guilds.controlplane import ControlPlane, Receipt
from guilds.directory import Directory, DirectoryError, exact_in_redis, suggest_for
from storage import Store


def _directory(settings: Settings) -> Directory:
    return Directory(
        connect(settings),
        Keys(settings.key_prefix),
        window_minutes=settings.discovery_window_minutes,
        sketch_lg_k=settings.discovery_sketch_lg_k,
    )


def _live() -> Settings:
    settings = discovery.settings_for_tools()
    if not settings.redis_url:
        raise UsageError("no Redis: start `chatscale run` here or set REDIS_URL")
    return settings


async def _query(args: argparse.Namespace) -> int:
    settings = _live()
    directory = _directory(settings)
    try:
        if args.what == "list":
            for e in await directory.list_public(offset=args.offset, limit=args.limit):
                print(f"{e.guild_id}  {e.name}")
        elif args.what == "search":
            for e in await directory.search(args.prefix, limit=args.limit):
                print(f"{e.guild_id}  {e.name}")
        else:
            top = directory.top_approx if args.approx else directory.top_exact
            rows = await top(args.limit, public_only=not args.all)
            names = await directory.names(g for g, _ in rows)
            how = "sketch estimate" if args.approx else "exact"
            print(f"most messages in the last {directory.window_minutes} minutes ({how}):")
            for rank, (g, n) in enumerate(rows, 1):
                print(f"{rank:>3}. {n:>8}  {g}  {names.get(g, '(not in the directory)')}")
    except DirectoryError as exc:
        raise UsageError(str(exc)) from exc
    finally:
        await directory.redis.aclose()
    return 0


async def _suggest(args: argparse.Namespace) -> int:
    settings = _live()
    directory = _directory(settings)
    alpha = settings.discovery_suggest_alpha if args.alpha is None else args.alpha

    async def go(store: Store) -> int:
        user = await resolve_user(store, args.user)
        pairs = await suggest_for(store, directory, user.id, alpha=alpha, k=args.limit)
        print(f"public servers for {user.username} (alpha={alpha:g}):")
        for entry, score in pairs:
            print(f"  {score:>8.3f}  {entry.guild_id}  {entry.name}")
        if not pairs:
            print("  (none: no fellow member is in a public server you are not in)")
        return 0

    try:
        return await _with_store(go, settings)
    except DirectoryError as exc:
        raise UsageError(str(exc)) from exc
    finally:
        await directory.redis.aclose()


async def _publish(args: argparse.Namespace) -> int:
    """Not a permission change: nothing to announce, so no gateway receipt to print."""
    settings = _live()

    async def go(store: Store) -> int:
        guild = await resolve_guild(store, args.guild)
        plane = ControlPlane(settings, store=store)
        try:
            await plane.set_public(guild.id, args.public)
        finally:
            await plane.close()
        state = "listed in" if args.public else "taken out of"
        print(f"guild {guild.name!r} ({guild.id}) {state} the public directory")
        return 0

    return await _with_store(go, settings)


async def _rename(a: Any, store: Store, plane: ControlPlane) -> Receipt:
    guild = await resolve_guild(store, a.guild)
    return await plane.rename_guild(guild.id, a.name)


async def _eval(args: argparse.Namespace) -> int:
    if args.community:
        try:
            c = community.load_file(args.community)
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read {args.community}: {exc}") from exc
        _, guilds, _, members = c.plan()
        world = suggest.world_from_community(members, {g.id: g.name for g in guilds})
        where = f"community {c.name!r}"
    else:
        if args.users < 10 or args.guilds < 10 or args.topics < 1:
            raise UsageError("--users and --guilds are at least 10, --topics at least 1")
        world = suggest.generate_world(
            users=args.users, guilds=args.guilds, topics=args.topics, seed=args.seed
        )
        where = f"generated world: {args.users} users, {args.guilds} servers, seed {args.seed}"
    alphas = args.alpha or [0.0, 0.5]
    if any(not 0 <= a <= 2 for a in alphas):
        raise UsageError("--alpha is 0..2")
    rows = suggest.evaluate(world, alphas=alphas, seed=args.seed)
    print(f"suggestions, one held-out membership per user ({where}):")
    print(suggest.table(rows))
    return 0


async def _bench(args: argparse.Namespace) -> int:
    if args.guilds < 10 or args.messages < args.minutes or not 1 <= args.k <= 50:
        raise UsageError("--guilds >= 10, --messages >= --minutes, --k 1..50")
    if not 3 <= args.lg_k <= 20 or not 1 <= args.repeat <= 50 or not 1 <= args.minutes <= 60:
        raise UsageError("--lg-k 3..20, --repeat 1..50, --minutes 1..60")
    from chatscale.valkey import ValkeyServer

    runs: list[dict[str, float]] = []
    with ValkeyServer() as server:
        settings = Settings(redis_url=server.url, key_prefix="bench")
        for r in range(args.repeat):
            events = topk.zipf_stream(
                guilds=args.guilds,
                messages=args.messages,
                minutes=args.minutes,
                skew=args.skew,
                seed=args.seed + r,
            )
            runs.append(await _bench_once(settings, events, args, run=r))
    print(
        f"top-{args.k} over {args.minutes} minutes: {args.guilds:,} servers, "
        f"{args.messages:,} messages, Zipf {args.skew}, sketch 2^{args.lg_k} counters, "
        f"{args.repeat} runs (median [min..max])"
    )
    for key, label in BENCH_ROWS:
        values = [run[key] for run in runs]
        f = ",.3f" if key in ("recall", "max_rel") or key.endswith("_ms") else ",.0f"
        med, lo, hi = statistics.median(values), min(values), max(values)
        print(f"  {label:<46} {med:>12{f}}  [{lo:{f}} .. {hi:{f}}]")
    return 0


BENCH_ROWS = [
    ("recall", "sketch top-K recall vs exact"),
    ("max_abs", "sketch max |error| in the exact top-K (msgs)"),
    ("max_rel", "sketch max relative error in the top-K"),
    ("bound", "library's error bound (msgs)"),
    ("exact_bytes", "exact: Redis MEMORY USAGE of the window (B)"),
    ("sketch_bytes", "sketch: serialized window, one worker (B)"),
    ("exact_query_ms", "exact: ZUNIONSTORE top-K query (ms)"),
    ("sketch_query_ms", "sketch: merge + top-K query (ms)"),
]


async def _bench_once(
    settings: Settings, events: list[topk.Event], args: argparse.Namespace, *, run: int
) -> dict[str, float]:
    redis = connect(settings)
    try:
        exact, exact_bytes, exact_ms = await exact_in_redis(
            redis, Keys(f"bench{run}"), events, k=args.k, minutes=args.minutes
        )
    finally:
        await redis.aclose()
    cmp = topk.compare(events, k=args.k, minutes=args.minutes, lg_k=args.lg_k)
    window = topk.SketchWindow(args.minutes, args.lg_k)
    truth = topk.ExactWindow(args.minutes)
    for e in events:
        window.add(e.minute, e.guild, e.n)
        truth.add(e.minute, e.guild, e.n)
    blobs = [s.serialize() for s in window.buckets.values()]
    t0 = time.perf_counter()
    topk.sketch_top(topk.merge_serialized(blobs, args.lg_k), args.k)
    sketch_ms = (time.perf_counter() - t0) * 1000
    if [(str(g), n) for g, n in exact] != truth.top(events[-1].minute, args.k):
        raise UsageError("the Redis exact top-K disagrees with the in-memory count (a bug)")
    return {
        "recall": cmp.recall_at_k,
        "max_abs": cmp.max_abs_error,
        "max_rel": cmp.max_rel_error,
        "bound": cmp.error_bound,
        "exact_bytes": exact_bytes,
        "sketch_bytes": cmp.sketch_bytes,
        "exact_query_ms": exact_ms,
        "sketch_query_ms": sketch_ms,
    }


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "discover",
        help="the server directory: list, search, top, suggest, eval, bench",
        description=__doc__,
    )
    dsub = p.add_subparsers(dest="discover_command", required=True)

    def cmd(name: str, help: str, fn: Any) -> argparse.ArgumentParser:
        from chatscale.commandline import DefaultsHelp

        c = dsub.add_parser(name, help=help, description=help, formatter_class=DefaultsHelp)
        c.set_defaults(fn=fn)
        return c

    c = cmd("list", "public guilds in name order", _query)
    c.set_defaults(what="list")
    c.add_argument("--limit", type=int, default=50, help="at most this many (1..50)")
    c.add_argument("--offset", type=int, default=0, help="skip this many (paging)")
    c = cmd("search", "public guilds whose name starts with PREFIX (autocomplete)", _query)
    c.set_defaults(what="search")
    c.add_argument("prefix", help="the beginning of a name, any case")
    c.add_argument("--limit", type=int, default=10, help="at most this many (1..50)")
    c = cmd("top", "the most active guilds over the sliding window", _query)
    c.set_defaults(what="top")
    c.add_argument("--limit", type=int, default=10, help="K (1..50)")
    c.add_argument("--approx", action="store_true", help="from the workers' sketches")
    c.add_argument("--all", action="store_true", help="private guilds too (operator view)")
    c = cmd("suggest", "public guilds a user may like (co-membership and activity)", _suggest)
    c.add_argument("user", help="username or id")
    c.add_argument("--limit", type=int, default=10, help="at most this many (1..50)")
    c.add_argument(
        "--alpha",
        type=float,
        default=None,
        help="bias correction (default: CHATSCALE_DISCOVERY_SUGGEST_ALPHA)",
    )
    c = cmd("publish", "list a guild in the public directory", _publish)
    c.set_defaults(public=True)
    c.add_argument("guild", help="name or id")
    c = cmd("unpublish", "take a guild out of the public directory", _publish)
    c.set_defaults(public=False)
    c.add_argument("guild", help="name or id")
    c = cmd("rename", "rename a guild (the search index follows)", _control(_rename))
    c.add_argument("guild", help="name or id")
    c.add_argument("name", help="the new name")
    c = cmd("eval", "offline evaluation of suggestions: recall@10 and coverage", _eval)
    c.add_argument("--users", type=int, default=3000, help="users of the generated world")
    c.add_argument("--guilds", type=int, default=600, help="servers of the generated world")
    c.add_argument("--topics", type=int, default=30, help="interest topics")
    c.add_argument("--seed", type=int, default=19, help="world and held-out split")
    c.add_argument(
        "--alpha",
        type=float,
        action="append",
        default=None,
        help="bias corrections to compare (repeatable; default 0 and 0.5)",
    )
    c.add_argument("--community", default="", help="a seeds/*.toml structure file instead")
    c = cmd("bench", "top-K exact (Redis) vs sketch: error, memory, query time", _bench)
    c.add_argument("--guilds", type=int, default=10_000, help="distinct servers")
    c.add_argument("--messages", type=int, default=200_000, help="messages in the window")
    c.add_argument("--minutes", type=int, default=10, help="window length")
    c.add_argument("--skew", type=float, default=1.1, help="Zipf exponent of activity")
    c.add_argument("--k", type=int, default=10, help="K")
    c.add_argument("--lg-k", type=int, default=10, help="log2 of the sketch's counters")
    c.add_argument("--seed", type=int, default=19, help="first run's seed")
    c.add_argument("--repeat", type=int, default=3, help="runs (different seeds)")
