"""A real ``chatscale run`` (Valkey, gateways, workers, presence: real processes) with its
dashboard, and a headless Debian chromium driven by Selenium. Without chromium, its driver or
Selenium the browser tests skip and say what to install — except under ``CI=true``, where they
must run and so fail instead (``.ci/run`` installs them)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("CHATSCALE_CHROMIUM", "/usr/bin/chromium")


def missing_browser() -> str:
    """What is missing for the browser tests, or ''."""
    missing = []
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("pip install selenium")
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        missing.append("apt-get install chromium")
    if not shutil.which("chromedriver") and not Path("/usr/bin/chromedriver").exists():
        missing.append("apt-get install chromium-driver")
    return ", ".join(missing)


@dataclass
class Run:
    proc: subprocess.Popen[str]
    url: str
    token: str
    cwd: Path
    banner: str

    def state(self) -> dict[str, Any]:
        import urllib.request

        with urllib.request.urlopen(self.url + "api/state", timeout=5) as r:  # noqa: S310
            return json.loads(r.read())


def _read_until(proc: subprocess.Popen[str], marker: str, timeout: float = 60) -> str:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if marker in line:
            return "".join(lines)
    raise AssertionError(f"{marker!r} not seen; output so far:\n{''.join(lines)}")


@pytest.fixture(scope="module")
def dashboard_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    cwd = tmp_path_factory.mktemp("dashboard-run")
    # one lab result and one load-test report, as `chatscale lab run` / `loadtest` lay them out
    lab = cwd / "lab-results" / "slowmode"
    lab.mkdir(parents=True)
    (lab / "result.json").write_text(
        json.dumps({"title": "Slowmode sheds a burst", "conclusion": "holds", "size": "tiny"})
    )
    (lab / "index.html").write_text("<html><body><h1>lab page: slowmode</h1></body></html>")
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("CHATSCALE_") and k != "REDIS_URL"
    }
    env["CHATSCALE_STORAGE_URL"] = f"sqlite:///{cwd}/run.db"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "chatscale",
            "run",
            "--base-port",
            "0",
            "--dashboard-port",
            "0",
            "--no-demo",
        ],  # fmt: skip
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=cwd,
    )
    try:
        banner = _read_until(proc, "Ctrl-C stops everything.")
        found = re.search(r"dashboard\s+(http://127\.0\.0\.1:\d+/)#token=(\S+)", banner)
        assert found, banner
        yield Run(proc, found.group(1), found.group(2), cwd, banner)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    missing = missing_browser()
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true requires the browser tests to run: {missing}")
        pytest.skip(f"no browser for the dashboard tests: {missing}")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1600,1000"):  # fmt: skip
        options.add_argument(arg)
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        yield driver
    finally:
        driver.quit()
