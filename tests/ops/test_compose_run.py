"""docker-compose.yml, executed without Docker: each service's command and environment, as
processes on this machine.

No Docker engine exists here, so this runs what compose would run — the init service's
commands (twice: it runs on every `up`), both gateways, the worker replicas and the presence
service, each with exactly its compose environment — changing only what containers would give
each process for free: hostnames (``valkey``, ``cassandra``) become this test's servers, and
ports that every container has to itself (gateway 8765, metrics 9100) become free ports. Then
a message crosses gateways, every process's /metrics is scraped through the registrations it
keeps in Redis, the loadtest profile's command runs for two seconds, and ``chatscale top``
renders the topology. Storage is a real Cassandra node (SQLite when Java and Maven are missing
and CI is not set, as the other Cassandra tests do).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import pytest

from chatscale import tokens
from chatscale.client import ChatClient
from chatscale.config import Settings, env_names
from chatscale.keys import Keys
from chatscale.redisconn import connect
from chatscale.valkey import ValkeyServer
from ops.top import parse, total
from storage import open_store
from tests.ops.test_compose import ROOT, chatscale_commands, environment, replicas, role, services

# Every compose service as a process (about ten interpreters starting on two cores): 77-98 s
# when another suite loads the machine, so the suite's 120 s per-test timeout is too close.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def compose_storage(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where ``cassandra:9042`` points: a real node, else (outside CI) a SQLite file."""
    try:
        node_url = urlparse(request.getfixturevalue("cassandra_url"))
    except pytest.skip.Exception:
        return f"sqlite:///{tmp_path}/compose.db"
    compose_url = urlparse(environment(services()["worker"])["CHATSCALE_STORAGE_URL"])
    keyspace = f"compose_{uuid.uuid4().hex[:8]}"  # the session's node is shared
    return urlunparse(compose_url._replace(netloc=node_url.netloc, path=f"/{keyspace}"))


class Processes:
    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        with open(self.logs / f"{name}.log", "wb") as out:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "chatscale", *argv],
                env=env,
                cwd=ROOT,  # the image's WORKDIR holds the same tree (seeds/ included)
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                pytest.fail(f"{name} exited {proc.returncode}:\n{self.log(name)}")

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]

    def stop(self) -> dict[str, int | None]:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = {}
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait()
        return codes


class ComposeEnv:
    """Each service's compose environment, with this test's servers for the container names."""

    def __init__(
        self, redis_url: str, storage_url: str, search_url: str = "", cold_url: str = ""
    ) -> None:
        self.redis_url, self.storage_url = redis_url, storage_url
        self.search_url = search_url  # the search-data volume each container mounts
        self.cold_url = cold_url  # the cold-data volume
        self.base = {
            k: v for k, v in os.environ.items() if k not in env_names() and k != "REDIS_URL"
        }

    def __call__(self, service: dict, **overrides: str) -> dict[str, str]:
        env = environment(service)
        env.update(
            REDIS_URL=self.redis_url,  # valkey:6379
            CHATSCALE_STORAGE_URL=self.storage_url,  # cassandra:9042
            # 9100 in every container: here each process binds a free one itself and registers
            # it (-1), since a port found free and bound later can be taken in between
            CHATSCALE_METRICS_PORT="-1",
            **({"CHATSCALE_SEARCH_URL": self.search_url} if self.search_url else {}),
            **({"CHATSCALE_COLD_URL": self.cold_url} if self.cold_url else {}),
            **overrides,
        )
        if "CHATSCALE_VOICE_PORT" in env:  # the relay's 8790: a free one, registered in Redis
            env["CHATSCALE_VOICE_PORT"] = "0"
        return {**self.base, **env}


async def run_init(svc: dict[str, dict], env_of: ComposeEnv, times: int = 1) -> None:
    """The init service: migrate, then seed (``times`` over: every `up` runs it again)."""
    init = svc["init"]
    for _ in range(times):
        for argv in chatscale_commands(init):
            done = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "chatscale", *argv],
                env=env_of(init),
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, f"chatscale {' '.join(argv)}:\n{done.stderr[-3000:]}"


