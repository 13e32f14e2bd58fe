"""The data experiments (inbox-fanout, hot-cache, shard-by-user) run once each at size tiny
against real processes and files, and their results have a number for every metric of every
arm. No assertion about which arm wins: only shape, and the facts the knobs guarantee."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lab import runner
from lab.experiments import by_name


async def _run(name: str, out: Path) -> dict:
    result = await runner.run(by_name(name), size="tiny", repeat=1, out=out, say=lambda _t: None)
    assert json.loads((out / name / "result.json").read_text())["experiment"] == name
    assert result["conclusion"]
    for arm in result["arms"]:
        assert arm["unavailable"] is None, arm
        missing = [k for k, v in arm["metrics"].items() if v is None]
        assert not missing, f"{name}/{arm['name']}: no number for {missing}"
    return {a["name"]: a["metrics"] for a in result["arms"]}


async def test_inbox_fanout_tiny(tmp_path: Path):
    m = await _run("inbox-fanout", tmp_path)
    members = m["inbox"]["members"]
    # the knob's guarantee: one inbox entry per member but the author, per message (plus the
    # ingest entry and one delivery entry per gateway, the gateway arm's writes)
    assert m["inbox"]["entries_per_msg"] >= members - 1
    assert m["gateway"]["entries_per_msg"] < 10
    assert m["gateway"]["online"] == m["inbox"]["online"] < members


async def test_hot_cache_tiny(tmp_path: Path):
    m = await _run("hot-cache", tmp_path)
    assert m["hot"]["storage_reads_per_open"] == 0  # the newest page is always in Redis
    assert m["storage"]["storage_reads_per_open"] == 1  # with HOT_SIZE=0, always storage
    assert m["storage"]["storage_rows_per_open"] == 50


async def test_shard_by_user_tiny(tmp_path: Path):
    m = await _run("shard-by-user", tmp_path)
    shards = by_name("shard-by-user").sizes["tiny"]["shards"]
    assert m["user"]["nodes_per_page"] == shards
    assert 1 <= m["channel-bucket"]["nodes_per_page"] < shards


@pytest.mark.parametrize("name", ["inbox-fanout", "hot-cache", "shard-by-user"])
def test_every_branch_of_the_conclusion_is_a_sentence(name: str):
    """conclude() says something for a claim that holds, one reversed and a tie."""
    from lab.experiment import Outcome

    exp = by_name(name)
    a, b = (arm.name for arm in exp.arms)
    keys = [m.key for m in exp.metrics]
    for first, second in ((1.0, 10.0), (10.0, 1.0), (5.0, 5.0)):
        runs = {a: [dict.fromkeys(keys, first)], b: [dict.fromkeys(keys, second)]}
        if name == "inbox-fanout":
            for arm in (a, b):
                runs[arm][0].update(members=100.0, online=10.0)
        text = exp.conclude(Outcome(exp, runs))
        assert text and "None" not in text, (first, second, text)
    assert "nothing can be concluded" in exp.conclude(Outcome(exp, {a: [], b: []}))
