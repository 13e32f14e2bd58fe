"""``chatscale run`` (the whole topology on this machine), ``top``, ``token`` and ``trace``:
the commands that operate a running topology."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from chatscale import commandline, discovery, tokens
from chatscale.commandline import DefaultsHelp, UsageError
from chatscale.config import Settings
from chatscale.discovery import WORKDIR, settings_for_tools

#: (add its options to ``run``'s parser, start it: (topology, args) -> how to stop it, or None)
RunExtra = tuple[
    Callable[[argparse.ArgumentParser], None],
    Callable[[Any, argparse.Namespace], Awaitable[Callable[[], Awaitable[None]] | None]],
]


def _run_settings(args: argparse.Namespace) -> Settings:
    """``chatscale run``'s settings: the environment, plus metrics on by default (loopback, a
    free port per child, registered in Redis) so ``chatscale top`` works out of the box."""
    settings = Settings()
    if args.storage_url:
        settings = settings.model_copy(update={"storage_url": args.storage_url})
    if "metrics_port" not in settings.model_fields_set:
        settings = settings.model_copy(update={"metrics_port": -1})
    return settings


async def cmd_run(args: argparse.Namespace) -> int:
    from ops import supervisor

    settings = _run_settings(args)
    topo = supervisor.Topology(
        settings,
        Path(args.workdir),
        gateways=args.gateways,
        workers=args.workers,
        base_port=args.base_port,
        presence=args.presence,
        redis_cluster=args.redis_cluster,
        redis_replicas=args.redis_replicas,
    )
    if (
        args.redis_cluster < 0
        or args.redis_replicas < 0
        or (args.redis_replicas and not args.redis_cluster)
    ):
        raise commandline.UsageError(
            "--redis-cluster N needs N >= 1; --redis-replicas needs --redis-cluster"
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    stoppers = []
    try:
        await supervisor.start(topo)
        if args.demo:
            await supervisor.demo(topo)
        for _add, start_extra in getattr(args, "run_extras", ()):  # the dashboard, wired by cli
            stopper = await start_extra(topo, args)
            if stopper is not None:
                stoppers.append(stopper)
        print(supervisor.how_to_connect(topo), flush=True)
        if args.duration is not None:
            loop.call_later(args.duration, stop.set)
        await supervisor.supervise(topo, stop)
    finally:
        for stopper in stoppers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(stopper(), 10)
        # Stop first, talk after: if stdout is a closed pipe, printing must not skip the stop.
        with contextlib.suppress(OSError):
            print("stopping...", flush=True)
        topo.stop_all()
        with contextlib.suppress(OSError):
            print("stopped: every process exited.", flush=True)
    return 0


async def cmd_token(args: argparse.Namespace) -> int:
    from storage import open_store

    # The store and the secret of this data directory are enough: no live topology needed.
    settings = commandline.minting_settings(need_live=False)
    store = await open_store(settings.storage_url, bucket_span_ms=settings.bucket_span_ms)
    try:
        user = await store.find_user(args.user)
    finally:
        await store.close()
    if user is None:
        raise UsageError(
            f"no user named {args.user!r} in {settings.storage_url} (load a seed first)"
        )
    print(
        tokens.mint(
            user.id,
            secret=settings.token_secret,
            ttl_s=args.ttl or settings.token_ttl_s,
            now=time.time(),
        )
    )
    return 0


async def cmd_trace(args: argparse.Namespace) -> int:
    """One traced message. A RATE_LIMITED answer (the default topology allows a user 5
    messages per 5 s) is waited out as the gateway asks, with the same nonce; every expected
    failure is one line on stderr."""
    from chatscale.trace import ToolError, format_timeline, identify, send_patiently
    from storage import open_store

    urls = args.gateway or discovery.gateways()
    if not urls:
        raise UsageError("no gateway: pass --gateway ws://host:port or start `chatscale run` first")
    settings = commandline.minting_settings(need_live=not args.gateway)
    store = await open_store(settings.storage_url, bucket_span_ms=settings.bucket_span_ms)
    try:
        users = [await store.find_user(name) for name in (args.sender, args.to)]
    finally:
        await store.close()
    if None in users:
        raise UsageError(f"unknown user among {args.sender!r}, {args.to!r}")
    now = time.time()
    # The sender's token carries the operator claim: gateways honour ``trace`` only from operators.
    toks = [
        tokens.mint(u.id, secret=settings.token_secret, ttl_s=600, now=now, operator=i == 0)
        for i, u in enumerate(users)
        if u
    ]
    deadline = time.monotonic() + args.timeout
    clients = []
    try:
        a = await identify(urls[0], toks[0], timeout=args.timeout)
        clients.append(a)
        b = await identify(urls[-1], toks[1], timeout=args.timeout)
        clients.append(b)
        channel = next(
            (c for g in a.ready["guilds"] for c in g["channels"] if c["name"] == args.channel), None
        )
        if channel is None:
            raise UsageError(f"{args.sender} sees no channel named {args.channel!r}")

        def waiting(seconds: float) -> None:
            print(f"rate limited: retrying in {seconds:.1f}s as the gateway asks", file=sys.stderr)

        ack = await send_patiently(
            a,
            channel["id"],
            args.content,
            nonce=f"trace-{time.time_ns()}",
            deadline=deadline + 60,  # the wait for a rate limit is on top of --timeout
            trace=True,
            on_wait=waiting,
        )
        wait_until = time.monotonic() + args.timeout
        got = await b.next_event("MESSAGE_CREATE", timeout=args.timeout)
        while got["d"]["id"] != ack["id"]:
            got = await b.next_event("MESSAGE_CREATE", timeout=wait_until - time.monotonic())
    except ToolError as exc:
        print(f"trace: {exc}", file=sys.stderr)
        return 1
    except TimeoutError:
        print(
            f"trace: {args.to} did not receive the message within {args.timeout:g}s",
            file=sys.stderr,
        )
        return 1
    finally:
        for c in clients:
            await c.close()
    print(f"message {ack['id']}: {args.sender} via {urls[0]} -> {args.to} via {urls[-1]}")
    print(format_timeline([(h, ns) for h, ns in got["trace"]]))
    return 0


async def cmd_top(args: argparse.Namespace) -> int:
    from ops import top

    settings = settings_for_tools()
    if not settings.redis_url:
        raise UsageError("no running topology: start `chatscale run` here or set REDIS_URL")
    await top.run(settings, interval=args.interval, once=args.once)
    return 0


def add_commands(sub: argparse._SubParsersAction, *, run_extras: Sequence[RunExtra] = ()) -> None:  # type: ignore[type-arg]
    """Register this package's commands on ``chatscale``'s subparsers. ``run_extras``: what
    ``run`` also starts once the topology is up (the dashboard, from a layer above this one):
    each adds its options to ``run`` and returns, from starting, how to stop it."""
    r = sub.add_parser(
        "run", help="start Valkey, gateways and workers on this machine; demo; serve until Ctrl-C"
    )
    r.add_argument("--gateways", type=int, default=2)
    r.add_argument("--workers", type=int, default=2)
    r.add_argument(
        "--presence",
        type=int,
        default=1,
        help="presence processes (default 1); with CHATSCALE_PRESENCE_PARTITIONS > 1 they share "
        "the partitions and a survivor takes over a dead one's",
    )
    r.add_argument(
        "--base-port", type=int, default=8765, help="gateway i listens on base+i (0: any free port)"
    )
    r.add_argument(
        "--storage-url", help="override CHATSCALE_STORAGE_URL (sqlite:///... or cassandra://...)"
    )
    r.add_argument(
        "--workdir", default=str(WORKDIR), help="logs, SQLite file, Valkey data, run.json"
    )
    r.add_argument(
        "--no-demo", dest="demo", action="store_false", help="skip the scripted conversation"
    )
    r.add_argument("--duration", type=float, help="stop by itself after this many seconds")
    r.add_argument(
        "--redis-cluster",
        type=int,
        default=0,
        metavar="N",
        help="start a local Valkey Cluster of N masters instead of one Valkey (unless REDIS_URL)",
    )
    r.add_argument(
        "--redis-replicas",
        type=int,
        default=0,
        metavar="R",
        help="with --redis-cluster: R replicas of each master (a killed master fails over)",
    )
    for add_arguments, _start in run_extras:
        add_arguments(r)
    r.set_defaults(fn=cmd_run, run_extras=tuple(run_extras))

    t = sub.add_parser("token", help="mint a token for a seeded user")
    t.add_argument("user", help="username, e.g. alice")
    t.add_argument("--ttl", type=int, help="seconds (default CHATSCALE_TOKEN_TTL_S)")
    t.set_defaults(fn=cmd_token)

    tr = sub.add_parser(
        "trace",
        help="send one traced message and print its hop-by-hop timeline",
        formatter_class=DefaultsHelp,
    )
    tr.add_argument("--from", dest="sender", default="alice")
    tr.add_argument("--to", default="bob")
    tr.add_argument("--channel", default="general")
    tr.add_argument("--content", default="traced hello")
    tr.add_argument(
        "--gateway",
        action="append",
        help="gateway URL (repeat: sender uses the first, recipient the last)",
    )
    tr.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds for READY, the ACK and the delivery (a rate limit's wait comes on top)",
    )
    tr.set_defaults(fn=cmd_trace)

    top = sub.add_parser(
        "top", help="live view of a running topology: rates, lag, pending, connections, p99"
    )
    top.add_argument("--interval", type=float, default=2.0, help="seconds between redraws")
    top.add_argument("--once", action="store_true", help="print one frame (two samples) and exit")
    top.set_defaults(fn=cmd_top)
