"""The /metrics endpoint under idle and slow connections: threads stay bounded, scrapes resume."""

from __future__ import annotations

import asyncio
import select
import socket
import threading
import time
import urllib.error
import urllib.request

from chatscale.config import Settings
from chatscale.metrics import Exporter


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


async def _until(what: str, check, timeout: float = 10.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_idle_connections_cannot_pile_up_threads_and_are_dropped():
    settings = Settings(
        redis_url=None, metrics_max_requests=2, metrics_request_timeout_s=3.0, metrics_port=0
    )
    exporter = Exporter(settings, role="worker", name="t", port=0)
    exporter.start()
    url = f"http://127.0.0.1:{exporter._server.server_port}/metrics"
    idle: list[socket.socket] = []
    try:
        before = threading.active_count()  # the server's own thread included
        status, body = _get(url)  # blocking on purpose: no executor thread to count
        assert status == 200 and b"chatscale_" in body
        await _until("the request thread to end", lambda: threading.active_count() <= before)
        for _ in range(40):  # connect, then say nothing (a slowloris)
            idle.append(socket.create_connection(("127.0.0.1", exporter._server.server_port)))
        # Two take the two slots and are dropped after the request timeout; every other one is
        # answered 503 and closed at once. Threads never exceed one per slot meanwhile.
        replies: dict[int, bytes] = {}
        threads = [threading.active_count()]

        def all_answered() -> bool:
            threads.append(threading.active_count())
            waiting = [s for i, s in enumerate(idle) if i not in replies]
            ready, _, _ = select.select(waiting, [], [], 0)
            for s in ready:
                replies[idle.index(s)] = s.recv(200)
            return len(replies) == len(idle)

        await _until("every idle connection to be answered or dropped", all_answered, timeout=30)
        answers = sorted(replies.values())
        # Two, or a few more if some connections reached the server only after a slot freed.
        assert 2 <= answers.count(b"") <= 10, answers
        assert all(a.startswith(b"HTTP/1.1 503") for a in answers if a), answers
        assert max(threads) <= before + 2, max(threads)
        await _until("the request threads to end", lambda: threading.active_count() <= before)
        status, body = _get(url)  # blocking on purpose: no executor thread to count
        assert status == 200 and b"chatscale_" in body
    finally:
        for s in idle:
            s.close()
        exporter.close()
