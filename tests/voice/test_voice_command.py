"""``chatscale voice`` as a real process: it registers its address, refuses a forged token over
real UDP, and SIGTERM stops it cleanly (unregistered, exit 0)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from chatscale.config import Settings
from chatscale.keys import Keys
from tests.gateway.test_stop import _read_until
from voice import packet


def test_the_relay_process_registers_refuses_a_forged_token_and_stops(
    settings: Settings, tmp_path: Path
):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATSCALE_")}
    env |= {
        "CHATSCALE_REDIS_URL": settings.redis_url or "",
        "CHATSCALE_KEY_PREFIX": settings.key_prefix,
        "CHATSCALE_TOKEN_SECRET": secrets.token_urlsafe(48),
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
    }
    keys = Keys(settings.key_prefix)
    r = redis.Redis.from_url(settings.redis_url or "")
    with subprocess.Popen(
        [sys.executable, "-m", "chatscale", "voice", "--port", "0", "--id", "relay-p"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    ) as proc:
        try:
            out = _read_until(proc, "ready on", 60)
            assert "ready on" in out, "the relay did not start within 60 s:\n" + out
            info = json.loads(r.hget(keys.voice_relays(), "relay-p"))
            assert r.exists(keys.voice_relay_alive("relay-p"))
            host, port = info["udp"]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(10)  # one loopback round trip; 10 s on a loaded machine
                sock.sendto(packet.auth("forged.token"), (host, port))
                assert sock.recv(64) == packet.ended(packet.ENDED_BAD_TOKEN)
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pytest.fail("the relay did not exit within 30 s of SIGTERM")
            rest = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            assert code == 0, out + rest
            assert r.hget(keys.voice_relays(), "relay-p") is None
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
            r.close()
