"""``CHATSCALE_GC_YOUNG_THRESHOLD``: every chatscale process freezes the heap it started with
and collects young objects less often; 0 leaves Python's collector as it is. Run in a child
interpreter: freezing this test process's heap would change the rest of the suite."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys

import pytest

from chatscale import cli

# main() as a program (argv from sys.argv); a bad --rate makes the command end at once
PROBE = """
import gc, json, sys
from chatscale import cli
before = gc.get_threshold()
sys.argv = ["chatscale", "bench", "ingest", "--rate", "abc"]
assert cli.main() == 2
print(json.dumps({"before": before, "after": gc.get_threshold(), "frozen": gc.get_freeze_count()}))
"""


def _probe(value: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATSCALE_")}
    if value is not None:
        env["CHATSCALE_GC_YOUNG_THRESHOLD"] = value
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.parametrize(("value", "young"), [(None, 50_000), ("20000", 20_000)])
def test_the_start_heap_is_frozen_and_young_collections_are_rarer(value: str | None, young: int):
    got = _probe(value)
    assert got["after"] == [young, *got["before"][1:]]  # the older generations keep theirs
    assert got["frozen"] > 1000  # the imported modules' objects


def test_zero_leaves_python_alone():
    got = _probe("0")
    assert got["after"] == got["before"] and got["frozen"] == 0


def test_main_called_with_argv_in_a_test_process_tunes_nothing(clean_env):
    before = gc.get_threshold()
    assert cli.main(["bench", "ingest", "--rate", "abc"]) == 2
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
