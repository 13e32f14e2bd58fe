"""``chatscale run`` starts the topology, serves a real client, and stops with nothing left."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from chatscale import tokens
from chatscale.client import ChatClient
from chatscale.closecodes import Close
from chatscale.wire import Op
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


def _tool(cwd: Path, env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    """A ``chatscale`` tool run by hand in ``cwd``, as a user would (bounded: 60 s)."""
    return subprocess.run(
        [sys.executable, "-m", "chatscale", *argv],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _one_line_error(done: subprocess.CompletedProcess[str], *expected: str) -> str:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


async def _closed_with(url: str, token: str) -> int | None:
    client = await ChatClient.open(url, heartbeat=False)
    try:
        await client.send_op(Op.IDENTIFY, {"token": token, "device": "desktop"})
        await asyncio.wait_for(client.closed.wait(), 10)  # the gateway must close a bad token
        return client.close_code
    finally:
        await client.close()


async def test_run_starts_serves_and_stops_cleanly(tmp_path: Path):
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("CHATSCALE_") and k != "REDIS_URL"
    }
    env["CHATSCALE_STORAGE_URL"] = f"sqlite:///{tmp_path}/run.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatscale", "run", "--base-port", "0"],  # workdir: ./.chatscale
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
        workdir = tmp_path / ".chatscale"
        state = json.loads((workdir / "run.json").read_text())

        # The token secret: generated for this data directory, readable by its owner only,
        # never in run.json; a token forged with the old public default is refused.
        secret_file = workdir / "token-secret"
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        secret = secret_file.read_text().strip()
        assert len(secret) >= 32 and secret not in json.dumps(state)
        store = await open_store(state["storage_url"])
        alice, bob = await store.find_user("alice"), await store.find_user("bob")
        await store.close()
        assert alice and bob
        forged = tokens.mint(alice.id, secret="chatscale-dev-secret", ttl_s=60, now=time.time())
        assert await _closed_with(state["gateways"][0], forged) == Close.AUTHENTICATION_FAILED

        # A real client of our own: alice on gateway 0 with the token `chatscale token` prints
        # in this directory, bob on gateway 1.
        minted = await asyncio.to_thread(_tool, tmp_path, env, "token", "alice")
        assert minted.returncode == 0, minted.stderr
        a = await ChatClient.identify(state["gateways"][0], minted.stdout.strip())
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

        # `chatscale top` works out of the box: run turned metrics on (loopback, free ports).
        top = await asyncio.to_thread(_tool, tmp_path, env, "top", "--once", "--interval", "0.3")
        assert top.returncode == 0, top.stderr
        gw0 = next(line for line in top.stdout.splitlines() if line.startswith("gw-0 "))
        assert set(gw0.split()[1:3]) != {"-"}, top.stdout  # connections and sessions known
        assert "no /metrics endpoints registered" not in top.stdout
        for line in top.stdout.splitlines():
            if "http://" in line:
                assert "http://127.0.0.1:" in line, line

        # A worker started by hand in this directory joins the running topology.
        worker = await asyncio.to_thread(_tool, tmp_path, env, "worker", "--burst")
        assert worker.returncode == 0, worker.stderr
        assert "consuming" in worker.stdout and "Traceback" not in worker.stderr

        proc.send_signal(signal.SIGINT)
        tail = proc.communicate(timeout=60)[0]
        assert proc.returncode == 0, tail
        assert "stopped: every process exited." in tail
        gone, alive = psutil.wait_procs(children, timeout=5)
        assert alive == [], f"left behind: {alive}"

        # run.json is left behind, now stale: the tools that need the topology say so in one
        # line; the token tool still works (the data and the secret are still here).
        for argv in (["top", "--once"], ["worker", "--burst"], ["slowmode", "--guild",
                     "interview-prep", "--channel", "general", "3"]):  # fmt: skip
            done = await asyncio.to_thread(_tool, tmp_path, env, *argv)
            _one_line_error(done, "run.json is stale", f"pid {proc.pid}")
        again = await asyncio.to_thread(_tool, tmp_path, env, "token", "alice")
        assert again.returncode == 0 and again.stdout.strip(), again.stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
