"""The dashboard's commands: served by ``chatscale run`` next to the topology it supervises,
or by ``chatscale dashboard`` against a topology found through Valkey (docker compose, or a
``chatscale run`` elsewhere).

``ops`` cannot import this package (it is above ``ops``): ``chatscale/cli.py`` hands
``RUN_EXTRA`` to ``ops.commands.add_commands``, which adds its options to ``run`` and starts it
once the topology is up, and calls ``add_commands`` for ``chatscale dashboard``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import secrets
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

DEFAULT_PORT = 8780
METRICS_EVERY_S = 5.0  # dashboard.server's default, without importing the server here


def add_arguments(run: argparse.ArgumentParser) -> None:
    run.add_argument(
        "--dashboard-port",
        type=int,
        default=None,
        help=f"the dashboard's HTTP port on 127.0.0.1 (default {DEFAULT_PORT}, or a free port if "
        "it is taken; 0: a free port; -1: no dashboard)",
    )
    run.add_argument(
        "--dashboard-host",
        default="127.0.0.1",
        help="address the dashboard binds (its actions need the admin token it prints)",
    )
    run.add_argument(
        "--lab-results",
        default="lab-results",
        help="folder of `chatscale lab` results the dashboard lists",
    )
    run.add_argument(
        "--loadtest-results",
        default="reports",
        help="folder of `chatscale loadtest` reports the dashboard lists",
    )
    run.add_argument(
        "--dashboard-metrics-interval",
        type=float,
        default=METRICS_EVERY_S,
        metavar="S",
        help="seconds between scrapes of every process's /metrics while a page is open "
        f"(default {METRICS_EVERY_S:g}; Valkey's figures are read every second)",
    )
    run.add_argument(
        "--dashboard-chat",
        action="store_true",
        help="start the dashboard's small built-in chat at once (otherwise from the page: it "
        "adds traffic, which a benchmark against this run would measure)",
    )


def admin_token(settings: Any) -> str:
    """CHATSCALE_DASHBOARD_ADMIN_TOKEN, else a fresh random one."""
    given = settings.dashboard_admin_token
    if given and len(given) < 16:
        from chatscale.commandline import UsageError

        raise UsageError("CHATSCALE_DASHBOARD_ADMIN_TOKEN is shorter than 16 characters")
    return given or secrets.token_urlsafe(18)


def _absolute(folder: str) -> Path:
    """Relative to the run's directory, fixed now (before anything changes directory)."""
    return Path(folder).resolve()


async def start(
    topo: Any, args: argparse.Namespace, say: Callable[[str], Any] = print
) -> Callable[[], Awaitable[None]] | None:
    """Serve the dashboard of ``topo``; returns how to stop it (None: turned off)."""
    from dashboard.actions import Actions
    from dashboard.chat import BuiltInChat
    from dashboard.server import Dashboard

    if args.dashboard_port == -1:
        return None
    chat = None
    actions = Actions(topo, None)
    try:
        chat = BuiltInChat(topo.settings, actions.live_gateways)
        await chat.setup()
    except LookupError as exc:  # another community loaded: no built-in chat, say so
        say(f"dashboard   no built-in chat: {exc}")
        chat = None
    actions.chat = chat
    token = admin_token(topo.settings)
    board = Dashboard(
        lambda: topo.settings,
        actions,
        chat,
        admin_token=token,
        lab_dir=_absolute(args.lab_results),
        loadtest_dir=_absolute(args.loadtest_results),
        metrics_every_s=args.dashboard_metrics_interval,
    )
    port = DEFAULT_PORT if args.dashboard_port is None else args.dashboard_port
    try:
        port = await board.start(args.dashboard_host, port)
    except OSError as exc:
        if args.dashboard_port is not None or exc.errno != errno.EADDRINUSE:
            raise
        say(f"dashboard   port {DEFAULT_PORT} is in use; using a free port")
        port = await board.start(args.dashboard_host, 0)
    if chat is not None and args.dashboard_chat:
        chat.start()
    host = args.dashboard_host
    say(f"dashboard   http://{host}:{port}/#token={token}")
    say(f"            admin token {token} (needed for faults, knobs, traces)")

    async def stop() -> None:
        await board.stop()
        if chat is not None:
            await chat.stop()
        with contextlib.suppress(Exception):
            await actions.close()

    return stop


