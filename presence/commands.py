"""``chatscale presence``: the presence service process."""

from __future__ import annotations

import argparse
import asyncio
import signal

from chatscale import commandline


async def cmd_presence(args: argparse.Namespace) -> int:
    from presence.service import PresenceService
    from storage import open_store

    settings = commandline.service_settings()
    store = await open_store(settings.storage_url, bucket_span_ms=settings.bucket_span_ms)
    service = PresenceService(settings, store=store, consumer=args.consumer)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, service.stop)
    mode = "coalesced" if settings.presence_coalesce else "raw broadcast"
    try:
        commandline.serve_metrics(settings, role="presence", name=args.consumer)
        print(
            f"presence service {args.consumer} ({mode}, tick {settings.presence_tick_ms} ms)",
            flush=True,
        )
        await service.run()
    finally:
        print(f"presence stopping: {service.coalescer.stats.to_dict()}", flush=True)
        await service.close()
        await store.close()
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register this package's commands on ``chatscale``'s subparsers."""
    pr = sub.add_parser(
        "presence", help="the presence service (aggregates heartbeats, coalesces updates)"
    )
    pr.add_argument("--consumer", default="presence-1", help="consumer name in the presence group")
    pr.set_defaults(fn=cmd_presence)
