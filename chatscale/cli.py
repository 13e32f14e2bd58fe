"""The ``chatscale`` command: one entry point for every service and tool.

Each package contributes its commands (``gateway/commands.py``, ``workers/commands.py``,
``presence/commands.py``, ``storage/commands.py``, ``guilds/commands.py``, ``ops/commands.py``,
``loadtest/command.py``, ``lab/commands.py``; what they share is ``chatscale.commandline``); this module only wires
them together and turns expected failures into one line.

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
import gc
import logging
import sys
from collections.abc import Callable

from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError

from chatscale.commandline import DefaultsHelp, UsageError
from chatscale.config import Settings
from chatscale.discovery import WORKDIR, TopologyError
from chatscale.redisconn import BadRedisURL
from guilds import commands as admin
from guilds.controlplane import ControlError
from storage.exceptions import StorageUnavailable, UnknownBackend

__all__ = ["WORKDIR", "build_parser", "main"]


#: What ``main`` reports in one line instead of a traceback.
EXPECTED_ERRORS = (
    UsageError,
    TopologyError,
    UnknownBackend,  # a storage URL of no known kind (or a bad one: BadStorageURL)
    StorageUnavailable,  # e.g. a metadata change refused: too few Cassandra replicas alive
    admin.Unresolved,
    admin.Refused,
    ControlError,
    BadRedisURL,  # a redis+cluster:// URL naming no host:port
)


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


def build_parser() -> argparse.ArgumentParser:
    """Every package contributes its own commands; this only wires them together."""
    from dashboard import commands as dashboard_commands
    from gateway import commands as gateway_commands
    from guilds import discover_commands
    from lab import commands as lab_commands
    from loadtest import command as loadtest_command
    from loadtest import communities
    from ops import commands as ops_commands
    from presence import commands as presence_commands
    from storage import commands as storage_commands
    from voice import commands as voice_commands
    from workers import commands as worker_commands
    from workers import search_commands

    p = argparse.ArgumentParser(
        prog="chatscale",
        description="A runnable miniature of a Discord-class chat backend. Configuration comes from "
        "CHATSCALE_* environment variables (see README, 'Knobs').",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    # run (with the dashboard, a layer above ops), token, trace, top
    ops_commands.add_commands(sub, run_extras=[dashboard_commands.RUN_EXTRA])
    dashboard_commands.add_commands(sub)  # dashboard (against compose or another run)
    gateway_commands.add_commands(sub)  # gateway
    worker_commands.add_commands(sub)  # worker, evict
    search_commands.add_commands(sub)  # indexer, search, archive
    presence_commands.add_commands(sub)  # presence
    storage_commands.add_commands(sub)  # migrate
    voice_commands.add_commands(sub)  # voice (the media relay)
    # the control plane (guilds, channels, roles, overwrites, bans), explain-permissions, seed;
    # seed also reads the load tester's behaviour files, which generate a community
    admin.add_commands(sub, community_readers=[lambda path: communities.load(path).community])
    loadtest_command.add_bench_command(sub)  # bench chat|idle|storage|presence|compare|ingest
    loadtest_command.add_command(sub)  # loadtest SCENARIO
    lab_commands.add_commands(sub)  # lab list|run|report
    discover_commands.add_commands(sub)  # discover list|search|top|suggest|eval|bench|...
    for command in sub.choices.values():  # --help shows the defaults of every command
        if command.formatter_class in (
            argparse.HelpFormatter,
            argparse.RawDescriptionHelpFormatter,
        ):
            command.formatter_class = DefaultsHelp
    return p


def _loop_factory(settings: Settings) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop ``CHATSCALE_EVENT_LOOP`` names (uvloop or the standard library's)."""
    if settings.event_loop == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return None


def _tune_gc(settings: Settings) -> None:
    """``CHATSCALE_GC_YOUNG_THRESHOLD``: freeze the start's heap and collect young objects
    less often (0: Python's defaults). Called once the commands' modules are imported, only
    when ``main`` runs a program: frozen objects are invisible to ``gc.get_referrers``, which
    a test process's tools (hypothesis) rely on."""
    if settings.gc_young_threshold > 0:
        gc.freeze()
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(settings.gc_young_threshold, gen1, gen2)


def _bad_setting(exc: ValidationError) -> str:
    """One line naming the environment variable and what is wrong with it."""
    parts = []
    for err in exc.errors():
        name = str(err["loc"][0]) if err.get("loc") else "?"
        parts.append(f"CHATSCALE_{name.upper()}={err.get('input')!r}: {err['msg']}")
    return "bad setting " + "; ".join(parts) + " (see README, 'Knobs')"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _logging(args.verbose)
    try:
        settings = Settings()
        if argv is None:  # a program (not a test calling main in its own process)
            _tune_gc(settings)
        with asyncio.Runner(loop_factory=_loop_factory(settings)) as runner:
            return runner.run(args.fn(args))
    except KeyboardInterrupt:
        return 130
    except EXPECTED_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    except ValidationError as exc:  # a CHATSCALE_* variable the settings refuse
        print(f"error: {_bad_setting(exc)}", file=sys.stderr, flush=True)
        return 2
    except RedisConnectionError as exc:
        print(f"error: Redis unreachable: {exc}", file=sys.stderr, flush=True)
        return 2