def start_services(
    procs: Processes, svc: dict[str, dict], env_of: ComposeEnv, public_url: dict[str, str]
) -> dict[str, str]:
    """Start every gateway, worker replica and presence service; returns each gateway's URL
    on this machine (its compose service name's ``ws://gateway-N:8765``). ``public_url``
    maps a gateway service to the CHATSCALE_GATEWAY_PUBLIC_URL it advertises (default: its
    own URL)."""
    gateway_urls: dict[str, str] = {}
    for name, service in svc.items():
        kind = role(service)
        if kind is None:
            continue
        argv = chatscale_commands(service)[0]
        for i in range(replicas(service)):
            overrides = {}
            if kind == "gateway":
                port = free_port()  # the container's 8765
                gateway_urls[name] = f"ws://127.0.0.1:{port}"
                overrides = {
                    "CHATSCALE_GATEWAY_PORT": str(port),
                    "CHATSCALE_GATEWAY_PUBLIC_URL": public_url.get(name, gateway_urls[name]),
                }
            procs.start(f"{name}-{i}", argv, env_of(service, **overrides))
    return gateway_urls


async def wait_registered(procs: Processes, svc: dict[str, dict], redis_url: str) -> dict:
    """Wait until every gateway is in the gateways hash and every process has registered its
    /metrics endpoint; returns (gateways hash, the endpoints' registrations)."""
    keys = Keys(environment(svc["worker"])["CHATSCALE_KEY_PREFIX"])
    gateways_n = sum(replicas(s) for s in svc.values() if role(s) == "gateway")
    redis = connect(Settings(redis_url=redis_url))
    try:
        deadline = time.monotonic() + 60
        while True:
            procs.check_alive()
            gateways = await redis.hgetall(keys.gateways())
            endpoints = [k async for k in redis.scan_iter(match=keys.metrics_endpoint("*"))]
            if len(gateways) == gateways_n and len(endpoints) == len(procs.procs):
                break
            assert time.monotonic() < deadline, "services did not register in 60 s; see logs"
            await asyncio.sleep(0.1)
        return {
            "gateways": gateways,
            "endpoints": [json.loads(await redis.get(k)) for k in endpoints],
        }
    finally:
        await redis.aclose()


