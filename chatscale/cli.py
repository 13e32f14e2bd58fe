"""The ``chatscale`` command: one entry point for every service and tool.

Services read their configuration from the environment (``chatscale.config``); flags only
override what is specific to one process (its port, its consumer name). Everything that talks to
a running topology — the tools (``token``, ``trace``, ``seed``, ...) and services started by hand
in a ``chatscale run`` directory — finds it one way, ``chatscale.discovery``: the environment
first, then the ``.chatscale/run.json`` and token secret that ``chatscale run`` keeps.

Expected failures (a stale ``run.json``, a taken port, an unknown name, a refused change) print
one line, ``error: ...``, and exit with status 2; only bugs print tracebacks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import logging
import signal
import sys
import time
from pathlib import Path

from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError

from chatscale import admin, community, discovery, metrics, tokens
from chatscale.config import Settings
from chatscale.controlplane import ControlError
from chatscale.discovery import WORKDIR, TopologyError, settings_for_tools
from chatscale.keys import Keys
from chatscale.redisconn import connect

__all__ = ["WORKDIR", "build_parser", "main", "settings_for_tools"]  # settings_for_tools: moved


class UsageError(Exception):
    """A mistake on the command line or in the environment; ``str()`` is the one line to print."""


#: What ``main`` reports in one line instead of a traceback.
EXPECTED_ERRORS = (UsageError, TopologyError, admin.Unresolved, admin.Refused, ControlError)


def _logging(verbose: bool) -> None:
    from chatscale import logfilter

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    try:  # the knobs; a bad environment is reported by the command itself, one line
        settings = Settings()
        limit, window = settings.log_repeat_limit, settings.log_repeat_window_s
    except ValidationError:
        fields = Settings.model_fields
        limit, window = fields["log_repeat_limit"].default, fields["log_repeat_window_s"].default
    logfilter.install(limit, window)  # a flood of one error must not flood the log


# ---- services -----------------------------------------------------------------------------


async def _serve_until_signal(start, stop) -> None:  # noqa: ANN001
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    await start()
    await done.wait()
    await stop()


def _service_settings() -> Settings:
    """A service's settings: the environment, else the ``chatscale run`` of this directory."""
    settings = settings_for_tools()
    if not settings.redis_url:
        raise UsageError(
            "no Redis: start `chatscale run` in this directory first (services started here "
            "then join it), or set REDIS_URL and CHATSCALE_STORAGE_URL"
        )
    return settings


def _check_secret(settings: Settings, insecure_dev: bool) -> None:
    reason = discovery.weak_secret_reason(settings.token_secret)
    if reason is not None and not (insecure_dev or settings.insecure_dev):
        raise UsageError(
            f"refusing to start: {reason}, so anyone could forge tokens; set it to 32+ random "
            "characters (python3 -c 'import secrets; print(secrets.token_urlsafe(48))'), "
            "start the gateway from a `chatscale run` directory, or pass --insecure-dev"
        )


def _port_in_use(exc: OSError, port: int, what: str) -> UsageError | None:
    if exc.errno != errno.EADDRINUSE:
        return None
    return UsageError(f"port {port} is in use ({what}): stop what holds it, or choose another port")


def _serve_metrics(settings: Settings, *, role: str, name: str) -> None:
    try:
        metrics.serve(settings, role=role, name=name)
    except OSError as exc:
        if (err := _port_in_use(exc, settings.metrics_port, "metrics")) is not None:
            raise err from None
        raise


async def cmd_gateway(args: argparse.Namespace) -> int:
    from gateway.server import Gateway, raise_open_file_limit
    from storage import open_store

    soft, hard = raise_open_file_limit()  # 1024 by default: ~1,000 idle sockets would lock us out
    logging.getLogger("chatscale.gateway").info("open-file limit %s (hard %s)", soft, hard)
    settings = _service_settings()
    _check_secret(settings, args.insecure_dev)
    if args.port is not None:
        settings = settings.model_copy(
            update={"gateway_port": args.port, "gateway_host": args.host}
        )
    store = await open_store(settings.storage_url, bucket_span_ms=settings.bucket_span_ms)
    gw = Gateway(settings, store=store, gateway_id=args.id)

    async def stop() -> None:
        await gw.stop()

    async def start() -> None:
        try:
            try:
                await gw.start()
            except OSError as exc:
                if (err := _port_in_use(exc, settings.gateway_port, "gateway")) is not None:
                    raise err from None
                raise
            _serve_metrics(settings, role="gateway", name=gw.id)
        except BaseException:
            await gw.stop()  # unregister and close what start() opened before failing
            raise
        print(f"gateway {gw.id} ready on {gw.url}", flush=True)

    try:
        await _serve_until_signal(start, stop)
    finally:
        await store.close()
    return 0


