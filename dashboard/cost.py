"""What the dashboard costs the topology: ``python -m dashboard.cost`` next to a running
``chatscale run`` (the one of ``.chatscale/run.json``).

Holds ``--connections`` idle clients on the gateways (the members ``chatscale bench idle``
connects), then alternates rounds with the dashboard page closed and open — open in headless
chromium when Selenium and chromium are installed, else as a bare server-sent-events reader —
and samples the CPU seconds of every process of the topology (the ``chatscale run`` process,
which serves the dashboard, and everything it started) over each round. The difference between
the two kinds of round is the dashboard's cost, in % of one core; the ``run`` process's own
share is printed too. Start the run with the benchmark limits raised (README, "Measured
figures"), without ``--dashboard-chat``, to measure the page alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import statistics
import threading
import time
import urllib.request
from typing import Any

import psutil

from chatscale.discovery import STATE_FILE, WORKDIR, gateways, settings_for_tools
from loadtest.bench import _connect_members


def _role(proc: psutil.Process, root: psutil.Process) -> str:
    if proc.pid == root.pid:
        return "run (dashboard)"
    with contextlib.suppress(psutil.Error):
        cmd = proc.cmdline()
        if len(cmd) > 3 and cmd[1:3] == ["-m", "chatscale"]:
            return cmd[3]
        if cmd and "valkey" in cmd[0]:
            return "valkey"
    return "other"


def _cpu(procs: list[psutil.Process]) -> dict[int, float]:
    out = {}
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
    return out


class Page:
    """The dashboard open in a browser (or, without one, an SSE reader) until ``close``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.kind = "sse"
        self._driver: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def open(self) -> None:
        chromium = shutil.which("chromium") or "/usr/bin/chromium"
        try:
            from selenium import webdriver
            from selenium.webdriver.chrome.options import Options
            from selenium.webdriver.chrome.service import Service

            options = Options()
            options.binary_location = chromium
            for arg in (
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
            ):
                options.add_argument(arg)
            driver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
            self._driver = webdriver.Chrome(options=options, service=Service(driver))
            self._driver.get(self.url)
            self.kind = "chromium"
            return
        except Exception:  # noqa: BLE001 - no browser here: read the event stream instead
            self._driver = None
        self._stop.clear()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with urllib.request.urlopen(self.url + "events", timeout=10) as r:  # noqa: S310
            while not self._stop.is_set() and r.readline():
                pass

    def close(self) -> None:
        if self._driver is not None:
            self._driver.quit()
            self._driver = None
        self._stop.set()


async def measure(url: str, connections: int, seconds: float, rounds: int) -> dict[str, Any]:
    settings = settings_for_tools()
    state = json.loads((WORKDIR / STATE_FILE).read_text())
    root = psutil.Process(int(state["pid"]))
    urls = gateways()
    print(f"connecting {connections} idle clients to {len(urls)} gateway(s)...", flush=True)
    clients, _ = await _connect_members(settings, urls, connections)
    page = Page(url)
    closed, opened, run_share = [], [], []
    by_role_open: dict[str, list[float]] = {}
    by_role_closed: dict[str, list[float]] = {}
    try:
        for r in range(rounds):
            for is_open in (False, True):
                if is_open:
                    await asyncio.to_thread(page.open)
                    await asyncio.sleep(2)  # the page's first frames, before sampling
                procs = [root, *root.children(recursive=True)]
                before, t0 = _cpu(procs), time.monotonic()
                await asyncio.sleep(seconds)
                after, dt = _cpu(procs), time.monotonic() - t0
                used = sum(after[p] - before[p] for p in after if p in before)
                pct = 100 * used / dt
                (opened if is_open else closed).append(pct)
                roles = by_role_open if is_open else by_role_closed
                for proc in procs:
                    if proc.pid in before and proc.pid in after:
                        share = 100 * (after[proc.pid] - before[proc.pid]) / dt
                        roles.setdefault(_role(proc, root), []).append(share)
                if is_open:
                    run_share.append(100 * (after[root.pid] - before[root.pid]) / dt)
                    await asyncio.to_thread(page.close)
                print(
                    f"round {r + 1}: page {'open  ' if is_open else 'closed'} topology CPU "
                    f"{pct:5.1f} % of a core",
                    flush=True,
                )
    finally:
        page.close()
        for c in clients:
            with contextlib.suppress(Exception):
                await c.close()
    return {
        "connections": connections,
        "page": page.kind,
        "seconds_per_round": seconds,
        "closed_pct": [round(x, 2) for x in closed],
        "open_pct": [round(x, 2) for x in opened],
        "run_process_open_pct": [round(x, 2) for x in run_share],
        "dashboard_cost_pct": round(statistics.median(opened) - statistics.median(closed), 2),
        # per kind of process: its CPU per round, page open minus closed (means over the rounds)
        "cost_by_process_pct": {
            role: round(
                sum(by_role_open.get(role, [0])) / rounds
                - sum(by_role_closed.get(role, [0])) / rounds,
                2,
            )
            for role in sorted(set(by_role_open) | set(by_role_closed))
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m dashboard.cost", description=__doc__)
    p.add_argument("url", help="the dashboard's URL, e.g. http://127.0.0.1:8780/")
    p.add_argument("--connections", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=20.0, help="length of one sample")
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()
    url = a.url.split("#", 1)[0].rstrip("/") + "/"
    result = asyncio.run(measure(url, a.connections, a.seconds, a.rounds))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
