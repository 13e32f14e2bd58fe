"""``chatscale indexer`` (the search indexer process), ``chatscale search`` (a query as a user,
permissions checked now) and ``chatscale archive`` (compact old buckets into the cold tier)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time

from chatscale import commandline
from chatscale.commandline import DefaultsHelp, UsageError
from chatscale.discovery import WORKDIR, settings_for_tools


async def cmd_indexer(args: argparse.Namespace) -> int:
    from storage.search_index import SearchIndex
    from workers.indexer import Indexer

    settings = commandline.service_settings()
    if not settings.search_url:
        raise UsageError(
            "no search index: set CHATSCALE_SEARCH_URL (e.g. sqlite:///data/search.db)"
        )
    index = await SearchIndex.open(settings.search_url)
    indexer = Indexer(settings, index=index)
    indexer.stop_after = args.stop_after
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, indexer.stop)
    try:
        commandline.serve_metrics(settings, role="indexer", name=f"indexer-{args.name}")
        print(f"indexer reading {indexer.keys.stored()} into {settings.search_url}", flush=True)
        if args.burst:
            await indexer.drain()
        else:
            await indexer.run()
    finally:
        print(f"indexer stopping: {indexer.indexed} indexed, offset {indexer.offset}", flush=True)
        await indexer.close()
        await index.close()
    return 0


async def cmd_search(args: argparse.Namespace) -> int:
    from guilds.readable import readable_channels
    from storage import open_store
    from storage.search_index import SearchIndex

    settings = settings_for_tools(need_live=False)
    search_url = settings.search_url or (
        f"sqlite:///{(WORKDIR / 'search.db').resolve()}" if (WORKDIR / "search.db").exists() else ""
    )  # the index `chatscale run` keeps in its data directory
    if not search_url:
        raise UsageError("no search index: set CHATSCALE_SEARCH_URL or search a `chatscale run`")
    store = await open_store(settings.storage_url, bucket_span_ms=settings.bucket_span_ms)
    try:
        user = await store.find_user(args.user)
        if user is None:
            raise UsageError(f"no user {args.user!r}")
        channels = await readable_channels(store, user.id)
        if args.channel is not None:
            if args.channel not in channels:
                raise UsageError(f"{args.user} cannot read channel {args.channel}")
            channels = {args.channel}
        index = await SearchIndex.open(search_url)
        try:
            started = time.perf_counter()
            hits = await index.search(
                channels,
                text=args.text,
                author_id=args.author,
                before=args.before,
                limit=args.limit,
            )
            took = (time.perf_counter() - started) * 1000
        finally:
            await index.close()
    finally:
        await store.close()
    import orjson

    for message_id, payload in hits:
        d = orjson.loads(payload)
        author = d.get("author", {}).get("username", "?")
        print(f"{message_id}  #{d.get('channel_id')}  {author}: {d.get('content', '')}")
    print(f"{len(hits)} result(s) in {took:.1f} ms, as {args.user} ({len(channels)} channels)")
    return 0


async def cmd_archive(args: argparse.Namespace) -> int:
    from storage import open_store
    from storage.cold import ColdArchive, open_object_store, redact_url
    from storage.tiers import Archiver

    settings = settings_for_tools(need_live=False)
    cold_url = args.cold_url or settings.cold_url
    if not cold_url:
        raise UsageError("no cold store: set CHATSCALE_COLD_URL or pass --cold-url")
    after_s = args.older_than if args.older_than is not None else settings.archive_after_s
    if after_s <= 0:
        raise UsageError("--older-than must be a positive number of seconds")
    try:
        objects = open_object_store(cold_url)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    store = await open_store(settings.storage_url, bucket_span_ms=settings.bucket_span_ms)
    archiver = Archiver(
        store, ColdArchive(objects), bucket_span_ms=settings.bucket_span_ms, archive_after_s=after_s
    )
    every = archive_every(args, settings)
    if every:  # a long-running service (`chatscale run`, compose): metrics like the others
        commandline.serve_metrics(settings, role="archive", name=f"archive-{args.name}")
    stop = asyncio.Event()  # SIGTERM/SIGINT: end after this pass, exit 0 (a kill is safe too)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set():
            started = time.perf_counter()
            report = await archiver.compact_once()
            print(
                f"archived {report.buckets} bucket(s), {report.messages} message(s), "
                f"{report.bytes_written} bytes to {redact_url(cold_url)} in {time.perf_counter() - started:.2f} s",
                flush=True,
            )
            if not every:
                return 0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=every)
        return 0
    finally:
        await store.close()
        await objects.close()


def archive_every(args: argparse.Namespace, settings) -> float:  # noqa: ANN001
    """Seconds between compactions (0: once): ``--every``, else ARCHIVE_INTERVAL_S with ``--loop``."""
    if args.every is not None:
        if args.every < 0:
            raise UsageError("--every must be 0 (once) or a positive number of seconds")
        return args.every
    return settings.archive_interval_s if args.loop else 0.0


def _snowflake(value: str) -> int:
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"not an id: {value!r}")
    return int(value)


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    i = sub.add_parser(
        "indexer",
        formatter_class=DefaultsHelp,
        help="the search indexer (stored-message stream -> index)",
    )
    i.add_argument("--name", default="0", help="name in metrics and logs")
    i.add_argument("--burst", action="store_true", help="index what is queued, then exit")
    i.add_argument("--stop-after", type=int, help=argparse.SUPPRESS)  # fault injection (tests)
    i.set_defaults(fn=cmd_indexer)

    s = sub.add_parser(
        "search",
        formatter_class=DefaultsHelp,
        help="search messages as a user (their permissions, now)",
    )
    s.add_argument("text", help="words that must all appear (the last also as a prefix)")
    s.add_argument("--as", dest="user", required=True, help="username to search as")
    s.add_argument("--channel", type=_snowflake, help="only this channel id")
    s.add_argument("--author", type=_snowflake, help="only this author id")
    s.add_argument("--before", type=_snowflake, help="only messages older than this id")
    s.add_argument(
        "--limit", type=int, default=25, choices=range(1, 51), metavar="1..50", help="results"
    )
    s.set_defaults(fn=cmd_search)

    a = sub.add_parser(
        "archive",
        formatter_class=DefaultsHelp,
        help="move history buckets older than an age to the cold tier",
    )
    a.add_argument(
        "--cold-url",
        help="file:///dir or s3://bucket/prefix?endpoint=... (default: CHATSCALE_COLD_URL)",
    )
    a.add_argument("--older-than", type=float, help="seconds (default: CHATSCALE_ARCHIVE_AFTER_S)")
    a.add_argument("--every", type=float, help="repeat every N seconds (0: once); overrides --loop")
    a.add_argument(
        "--loop",
        action="store_true",
        help="keep running, compacting every CHATSCALE_ARCHIVE_INTERVAL_S (the service form)",
    )
    a.add_argument("--name", default="0", help="name in metrics and logs (when it keeps running)")
    a.set_defaults(fn=cmd_archive)