RUN_EXTRA = (add_arguments, start)


# ---- chatscale dashboard: an external topology -------------------------------------------------


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    d = sub.add_parser(
        "dashboard",
        help="serve the live dashboard of a running topology found through Valkey (docker "
        "compose, or a `chatscale run` elsewhere); faults that need process control are "
        "unavailable",
    )
    d.add_argument("--port", type=int, default=DEFAULT_PORT, help="HTTP port (0: a free one)")
    d.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (the compose service binds 0.0.0.0 in its container and is "
        "published on the host's 127.0.0.1 only)",
    )
    d.add_argument(
        "--gateway",
        action="append",
        metavar="URL",
        help="gateway URL for the trace and the built-in chat (repeat; default: the gateways "
        "`chatscale run` announced in .chatscale/run.json, else those registered in Valkey)",
    )
    d.add_argument(
        "--public-url",
        help="the URL to print (default http://HOST:PORT/), e.g. the host's address of a "
        "container's port",
    )
    d.add_argument("--lab-results", default="lab-results", help="folder of lab results")
    d.add_argument("--loadtest-results", default="reports", help="folder of load-test reports")
    d.add_argument(
        "--metrics-interval",
        type=float,
        default=METRICS_EVERY_S,
        metavar="S",
        help="seconds between scrapes of every process's /metrics while a page is open",
    )
    d.add_argument("--chat", action="store_true", help="start the built-in chat at once")
    d.add_argument("--duration", type=float, help="stop by itself after this many seconds")
    d.set_defaults(fn=cmd_dashboard)


async def cmd_dashboard(args: argparse.Namespace) -> int:
    from chatscale import discovery
    from chatscale.commandline import UsageError
    from dashboard.chat import BuiltInChat
    from dashboard.external import ExternalActions
    from dashboard.server import Dashboard

    try:
        settings = discovery.settings_for_tools()
    except discovery.TopologyError as exc:
        raise UsageError(str(exc)) from None
    if not settings.redis_url:
        raise UsageError(
            "no running topology: set REDIS_URL (or run this where `chatscale run` runs)"
        )
    if not settings.token_secret:
        raise UsageError("no token secret: set CHATSCALE_TOKEN_SECRET as the gateways have it")
    state = discovery.read_state()
    urls = args.gateway or (
        state.gateways if state and state.redis_url == settings.redis_url else []
    )
    actions = ExternalActions(settings, urls)
    await actions.refresh()
    chat = None
    try:
        chat = BuiltInChat(settings, actions.live_gateways)
        await chat.setup()
    except LookupError as exc:  # another community loaded: no built-in chat, say so
        print(f"dashboard   no built-in chat: {exc}", flush=True)
        chat = None
    actions.chat = chat
    token = admin_token(settings)
    board = Dashboard(
        lambda: settings,
        actions,
        chat,
        admin_token=token,
        lab_dir=_absolute(args.lab_results),
        loadtest_dir=_absolute(args.loadtest_results),
        metrics_every_s=args.metrics_interval,
    )
    port = await board.start(args.host, args.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        if chat is not None and args.chat:
            chat.start()
        url = args.public_url or f"http://{args.host}:{port}/"
        gws = actions.live_gateways()
        print(f"dashboard   {url.rstrip('/')}/#token={token}", flush=True)
        print(f"            admin token {token} (needed for faults, knobs, traces)", flush=True)
        print(
            f"topology    {discovery_line(settings)}; gateways "
            f"{', '.join(gws) if gws else '(none live yet: registered ones are used as they come)'}",
            flush=True,
        )
        print(
            "faults      kill worker, kill gateway, pause history store: unavailable (no process "
            "control here); pause Valkey: CLIENT PAUSE ALL",
            flush=True,
        )
        if args.duration is not None:
            loop.call_later(args.duration, stop.set)
        await stop.wait()
    finally:
        await board.stop()
        if chat is not None:
            await chat.stop()
    return 0


def discovery_line(settings: Any) -> str:
    """Where the topology is, without the Redis password."""
    from urllib.parse import urlsplit

    parts = urlsplit(str(settings.redis_url))
    return f"Valkey {parts.hostname}:{parts.port}, store {settings.storage_url.split(':')[0]}"
