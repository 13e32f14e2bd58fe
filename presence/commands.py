"""``chatscale presence``: the presence service process."""

from __future__ import annotations

import argparse
import asyncio
import signal

from chatscale import commandline


async def cmd_presence(args: argparse.Namespace) -> int:
    from presence.partitions import PresenceHost
    from storage import open_store

    settings = commandline.service_settings()
    store = await open_store(settings.storage_url, bucket_span_ms=settings.bucket_span_ms)
    host = PresenceHost(settings, store=store, consumer=args.consumer)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, host.stop)
    mode = "coalesced" if settings.presence_coalesce else "raw broadcast"
    try:
        commandline.serve_metrics(settings, role="presence", name=args.consumer)
        print(
            f"presence service {args.consumer} ({mode}, tick {settings.presence_tick_ms} ms, "
            f"{settings.presence_partitions} partition(s) shared by lease)",
            flush=True,
        )
        await host.run()
    finally:
        print(f"presence stopping: {host.stats()}", flush=True)
        await host.close()
        await store.close()
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register this package's commands on ``chatscale``'s subparsers."""
    pr = sub.add_parser(
        "presence", help="the presence service (aggregates heartbeats, coalesces updates)"
    )
    pr.add_argument("--consumer", default="presence-1", help="consumer name in the presence group")
    pr.set_defaults(fn=cmd_presence)
