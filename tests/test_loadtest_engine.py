"""The scenario engine, small and fast: a handful of simulated clients against the in-process
gateways of the ``stack`` fixture, with a real worker consuming in the background.

The generator runs in this event loop (``processes=0``). Damage is injected on purpose at the
generator's receive side, and the merged ledger must count exactly that damage. One slow test
runs the real thing: generator processes, an embedded topology and a killed worker.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from loadtest import report
from loadtest.engine import Given, RunConfig, run
from tests.conftest import Stack

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
    await asyncio.wait_for(task, 10)


def _config(scenario: str, community: str, **kw) -> RunConfig:
    return RunConfig(
        scenario,
        community,
        processes=0,
        drain_s=5.0,
        progress_every=10.0,
        quiet_s=0.4,
        report_s=0.1,
        **kw,
    )


async def _run(stack: Stack, cfg: RunConfig) -> dict:
    topo = Given(stack.settings, [gw.url for gw in stack.gateways])
    return await run(cfg, topology=topo, say=lambda *_: None)


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
