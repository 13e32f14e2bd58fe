"""No usable default token secret (issue 10, item 1).

``chatscale run`` keeps a random secret per data directory (mode 0600) and the tools read it
there; a gateway process refuses a weak secret unless told ``--insecure-dev``. The end-to-end
half (a token forged with the old default is refused by a default ``chatscale run``) is in
tests/ops/test_run_command.py.
"""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from chatscale import cli, discovery
from chatscale.config import OLD_DEFAULT_TOKEN_SECRET, Settings
from chatscale.valkey import ValkeyServer


def test_settings_have_no_usable_default_secret(clean_env: Path):
    assert Settings().token_secret == ""
    assert discovery.weak_secret_reason(Settings().token_secret) is not None


def test_the_secret_is_random_per_directory_kept_0600_and_stable(clean_env: Path):
    first = discovery.ensure_secret(clean_env / "a")
    path = discovery.secret_path(clean_env / "a")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert discovery.ensure_secret(clean_env / "a") == first  # a restart keeps tokens valid
    assert discovery.ensure_secret(clean_env / "b") != first
    assert len(first) >= discovery.MIN_SECRET_CHARS
    assert discovery.weak_secret_reason(first) is None


@pytest.mark.parametrize(
    ("secret", "reason"),
    [
        ("", "empty"),
        (OLD_DEFAULT_TOKEN_SECRET, "old public default"),
        ("test-secret", "shorter than 32"),
    ],
)
def test_weak_secrets_are_named(secret: str, reason: str):
    assert reason in (discovery.weak_secret_reason(secret) or "")


def test_tools_sign_with_the_directory_secret_unless_the_environment_sets_one(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
):
    secret = discovery.ensure_secret(clean_env / ".chatscale")
    assert discovery.settings_for_tools(need_live=False).token_secret == secret
    monkeypatch.setenv("CHATSCALE_TOKEN_SECRET", "x" * 40)
    assert discovery.settings_for_tools(need_live=False).token_secret == "x" * 40


@pytest.mark.parametrize("secret", ["", OLD_DEFAULT_TOKEN_SECRET, "short"])
def test_the_gateway_refuses_a_weak_secret(
    secret: str,
    clean_env: Path,
    valkey: ValkeyServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    monkeypatch.setenv("REDIS_URL", valkey.url)
    monkeypatch.setenv("CHATSCALE_TOKEN_SECRET", secret)
    assert cli.main(["gateway", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: refusing to start:"), err
    assert "--insecure-dev" in err[0]


def test_the_tools_refuse_to_mint_without_a_secret(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    db = clean_env / "data.db"
    db.touch()
    monkeypatch.setenv("CHATSCALE_STORAGE_URL", f"sqlite:///{db}")
    assert cli.main(["token", "alice"]) == 2
    assert "no token secret" in capsys.readouterr().err


def test_insecure_dev_lets_a_weak_secret_through(clean_env: Path, valkey: ValkeyServer):
    """With --insecure-dev the secret check passes; the gateway then fails on the next thing
    that is wrong (here a port in use), which shows the check did not stop it."""
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        env = {"PATH": "/usr/bin:/bin", "REDIS_URL": valkey.url, "CHATSCALE_TOKEN_SECRET": "weak"}
        done = subprocess.run(
            [sys.executable, "-m", "chatscale", "gateway", "--port", str(port), "--insecure-dev"],
            env={**env, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
            cwd=clean_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: port {port} is in use (gateway): stop what holds it, or choose another port"
    )


def test_compose_requires_the_secret_from_the_environment():
    import yaml

    compose = yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "docker-compose.yml").read_text()
    )
    value = compose["x-chatscale-env"]["CHATSCALE_TOKEN_SECRET"]
    assert value.startswith("${CHATSCALE_TOKEN_SECRET:?"), value  # no fallback: compose stops
    assert OLD_DEFAULT_TOKEN_SECRET not in value
