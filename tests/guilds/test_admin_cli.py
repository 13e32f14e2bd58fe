"""The control-plane commands and explain-permissions, run as ``chatscale ...`` in-process
against a real Valkey and a real SQLite file (no gateway is running, so none confirms)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from chatscale import cli
from chatscale.config import Settings
from chatscale.keys import Keys
from chatscale.redisconn import connect
from chatscale.valkey import ValkeyServer
from guilds import community
from storage import open_store


@pytest.fixture
def env(valkey: ValkeyServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path}/admin.db"
    prefix = f"t{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("REDIS_URL", valkey.url)
    monkeypatch.setenv("CHATSCALE_STORAGE_URL", url)
    monkeypatch.setenv("CHATSCALE_KEY_PREFIX", prefix)
    monkeypatch.chdir(tmp_path)  # no .chatscale/run.json here

    async def seed() -> None:
        store = await open_store(url)
        redis = connect(Settings())
        await community.apply(community.load_file("demo"), store, redis, Keys(prefix))
        await redis.aclose()
        await store.close()

    asyncio.run(seed())
    return url


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out + out.err


def explain(capsys, user: str, channel: str) -> str:  # noqa: ANN001
    code, out = run(
        capsys,
        "explain-permissions",
        "--guild",
        "interview-prep",
        "--user",
        user,
        "--channel",
        channel,
    )
    assert code == 0, out
    return out


def test_explain_permissions_prints_each_step(env: str, capsys):
    out = explain(capsys, "bob", "mentors-only")
    assert "roles: @everyone + none" in out
    assert "overwrite for @everyone: allow none; deny VIEW_CHANNEL" in out
    assert "implicit rule: no VIEW_CHANNEL" in out
    assert out.strip().endswith("result: none")
    carol = explain(capsys, "carol", "announcements")
    assert "roles: @everyone + mentors" in carol
    assert "role overwrites, allow" in carol and "+ SEND_MESSAGES" in carol
    assert "guild owner" in explain(capsys, "alice", "general")
    assert "not a member" in explain(capsys, "erin", "general")
    code, out = run(
        capsys, "explain-permissions", "--guild", "nope", "--user", "bob", "--channel", "x"
    )
    assert code == 2 and "no guild 'nope'" in out


def test_control_plane_commands_change_what_explain_shows(env: str, capsys):
    g = ["--guild", "interview-prep"]
    code, out = run(capsys, "create-role", *g, "reviewers", "--permissions", "VIEW_CHANNEL")
    assert code == 0 and "created role 'reviewers'" in out and "no live gateway" in out
    assert run(capsys, "assign-role", *g, "--user", "bob", "--role", "reviewers")[0] == 0
    code, out = run(
        capsys,
        "set-overwrite",
        *g,
        "--channel",
        "mentors-only",
        "--role",
        "reviewers",
        "--allow",
        "VIEW_CHANNEL|READ_MESSAGE_HISTORY",
    )
    assert code == 0, out
    assert "result: none" not in explain(capsys, "bob", "mentors-only")
    assert run(capsys, "remove-role", *g, "--user", "bob", "--role", "reviewers")[0] == 0
    assert explain(capsys, "bob", "mentors-only").strip().endswith("result: none")

    assert run(capsys, "slowmode", *g, "--channel", "general", "30")[0] == 0
    code, out = run(capsys, "create-channel", *g, "staff", "--private", "--role", "mentors")
    assert code == 0 and "created channel #staff" in out
    assert explain(capsys, "dave", "staff").strip().endswith("result: none")
    assert not explain(capsys, "carol", "staff").strip().endswith("result: none")

    code, out = run(capsys, "ban", *g, "--user", "bob", "--reason", "spam")
    assert code == 0 and "member banned" in out
    assert "banned from the guild" in explain(capsys, "bob", "general")
    code, out = run(capsys, "add-member", *g, "--user", "bob")
    assert code == 2 and "banned" in out
    assert run(capsys, "unban", *g, "--user", "bob")[0] == 0
    assert run(capsys, "add-member", *g, "--user", "bob")[0] == 0
    assert "roles: @everyone + none" in explain(capsys, "bob", "general")

    assert run(capsys, "create-user", "zoe")[0] == 0
    code, out = run(capsys, "create-guild", "zoes-place", "--owner", "zoe", "--channel", "lobby")
    assert code == 0 and "created guild 'zoes-place'" in out
    code, out = run(
        capsys,
        "explain-permissions",
        "--guild",
        "zoes-place",
        "--user",
        "zoe",
        "--channel",
        "lobby",
    )
    assert code == 0 and "guild owner" in out


def test_names_stay_unique_and_unban_says_when_there_is_no_ban(env: str, capsys):
    g = ["--guild", "interview-prep"]
    code, out = run(capsys, "create-guild", "interview-prep", "--owner", "bob")
    assert code == 2 and "a guild named 'interview-prep' exists" in out
    code, out = run(capsys, "create-channel", *g, "general")
    assert code == 2 and "#general exists in 'interview-prep'" in out
    code, out = run(capsys, "create-channel", *g, "#general")
    assert code == 2 and "#general exists" in out
    assert run(capsys, "explain-permissions", *g, "--user", "bob", "--channel", "general")[0] == 0

    code, out = run(capsys, "unban", *g, "--user", "bob")
    assert code == 2 and "bob is not banned from 'interview-prep'" in out
    assert "ban lifted" not in out


def test_admin_commands_in_the_wrong_directory_create_no_database(
    valkey: ValkeyServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    from chatscale.config import env_names

    for name in env_names():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REDIS_URL", valkey.url)
    monkeypatch.chdir(tmp_path)  # no .chatscale here: not where `chatscale run` ran
    for argv in (
        ["explain-permissions", "--guild", "g", "--user", "u", "--channel", "c"],
        ["create-user", "zoe"],
        ["create-guild", "zoes-place", "--owner", "zoe"],
        ["ban", "--guild", "g", "--user", "u"],
    ):
        code, out = run(capsys, *argv)
        assert code == 2, (argv, out)
        assert out.count("\n") == 1 and "no database at .chatscale/chatscale.db" in out, out
        assert "Traceback" not in out
    assert not (tmp_path / ".chatscale").exists()