async def cmd_worker(args: argparse.Namespace) -> int:
    from storage import open_store
    from workers.worker import Worker

    settings = _service_settings()
    store = await open_store(settings.storage_url, bucket_span_ms=settings.bucket_span_ms)
    worker = Worker(
        settings,
        store=store,
        consumer=args.consumer,
        ordering=args.ordering,
        stop_after=args.stop_after,
    )
    worker.install_signal_handlers()
    try:
        _serve_metrics(settings, role="worker", name=worker.consumer)
        print(
            f"worker {worker.consumer} consuming {settings.ingest_shards} shards ({args.ordering})",
            flush=True,
        )
        await worker.run(burst=args.burst)
    finally:
        print(f"worker {worker.consumer} stopping: {vars(worker.stats)}", flush=True)
        await worker.close()
        await store.close()
    return 0


async def cmd_presence(args: argparse.Namespace) -> int:
    from presence.service import PresenceService
    from storage import open_store

    settings = _service_settings()
    store = await open_store(settings.storage_url, bucket_span_ms=settings.bucket_span_ms)
    service = PresenceService(settings, store=store, consumer=args.consumer)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, service.stop)
    mode = "coalesced" if settings.presence_coalesce else "raw broadcast"
    try:
        _serve_metrics(settings, role="presence", name=args.consumer)
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
    from chatscale import supervisor

    settings = _run_settings(args)
    topo = supervisor.Topology(
        settings,
        Path(args.workdir),
        gateways=args.gateways,
        workers=args.workers,
        base_port=args.base_port,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await supervisor.start(topo)
        if args.demo:
            await supervisor.demo(topo)
        print(supervisor.how_to_connect(topo), flush=True)
        if args.duration is not None:
            loop.call_later(args.duration, stop.set)
        await supervisor.supervise(topo, stop)
    finally:
        # Stop first, talk after: if stdout is a closed pipe, printing must not skip the stop.
        with contextlib.suppress(OSError):
            print("stopping...", flush=True)
        topo.stop_all()
        with contextlib.suppress(OSError):
            print("stopped: every process exited.", flush=True)
    return 0


# ---- tools --------------------------------------------------------------------------------


def _minting_settings(*, need_live: bool) -> Settings:
    """Settings for a tool that mints tokens: they must be signed with the topology's secret."""
    settings = settings_for_tools(need_live=need_live)
    discovery.require_existing_store(settings)
    if not settings.token_secret:
        raise UsageError(
            "no token secret: run this in the directory where `chatscale run` ran (it keeps "
            "one in .chatscale/token-secret) or set CHATSCALE_TOKEN_SECRET as the gateways have it"
        )
    return settings


async def cmd_token(args: argparse.Namespace) -> int:
    from storage import open_store

    # The store and the secret of this data directory are enough: no live topology needed.
    settings = _minting_settings(need_live=False)
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


def seed_path(ref: str) -> Path:
    """A community file: a path as given, else a file of that name in the package's seeds/
    (so ``seeds/demo.toml``, ``demo.toml`` and ``demo`` work from any directory)."""
    path = Path(ref)
    if path.is_file():
        return path
    for candidate in (community.SEEDS / path.name, community.SEEDS / f"{path.name}.toml"):
        if candidate.is_file():
            return candidate
    known = ", ".join(sorted(p.stem for p in community.SEEDS.glob("*.toml"))) or "none"
    raise UsageError(f"no community file {ref!r} here or in {community.SEEDS} (known: {known})")


async def cmd_seed(args: argparse.Namespace) -> int:
    from storage import open_store

    settings = settings_for_tools()
    path = seed_path(args.file)
    try:
        spec = community.load_file(path)
    except ValidationError:
        # Not a structure file: a load-test behaviour file (seeds/study-group.toml ...) also
        # defines a community, generated from its seed.
        from loadtest import communities

        try:
            spec = communities.load(path).community
        except ValidationError as exc:
            raise UsageError(
                f"{path} is neither a community file nor a load-test behaviour file "
                f"({exc.error_count()} errors, first: {exc.errors()[0]['msg']} at "
                f"{'.'.join(map(str, exc.errors()[0]['loc']))})"
            ) from None
    except (OSError, ValueError) as exc:  # unreadable, or not TOML
        raise UsageError(f"cannot load {path}: {exc}") from None
    store = await open_store(settings.storage_url, bucket_span_ms=settings.bucket_span_ms)
    redis = connect(settings) if settings.redis_url else None
    try:
        counts = await community.apply(spec, store, redis, Keys(settings.key_prefix))
    finally:
        await store.close()
        if redis is not None:
            await redis.aclose()
    print(f"loaded {spec.name!r} into {settings.storage_url}: {counts}")
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
    settings = _minting_settings(need_live=not args.gateway)
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


async def cmd_migrate(args: argparse.Namespace) -> int:
    from storage import open_store

    settings = settings_for_tools(need_live=False)  # only storage
    url = args.storage_url or settings.storage_url
    started = time.monotonic()
    store = await open_store(url, bucket_span_ms=settings.bucket_span_ms)  # creates what is missing
    await store.close()
    print(f"schema ready in {url.split('?')[0]} ({time.monotonic() - started:.1f}s)")
    return 0


async def cmd_top(args: argparse.Namespace) -> int:
    from chatscale import top

    settings = settings_for_tools()
    if not settings.redis_url:
        raise UsageError("no running topology: start `chatscale run` here or set REDIS_URL")
    await top.run(settings, interval=args.interval, once=args.once)
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


async def cmd_bench(args: argparse.Namespace) -> int:
    from chatscale.trace import ToolError
    from loadtest import bench

    settings = settings_for_tools(need_live=args.mode in ("chat", "idle"))
    for name, per_mode in BENCH_DEFAULTS.items():  # each mode has its own defaults
        if getattr(args, name) is None:
            setattr(args, name, per_mode.get(args.mode, per_mode["chat"]))
    if args.mode == "presence":
        from presence.simulate import simulate_guild

        coalesce_s = args.interval
        r = simulate_guild(
            members=args.members,
            online=args.online,
            seconds=int(args.duration),
            interval_s=coalesce_s,
            seed=args.seed,
        )
        raw, co = r["raw"], r["coalesced"]
        print(
            json.dumps(
                {
                    "members": args.members,
                    "online_at_start": args.online,
                    "seconds": int(args.duration),
                    "seed": args.seed,
                    "events": r["events"],
                    "visible_changes": raw.changes_in,
                    "raw": {
                        "updates": raw.updates_out,
                        "deliveries": raw.deliveries_out,
                        "deliveries_per_change": round(
                            raw.deliveries_out / max(1, raw.changes_in), 1
                        ),
                    },
                    "coalesced": {
                        "interval_s": coalesce_s,
                        "updates": co.updates_out,
                        "deliveries": co.deliveries_out,
                        "deliveries_per_change": round(
                            co.deliveries_out / max(1, co.changes_in), 1
                        ),
                        "flaps_netted": co.net_zero,
                    },
                    "saving": round(raw.deliveries_out / max(1, co.deliveries_out), 1),
                },
                indent=2,
            )
        )
        return 0
    if args.mode == "storage":
        from loadtest import storage_bench

        if args.storage_url:
            settings = settings.model_copy(update={"storage_url": args.storage_url})
        result = await storage_bench.run(settings, messages=args.messages, reads=args.reads)
        print(json.dumps(result, indent=2))
        return 0
    state = WORKDIR / discovery.STATE_FILE
    if not (state.exists() or args.gateway) or settings.redis_url is None:
        print(
            "no running topology: start `chatscale run` in this directory first, or set "
            "REDIS_URL and CHATSCALE_STORAGE_URL and pass --gateway ws://host:port",
            file=sys.stderr,
        )
        return 2
    run_state = json.loads(state.read_text()) if state.exists() else None
    urls = args.gateway or run_state["gateways"]
    if args.gateway:  # other gateways than run.json's: sample only what Redis registered
        run_state = None
    try:
        if args.mode == "idle":
            result = await bench.idle(settings, urls, connections=args.connections, state=run_state)
        else:
            result = await bench.chat(
                settings,
                urls,
                members=args.members,
                senders=min(args.senders, args.members),
                rate=args.rate,
                duration=args.duration,
                state=run_state,
            )
    except (ToolError, LookupError) as exc:
        print(f"bench {args.mode}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


# per-mode defaults of the options `bench` modes share (None on the command line: the mode's)
BENCH_DEFAULTS: dict[str, dict[str, float]] = {
    "members": {"chat": 20, "idle": 20, "presence": 5000},
    "duration": {"chat": 10.0, "presence": 60.0},
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chatscale",
        description="A runnable miniature of a Discord-class chat backend. Configuration comes from "
        "CHATSCALE_* environment variables (see README, 'Knobs').",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser(
        "run", help="start Valkey, gateways and workers on this machine; demo; serve until Ctrl-C"
    )
    r.add_argument("--gateways", type=int, default=2)
    r.add_argument("--workers", type=int, default=2)
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
    r.set_defaults(fn=cmd_run)

    g = sub.add_parser("gateway", help="one gateway process (WebSocket server)")
    g.add_argument("--host", default="127.0.0.1")
    g.add_argument("--port", type=int, help="0 picks a free port (default: CHATSCALE_GATEWAY_PORT)")
    g.add_argument("--id", help="gateway id (default: random)")
    g.add_argument(
        "--insecure-dev",
        action="store_true",
        help="start even with a weak CHATSCALE_TOKEN_SECRET (throwaway local tests only)",
    )
    g.set_defaults(fn=cmd_gateway)

    w = sub.add_parser("worker", help="one worker process (consumes ingest streams)")
    w.add_argument("--consumer", help="consumer name in the group (default: unique per process)")
    w.add_argument(
        "--ordering",
        choices=["shard", "parallel"],
        default="shard",
        help="shard: per-channel order via shard leases; parallel: every worker reads every shard",
    )
    w.add_argument("--burst", action="store_true", help="process what is queued, then exit")
    w.add_argument("--stop-after", type=int, help=argparse.SUPPRESS)  # fault injection for tests
    w.set_defaults(fn=cmd_worker)

    pr = sub.add_parser(
        "presence", help="the presence service (aggregates heartbeats, coalesces updates)"
    )
    pr.add_argument("--consumer", default="presence-1", help="consumer name in the presence group")
    pr.set_defaults(fn=cmd_presence)

    t = sub.add_parser("token", help="mint a token for a seeded user")
    t.add_argument("user", help="username, e.g. alice")
    t.add_argument("--ttl", type=int, help="seconds (default CHATSCALE_TOKEN_TTL_S)")
    t.set_defaults(fn=cmd_token)

    s = sub.add_parser(
        "seed", help="load a community file (seeds/NAME.toml) through the control plane"
    )
    s.add_argument("file", help="path, or a name in seeds/ such as demo")
    s.set_defaults(fn=cmd_seed)

    from loadtest.command import DefaultsHelp  # trace and bench: --help shows the defaults

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

    b = sub.add_parser(
        "bench",
        help="baseline figures against the topology `chatscale run` started",
        formatter_class=DefaultsHelp,
    )
    b.add_argument(
        "mode",
        choices=["chat", "idle", "storage", "presence"],
        help="chat: rate/latency/loss; idle: memory per connection; storage: history inserts/s, "
        "hot vs cold page latency; presence: deliveries per status change, raw vs coalesced "
        "(storage and presence need no running topology)",
    )
    b.add_argument(
        "--members",
        type=int,
        help="chat: connected members of the bench guild (default 20); presence: guild size "
        "(default 5000)",
    )
    b.add_argument(
        "--online", type=int, default=3000, help="presence mode: members online at the start"
    )
    b.add_argument(
        "--interval", type=float, default=1.0, help="presence mode: coalescing window (s)"
    )
    b.add_argument("--seed", type=int, default=20240611, help="presence mode: simulation seed")
    b.add_argument("--senders", type=int, default=4, help="chat: members that send")
    b.add_argument(
        "--rate",
        type=float,
        default=100.0,
        help="chat: total messages/s (0: as fast as acks return)",
    )
    b.add_argument(
        "--duration",
        type=float,
        help="chat: seconds of sending (default 10); presence: simulated seconds (default 60)",
    )
    b.add_argument("--connections", type=int, default=1000, help="idle mode: connections to open")
    b.add_argument(
        "--storage-url", help="storage mode: backend to measure (default CHATSCALE_STORAGE_URL)"
    )
    b.add_argument("--messages", type=int, default=20000, help="storage mode: messages to insert")
    b.add_argument("--reads", type=int, default=500, help="storage mode: page reads of each kind")
    b.add_argument(
        "--gateway",
        action="append",
        help="gateway URL to connect to (repeat; default: the gateways in .chatscale/run.json)",
    )
    b.set_defaults(fn=cmd_bench)

    m = sub.add_parser(
        "migrate", help="create the storage schema (keyspace and tables) if missing; idempotent"
    )
    m.add_argument("--storage-url", help="default CHATSCALE_STORAGE_URL")
    m.set_defaults(fn=cmd_migrate)

    e = sub.add_parser("evict", help="free a dead worker's shard leases now")
    e.add_argument("consumer")
    e.set_defaults(fn=cmd_evict)

    # control plane (guilds, channels, roles, overwrites, bans) and explain-permissions
    admin.add_commands(sub)

    top = sub.add_parser(
        "top", help="live view of a running topology: rates, lag, pending, connections, p99"
    )
    top.add_argument("--interval", type=float, default=2.0, help="seconds between redraws")
    top.add_argument("--once", action="store_true", help="print one frame (two samples) and exit")
    top.set_defaults(fn=cmd_top)

    from loadtest.command import add_command as add_loadtest  # scenarios, reports (issue 6)

    add_loadtest(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _logging(args.verbose)
    try:
        return asyncio.run(args.fn(args))
    except KeyboardInterrupt:
        return 130
    except EXPECTED_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    except RedisConnectionError as exc:
        print(f"error: Redis unreachable: {exc}", file=sys.stderr, flush=True)
        return 2
