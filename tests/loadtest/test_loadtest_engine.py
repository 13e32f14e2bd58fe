"""The scenario engine, small and fast: a handful of simulated clients against the in-process
gateways of the ``stack`` fixture, with a real worker consuming in the background.

The generator runs in this event loop (``processes=0``). Damage is injected on purpose at the
generator's receive side, and the merged ledger must count exactly that damage. One slow test
runs the real thing: generator processes, an embedded topology and a killed worker.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from loadtest import report
from loadtest.engine import Given, LoadTestError, RunConfig, _fault, run, verdict
from loadtest.generator import ClientPlan, Generator, Part, drive
from tests.conftest import Stack

#: The internal deadlines of ``_config`` plus the stack's teardown bounds; the suite's default
#: (120 s) is shorter than their sum, and a run that used them all on a loaded machine was cut
#: off by the generic timeout instead of failing with its reason.
TIMEOUT_S = 200
pytestmark = pytest.mark.timeout(TIMEOUT_S)

ONE_TALKER = """
name = "lt-one-talker"
seed = 5
[members]
count = 4
online = 1.0
[[channels]]
name = "only"
[chat]
messages_per_minute = 1200
talkers = 0.25
"""


QUICK = """
name = "lt-quick"
seed = 9
[members]
count = 8
online = 1.0
devices = { desktop = 0.5, mobile = 0.5 }
[[channels]]
name = "a"
[[channels]]
name = "b"
[chat]
messages_per_minute = 1200
talkers = 0.5
[presence]
storm_seconds = 0.3
[reconnect]
resume = 0.5
delay_s = [0.05, 0.3]
"""


@pytest.fixture
async def consuming(stack: Stack) -> AsyncIterator[Stack]:
    """The stack with its worker consuming in the background, as in a real topology."""
    task = asyncio.create_task(stack.worker.run())
    yield stack
    stack.worker.stop()
    try:
        await asyncio.wait_for(task, 30)
    except TimeoutError:
        task.cancel()
        pytest.fail("the background worker did not finish its batch within 30 s of stop()")


def _config(scenario: str, community: str, **kw) -> RunConfig:
    # Deadlines, not expected durations: the drain ends as soon as everything arrived, so the
    # generous bounds cost nothing on a fast machine and keep a loaded one from failing.
    return RunConfig(
        scenario,
        community,
        processes=0,
        **{
            # their sum (~100 s at most) plus the stack's bounded teardown (2 x 30 s) stays under
            # this module's test timeout (TIMEOUT_S), so a slow run fails with its reason
            "drain_s": 25.0,
            "progress_every": 10.0,
            "quiet_s": 1.0,
            "report_s": 0.1,
            "ready_timeout": 15.0,
            "setup_timeout": 30.0,
            "reply_timeout": 15.0,
            "history_wait_s": 10.0,
            **kw,
        },
    )


async def _run(stack: Stack, cfg: RunConfig) -> dict:
    topo = Given(stack.settings, [gw.url for gw in stack.gateways])
    # The engine's progress lines go to the captured output: a run that fails or times out
    # shows how far it got and which phase it was waiting in.
    return await run(cfg, topology=topo, say=lambda *a: print(*a, flush=True))


async def test_steady_chat_is_delivered_to_everyone_exactly_once(consuming: Stack, tmp_path: Path):
    r = await _run(consuming, _config("steady", "study-group", duration=1.0, rate=20))
    d, m, c = r["deliveries"], r["messages"], r["connections"]
    assert c["ready"] == 16 and c["attempts_failed"] == {}
    assert m["acknowledged"] == m["scheduled"] == 20
    assert d["expected"] == 20 * 16 == d["delivered"] == d["received"]
    assert (d["lost"], d["duplicated"], d["reordered"], d["unexpected"], d["unknown"]) == (0,) * 5
    assert r["verdict"]["clean"]
    lat = d["latency_ms"]
    assert lat["measured"] == 320 and 0 < lat["p50_ms"] <= lat["p99_ms"] <= lat["max_ms"]
    assert sum(row["deliveries"] for row in r["series"]["deliveries"]) == 320
    # the files: JSON with everything, HTML with inline charts and nothing to fetch
    json_path, html_path = report.write(r, tmp_path)
    assert json.loads(json_path.read_text())["deliveries"]["delivered"] == 320
    page = html_path.read_text()
    assert page.count("<svg") >= 5
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert "deliveries lost/dup/reord  0 / 0 / 0" in report.text(r)
    assert r["messages"]["stored"]["missing_from_history"] == 0
    assert r["messages"]["stored"]["acknowledged"] == 20
    # the same run as a fault scenario whose fault never happened is not a clean result
    faked = copy.deepcopy(r)
    faked["plan"]["fault"] = ["pause-cassandra", 0.3, 5.0]
    faked["faults"] = [{"t": 0.3, "what": "fault not injected: no Cassandra", "injected": False}]
    judged = verdict(faked)
    assert not judged["clean"]
    assert "NOT MEASURED: the fault (pause-cassandra) was not injected" in judged["notes"][0]


@pytest.mark.parametrize(
    "inject",
    [{"drop": 7}, {"dup": 5}, {"reorder": 6}, {"drop": 11, "dup": 13, "reorder": 17}],
    ids=["drop", "dup", "reorder", "all"],
)
async def test_injected_damage_is_counted_exactly(consuming: Stack, tmp_path: Path, inject):
    spec = tmp_path / "one-talker.toml"
    spec.write_text(ONE_TALKER)
    r = await _run(consuming, _config("steady", str(spec), duration=1.5, inject=inject))
    d = r["deliveries"]
    injected = d["injected"]
    assert sum(injected.values()) > 0
    assert d["lost"] == injected.get("drop", 0)
    assert d["duplicated"] == injected.get("dup", 0)
    assert d["reordered"] == injected.get("reorder", 0)
    assert d["unexpected"] == d["unknown"] == 0
    assert not r["verdict"]["clean"]
    assert d["expected"] == r["messages"]["acknowledged"] * 4


async def test_celebrity_message_reaches_every_online_member(consuming: Stack):
    r = await _run(consuming, _config("celebrity", "study-group", duration=1.0, rate=4))
    d = r["deliveries"]
    assert r["messages"]["acknowledged"] == 4
    assert d["delivered"] == d["expected"] == 4 * 16 and d["lost"] == 0


async def test_a_reconnect_storm_resumes_without_loss(consuming: Stack, tmp_path: Path):
    # every client drops at 0.4 s; half RESUME, half start a new session and reload history
    spec = tmp_path / "quick.toml"
    spec.write_text(QUICK)
    r = await _run(consuming, _config("reconnect-storm", str(spec), duration=1.2, fault_at=0.4))
    c, d = r["connections"], r["deliveries"]
    assert c["drops"] == 8 and c["resumed"] + c["new_sessions"] == 8
    assert c["resumed"] > 0 and c["new_sessions"] > 0
    assert d["lost"] == d["duplicated"] == d["reordered"] == 0, d["examples"]
    assert d["delivered"] == d["expected"] > 0
    assert r["messages"]["stored"]["missing_from_history"] == 0
    assert r["messages"]["stored"]["stored_twice"] == 0


async def test_the_history_read_back_counts_a_message_stored_twice(settings, store):
    """Stored messages carry no nonce: the read-back finds a send stored under a second id by
    the key its content starts with, in real history storage."""
    from loadtest.engine import check_stored
    from storage import StoredMessage

    def row(mid: int, content: str) -> StoredMessage:
        d = {"id": str(mid), "channel_id": "5", "content": content}
        return StoredMessage(5, mid, 1, json.dumps(d))

    await store.insert_many([row(100, "1.0.a x"), row(101, "1.1.b y"), row(102, "1.0.a x")])
    sends = [
        ["1.0.a", 5, 1, 0.0, 0, 100],
        ["1.1.b", 5, 1, 0.0, 1, 101],
        ["1.2.c", 5, 1, 0.0, 2, 99],
    ]
    got = await check_stored(settings, [{"sends": sends, "failed": []}])
    assert got["acknowledged"] == 3 and got["missing_from_history"] == 1  # id 99
    assert got["stored_twice"] == 1
    assert got["stored_twice_examples"] == [{"key": "1.0.a", "stored_as": [[5, 100], [5, 102]]}]


async def test_connect_storm_counts_connections_and_ready_latency(consuming: Stack):
    r = await _run(consuming, _config("connect-storm", "study-group", duration=1.0))
    c = r["connections"]
    assert c["ready"] == 16 and r["plan"]["connections_during_run"] == 15
    assert c["ready_latency_ms"]["measured"] == 16 and c["ready_latency_ms"]["max_ms"] > 0
    assert r["deliveries"]["lost"] == 0


async def test_presence_storm_reaches_observers(consuming: Stack, tmp_path: Path):
    # in-process gateways flush presence on their own one-second timer and no presence service
    # runs here, so only what the generator sent is checked; propagation is a benchmark figure
    spec = tmp_path / "quick.toml"
    spec.write_text(QUICK)
    r = await _run(consuming, _config("presence-storm", str(spec), duration=1.0, rate=5))
    assert r["presence"]["status_changes_sent"] == 16  # 8 away, 8 back
    assert r["deliveries"]["lost"] == 0


async def test_fault_scenarios_need_real_processes(stack: Stack):
    with pytest.raises(ValueError, match="real processes"):
        await _run(stack, _config("kill-worker", "study-group"))


@pytest.mark.slow
async def test_generator_processes_against_an_embedded_topology_with_a_killed_worker(
    tmp_path: Path,
):
    cfg = RunConfig(
        "kill-worker",
        "study-group",
        duration=6.0,
        rate=20,
        processes=2,
        fault_at=2.0,
        drain_s=20.0,
        storage_url=f"sqlite:///{tmp_path}/lt.db",
        workdir=tmp_path,
        out=tmp_path / "out",
        progress_every=10.0,
    )
    r = await run(cfg, say=lambda *_: None)
    d = r["deliveries"]
    assert r["messages"]["acknowledged"] == 120
    assert d["lost"] == d["duplicated"] == d["reordered"] == 0, d["examples"]
    assert d["delivered"] == 120 * 16
    assert r["messages"]["stored"]["missing_from_history"] == 0
    assert any("SIGKILL worker-0" in f["what"] for f in r["faults"])
    assert any("restarting" in f["what"] for f in r["faults"])
    names = set(r["processes"])
    assert {"generator-0", "generator-1", "gateway-0", "gateway-1", "valkey"} <= names


async def _until(predicate, what: str, timeout: float = 20.0) -> None:
    """Poll ``predicate`` until true; fail saying ``what`` was awaited after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout:g}s for {what}")
        await asyncio.sleep(0.02)


