"""``chatscale bench ingest``: the pure parts (rates, window, verdict, summary, community), the
one-line refusals of bad input, and one tiny run against a real embedded topology.

The tiny run checks the report's shape and its exact counts (every message acked, none lost
or duplicated), never a latency or a rate: those depend on the machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from chatscale import cli
from loadtest import ingest_bench
from loadtest.ingest_bench import (
    check,
    highest_sustained,
    median_of,
    parse_rates,
    summarize,
    sustains,
    window_indices,
)


def test_rates_are_a_comma_list_of_positive_numbers():
    assert parse_rates("250,500, 1000,2000") == [250.0, 500.0, 1000.0, 2000.0]
    assert parse_rates("12.5") == [12.5]
    for bad, says in [
        ("abc", "not a number"),
        ("250,", "not a number"),
        ("0", "positive"),
        ("-5", "positive"),
        ("inf", "positive"),
        ("nan", "positive"),
        ("250,250", "twice"),
    ]:
        with pytest.raises(ValueError, match=says) as err:
            parse_rates(bad)
        assert "\n" not in str(err.value)


def test_a_load_the_bench_cannot_run_is_refused():
    ok = {"rates": [100.0], "clients": 8, "group": 4, "duration": 1.0, "warmup": 0.5, "repeat": 1}
    check(**ok)
    for change, says in [
        ({"clients": 0}, "--clients"),
        ({"group": 0}, "--group"),
        ({"group": 9}, "--group"),
        ({"duration": 0.0}, "--duration"),
        ({"warmup": -1.0}, "--warmup"),
        ({"repeat": 0}, "--repeat"),
        ({"rates": [0.5], "duration": 1.0, "warmup": 0.5}, "sends no message"),
    ]:
        with pytest.raises(ValueError, match=says):
            check(**{**ok, **change})


def test_the_window_holds_the_messages_due_after_the_warmup():
    # at 10 msg/s message j is due at j/10 s: 0.5 s of warm-up is j 0..4, 1 s of window 5..14
    assert window_indices(10.0, 0.5, 1.0) == (5, 15)
    assert window_indices(3.0, 0.0, 1.0) == (0, 3)
    assert window_indices(250.0, 2.0, 8.0) == (500, 2500)


def test_a_rate_is_sustained_at_95_percent_with_ack_p99_under_100_ms():
    assert sustains(1000.0, 950.0, 99.9)
    assert sustains(1000.0, 1001.0, 1.0)
    assert not sustains(1000.0, 949.9, 10.0)
    assert not sustains(1000.0, 1000.0, 100.0)
    assert not sustains(1000.0, None, 10.0)
    assert not sustains(1000.0, 1000.0, None)


def test_the_summary_is_the_median_and_every_run():
    assert median_of([3.0, 1.0, 2.0]) == {"median": 2.0, "runs": [3.0, 1.0, 2.0]}
    assert median_of([None, 4.0]) == {"median": 4.0, "runs": [None, 4.0]}
    assert median_of([None]) == {"median": None, "runs": [None]}

    def run(achieved: float, p99: float, worker: float) -> dict:
        return {
            "achieved_msg_per_s": achieved,
            "ack_p99_ms": p99,
            "lost": 0,
            "cpu_ms_per_msg_by_role": {"gateway": 1.0, "worker": worker},
        }

    # one bad run of three does not decide: the medians do
    held = summarize(500.0, [run(499, 20, 2.0), run(300, 900, 4.0), run(498, 30, 3.0)])
    assert held["sustained"]
    assert held["summary"]["achieved_msg_per_s"] == {"median": 498, "runs": [499, 300, 498]}
    assert held["summary"]["ack_p99_ms"]["median"] == 30
    assert held["summary"]["cpu_ms_per_msg_by_role"]["worker"]["median"] == 3.0
    assert held["summary"]["delivery_p99_ms"] == {"median": None, "runs": [None, None, None]}
    missed = summarize(1000.0, [run(800, 20, 2.0)])
    assert not missed["sustained"]
    assert highest_sustained([held, missed]) == 500.0
    assert highest_sustained([missed]) is None


def test_the_community_is_guilds_of_group_members_with_one_channel_each():
    users, guilds, channels, members = ingest_bench.spec(10, 4).plan()
    assert len(users) == 10 and len(guilds) == 3 and len(channels) == 3
    sizes = [sum(1 for g, _ in members if g == guild.id) for guild in guilds]
    assert sizes == [4, 4, 2]
    assert [c.guild_id for c in channels] == [g.id for g in guilds]


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--rate", "abc"], "--rate: 'abc' is not a number"),
        (["--group", "0"], "--group must be between 1 and --clients"),
        (["--clients", "8", "--group", "4", "--duration", "0"], "--duration must be positive"),
        (["--peer", "centrifugo"], "--peer centrifugo is not measured here"),
    ],
)
def test_bad_input_is_one_line(argv, says, clean_env: Path, capsys: pytest.CaptureFixture[str]):
    assert cli.main(["bench", "ingest", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err, err


@pytest.mark.slow  # one topology start and stop (~4-8 s here) and 1.5 s of load
async def test_a_tiny_run_acks_and_delivers_every_message():
    said: list[str] = []
    result = await ingest_bench.ingest(
        rates=[20.0], clients=8, group=4, duration=1.0, warmup=0.5, say=said.append
    )
    assert len(said) == 1 and "rate 20 msg/s" in said[0]
    assert result["guilds"] == 2 and result["repeat"] == 1
    [per_rate] = result["rates"]
    assert per_rate["rate"] == 20.0 and isinstance(per_rate["sustained"], bool)
    [run] = per_rate["runs"]
    assert run["sent"] == 30 and run["timed_messages"] == 20  # 1.5 s at 20 msg/s, 0.5 warm-up
    assert run["acked"] == run["sent"]
    assert (run["unacked"], run["lost"], run["duplicated"], run["refused"]) == (0, 0, 0, 0)
    assert run["unsent"] == 0 and run["connections_closed"] == 0 and run["refused_by_code"] == {}
    for key in ("achieved_msg_per_s", "ack_p50_ms", "ack_p99_ms", "delivery_p99_ms"):
        assert isinstance(run[key], float) and run[key] > 0, key
    assert {"gateway", "worker", "presence", "valkey"} <= set(run["cpu_ms_per_msg_by_role"])
    assert run["cpu_ms_per_msg"] >= 0
    # every message is at least one XADD to the ingest stream
    assert run["valkey_commands_per_msg"] >= 1 and run["valkey_commands"]["xadd"] >= 1
    assert set(ingest_bench.SUMMARY_KEYS) <= set(per_rate["summary"])
    text = ingest_bench.render(result)
    assert "20 msg/s:" in text and ("highest sustained rate" in text or "no rate" in text)


@pytest.mark.slow  # the floor's start and stop (~1 s) and 1.5 s of load, with no topology
async def test_the_floor_peer_delivers_each_message_to_its_channel_only(tmp_path: Path):
    """``--peer floor``: the bare server in grouped mode under the same load, summarised the
    same way; a copy to anyone outside the sender's channel would count as a duplicate."""
    run = await ingest_bench.run_floor_once(
        tmp_path, rate=20.0, clients=8, group=4, duration=1.0, warmup=0.5
    )
    assert run["sent"] == 30 and run["acked"] == 30
    assert (run["unacked"], run["lost"], run["duplicated"], run["refused"]) == (0, 0, 0, 0)
    assert set(run["cpu_ms_per_msg_by_role"]) == {"floor"}
    assert run["valkey_commands_per_msg"] is None and run["valkey_commands"] == {}
    assert isinstance(run["delivery_p99_ms"], float)


def test_the_floor_ratio_is_rendered():
    def rate(cpu: float) -> dict:
        runs = [{"cpu_ms_per_msg": cpu, "achieved_msg_per_s": 100.0, "ack_p99_ms": 5.0}]
        return {**ingest_bench.summarize(100.0, runs), "runs": runs}

    result = {
        "clients": 8, "group": 4, "guilds": 2, "duration_s": 1.0, "warmup_s": 0.5, "repeat": 1,
        "rates": [rate(1.0)], "highest_sustained_msg_per_s": 100.0,
        "peers": {"floor": {"rates": [rate(0.25)], "highest_sustained_msg_per_s": 100.0,
                            "cpu_ratio": {"100.0": 4.0}}},
    }  # fmt: skip
    text = ingest_bench.render(result)
    assert "chatscale 100 msg/s: sustained" in text and "floor 100 msg/s: sustained" in text
    assert "chatscale / floor at 100.0 msg/s: 4.00x server CPU per message" in text