async def test_compose_services_run_as_processes_and_serve_metrics(
    valkey: ValkeyServer, compose_storage: str, tmp_path: Path
):
    svc = services()
    env_of = ComposeEnv(
        valkey.url, compose_storage, f"sqlite:///{tmp_path}/search.db", f"file://{tmp_path}/cold"
    )
    await run_init(svc, env_of, times=2)

    procs = Processes(tmp_path)
    try:
        gateway_urls = start_services(procs, svc, env_of, {})
        settings_env = env_of(svc["worker"])
        seen = await wait_registered(procs, svc, valkey.url)
        gateways, registered = seen["gateways"], seen["endpoints"]
        assert {r["role"] for r in registered} == {
            "gateway",
            "worker",
            "presence",
            "voice",
            "indexer",
            "archive",
        }
        # each gateway advertises the public URL compose gives it (RESUME goes there)
        advertised = sorted(json.loads(v)["url"] for v in gateways.values())
        assert advertised == sorted(gateway_urls.values())

        # a message from alice on gateway-0 to bob on gateway-1
        secret = environment(svc["gateway-0"])["CHATSCALE_TOKEN_SECRET"]
        store = await open_store(compose_storage)
        try:
            alice, bob = await store.find_user("alice"), await store.find_user("bob")
        finally:
            await store.close()
        assert alice and bob
        now = time.time()
        a = await ChatClient.identify(
            gateway_urls["gateway-0"], tokens.mint(alice.id, secret=secret, ttl_s=60, now=now)
        )
        b = await ChatClient.identify(
            gateway_urls["gateway-1"], tokens.mint(bob.id, secret=secret, ttl_s=60, now=now)
        )
        try:
            general = next(
                c["id"] for g in a.ready["guilds"] for c in g["channels"] if c["name"] == "general"
            )
            ack = await a.send_message(general, "hello through compose")
            got = await b.next_event("MESSAGE_CREATE", timeout=30)
            assert got["d"]["id"] == ack["id"]
        finally:
            await a.close()
            await b.close()

        # the loadtest profile's command, shortened, against the same gateways; its working
        # directory (the image user's home in compose) receives the report
        argv = chatscale_commands(svc["loadtest"])[0]
        argv = [gateway_urls[urlparse(x).hostname] if x.startswith("ws://") else x for x in argv]
        argv[argv.index("--duration") + 1] = "2"
        home = tmp_path / "home"
        home.mkdir()
        loadtest = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "chatscale", *argv],
            env=env_of(svc["loadtest"]),
            cwd=home,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert loadtest.returncode == 0, loadtest.stdout[-3000:] + loadtest.stderr[-3000:]
        (report_file,) = home.glob("reports/*/report.json")
        report = json.loads(report_file.read_text())
        assert report["verdict"]["clean"] and report["messages"]["acknowledged"] > 0

        # every process serves /metrics with its own families
        scraped = {r["name"]: (r["role"], _scrape(r["url"])) for r in registered}
        gateways_m = [m for kind, m in scraped.values() if kind == "gateway"]
        workers_m = [m for kind, m in scraped.values() if kind == "worker"]
        (presence_m,) = [m for kind, m in scraped.values() if kind == "presence"]
        assert all(total(m, "chatscale_gateway_frames_in_total") for m in gateways_m)
        assert all(
            total(m, "chatscale_gateway_deliveries_total", type="MESSAGE_CREATE")
            for m in gateways_m
        )
        assert sum(total(m, "chatscale_worker_messages_total", outcome="processed") or 0
                   for m in workers_m) > 1  # ours and the load test's  # fmt: skip
        assert all(
            total(m, "chatscale_stream_pending", group="workers") is not None for m in workers_m
        )
        assert total(presence_m, "chatscale_presence_changes_in_total")
        assert total(presence_m, "chatscale_stage_seconds_count", stage="presence_save")
        (indexer_m,) = [m for kind, m in scraped.values() if kind == "indexer"]
        assert total(indexer_m, "chatscale_search_indexed_total") is not None

        # chatscale top, from the same environment. It scrapes each /metrics with a 1 s
        # timeout and says which did not answer: on a machine two suites load, a busy process
        # can miss one scrape, so top gets up to 3 tries to see them all (bounded, not a wait).
        for _ in range(3):
            top = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "chatscale", "top", "--once", "--interval", "0.3"],
                env=settings_env,
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=60,
            )
            if top.returncode != 0 or "unreachable" not in top.stdout:
                break
        assert top.returncode == 0, top.stderr
        assert "gw-0" in top.stdout and "gw-1" in top.stdout
        assert "WORKERS (2)" in top.stdout and "unreachable" not in top.stdout

        # the dashboard service's command and environment: the gateways by their in-network
        # names, a free port on loopback for the container's 8780
        dash = svc["dashboard"]
        argv = [
            gateway_urls[urlparse(x).hostname] if x.startswith("ws://") else x
            for x in chatscale_commands(dash)[0]
        ]
        port = free_port()
        argv[argv.index("--port") + 1] = str(port)
        argv[argv.index("--host") + 1] = "127.0.0.1"
        token = "compose-dashboard-token-0123456789"
        procs.start("dashboard", argv, env_of(dash, CHATSCALE_DASHBOARD_ADMIN_TOKEN=token))
        base = f"http://127.0.0.1:{port}"
        state = await asyncio.to_thread(_dashboard_state, base, procs)
        figs = state["figures"]
        assert {g["id"]: g["alive"] for g in figs["gateways"]} == {"gw-0": True, "gw-1": True}
        assert len(figs["workers"]) == 2 and state["storage_url"].startswith(
            ("cassandra", "sqlite")
        )
        assert "kill-worker" in state["unavailable"]
        trace = await asyncio.to_thread(_post, base + "/api/trace", token)
        assert not trace["missing"], trace
    finally:
        codes = procs.stop()
    assert codes == dict.fromkeys(procs.procs, 0), {n: procs.log(n) for n in procs.procs}


