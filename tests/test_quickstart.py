"""The README's quick start is what CI runs, and works where pip refuses the system Python.

On Debian 12 / Ubuntu >= 23.04 ``pip install`` outside a virtual environment stops with
"externally-managed-environment" (PEP 668), so both quick-start commands create and activate a
venv first, and ``.ci/run`` runs the README's test command verbatim.
"""

from __future__ import annotations

import re
from pathlib import Path

from chatscale.config import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
VENV = "python3 -m venv .venv && . .venv/bin/activate && "


def quick_start() -> list[str]:
    section = README.split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "the quick start has a bash block"
    return [line.split("   #", 1)[0].strip() for line in block.group(1).splitlines() if line]


def test_both_quick_start_commands_use_a_virtual_environment():
    run, test = quick_start()
    assert run.startswith(VENV) and run.endswith("pip install -e . && chatscale run"), run
    assert test.startswith(VENV) and test.endswith('pip install -e ".[test]" && python -m pytest')


def test_ci_runs_the_readme_test_command_verbatim():
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert quick_start()[1] in ci
    assert "export CI=true" in ci


def test_connect_by_hand_states_the_real_heartbeat_deadline():
    s = Settings()
    deadline = s.heartbeat_interval_ms / 1000 * s.heartbeat_grace
    section = README.split("### Connect by hand", 1)[1].split("\n## ", 1)[0]
    assert f'{{"op":10,"d":{{"heartbeat_interval":{s.heartbeat_interval_ms}}}}}' in section
    assert f"**{deadline:g} s**" in section and "4009" in section
    assert "docs/protocol.md" in section
