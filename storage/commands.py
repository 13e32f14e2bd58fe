"""``chatscale migrate``: create the storage schema if missing."""

from __future__ import annotations

import argparse
import time

from chatscale.discovery import settings_for_tools


async def cmd_migrate(args: argparse.Namespace) -> int:
    from storage import open_store

    settings = settings_for_tools(need_live=False)  # only storage
    url = args.storage_url or settings.storage_url
    started = time.monotonic()
    store = await open_store(url, bucket_span_ms=settings.bucket_span_ms)  # creates what is missing
    await store.close()
    print(f"schema ready in {url.split('?')[0]} ({time.monotonic() - started:.1f}s)")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register this package's commands on ``chatscale``'s subparsers."""
    m = sub.add_parser(
        "migrate", help="create the storage schema (keyspace and tables) if missing; idempotent"
    )
    m.add_argument("--storage-url", help="default CHATSCALE_STORAGE_URL")
    m.set_defaults(fn=cmd_migrate)
