"""``--cpu-hog``: a competing process that keeps one core busy while a load test runs.

The issue's second failure mode: a gateway that shares its machine with a busy neighbour
must stay correct (no session closed for the gateway's own slowness, nothing lost). The hog is
a plain Python busy loop in its own process (one core at most: one thread, the GIL), started
after the topology and stopped before the report, always, even when the run fails.
"""

from __future__ import annotations

import subprocess
import sys

BUSY_LOOP = "while True:\n    pass\n"


def start() -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", BUSY_LOOP],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.kill()
    proc.wait(timeout=10)
