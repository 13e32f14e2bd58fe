"""The lab's framework: verdicts and phrasing (pure), the table, the pages (offline), the
command line, and a conclusion that follows the numbers when the outcome is forced to invert
(a real tiny run of the slowmode experiment with its arms' settings swapped)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from chatscale import cli
from lab import page, runner
from lab.experiment import HOPS, Arm, Experiment, Measurement, Metric, Outcome, fmt
from lab.experiments import all_experiments, by_name
from lab.tables import table


async def _never(trial) -> Measurement:  # noqa: ANN001
    raise AssertionError("not run")


def _exp(better: str = "lower") -> Experiment:
    return Experiment(
        name="toy",
        title="Toy",
        claim="A beats B.",
        claim_ids=(1,),
        hop="gateway",
        arms=(Arm("a", "arm a"), Arm("b", "arm b")),
        metrics=(Metric("x", "x", "ms", better=better),),  # type: ignore[arg-type]
        sizes={"tiny": {}, "quick": {}, "full": {}},
        quick_seconds=1,
        measure=_never,
        conclude=lambda o: "",
    )


def test_verdict_follows_the_direction_of_the_metric() -> None:
    o = Outcome(_exp("lower"), {"a": [{"x": 1.0}, {"x": 3.0}, {"x": 2.0}], "b": [{"x": 10.0}]})
    assert o.median("a", "x") == 2.0
    assert o.verdict("x", "a", "b") == "holds"
    assert o.verdict("x", "b", "a") == "reversed"
    assert o.spread("a", "x") == {"min": 1.0, "max": 3.0, "relative": 0.5}
    hi = Outcome(_exp("higher"), o.runs)
    assert hi.verdict("x", "a", "b") == "reversed"
    close = Outcome(_exp(), {"a": [{"x": 1.0}], "b": [{"x": 1.05}]})
    assert close.verdict("x", "a", "b") == "tie"
    assert Outcome(_exp(), {"a": [], "b": [{"x": 1.0}]}).verdict("x", "a", "b") == "missing"
    zero = Outcome(_exp(), {"a": [{"x": 0.0}], "b": [{"x": 3.0}]})
    assert zero.verdict("x", "a", "b") == "holds"
    assert "(5× less)" in Outcome(_exp(), {"a": [{"x": 2.0}], "b": [{"x": 10.0}]}).compare(
        "x", "a", "b"
    )


def test_numbers_read_as_a_person_reads_them() -> None:
    assert fmt(1234.4, "ms") == "1,234 ms"
    assert fmt(0.01234, "s") == "0.0123 s"
    assert fmt(None) == "n/a"
    assert fmt(12.345, "count") == "12.3"


def test_every_registered_experiment_is_complete() -> None:
    exps = all_experiments()
    names = [e.name for e in exps]
    assert len(names) == len(set(names)), names
    for e in exps:
        assert e.hop in HOPS and e.claim and e.claim_ids and e.quick_seconds > 0, e.name
        assert re.fullmatch(r"[a-z][a-z0-9-]*", e.name), e.name


def _result(arms: list[dict]) -> dict:
    return {
        "experiment": "toy",
        "title": "Toy <b>",
        "claim": "A beats B.",
        "claim_ids": [1],
        "hop": "worker",
        "knob": "CHATSCALE_X",
        "size": "tiny",
        "repeat": 2,
        "metric_defs": [{"key": "x", "label": "x", "unit": "ms", "better": "lower"}],
        "arms": arms,
        "conclusion": "A was 5× lower.",
        "command": "chatscale lab run toy",
        "finished": "now",
    }


def _arm(name: str, runs: list[float], unavailable: str | None = None) -> dict:
    o = Outcome(_exp(), {name: [{"x": v} for v in runs]})
    return {
        "name": name,
        "about": f"arm {name}",
        "settings": {"CHATSCALE_X": name},
        "metrics": {"x": o.median(name, "x")},
        "spread": {"x": o.spread(name, "x")},
        "runs": [{"x": v} for v in runs],
        "series": [{"timeline": {"phone": [[0, 2], [1, 0]], "desktop": [[0, 2], [1, 2]]}}],
        "notes": [],
        "unavailable": unavailable,
    }


def test_table_has_a_ratio_column_and_names_an_arm_that_did_not_run() -> None:
    r = _result([_arm("a", [1.0, 3.0]), _arm("b", [10.0, 10.0]), _arm("c", [], "missing knob")])
    text = table(r)
    assert "b/a" in text and "5×" in text and "2 (1–3)" in text
    assert "c: not run — missing knob" in text


def test_pages_open_offline_and_highlight_the_hop(tmp_path: Path) -> None:
    r = _result([_arm("a", [1.0, 3.0]), _arm("b", [10.0])])
    html = page.experiment_page(r)
    assert "<script" not in html and "http://" not in html and "https://" not in html
    assert 'class="hop on" data-hop="worker"' in html
    assert html.count('class="hop on"') == 1
    assert "Toy &lt;b&gt;" in html  # escaped
    assert "a · phone" in html  # a series with several lines per arm
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "result.json").write_text(json.dumps(r))
    index, n = page.report_page(tmp_path)
    assert n == 1 and 'href="toy/index.html"' in index and "<script" not in index


def test_cli_lists_every_experiment_and_refuses_an_unknown_one(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert cli.main(["lab", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [e["name"] for e in listed] == [e.name for e in all_experiments()]
    assert {"name", "claim", "arms", "quick_seconds"} <= set(listed[0])
    assert cli.main(["lab", "run", "no-such-thing"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no experiment 'no-such-thing'") and err.count("\n") == 1
    assert cli.main(["lab", "report", str(tmp_path)]) == 2
    assert "no */result.json" in capsys.readouterr().err


async def test_the_conclusion_follows_the_numbers_when_the_outcome_inverts(
    tmp_path: Path,
) -> None:
    """One tiny real run of an experiment, then its conclusion written again from the same
    runs with the arms' numbers swapped (as if the arm called "on" had run without slowmode):
    the paragraph must change with the numbers, not with the arm names."""
    exp = by_name("slowmode")
    said: list[str] = []
    normal = await runner.run(exp, size="tiny", repeat=1, out=tmp_path / "n", say=said.append)
    assert all(a["metrics"]["flood_accepted_per_s"] is not None for a in normal["arms"]), normal
    assert normal["conclusion"].startswith("Slowmode sheds the flood"), normal["conclusion"]
    runs = {a["name"]: a["runs"] for a in normal["arms"]}
    inverted = exp.conclude(Outcome(exp, {"off": runs["on"], "on": runs["off"]}))
    assert inverted.startswith("Unexpectedly"), inverted
    stored = json.loads((tmp_path / "n" / "slowmode" / "result.json").read_text())
    assert stored["experiment"] == "slowmode" and stored["conclusion"] == normal["conclusion"]
    assert [a["name"] for a in stored["arms"]] == ["off", "on"]
    assert (tmp_path / "n" / "slowmode" / "index.html").exists()
    assert not (tmp_path / "n" / "slowmode" / "work").exists()  # scratch topology removed


def test_markdown_report_has_every_arm_and_the_conclusion() -> None:
    from lab.tables import markdown

    r = _result([_arm("a", [1.0, 3.0]), _arm("b", [10.0]), _arm("c", [], "missing knob")])
    text = markdown([r])
    assert "| metric | a | b | c | b/a | c/a |" in text
    assert "| x (ms) | 2 | 10.0 | not run | 5× | n/a |" in text
    assert "`c` not run: missing knob" in text and "A was 5× lower." in text
