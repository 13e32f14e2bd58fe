"""Shared by the lab tests: one experiment run once at size tiny."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from lab import runner
from lab.experiments import by_name


@pytest.fixture
def run_tiny(tmp_path: Path) -> Callable[[str], Awaitable[dict]]:
    """``await run_tiny(name)``: the experiment once at size tiny, checked to have a conclusion
    and a number for every metric of every arm; returns arm name -> its metrics."""

    async def run(name: str) -> dict:
        result = await runner.run(
            by_name(name), size="tiny", repeat=1, out=tmp_path / name, say=lambda _t: None
        )
        assert result["conclusion"]
        for arm in result["arms"]:
            assert arm["unavailable"] is None, arm
            assert all(v is not None for v in arm["metrics"].values()), arm
        return {a["name"]: a["metrics"] for a in result["arms"]}

    return run
