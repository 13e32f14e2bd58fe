"""Capacity from per-unit costs: the arithmetic (pure), the command on a stored result, the
conclusion's branches, and one tiny run of the experiment on real processes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from chatscale.commandline import UsageError
from lab import runner
from lab.capacity import (
    TIERS,
    UNITS,
    Costs,
    Load,
    Machine,
    costs_from_result,
    plan,
    plan_json,
    render,
    tier_cores,
    unit_cost,
)
from lab.capacity_command import add_commands
from lab.experiment import Outcome
from lab.experiments import by_name
from lab.experiments.capacity import EXPERIMENT, conclude


def costs(**over: float) -> Costs:
    """Round numbers: a delivery costs the gateway 10 µs, a message 100 µs per tier, ..."""
    cpu = {
        "idle_conn_s": {"gateway": 2.0, "worker": 0.0, "presence": 1.0, "valkey": 0.5},
        "message": dict.fromkeys(TIERS, 100.0),
        "delivery": {"gateway": 10.0, "worker": 1.0, "presence": 0.0, "valkey": 2.0},
        "presence_change": {"gateway": 40.0, "worker": 0.0, "presence": 20.0, "valkey": 5.0},
    }
    base = Costs(
        cpu_us=cpu,
        baseline_cores=dict.fromkeys(TIERS, 0.01),
        bytes_per_conn={"gateway": 20 * 1024, "valkey": 4 * 1024},
        heartbeat_s=2.0,
        presence_watchers=100,
    )
    flat = {**base.flat(), **over}
    return Costs.from_flat(flat)


def test_cores_are_the_sum_of_units_times_rates() -> None:
    load = Load(
        connections=1000,
        messages_per_s=10,
        recipients=100,
        presence_per_s=5,
        presence_audience=100,
        heartbeat_s=2.0,
    )
    cores = tier_cores(costs(), load)
    # gateway: 1000 conns × 2 µs + 10 msg × 100 µs + 1000 deliveries × 10 µs + 5 × 40 µs
    assert cores["gateway"] == pytest.approx((2000 + 1000 + 10_000 + 200) / 1e6)
    assert cores["worker"] == pytest.approx((0 + 1000 + 1000 + 0) / 1e6)
    assert cores["presence"] == pytest.approx((1000 + 1000 + 0 + 100) / 1e6)
    assert cores["valkey"] == pytest.approx((500 + 1000 + 2000 + 25) / 1e6)


def test_linear_in_the_load_and_baseline_per_process() -> None:
    one = Load(connections=500, messages_per_s=3, recipients=7, presence_per_s=2)
    two = Load(connections=1000, messages_per_s=6, recipients=7, presence_per_s=4)
    a, b = tier_cores(costs(), one), tier_cores(costs(), two)
    for tier in TIERS:
        assert b[tier] == pytest.approx(2 * a[tier])
    with_procs = tier_cores(costs(), one, {"gateway": 3})
    assert with_procs["gateway"] == pytest.approx(a["gateway"] + 3 * 0.01)
    assert with_procs["worker"] == pytest.approx(a["worker"])


def test_idle_cost_scales_with_the_heartbeat_at_the_gateway_only() -> None:
    c = costs()
    slow = Load(heartbeat_s=20.0)
    assert unit_cost(c, "idle_conn_s", "gateway", slow) == pytest.approx(2.0 * 2 / 20)
    assert unit_cost(c, "idle_conn_s", "presence", slow) == pytest.approx(1.0)


def test_presence_cost_scales_with_the_audience_at_the_gateway_only() -> None:
    c = costs()
    wide = Load(presence_audience=1000)
    assert unit_cost(c, "presence_change", "gateway", wide) == pytest.approx(400.0)
    assert unit_cost(c, "presence_change", "presence", wide) == pytest.approx(20.0)


def test_machines_by_cpu_or_memory() -> None:
    machine = Machine(cores=10, memory_gib=1.0, target_cpu=0.5, target_memory=0.5)
    # 100,000 conns × 20 KiB = 1.9 GiB at the gateway: 4 machines of 0.5 GiB usable
    p = plan(costs(), Load(connections=100_000, messages_per_s=0, presence_per_s=0), machine)
    assert p.memory_bytes["gateway"] == pytest.approx(100_000 * 20 * 1024)
    assert p.machines["gateway"] == 4 and p.bound_by["gateway"] == "memory"
    # a CPU-heavy load: 10^6 deliveries/s × 10 µs = 10 gateway cores, 5 usable per machine
    p = plan(costs(), Load(connections=1, messages_per_s=10_000, recipients=100), machine)
    # + 10,000 messages × 100 µs, 1,000 presence changes × 40 µs × (audience 50 / 100 watched)
    assert p.cores["gateway"] == pytest.approx(10.0 + 1.0 + 0.02 + 2e-6 * 2 / 20)
    assert p.machines["gateway"] == 3 and p.bound_by["gateway"] == "cpu"
    assert all(p.machines[t] >= 1 for t in TIERS)  # every tier runs somewhere


def test_flat_round_trip_and_missing_keys() -> None:
    c = costs()
    assert Costs.from_flat(c.flat()).flat() == c.flat()
    flat = c.flat()
    del flat["cpu_us.delivery.gateway"]
    with pytest.raises(ValueError, match="cpu_us.delivery.gateway"):
        Costs.from_flat(flat)


def test_render_lists_every_tier_and_the_assumptions() -> None:
    p = plan(costs(), Load(), Machine())
    text = render(p)
    for tier in TIERS:
        assert f"  {tier}" in text
    assert "assumptions" in text and "deliveries/s = messages/s" in text
    assert "one message in the largest guild: 5,000 deliveries" in text
    doc = plan_json(p)
    assert set(doc["machines"]) == set(TIERS) and doc["assumptions"] == p.assumptions


def _result(tmp_path: Path, runs: list[dict[str, float]]) -> Path:
    doc = {
        "experiment": "capacity",
        "finished": "then",
        "arms": [{"name": "predicted", "runs": runs}, {"name": "measured", "runs": [{}]}],
    }
    path = tmp_path / "result.json"
    path.write_text(json.dumps(doc))
    return path


def test_costs_from_a_result_take_the_median_of_runs(tmp_path: Path) -> None:
    a, b, c = costs().flat(), costs().flat(), costs().flat()
    a["cpu_us.delivery.gateway"], b["cpu_us.delivery.gateway"] = 5.0, 50.0
    got = costs_from_result(_result(tmp_path, [a, b, c]))
    assert got.cpu_us["delivery"]["gateway"] == 10.0
    assert "result.json" in got.source


async def test_command_reads_a_result(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="chatscale")
    add_commands(parser.add_subparsers())
    path = _result(tmp_path, [costs().flat()])
    args = parser.parse_args(["capacity", "--from", str(path), "--connections", "1000", "--json"])
    assert await args.fn(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["load"]["connections"] == 1000 and set(doc["cores"]) == set(TIERS)
    args = parser.parse_args(["capacity", "--from", str(tmp_path / "none.json")])
    with pytest.raises(UsageError):
        await args.fn(args)
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"arms": []}))
    args = parser.parse_args(["capacity", "--from", str(empty)])
    with pytest.raises(UsageError, match="predicted"):
        await args.fn(args)


def _outcome(pred: float, meas: float) -> Outcome:
    flat = costs().flat()
    p = {"server_cores": pred, **{f"{t}_cores": pred / 4 for t in TIERS}, **flat}
    m = {"server_cores": meas, **{f"{t}_cores": meas / 4 for t in TIERS}}
    return Outcome(EXPERIMENT, {"predicted": [p], "measured": [m]})


@pytest.mark.parametrize(
    ("pred", "meas", "words"),
    [
        (1.05, 1.0, "holds within 5%"),
        (0.5, 1.0, "underestimates the check load by 50%"),
        (2.0, 1.0, "overestimates the check load by 100%"),
    ],
)
def test_conclusion_follows_the_ratio(pred: float, meas: float, words: str) -> None:
    text = conclude(_outcome(pred, meas))
    assert words in text
    assert "chatscale capacity" in text  # the guide-scale sum from this run's costs


def test_conclusion_without_numbers() -> None:
    text = conclude(Outcome(EXPERIMENT, {"predicted": [], "measured": []}))
    assert "no conclusion" in text


async def test_tiny_run_has_numbers_for_both_arms(tmp_path: Path) -> None:
    exp = by_name("capacity")
    result = await runner.run(exp, size="tiny", repeat=1, out=tmp_path, say=lambda _t: None)
    arms = {a["name"]: a for a in result["arms"]}
    for name in ("predicted", "measured"):
        assert arms[name]["unavailable"] is None
        for tier in TIERS:
            assert arms[name]["metrics"][f"{tier}_cores"] is not None
        assert arms[name]["metrics"]["server_cores"] is not None
    run = arms["predicted"]["runs"][0]
    assert all(run[k] is not None for k in Costs.keys())
    assert {f"cpu_us.{u}.gateway" for u in UNITS} <= set(run)
    assert result["conclusion"]
    # what `chatscale capacity --from` reads
    stored = costs_from_result(tmp_path / "capacity" / "result.json")
    assert stored.presence_watchers == exp.sizes["tiny"]["calib_clients"]
