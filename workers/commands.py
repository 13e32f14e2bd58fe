"""``chatscale worker`` (one worker process) and ``chatscale evict`` (free a dead worker's leases)."""

from __future__ import annotations

import argparse
import asyncio

from chatscale import commandline
from chatscale.discovery import settings_for_tools
from chatscale.keys import Keys
from chatscale.redisconn import connect
from chatscale.wire import dumps


async def cmd_worker(args: argparse.Namespace) -> int:
    from storage import open_store
    from workers.worker import Worker

    settings = commandline.service_settings()
    ordering = args.ordering or settings.ordering  # the flag, else CHATSCALE_ORDERING
    store = await open_store(settings.storage_url, bucket_span_ms=settings.bucket_span_ms)
    worker = Worker(
        settings,
        store=store,
        consumer=args.consumer,
        ordering=ordering,
        stop_after=args.stop_after,
    )
    worker.install_signal_handlers()
    try:
        commandline.serve_metrics(settings, role="worker", name=worker.consumer)
        print(
            f"worker {worker.consumer} consuming {settings.ingest_shards} shards ({ordering})",
            flush=True,
        )
        await worker.run(burst=args.burst)
    finally:
        print(f"worker {worker.consumer} stopping: {vars(worker.stats)}", flush=True)
        await worker.close()
        await store.close()
    return 0


async def cmd_evict(args: argparse.Namespace) -> int:
    from workers.leases import evict

    settings = settings_for_tools()
    redis = connect(settings)
    try:
        freed = await evict(
            redis, Keys(settings.key_prefix), shards=settings.ingest_shards, consumer=args.consumer
        )
    finally:
        await redis.aclose()
    print(f"freed {freed} shard lease(s) of {args.consumer}")
    return 0


async def cmd_moderation_eval(args: argparse.Namespace) -> int:
    """Precision/recall of the moderation model on held-out generated chat."""
    from workers import textmodel

    if args.n < 100:
        raise commandline.UsageError("--n must be at least 100")
    if not 0 < args.threshold < 1:
        raise commandline.UsageError("--threshold must be between 0 and 1")
    result = await asyncio.to_thread(textmodel.evaluate, n=args.n, threshold=args.threshold)
    for line in result.lines():
        print(line)
    return 0


async def cmd_features(args: argparse.Namespace) -> int:
    """One account's stored features and live context (the feature-serving read path)."""
    import time

    from workers import features

    settings = settings_for_tools()
    if not settings.redis_url:
        raise commandline.UsageError(
            "no Redis: set REDIS_URL or run this where `chatscale run` runs"
        )
    redis = connect(settings)
    try:
        started = time.perf_counter()
        got = await features.read(redis, Keys(settings.key_prefix), [args.user_id])
        took = (time.perf_counter() - started) * 1000
    finally:
        await redis.aclose()
    print(dumps(got[args.user_id].to_dict()))
    print(f"read in {took:.2f} ms")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register this package's commands on ``chatscale``'s subparsers."""
    w = sub.add_parser("worker", help="one worker process (consumes ingest streams)")
    w.add_argument("--consumer", help="consumer name in the group (default: unique per process)")
    w.add_argument(
        "--ordering",
        choices=["shard", "parallel"],
        default=None,
        help="shard: per-channel order via shard leases; parallel: every worker reads every "
        "shard (default: CHATSCALE_ORDERING, shard)",
    )
    w.add_argument("--burst", action="store_true", help="process what is queued, then exit")
    w.add_argument("--stop-after", type=int, help=argparse.SUPPRESS)  # fault injection for tests
    w.set_defaults(fn=cmd_worker)

    e = sub.add_parser("evict", help="free a dead worker's shard leases now")
    e.add_argument("consumer")
    e.set_defaults(fn=cmd_evict)

    m = sub.add_parser(
        "moderation-eval", help="precision/recall of the moderation model on held-out chat"
    )
    m.add_argument("--n", type=int, default=2000, help="held-out messages")
    m.add_argument("--threshold", type=float, default=0.5, help="spam probability that counts")
    m.set_defaults(fn=cmd_moderation_eval)

    f = sub.add_parser("features", help="an account's features and live context (one read)")
    f.add_argument("user_id", type=int)
    f.set_defaults(fn=cmd_features)
