"""``chatscale automod set``, ``timeout`` and ``quarantine`` in-process against a real Valkey and
SQLite (no gateway runs, so none confirms): what each stores, and one error line + exit 2 for
every mistake."""

from __future__ import annotations

import asyncio
import os

import pytest

from chatscale.config import Settings
from chatscale.keys import Keys
from chatscale.redisconn import connect
from guilds.automod import Rules
from tests.guilds.test_admin_cli import env, run  # noqa: F401  (env is a fixture)


def redis_call(fn):  # noqa: ANN001, ANN201
    async def go():  # noqa: ANN202
        redis = connect(Settings())
        try:
            return await fn(redis, Keys(os.environ["CHATSCALE_KEY_PREFIX"]))
        finally:
            await redis.aclose()

    return asyncio.run(go())


def one_error(out: str, text: str) -> None:
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith("error: ") and text in lines[0], out
    assert "Traceback" not in out


@pytest.mark.parametrize(
    "argv, text",
    [
        (["automod", "set", "interview-prep", "--regex", "("], "bad regex"),
        (["automod", "set", "nope", "--keyword", "x"], "no guild 'nope'"),
        (["automod", "set", "interview-prep", "--alert-channel", "nope"], "no channel 'nope'"),
        (["timeout", "interview-prep", "nobody", "--minutes", "5"], "no user 'nobody'"),
        (["timeout", "interview-prep", "bob", "--minutes", "-1"], "--minutes must be 0"),
        (["timeout", "interview-prep", "alice", "--minutes", "5"], "owner cannot be timed out"),
        (["quarantine", "nobody"], "no user 'nobody'"),
    ],
)
def test_mistakes_are_one_error_line_and_exit_2(env: str, capsys, argv, text):  # noqa: F811
    code, out = run(capsys, *argv)
    assert code == 2
    one_error(out, text)


def test_each_command_stores_its_change(env: str, capsys):  # noqa: F811
    code, out = run(capsys, "automod", "set", "interview-prep", "--keyword", "scam*",
                    "--regex", r"free\s+nitro", "--alert-channel", "mentors-only",
                    "--max-mentions", "2")  # fmt: skip
    assert code == 0 and "automod rules set" in out, out

    async def rules(redis, keys):  # noqa: ANN001, ANN202
        [guild] = [k async for k in redis.scan_iter(match=keys.automod_rules(0)[:-1] + "*")]
        return Rules.from_json(await redis.get(guild))

    got = redis_call(rules)
    assert got.keywords == ("scam*",) and got.regexes == (r"free\s+nitro",)
    assert got.max_mentions == 2 and got.alert_channel_id != 0

    code, out = run(capsys, "timeout", "interview-prep", "bob", "--minutes", "2")
    assert code == 0 and "timed out for 120s" in out, out
    code, out = run(capsys, "quarantine", "bob")
    assert code == 0 and "account quarantined" in out, out

    async def quarantined(redis, keys):  # noqa: ANN001, ANN202
        return await redis.smembers(keys.quarantined())

    assert len(redis_call(quarantined)) == 1
    code, out = run(capsys, "quarantine", "bob", "--release")
    assert code == 0, out
    assert redis_call(quarantined) == set()