async def test_clients_refused_as_unknown_users_fail_the_run_loudly(stack: Stack, tmp_path: Path):
    # The load test writes its community into another store than the gateways read (the
    # CHATSCALE_REDIS_URL-vs-run.json mix-up): every client is refused with 4004. That used to
    # end with nothing sent and a CLEAN verdict.
    other = stack.settings.model_copy(update={"storage_url": f"sqlite:///{tmp_path}/other.db"})
    topo = Given(other, [gw.url for gw in stack.gateways])
    with pytest.raises(LoadTestError, match=r"refused for good .*4004.* another store"):
        await run(
            _config("steady", "study-group", duration=1.0), topology=topo, say=lambda *_: None
        )


async def test_a_run_that_reached_no_client_is_not_clean(stack: Stack):
    # a "gateway" that accepts TCP and never answers: no READY, nothing sent, nothing lost
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client aborts
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    cfg = _config("steady", "study-group", duration=0.5, drain_s=1.0)
    cfg.ready_timeout, cfg.setup_timeout = 0.3, 1.5
    try:
        r = await run(cfg, topology=Given(stack.settings, [url]), say=lambda *_: None)
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), 10)
    assert r["deliveries"]["lost"] == 0 and r["messages"]["acknowledged"] == 0
    assert not r["verdict"]["clean"]
    notes = r["verdict"]["notes"]
    assert "NOT MEASURED: none of the 16 clients reached READY" in notes
    assert any(n.startswith("NOT MEASURED: none of the") and "scheduled" in n for n in notes)


