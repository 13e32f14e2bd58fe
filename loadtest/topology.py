"""The system under test: an embedded topology started like ``chatscale run``, or gateway URLs.

``Embedded`` starts the same processes as ``chatscale run`` (``ops.supervisor``: a real
Valkey, gateways, workers, the presence service; dead workers restarted with their leases
evicted) on free ports in its own work directory, with the per-connection and per-user limits
raised so the generator measures the system rather than Discord's rate limits. ``External``
uses gateways someone else runs (``--gateway URL``); it finds Redis and storage the way the
other tools do (``REDIS_URL`` or ``.chatscale/run.json``) and the server processes by pid when
they run on this machine.

Both give the load test the same handles: gateway URLs, settings (Redis, storage, token secret),
the server processes to sample (name -> ``psutil.Process``, re-read every time because a
restarted worker has a new pid) and the faults: kill a worker, kill a gateway, pause Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import psutil

from chatscale.config import Settings
from chatscale.keys import Keys
from chatscale.redisconn import connect
from ops import supervisor

BENCH_ENV = {
    # One connection may otherwise send 120 events a minute and one user 5 messages per 5 s, as
    # on Discord: a load test measures the pipeline, so the limits are raised (not removed).
    "CHATSCALE_EVENTS_PER_WINDOW": "1000000",
    "CHATSCALE_USER_MESSAGES_PER_WINDOW": "1000000",
    "CHATSCALE_IDENTIFIES_PER_WINDOW": "1000000",
    # Every simulated client connects from this one host: the per-address cap is for the
    # internet (4015), not for a load generator.
    "CHATSCALE_MAX_CONNECTIONS_PER_IP": "0",
}


@dataclass
class LoadTopology(supervisor.Topology):
    """``supervisor.Topology`` whose children also get the benchmark environment."""

    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self, **extra: str) -> dict[str, str]:
        return super().env(**{**self.extra_env, **extra})


class Embedded:
    """Gateways, workers, presence and Valkey started for this run, stopped after it."""

    kind = "embedded"

    def __init__(
        self,
        workdir: Path,
        *,
        storage_url: str,
        gateways: int = 2,
        workers: int = 2,
        env: dict[str, str] | None = None,
        extras: frozenset[str] = frozenset(),
        presence: int = 1,
        redis_cluster: int = 0,
    ) -> None:
        """``extras``: the services beyond the chat path to start too ("voice", "indexer");
        none by default, so a chat load test pays for no process it does not exercise.
        ``presence``: presence processes (they share ``CHATSCALE_PRESENCE_PARTITIONS``)."""
        extra = {**BENCH_ENV, **{k: v for k, v in os.environ.items() if k in BENCH_ENV}}
        extra.update(env or {})
        given = {k.removeprefix("CHATSCALE_").lower(): v for k, v in extra.items()}
        settings = Settings(  # metrics off unless the caller's env turns them on (-1: free ports)
            storage_url=storage_url,
            redis_url=None,
            **{"metrics_port": 0, **given},  # type: ignore[arg-type]
        )
        self.topo = LoadTopology(
            settings,
            workdir,
            gateways=gateways,
            workers=workers,
            base_port=0,
            extra_env=extra,
            extras=extras,
            presence=presence,
            redis_cluster=redis_cluster,
        )
        self.timed_events: list[tuple[float, str]] = []  # what the supervisor did, when
        self._stop = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None

    @property
    def settings(self) -> Settings:
        return self.topo.settings

    @property
    def urls(self) -> list[str]:
        return list(self.topo.gateway_urls)

    async def start(self, say=print) -> None:  # noqa: ANN001
        await supervisor.start(self.topo, say=say)
        self._supervisor = asyncio.create_task(
            supervisor.supervise(
                self.topo,
                self._stop,
                say=lambda text: self.timed_events.append((time.time(), text)),
            )
        )

    async def stop(self) -> None:
        self._stop.set()
        if self._supervisor is not None:
            with contextlib.suppress(Exception):
                await self._supervisor
        await asyncio.to_thread(self.topo.stop_all)

    def processes(self) -> dict[str, psutil.Process]:
        out: dict[str, psutil.Process] = {}
        for child in self.topo.children:
            if child.proc is not None and child.proc.poll() is None:
                name = f"{child.role}-{child.index}"
                if child.role == "presence" and child.index == 0:
                    name = "presence"  # the one presence process of most topologies
                with contextlib.suppress(psutil.Error):
                    out[name] = psutil.Process(child.proc.pid)
        valkey = self.topo.valkey
        if valkey is not None and valkey.proc is not None and valkey.proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                out["valkey"] = psutil.Process(valkey.proc.pid)
        return out

    def _child(self, role: str, index: int) -> supervisor.Child:
        for child in self.topo.children:
            if child.role == role and child.index == index and child.proc is not None:
                return child
        raise LookupError(f"no {role}-{index}")

    async def kill_worker(self, index: int = 0) -> str:
        child = self._child("worker", index)
        assert child.proc is not None
        pid = child.proc.pid
        child.proc.send_signal(signal.SIGKILL)
        return (
            f"SIGKILL worker-{index} (pid {pid}); the supervisor restarts it and evicts its leases"
        )

    async def kill_gateway(self, index: int = -1) -> str:
        gateways = [c for c in self.topo.children if c.role == "gateway"]
        child = gateways[index]
        assert child.proc is not None
        pid = child.proc.pid
        child.proc.send_signal(signal.SIGKILL)
        return f"SIGKILL gateway-{child.index} (pid {pid}, {self.topo.gateway_urls[child.index]}); not restarted"

    def valkey_pid(self) -> int:
        valkey = self.topo.valkey
        if valkey is None or valkey.proc is None:
            raise LookupError("Redis is external (REDIS_URL): pause it yourself")
        return valkey.proc.pid


class External:
    """Gateways at given URLs; Redis and storage from REDIS_URL or .chatscale/run.json."""

    kind = "external"

    def __init__(self, urls: list[str], settings: Settings) -> None:
        self._urls = urls
        self.settings = settings
        self.timed_events: list[tuple[float, str]] = []
        self._procs: dict[str, psutil.Process] = {}

    @property
    def urls(self) -> list[str]:
        return list(self._urls)

    async def start(self, say=print) -> None:  # noqa: ANN001
        redis = connect(self.settings)
        try:
            registered = await redis.hgetall(Keys(self.settings.key_prefix).gateways())
        finally:
            await redis.aclose()
        for gw, info in registered.items():
            with contextlib.suppress(psutil.Error, KeyError, ValueError):
                data = json.loads(info)
                if data["url"] in self._urls:
                    name = gw.decode() if isinstance(gw, bytes) else str(gw)
                    self._procs[name] = psutil.Process(int(data["pid"]))
        port = (
            self.settings.redis_url.rsplit(":", 1)[-1].split("/")[0]
            if self.settings.redis_url
            else ""
        )
        for p in psutil.process_iter(["cmdline"]):
            cmd = p.info["cmdline"] or []
            if (
                len(cmd) > 3
                and cmd[1:3] == ["-m", "chatscale"]
                and cmd[3] in ("worker", "presence")
            ):
                if self._ours(p):  # another topology's workers on this machine are not ours
                    self._procs[f"{cmd[3]}-{p.pid}"] = p
            elif cmd and ("valkey-server" in cmd[0] or "redis-server" in cmd[0]):
                if port and any(c == port or c.endswith(f":{port}") for c in cmd):
                    self._procs["valkey"] = p
        say(f"external    {len(self._urls)} gateway(s); sampling {sorted(self._procs)}")

    async def stop(self) -> None:
        return None

    def _ours(self, proc: psutil.Process) -> bool:
        """A service of this topology: it talks to the same Redis."""
        try:
            env = proc.environ()
        except psutil.Error:
            return False
        return (env.get("CHATSCALE_REDIS_URL") or env.get("REDIS_URL")) == self.settings.redis_url

    def processes(self) -> dict[str, psutil.Process]:
        alive = {}
        for name, p in self._procs.items():
            if p.is_running():
                alive[name] = p
        # a worker restarted by `chatscale run` has a new pid: look again
        if not any(n.startswith("worker") for n in alive):
            for p in psutil.process_iter(["cmdline"]):
                cmd = p.info["cmdline"] or []
                if len(cmd) > 3 and cmd[1:4] == ["-m", "chatscale", "worker"] and self._ours(p):
                    alive[f"worker-{p.pid}"] = p
                    self._procs[f"worker-{p.pid}"] = p
        return alive

    async def kill_worker(self, index: int = 0) -> str:
        workers = sorted((n, p) for n, p in self.processes().items() if n.startswith("worker"))
        if not workers:
            raise LookupError("no worker process on this machine to kill")
        name, proc = workers[index % len(workers)]
        proc.send_signal(signal.SIGKILL)
        return f"SIGKILL {name} (pid {proc.pid}); `chatscale run` restarts it"

    async def kill_gateway(self, index: int = -1) -> str:
        gateways = sorted((n, p) for n, p in self.processes().items() if n.startswith("gw"))
        if not gateways:
            raise LookupError("no gateway process on this machine to kill")
        name, proc = gateways[index]
        proc.send_signal(signal.SIGKILL)
        return f"SIGKILL {name} (pid {proc.pid})"

    def valkey_pid(self) -> int:
        proc = self._procs.get("valkey")
        if proc is None:
            raise LookupError("the Redis server is not a process on this machine")
        return proc.pid


def storage_pid(settings: Settings) -> int:
    """The local process serving a ``cassandra://host:port/...`` storage URL (for pause faults)."""
    url = urlsplit(settings.storage_url)
    if url.scheme != "cassandra":
        raise LookupError(f"storage is {url.scheme}, not Cassandra: nothing to pause")
    port = url.port or 9042
    for conn in psutil.net_connections(kind="tcp"):
        if (
            conn.status == psutil.CONN_LISTEN
            and conn.laddr
            and conn.laddr.port == port
            and conn.pid
        ):
            return conn.pid
    raise LookupError(f"no process on this machine listens on port {port}")


async def resume_after(pid: int, seconds: float, events: list[str], what: str) -> None:
    """SIGCONT the SIGSTOPped ``pid`` after ``seconds`` (also if cancelled)."""
    try:
        await asyncio.sleep(seconds)
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
            events.append(f"SIGCONT {what} (pid {pid})")
        except ProcessLookupError:
            events.append(f"{what} (pid {pid}) is gone: nothing to SIGCONT")
