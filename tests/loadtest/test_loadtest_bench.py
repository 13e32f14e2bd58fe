"""``chatscale bench`` and ``chatscale trace`` against a topology with its default limits.

The in-process ``stack`` stands in for ``chatscale run``; its gateways use the injected clock,
so a rate limit's ``retry_after`` is waited out by moving that clock, not by sleeping.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import psutil
import pytest

from chatscale.trace import ToolError, identify, send_patiently
from loadtest import bench
from tests.conftest import FakeClock, Stack


def _limited(stack: Stack) -> FakeClock:
    """The default topology's kind of limit (2 messages per user per second here), on a clock
    of its own that the test moves instead of sleeping."""
    clock = FakeClock(time.time())
    for gw in stack.gateways:
        gw.control.limiter.settings = stack.settings.model_copy(
            update={"user_messages_per_window": 2, "user_message_window_s": 1.0}
        )
        gw.control.limiter.clock = clock
    return clock


async def test_a_rate_limited_send_waits_as_told_and_is_stored_once(stack: Stack):
    clock = _limited(stack)
    alice = await stack.client("alice")
    channel = stack.channels["general"]
    waits: list[float] = []

    async def clock_sleep(seconds: float) -> None:
        clock.advance(seconds)

    acks = [
        await send_patiently(
            alice,
            channel,
            f"patient {i}",
            nonce=f"p{i}",
            deadline=time.monotonic() + 30,
            on_wait=waits.append,
            sleep=clock_sleep,
        )
        for i in range(5)
    ]
    assert len(waits) >= 2 and all(0 < w <= 1 for w in waits)  # it was limited, and waited
    assert len({a["id"] for a in acks}) == 5
    await stack.drain()
    history = await alice.history(channel, limit=20)
    mine = [m["content"] for m in reversed(history) if m["content"].startswith("patient")]
    assert mine == [f"patient {i}" for i in range(5)]  # each once, in order


async def test_a_refused_identify_is_one_line_not_a_hang(stack: Stack):
    started = time.monotonic()
    with pytest.raises(ToolError, match="closed the connection with 4004 before READY"):
        await identify(stack.gateways[0].url, "not-a-token", timeout=30)
    assert time.monotonic() - started < 10  # at the close, not at the READY timeout
    with pytest.raises(ToolError, match="cannot reach the gateway"):
        await identify("ws://127.0.0.1:1", "x")


async def test_bench_chat_samples_only_its_topology_and_outlives_its_processes(stack: Stack):
    # a stand-in for `chatscale run`: a process with one child; the session's Valkey (and any
    # other topology on this machine) must not be sampled
    script = (
        "import subprocess, sys, time\n"
        "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        "print(c.pid, flush=True)\n"
        "c.wait()\n"  # reaps the child when it is killed
        "time.sleep(120)\n"
    )
    run = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert run.stdout is not None
        child = int(run.stdout.readline())  # printed at once; the pipe closes if it dies
        state = {"pid": run.pid, "gateways": [gw.url for gw in stack.gateways]}
        procs = await bench.server_processes(stack.settings, state)
        assert {p.pid for p in procs.values()} == {run.pid, child}
        meter = bench.CpuMeter(procs)
        psutil.Process(child).kill()  # a worker killed mid-run
        deadline = time.monotonic() + 10
        while psutil.pid_exists(child):  # reaped by the stand-in (its parent)
            assert time.monotonic() < deadline, "the killed child was not reaped within 10 s"
            await asyncio.sleep(0.02)
        cpu = meter.stop()
        assert cpu[f"python-{child}"] == "exited" and isinstance(cpu[f"run-{run.pid}"], float)

        worker = asyncio.create_task(stack.worker.run())  # as in a running topology
        try:
            result = await bench.chat(
                stack.settings,
                state["gateways"],
                members=3,
                senders=1,
                rate=4,
                duration=0.6,
                state=state,
                say=lambda *_: None,
            )
        finally:
            stack.worker.stop()
            await asyncio.wait_for(worker, 30)  # the worker finishes its batch and returns
        assert set(result["cpu_percent"]) == {f"run-{run.pid}"}
        assert result["lost"] == result["duplicated"] == 0
    finally:
        run.kill()
        run.wait(10)
        if run.stdout is not None:
            run.stdout.close()


async def test_bench_idle_reports_memory_and_idle_cpu_of_its_topology(stack: Stack):
    # the in-process stack is this test's own process: the stand-in for `chatscale run`
    state = {"pid": psutil.Process().pid, "gateways": [gw.url for gw in stack.gateways]}
    said: list[str] = []
    result = await bench.idle(
        stack.settings,
        state["gateways"],
        connections=3,
        duration=0.2,
        settle=0.0,
        state=state,
        say=said.append,
    )
    assert result["connections"] == 3 and result["idle_seconds"] == 0.2
    me = f"run-{psutil.Process().pid}"
    assert set(result["cpu_percent"]) >= {me}, result["cpu_percent"]
    assert result["server_cpu_percent_of_a_core"] == pytest.approx(
        sum(v for v in result["cpu_percent"].values() if isinstance(v, float)), abs=0.05
    )
    assert any("3 identified clients" in line for line in said)
    # the three were identified sessions on the gateway (kept there for RESUME after the close)
    assert sum(len(gw.sessions) for gw in stack.gateways) == 3