async def test_a_fault_that_cannot_be_injected_says_so(stack: Stack):
    log: list[dict] = []
    topo = Given(stack.settings, [])  # SQLite storage: there is no Cassandra to pause
    await _fault(("pause-cassandra", 0.0, 1.0), topo, time.time(), log, lambda *_: None)
    assert [e["injected"] for e in log] == [False]
    assert "not Cassandra" in log[0]["what"]


async def test_a_cancelled_driver_closes_every_connection(stack: Stack):
    # a driver cancelled mid-run (a test timing out, Ctrl-C) must not leave sockets open: they
    # kept the gateways waiting at shutdown and failed later tests through ResourceWarnings
    gw = stack.gateways[0]
    part = Part(
        index=0,
        clients=[
            ClientPlan(i, stack.users[n], stack.token(n), "desktop", gw.url)
            for i, n in enumerate(("alice", "bob"))
        ],
        urls=[gw.url],
        channels=[stack.channels["general"]],
        report_s=0.05,
    )
    commands: asyncio.Queue[dict] = asyncio.Queue()
    inbox: list[dict] = []
    task = asyncio.create_task(drive(part, commands, inbox.append))
    commands.put_nowait({"cmd": "setup", "at": time.time()})
    await _until(lambda: any(m["type"] == "setup_done" for m in inbox), "the setup_done report")
    assert [m["ready_now"] for m in inbox if m["type"] == "setup_done"] == [2]
    assert len(gw.clients) == 2
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await _until(lambda: not gw.clients, "the gateway to see both connections closed", 10)


