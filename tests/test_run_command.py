"""``chatscale run`` starts the topology, serves a real client, and stops with nothing left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from chatscale import tokens
from chatscale.client import ChatClient
from storage import open_store

pytestmark = pytest.mark.slow


def _read_until(proc: subprocess.Popen[str], marker: str, timeout: float = 90) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if marker in line:
            return lines
    raise AssertionError(f"{marker!r} not seen; output so far:\n{''.join(lines)}")


async def test_run_starts_serves_and_stops_cleanly(tmp_path: Path):
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("CHATSCALE_") and k != "REDIS_URL"
    }
    env["CHATSCALE_STORAGE_URL"] = f"sqlite:///{tmp_path}/run.db"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "chatscale",
            "run",
            "--base-port",
            "0",
            "--workdir",
            str(tmp_path / "w"),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    try:
        output = _read_until(proc, "Ctrl-C stops everything.")
        text = "".join(output)
        assert (
            "bob sees" in text and "client_receive" in text
        )  # the demo conversation and trace ran
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 6  # valkey, presence, 2 gateways, 2 workers
        state = json.loads((tmp_path / "w" / "run.json").read_text())
        # A real client of our own: alice on gateway 0, bob on gateway 1.
        secret = "chatscale-dev-secret"  # the default CHATSCALE_TOKEN_SECRET
        store = await open_store(state["storage_url"])
        alice, bob = await store.find_user("alice"), await store.find_user("bob")
        await store.close()
        assert alice and bob
        a = await ChatClient.identify(
            state["gateways"][0], tokens.mint(alice.id, secret=secret, ttl_s=60, now=time.time())
        )
        b = await ChatClient.identify(
            state["gateways"][1], tokens.mint(bob.id, secret=secret, ttl_s=60, now=time.time())
        )
        channel = next(
            c["id"] for g in a.ready["guilds"] for c in g["channels"] if c["name"] == "general"
        )
        ack = await a.send_message(channel, "hello from the test")
        got = await b.next_event("MESSAGE_CREATE", timeout=30)
        assert got["d"]["id"] == ack["id"]
        await a.close()
        await b.close()
        proc.send_signal(signal.SIGINT)
        tail = proc.communicate(timeout=60)[0]
        assert proc.returncode == 0, tail
        assert "stopped: every process exited." in tail
        gone, alive = psutil.wait_procs(children, timeout=5)
        assert alive == [], f"left behind: {alive}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
