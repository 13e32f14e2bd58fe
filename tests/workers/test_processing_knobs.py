"""The worker's lab knobs: ``CHATSCALE_ORDERING`` (the ``--ordering`` flag's default) and the
``CHATSCALE_HISTORY_DELAY_MS`` fault (a slow store; off by default)."""

from __future__ import annotations

import argparse
import time

import pytest

from chatscale.config import Settings
from tests.conftest import Stack
from workers import commands
from workers.worker import Worker


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    commands.add_commands(parser.add_subparsers())
    return parser.parse_args(["worker", *argv])


@pytest.mark.parametrize(
    ("env", "argv", "expected"),
    [
        (None, [], "shard"),  # today's default
        ("parallel", [], "parallel"),  # the setting, for topologies configured by environment
        ("parallel", ["--ordering", "shard"], "shard"),  # the flag wins
    ],
)
async def test_ordering_comes_from_the_flag_else_the_setting(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: str | None,
    argv: list[str],
    expected: str,
):
    monkeypatch.setenv("CHATSCALE_REDIS_URL", settings.redis_url or "")
    monkeypatch.setenv("CHATSCALE_STORAGE_URL", settings.storage_url)
    monkeypatch.setenv("CHATSCALE_KEY_PREFIX", settings.key_prefix)
    monkeypatch.setenv("CHATSCALE_WORKER_BLOCK_MS", "100")
    if env is None:
        monkeypatch.delenv("CHATSCALE_ORDERING", raising=False)
    else:
        monkeypatch.setenv("CHATSCALE_ORDERING", env)
    seen: list[str] = []
    real_init = Worker.__init__

    def spy(self: Worker, *args: object, **kw: object) -> None:
        real_init(self, *args, **kw)  # type: ignore[arg-type]
        seen.append(self.ordering)

    monkeypatch.setattr(Worker, "__init__", spy)
    assert await commands.cmd_worker(_parse("--burst", *argv)) == 0
    assert seen == [expected]
    assert f"({expected})" in capsys.readouterr().out


async def test_the_history_delay_slows_the_worker_history_write(stack: Stack):
    alice = await stack.client("alice", gateway=0)
    await alice.send_message(stack.channels["general"], "slow store")
    stack.worker.pipeline.settings = stack.settings.model_copy(update={"history_delay_ms": 300})
    started = time.monotonic()
    await stack.drain()
    assert time.monotonic() - started >= 0.3
    assert len(await stack.store.page(stack.channels["general"], before=None, limit=5)) == 1


def test_the_defaults_are_todays_behaviour(clean_env):
    s = Settings()
    assert (s.processing, s.ordering, s.history_delay_ms) == ("log", "shard", 0)