async def test_a_send_whose_ack_was_lost_is_resent_and_stored_once(stack: Stack):
    """The ACK of a queued message is lost with the session: the new session sends it again
    unchanged, the gateway answers with the first id, and history holds it once."""
    gw, general = stack.gateways[0], stack.channels["general"]
    plan = ClientPlan(0, stack.users["alice"], stack.token("alice"), "desktop", gw.url)
    gen = Generator(Part(index=0, clients=[plan], urls=[gw.url], channels=[general]))
    client = gen.clients[0]
    try:
        client.start()
        await _until(lambda: client.state == "ready", "alice's READY")
        client.conn.transport.pause_reading()  # the ACK will not be read: it is lost
        client.queue(general, "hello", time.time())
        stream = gw.keys.ingest(general % stack.settings.ingest_shards)
        async with asyncio.timeout(20):  # the gateway queued it (and answered into the void)
            while not await gw.redis.xread({stream: "0-0"}, count=1, block=500):
                pass
        [(key, *_)] = client.inflight.values()
        client.drop(False, 0.0)  # a new session, not a RESUME (which would replay the ACK)
        await _until(lambda: gen.sends, "the MESSAGE_ACK of the resent message")
    finally:
        gen.close_all()
    assert gen.counters["resent_after_new_session"] == 1 and gen.counters["new_sessions"] == 1
    await stack.drain()
    stored = await stack.store.page(general, before=None, limit=100)
    assert [json.loads(m.payload)["content"] for m in stored] == [f"{key} hello"]
    assert gen.sends[0][0] == key and gen.sends[0][5] == stored[0].message_id
