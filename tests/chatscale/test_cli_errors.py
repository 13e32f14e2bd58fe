"""Expected CLI failures print one line and exit 2, never a traceback (issue 11, "Quick start and
CLI"); and every tool finds the topology one way (``chatscale.discovery``)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from chatscale import cli, discovery
from chatscale.config import env_names
from chatscale.valkey import ValkeyServer

ROOT = Path(__file__).resolve().parents[2]


def one_line_error(capsys: pytest.CaptureFixture[str], *expected: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    for text in expected:
        assert text in err[0], err[0]
    return err[0]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_state(workdir: Path, *, redis_url: str, pid: int, storage_url: str = "") -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "run.json").write_text(
        json.dumps(
            {
                "redis_url": redis_url,
                "storage_url": storage_url or f"sqlite:///{workdir}/chatscale.db",
                "key_prefix": "cs",
                "gateways": ["ws://127.0.0.1:1"],
                "pid": pid,
            }
        )
    )


# ---- finding the topology ----------------------------------------------------------------------


def test_a_stale_run_json_is_reported_in_one_line(
    clean_env: Path, valkey: ValkeyServer, capsys: pytest.CaptureFixture[str]
):
    write_state(clean_env / ".chatscale", redis_url=valkey.url, pid=dead_pid())
    for argv in (["top", "--once"], ["worker", "--burst"], ["presence"], ["gateway"]):
        assert cli.main(argv) == 2, argv
        one_line_error(capsys, ".chatscale/run.json is stale", "has exited", "chatscale run")


def test_a_run_json_whose_redis_is_gone_is_stale(
    clean_env: Path, capsys: pytest.CaptureFixture[str]
):
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    write_state(clean_env / ".chatscale", redis_url=f"redis://127.0.0.1:{port}/0", pid=os.getpid())
    assert cli.main(["evict", "worker-x"]) == 2
    one_line_error(capsys, "is stale", "does not answer")


def test_services_in_a_run_directory_use_its_run_json(clean_env: Path, valkey: ValkeyServer):
    write_state(clean_env / ".chatscale", redis_url=valkey.url, pid=os.getpid())
    secret = discovery.ensure_secret(clean_env / ".chatscale")
    settings = discovery.settings_for_tools()
    assert settings.redis_url == valkey.url
    assert settings.storage_url == f"sqlite:///{clean_env / '.chatscale'}/chatscale.db"
    assert settings.token_secret == secret


def test_the_environment_wins_field_by_field_and_another_redis_means_another_topology(
    clean_env: Path, valkey: ValkeyServer, monkeypatch: pytest.MonkeyPatch
):
    write_state(
        clean_env / ".chatscale",
        redis_url=valkey.url,
        pid=os.getpid(),
        storage_url="cassandra://127.0.0.1:9042/ks",
    )
    monkeypatch.setenv("CHATSCALE_REDIS_URL", valkey.url)  # the same Redis: run.json fills in
    assert discovery.settings_for_tools().storage_url == "cassandra://127.0.0.1:9042/ks"
    monkeypatch.setenv("CHATSCALE_KEY_PREFIX", "other")
    assert discovery.settings_for_tools().key_prefix == "other"
    monkeypatch.setenv("CHATSCALE_REDIS_URL", "redis://elsewhere:6379/0")  # another topology
    settings = discovery.settings_for_tools()
    assert settings.storage_url != "cassandra://127.0.0.1:9042/ks"


def test_services_without_any_topology_say_what_to_do(
    clean_env: Path, capsys: pytest.CaptureFixture[str]
):
    for argv in (["worker", "--burst"], ["presence"], ["gateway"]):
        assert cli.main(argv) == 2
        one_line_error(capsys, "no Redis", "chatscale run")


# ---- seed paths ------------------------------------------------------------------------------------


def test_seed_resolves_seeds_paths_from_any_directory(
    clean_env: Path, valkey: ValkeyServer, monkeypatch: pytest.MonkeyPatch, capsys
):
    assert not (clean_env / "seeds").exists()
    monkeypatch.setenv("REDIS_URL", valkey.url)
    monkeypatch.setenv("CHATSCALE_KEY_PREFIX", f"t{os.getpid()}seed")
    monkeypatch.setenv("CHATSCALE_STORAGE_URL", f"sqlite:///{clean_env}/seeded.db")
    for ref in ("seeds/demo.toml", "demo.toml", "demo"):
        assert cli.main(["seed", ref]) == 0, capsys.readouterr().err
        assert "loaded 'demo'" in capsys.readouterr().out
    assert cli.main(["seed", "seeds/nope.toml"]) == 2
    one_line_error(capsys, "no community file 'seeds/nope.toml'", "known: ", "demo")
    (clean_env / "broken.toml").write_text("this is = = not toml")
    assert cli.main(["seed", "broken.toml"]) == 2
    one_line_error(capsys, "cannot load broken.toml")


# ---- ports -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_chatscale_run_on_a_taken_port_says_which(clean_env: Path):
    env = {k: v for k, v in os.environ.items() if k not in env_names()}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "chatscale", "run", "--base-port", str(port), "--gateways", "1"],
            env=env,
            cwd=clean_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    err = done.stderr.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"error: gateway-0 exited early: port {port} is in use"), err
    assert "stopped: every process exited." in done.stdout


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["gateway"], ("no Redis", "chatscale run")),
        (["bench", "chat"], ("no running topology", "--gateway")),
        (["migrate", "--storage-url", "bogus://x"], ("unknown storage URL", "sqlite:///")),
        (["loadtest", "steady", "--community", "nope"], ("no community 'nope'", "study-group")),
        (
            ["migrate", "--storage-url", "cassandra://127.0.0.1,127.0.0.2/ks?metadata=MOST"],
            ("unknown consistency metadata='MOST'", "QUORUM"),
        ),
        (  # nothing listens on port 1: the outage is one line too
            ["migrate", "--storage-url", "cassandra://127.0.0.1:1/ks?timeout=1"],
            ("cassandra", "127.0.0.1:1"),
        ),
    ],
    ids=[
        "gateway",
        "bench-chat",
        "migrate-bogus-url",
        "loadtest-unknown-community",
        "migrate-bad-cassandra-url",
        "migrate-cassandra-down",
    ],
)
def test_a_newcomers_mistake_is_one_line_not_a_traceback(
    clean_env: Path, capsys: pytest.CaptureFixture[str], argv: list[str], words: tuple[str, ...]
):
    assert cli.main(argv) == 2, argv
    one_line_error(capsys, *words)


def test_a_setting_the_settings_refuse_is_one_line_naming_the_variable(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    for name, value, says in (
        ("CHATSCALE_PRESENCE_PARTITIONS", "0", "greater than or equal to 1"),
        ("CHATSCALE_INGEST_SHARDS", "abc", "valid integer"),
    ):
        monkeypatch.setenv(name, value)
        for argv in (["presence"], ["worker", "--burst"]):
            assert cli.main(argv) == 2, (name, argv)
            one_line_error(capsys, f"{name}={value!r}", says)
        monkeypatch.delenv(name)
