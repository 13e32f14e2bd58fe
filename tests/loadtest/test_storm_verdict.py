"""A storm is judged by what viewers saw: failed attempts, server closes and slow READY make it
NOT CLEAN; refusals with retry_after that were retried do not."""

from __future__ import annotations

from typing import Any

from loadtest.engine import storm_verdict


def report(scenario: str = "connect-storm", **conn: Any) -> dict[str, Any]:
    c = {
        "clients": 100,
        "ready": 100,
        "attempts_failed": {},
        "refused_retried": {"closed 4017 too many IDENTIFYs": 40},
        "dropped_by_server": 0,
        "close_codes": {},
        "ready_latency_ms": {"p99_ms": 4000.0},
    }
    c.update(conn)
    return {"scenario": scenario, "connections": c, "ready_bound_s": 10.0}


def test_refusals_that_were_retried_keep_a_storm_clean():
    assert storm_verdict(report()) == []


def test_failed_attempts_server_closes_and_slow_ready_are_named():
    notes = storm_verdict(
        report(
            attempts_failed={"closed 4000 metadata store unavailable": 7},
            dropped_by_server=3,
            close_codes={"4000 this gateway missed deliveries": 3},
            ready_latency_ms={"p99_ms": 26_600.0},
            ready=98,
        )
    )
    assert any("7 connection attempt(s) failed" in n for n in notes)
    assert any("3 READY session(s) closed" in n for n in notes)
    assert any("READY p99 26.6 s exceeds the bound of 10 s" in n for n in notes)
    assert any("2 of 100 clients never reached READY" in n for n in notes)


def test_other_scenarios_are_not_judged_as_storms():
    for other in ("steady", "celebrity"):
        assert storm_verdict(report(other, attempts_failed={"timeout": 1})) == []
