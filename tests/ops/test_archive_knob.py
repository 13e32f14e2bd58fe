"""ARCHIVE_INTERVAL_S is read: `chatscale run` and compose run the archiver with --loop, which
compacts every ARCHIVE_INTERVAL_S unless --every overrides it."""

from __future__ import annotations

import pytest

from chatscale.cli import build_parser
from chatscale.commandline import UsageError
from chatscale.config import Settings
from ops import supervisor
from workers.search_commands import archive_every


def _args(*argv: str):
    return build_parser().parse_args(["archive", *argv])


def test_loop_compacts_every_archive_interval_s():
    settings = Settings(archive_interval_s=42.5)
    assert archive_every(_args("--loop"), settings) == 42.5
    assert archive_every(_args(), settings) == 0.0  # once
    assert archive_every(_args("--loop", "--every", "7"), settings) == 7.0
    with pytest.raises(UsageError):
        archive_every(_args("--every", "-1"), settings)


def test_run_supervises_an_archiver_with_the_knob_and_a_cold_directory(tmp_path, monkeypatch):
    topo = supervisor.Topology(Settings(archive_interval_s=90), tmp_path)
    (archiver,) = [c for c in supervisor.plan(topo) if c.role == "archive"]
    assert archiver.args == ["archive", "--loop"]
    env = topo.env()
    assert env["CHATSCALE_ARCHIVE_INTERVAL_S"] == "90.0"
    # the child reads it back from its environment, as the service does
    for name, value in env.items():
        if name.startswith("CHATSCALE_"):
            monkeypatch.setenv(name, value)
    assert archive_every(build_parser().parse_args(archiver.args), Settings()) == 90.0
    assert supervisor.run_cold_url(tmp_path) == f"file://{tmp_path.resolve()}/cold"
