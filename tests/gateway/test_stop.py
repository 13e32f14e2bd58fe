"""Gateway.stop() always returns, whatever its background tasks are doing.

The hang these tests pin down: on Python 3.11 redis-py sends every command through
``asyncio.wait_for``, which drops a cancellation that arrives in the loop turn the send finishes
(CPython gh-86296). A background loop (delivery reader, liveness, housekeeping) whose one
cancellation was lost ran forever, and ``stop()`` waited for it forever — in the test suite as
"gateway gw-1 did not stop within 30 s (0 open)", and in a ``chatscale gateway`` that got
SIGTERM right after "ready on". ``stop()`` now cancels again until the tasks end, and gives
up (logging where each task is stuck) after ``close_timeout_s``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chatscale.config import Settings
from gateway.server import Gateway
from storage import Store


async def _stopped(gw: Gateway, within: float, what: str) -> None:
    """stop() returned within ``within`` s. Waited for from outside, not cancelled: the old
    stop() hung in a gather that a cancellation cannot end either."""
    stopping = asyncio.create_task(gw.stop())
    done, _ = await asyncio.wait({stopping}, timeout=within)
    if not done:
        pytest.fail(f"{what}: Gateway.stop() did not return within {within} s")
    stopping.result()


async def test_stop_with_a_redis_send_in_flight_in_a_background_loop(
    settings: Settings, store: Store
):
    """The real mechanism, swept: a background loop of the gateway (its liveness loop) starts
    a Redis SET, and stop() is called after k loop turns, for every k that lands the
    cancellation before, during and after the send. On the old stop() some k hangs."""
    for k in range(12):
        gw = Gateway(settings, store=store, gateway_id=f"gw-sweep-{k}")
        await gw.start()
        await gw.redis.ping()  # the pooled connection exists: the send below does no I/O wait
        gw._spawn(gw._liveness())  # a loop whose first step is a Redis SET
        for _ in range(k):
            await asyncio.sleep(0)
        await _stopped(gw, 20, f"stop() {k} loop turns after a liveness SET began")


async def test_stop_cancels_again_a_task_that_lost_its_cancellation(
    settings: Settings, store: Store, caplog: pytest.LogCaptureFixture
):
    """Deterministic form of the same: a background task that loses its first cancellation,
    exactly as one inside redis-py's send does on Python 3.11, still ends."""
    gw = Gateway(settings, store=store, gateway_id="gw-lost-cancel")
    await gw.start()
    never = asyncio.Event()
    ended = asyncio.Event()

    async def loses_one_cancellation() -> None:
        try:
            await never.wait()
        except asyncio.CancelledError:
            pass  # what asyncio.wait_for does on 3.11 when the wrapped call just finished
        try:
            await never.wait()
        finally:
            ended.set()

    gw._spawn(loses_one_cancellation())
    await asyncio.sleep(0)  # the task is waiting
    with caplog.at_level(logging.WARNING, logger="chatscale.gateway"):
        await _stopped(gw, 10, "a task that lost one cancellation")
    assert ended.is_set(), "stop() returned but the task is still running"
    assert "ignored a cancellation" in caplog.text


async def test_stop_gives_up_on_a_task_that_never_ends_and_says_where_it_is(
    settings: Settings, store: Store, caplog: pytest.LogCaptureFixture
):
    quick = settings.model_copy(update={"close_timeout_s": 0.5})
    gw = Gateway(quick, store=store, gateway_id="gw-stubborn")
    await gw.start()
    release = asyncio.Event()

    async def ignores_every_cancellation() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue

    stubborn = asyncio.create_task(ignores_every_cancellation())
    gw._tasks.add(stubborn)
    await asyncio.sleep(0)
    with caplog.at_level(logging.ERROR, logger="chatscale.gateway"):
        await _stopped(gw, 10, "a task that ignores every cancellation")
    assert not stubborn.done()
    assert "abandoning background task" in caplog.text
    assert "ignores_every_cancellation" in caplog.text  # where it was stuck, by name
    release.set()
    async with asyncio.timeout(5):
        await stubborn


def _read_until(proc: subprocess.Popen[bytes], needle: str, within: float) -> str:
    """The process's output up to ``needle``, bounded in time (raw reads: a buffered
    ``readline`` could hold the line while ``select`` waits for more)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + within
    seen = b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while needle.encode() not in seen and time.monotonic() < deadline:
            if not sel.select(timeout=deadline - time.monotonic()):
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            seen += chunk
    return seen.decode(errors="replace")


@pytest.mark.parametrize("attempt", range(3))
def test_sigterm_right_after_ready_stops_the_process(
    settings: Settings, tmp_path: Path, attempt: int
):
    """A real ``chatscale gateway`` told to stop the moment it says "ready on" exits 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATSCALE_")}
    env |= {
        "CHATSCALE_REDIS_URL": settings.redis_url or "",
        "CHATSCALE_STORAGE_URL": f"sqlite:///{tmp_path}/gw.db",
        "CHATSCALE_KEY_PREFIX": settings.key_prefix,
        "CHATSCALE_TOKEN_SECRET": secrets.token_urlsafe(48),
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
    }
    with subprocess.Popen(
        [sys.executable, "-m", "chatscale", "gateway", "--port", "0"],
        env=env,
        cwd=tmp_path,  # no .chatscale/ here
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    ) as proc:
        try:
            out = _read_until(proc, "ready on", 60)
            assert "ready on" in out, "gateway did not start within 60 s:\n" + out
            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pytest.fail("the gateway did not exit within 30 s of SIGTERM right after ready")
            rest = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            assert code == 0, out + rest
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
