"""``chatscale run``'s dashboard: its options, and starting it next to the topology.

``ops`` cannot import this package (it is above ``ops``): ``chatscale/cli.py`` hands
``RUN_EXTRA`` to ``ops.commands.add_commands``, which adds its options to ``run`` and starts it
once the topology is up.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import secrets
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
    token = secrets.token_urlsafe(18)
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
