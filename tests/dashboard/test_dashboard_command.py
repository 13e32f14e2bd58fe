"""``chatscale dashboard`` against a real topology it does not supervise (as under docker
compose): a ``chatscale run`` without its own dashboard, and the command started next to it,
over HTTP only. The topology view has the run's gateways, workers and queues; a traced message
crosses the run's gateways; the process-control faults are refused as unavailable (never
faked), Valkey's own pause is not; actions without the admin token are refused."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from chatscale.trace import HOPS
from tests.dashboard.conftest import _read_until

pytestmark = pytest.mark.slow
TOKEN = "test-admin-token-0123456789"


def _stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()
    finally:
        if proc.stdout is not None:
            proc.stdout.close()


def _start(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "chatscale", *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def external(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    cwd = tmp_path_factory.mktemp("dashboard-command")
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("CHATSCALE_") and k != "REDIS_URL"
    }
    env["CHATSCALE_STORAGE_URL"] = f"sqlite:///{cwd}/run.db"
    run = _start(["run", "--base-port", "0", "--dashboard-port", "-1", "--no-demo"], cwd, env)
    board = None
    try:
        banner = _read_until(run, "Ctrl-C stops everything.")
        assert "dashboard   http" not in banner  # the run serves none: only the command does
        # the command finds the run through .chatscale/run.json, as the other tools do
        board = _start(
            ["dashboard", "--port", "0", "--duration", "120"],
            cwd,
            {**env, "CHATSCALE_DASHBOARD_ADMIN_TOKEN": TOKEN},
        )
        out = _read_until(board, "faults ")
        found = re.search(r"dashboard\s+(http://127\.0\.0\.1:\d+)/#token=(\S+)", out)
        assert found, out
        assert found.group(2) == TOKEN
        gateways = re.findall(r"ws://127\.0\.0\.1:\d+", out)
        assert len(gateways) == 2, out
        yield found.group(1), cwd
    finally:
        if board is not None:
            assert _stop(board) == 0
        _stop(run)


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 - the test's own server
        body = r.read()
        return (
            json.loads(body) if r.headers["Content-Type"].startswith("application/json") else body
        )


def post(url: str, doc: dict[str, Any], token: str | None = TOKEN) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["X-Admin-Token"] = token
    req = urllib.request.Request(url, json.dumps(doc).encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def first_event(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/events", timeout=10) as r:  # noqa: S310
        while True:
            line = r.readline()
            assert line, "the event stream ended"
            if line.startswith(b"data: "):
                return json.loads(line[6:])


def test_chatscale_dashboard_serves_an_external_topology(external) -> None:
    base, cwd = external
    assert b"topology" in get(base + "/")

    # the topology view: the run's two gateways (alive), its workers, its queues, live frames
    deadline = time.monotonic() + 30
    want = ["gateway", "presence", "valkey", "worker"]
    while True:  # workers and metrics endpoints announce themselves in Valkey after they start
        state = first_event(base)
        figs = state["figures"]
        seen = sorted({p["role"] for p in state["processes"]})
        if (len(figs["workers"]) == 2 and seen == want) or time.monotonic() > deadline:
            break
    assert [g["alive"] for g in figs["gateways"]] == [True, True]
    assert all(g["connections"] is not None for g in figs["gateways"])  # /metrics scraped
    assert [w["id"].split("-")[0] for w in figs["workers"]] == ["worker", "worker"]
    assert any("ingest" in q["stream"] for q in figs["queues"])
    roles = sorted({p["role"] for p in state["processes"]})
    assert roles == ["gateway", "presence", "valkey", "worker"]
    assert set(state["unavailable"]) == {"kill-worker", "kill-gateway", "pause-store"}

    # actions: refused without the token; process control refused as unavailable, not faked
    status, doc = post(base + "/api/fault", {"kind": "kill-worker"}, token=None)
    assert status == 403
    status, doc = post(base + "/api/fault", {"kind": "kill-worker"})
    assert status == 409 and "unavailable" in doc["error"]
    status, doc = post(base + "/api/fault", {"kind": "kill-gateway", "index": 1})
    assert status == 409 and "docker compose kill" in doc["error"]

    # a traced message between the run's gateways, every hop stamped
    status, trace = post(base + "/api/trace", {})
    assert status == 200, trace
    assert [h["hop"] for h in trace["hops"]] == list(HOPS) and not trace["missing"]

    # Valkey's own pause (what a dashboard without process control can do): a command waits
    status, doc = post(base + "/api/fault", {"kind": "pause-valkey", "seconds": 2})
    assert status == 200 and "CLIENT PAUSE" in doc["text"]
    client = redis.Redis.from_url(
        json.loads((cwd / ".chatscale" / "run.json").read_text())["redis_url"]
    )
    started = time.monotonic()
    assert client.ping()
    assert time.monotonic() - started > 1.0, "Valkey answered during the pause"
    client.close()
    deadline = time.monotonic() + 10  # the page's state catches up once Valkey answers
    while not (faults := get(base + "/api/state")["faults"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert faults and faults[0]["kind"] == "pause-valkey"