async def test_in_network_load_tester_resumes_though_the_public_url_is_unreachable(
    valkey: ValkeyServer, tmp_path: Path
):
    """compose advertises ws://localhost:876x (the host's ports) as each gateway's PUBLIC_URL;
    inside the network that is the client's own container, where nothing listens. Here each
    gateway advertises a closed port of this machine likewise; the loadtest profile's
    reconnect storm (every client drops and comes back, 90 % with RESUME) must still resume
    every session it meant to, at the address it connected to, and never see
    INVALID_SESSION. Storage is SQLite: this is about gateways and URLs, not Cassandra."""
    svc = services()
    env_of = ComposeEnv(
        valkey.url,
        f"sqlite:///{tmp_path}/compose.db",
        f"sqlite:///{tmp_path}/search.db",
        f"file://{tmp_path}/cold",
    )
    await run_init(svc, env_of)
    unreachable = {name: f"ws://127.0.0.1:{free_port()}" for name in ("gateway-0", "gateway-1")}

    procs = Processes(tmp_path)
    try:
        gateway_urls = start_services(procs, svc, env_of, unreachable)
        seen = await wait_registered(procs, svc, valkey.url)
        advertised = sorted(json.loads(v)["url"] for v in seen["gateways"].values())
        assert advertised == sorted(unreachable.values())  # READY's resume_gateway_url

        # the loadtest profile's command with the storm scenario: everyone drops at 1 s and is
        # back within 3 s (study-group: reconnect.delay_s = [0.2, 3.0])
        argv = chatscale_commands(svc["loadtest"])[0]
        argv = [gateway_urls[urlparse(x).hostname] if x.startswith("ws://") else x for x in argv]
        argv[argv.index("steady")] = "reconnect-storm"
        argv[argv.index("--duration") + 1] = "4"
        argv += ["--fault-at", "1", "--processes", "1"]
        home = tmp_path / "home"
        home.mkdir()
        loadtest = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "chatscale", *argv],
            env=env_of(svc["loadtest"]),
            cwd=home,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert loadtest.returncode == 0, loadtest.stdout[-3000:] + loadtest.stderr[-3000:]
        (report_file,) = home.glob("reports/*/report.json")
        conn = json.loads(report_file.read_text())["connections"]
        outcome = {k: conn[k] for k in ("drops", "resumed", "new_sessions", "invalid_session")}
        outcome["attempts_failed"] = conn["attempts_failed"]
        assert conn["drops"] == conn["clients"] == 16, outcome  # the whole group dropped
        assert conn["resumed"] > 0 and conn["resumed"] + conn["new_sessions"] == 16, outcome
        assert conn["invalid_session"] == 0 and conn["attempts_failed"] == {}, outcome
    finally:
        codes = procs.stop()
    assert codes == dict.fromkeys(procs.procs, 0), {n: procs.log(n) for n in procs.procs}


def _dashboard_state(base: str, procs: Processes) -> dict:
    deadline = time.monotonic() + 30
    while True:
        procs.check_alive()
        try:
            with urllib.request.urlopen(base + "/api/state", timeout=5) as response:
                state = json.loads(response.read())
            if len(state["figures"]["workers"]) == 2:
                return state
        except OSError:
            pass
        assert time.monotonic() < deadline, "the dashboard did not serve the topology in 30 s"
        time.sleep(0.2)


def _post(url: str, token: str) -> dict:
    req = urllib.request.Request(url, b"{}", {"X-Admin-Token": token}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as response:
        return json.loads(response.read())


def _scrape(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return parse(response.read().decode())
