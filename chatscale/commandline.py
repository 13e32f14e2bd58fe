"""What every package's commands share: the one-line error, serving until a signal, the
settings of a service or a token-minting tool, and port and secret checks.

Each package contributes its own commands (``gateway/commands.py``, ``workers/commands.py``,
``presence/commands.py``, ``storage/commands.py``, ``guilds/commands.py``, ``ops/commands.py``,
``loadtest/command.py``); ``chatscale.cli`` only wires them together. This module imports no
service, so every package can use it.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import signal

from chatscale import discovery, metrics
from chatscale.config import Settings
from chatscale.discovery import settings_for_tools


class DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """``--help`` shows every option's default (except options without one: None/False) and
    keeps descriptions and epilogs as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False) or action.help is None:
            return action.help
        return super()._get_help_string(action)


class UsageError(Exception):
    """A mistake on the command line or in the environment; ``str()`` is the one line to print."""


async def serve_until_signal(start, stop) -> None:  # noqa: ANN001
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, done.set)
    await start()
    await done.wait()
    await stop()


def service_settings() -> Settings:
    """A service's settings: the environment, else the ``chatscale run`` of this directory."""
    settings = settings_for_tools()
    if not settings.redis_url:
        raise UsageError(
            "no Redis: start `chatscale run` in this directory first (services started here "
            "then join it), or set REDIS_URL and CHATSCALE_STORAGE_URL"
        )
    return settings


def check_secret(settings: Settings, insecure_dev: bool) -> None:
    reason = discovery.weak_secret_reason(settings.token_secret)
    if reason is not None and not (insecure_dev or settings.insecure_dev):
        raise UsageError(
            f"refusing to start: {reason}, so anyone could forge tokens; set it to 32+ random "
            "characters (python3 -c 'import secrets; print(secrets.token_urlsafe(48))'), "
            "start the gateway from a `chatscale run` directory, or pass --insecure-dev"
        )


def port_in_use(exc: OSError, port: int, what: str) -> UsageError | None:
    if exc.errno != errno.EADDRINUSE:
        return None
    return UsageError(f"port {port} is in use ({what}): stop what holds it, or choose another port")


def serve_metrics(settings: Settings, *, role: str, name: str) -> None:
    try:
        metrics.serve(settings, role=role, name=name)
    except OSError as exc:
        if (err := port_in_use(exc, settings.metrics_port, "metrics")) is not None:
            raise err from None
        raise


def minting_settings(*, need_live: bool) -> Settings:
    """Settings for a tool that mints tokens: they must be signed with the topology's secret."""
    settings = settings_for_tools(need_live=need_live)
    discovery.require_existing_store(settings)
    if not settings.token_secret:
        raise UsageError(
            "no token secret: run this in the directory where `chatscale run` ran (it keeps "
            "one in .chatscale/token-secret) or set CHATSCALE_TOKEN_SECRET as the gateways have it"
        )
    return settings
