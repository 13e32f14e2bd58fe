"""The presence experiments, each once at size tiny on real processes: every arm has numbers.

These check the shape of a result, never which arm wins (that is what the lab reports)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from lab import runner
from lab.experiments import by_name
from lab.experiments.multi_device import last_writer

pytestmark = pytest.mark.timeout(90)


async def run_tiny(name: str, tmp_path: Path) -> dict:
    result = await runner.run(
        by_name(name), size="tiny", repeat=1, out=tmp_path, say=lambda _text: None
    )
    assert (tmp_path / name / "result.json").exists()
    assert result["conclusion"].strip()
    for arm in result["arms"]:
        assert arm["unavailable"] is None, arm
        assert len(arm["runs"]) == 1
        for key, value in arm["metrics"].items():
            assert value is not None and math.isfinite(value), (arm["name"], key)
    return result


async def test_presence_coalesce_tiny(tmp_path: Path):
    result = await run_tiny("presence-coalesce", tmp_path)
    for arm in result["arms"]:
        assert arm["metrics"]["deliveries_per_change"] > 0
        assert arm["metrics"]["bytes_per_change"] > 0
        assert any("CHATSCALE_PRESENCE_TICK_MS" in n for n in arm["notes"])


async def test_typing_throttle_tiny(tmp_path: Path):
    result = await run_tiny("typing-throttle", tmp_path)
    for arm in result["arms"]:
        assert arm["metrics"]["deliveries_per_event"] > 0


async def test_multi_device_tiny(tmp_path: Path):
    result = await run_tiny("multi-device", tmp_path)
    for arm in result["arms"]:
        m = arm["metrics"]
        assert m["phone_drop_seen_s"] > 0 and m["offline_after_last_s"] > 0
        series = arm["series"][0]
        assert len(series) == 4
        for points in series.values():
            assert points and all(y in (0.0, 1.0, 2.0) for _, y in points)
    used = {a["name"]: a["metrics"]["timeout_s"] for a in result["arms"]}
    assert used["short"] < used["long"]


# ---- the derived last-writer flag (pure) -------------------------------------------------------


def test_last_writer_flag_goes_offline_when_the_phone_leaves():
    seen = [
        (0.0, "online", {"desktop": "online"}),
        (0.1, "online", {"desktop": "online", "mobile": "online"}),
        (1.0, "online", {"desktop": "online"}),  # the phone dropped, the desktop stays
        (3.0, "offline", {}),
    ]
    flags = last_writer(seen)
    assert [ok for _, _, ok in flags] == [True, True, False, True]
    assert flags[2][:2] == (1.0, 3.0)  # wrong from the phone's drop until the next event


def test_last_writer_flag_agrees_while_one_device_comes_and_goes():
    seen = [
        (0.0, "online", {"desktop": "online"}),
        (1.0, "idle", {"desktop": "idle"}),
        (2.0, "offline", {}),
    ]
    assert all(ok for _, _, ok in last_writer(seen))


async def test_lazy_guilds_tiny_run_has_numbers_for_both_arms(tmp_path: Path):
    result = await run_tiny("lazy-guilds", tmp_path)
    arms = {a["name"]: a for a in result["arms"]}
    assert (
        arms["lazy"]["settings"]["CHATSCALE_LARGE_GUILD_THRESHOLD"]
        != arms["eager"]["settings"]["CHATSCALE_LARGE_GUILD_THRESHOLD"]
    )
    for arm in arms.values():  # every arrival was seen by someone in both arms
        assert arm["metrics"]["presence_frames_per_arrival"] > 0, arm["name"]
        assert arm["metrics"]["ready_bytes_full"] > 0
