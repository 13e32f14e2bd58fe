"""``chatscale run`` brings its Valkey back when it dies: same port, same data, services resume."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import redis.asyncio as aioredis

from chatscale import tokens
from chatscale.client import ChatClient
from chatscale.keys import Keys
from storage import open_store
from tests.ops.test_run_command import _read_until

pytestmark = pytest.mark.slow


async def _until(what: str, check, timeout: float = 60) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.2)


async def test_run_restarts_a_killed_valkey_with_its_data(tmp_path: Path):
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("CHATSCALE_") and k != "REDIS_URL"
    }
    secret = secrets.token_hex(32)
    env["CHATSCALE_TOKEN_SECRET"] = secret
    env["CHATSCALE_STORAGE_URL"] = f"sqlite:///{tmp_path}/run.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "chatscale", "run", "--base-port", "0", "--no-demo"]
        + ["--workdir", str(tmp_path / "w")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    client = None
    try:
        await asyncio.to_thread(_read_until, proc, "Ctrl-C stops everything.")
        state = json.loads((tmp_path / "w" / "run.json").read_text())
        keys = Keys(state["key_prefix"])
        client = aioredis.Redis.from_url(state["redis_url"], socket_timeout=5)
        await client.set("probe", "before the kill")
        assert await client.execute_command("WAITAOF", 1, 0, 5000) == [1, 0]  # on disk
        [valkey] = [
            p
            for p in psutil.Process(proc.pid).children(recursive=True)
            if "valkey" in p.name() or "redis" in p.name()
        ]
        valkey.send_signal(signal.SIGKILL)
        lines = await asyncio.to_thread(_read_until, proc, "valkey      restarted", 60)
        said = "".join(lines)
        assert "valkey exited (-9); restarting on port" in said, said
        assert state["redis_url"] in said  # same URL, so same port
        await client.aclose()  # its connection died with the server
        client = aioredis.Redis.from_url(state["redis_url"], socket_timeout=5)
        assert await client.get("probe") == b"before the kill"  # same data directory

        # The services reconnected by themselves: their keys are written again.
        await client.delete(*[keys.gateway_alive(f"gw-{i}") for i in range(2)])
        alive = [keys.gateway_alive(f"gw-{i}") for i in range(2)]

        async def both_alive() -> bool:
            return await client.exists(*alive) == 2  # EXISTS counts: one renewed is not both

        await _until("both gateways to renew their liveness", both_alive)

        async def workers_alive() -> bool:
            return len([k async for k in client.scan_iter(keys.worker_health("*"))]) == 2

        stale = [k async for k in client.scan_iter(keys.worker_health("*"))]
        if stale:  # none yet when the workers have not written since the restart (a busy machine)
            await client.delete(*stale)
        await _until("both workers to write their health key", workers_alive)

        # And a message goes end to end through the restarted server.
        store = await open_store(state["storage_url"])
        alice, bob = await store.find_user("alice"), await store.find_user("bob")
        await store.close()
        assert alice and bob
        now = time.time()
        a = await ChatClient.identify(
            state["gateways"][0], tokens.mint(alice.id, secret=secret, ttl_s=60, now=now)
        )
        b = await ChatClient.identify(
            state["gateways"][1], tokens.mint(bob.id, secret=secret, ttl_s=60, now=now)
        )
        channel = next(
            c["id"] for g in a.ready["guilds"] for c in g["channels"] if c["name"] == "general"
        )
        ack = await a.send_message(channel, "after the restart")
        got = await b.next_event("MESSAGE_CREATE", timeout=30)
        assert got["d"]["id"] == ack["id"]
        await a.close()
        await b.close()
        proc.send_signal(signal.SIGINT)
        tail = proc.communicate(timeout=60)[0]
        assert proc.returncode == 0, tail
    finally:
        if client is not None:
            await client.aclose()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()  # else a failure here leaks the pipe into a later test's warnings
