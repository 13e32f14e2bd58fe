"""IDENTIFY admission, degrade mode and client backoff as pure logic (an injected clock)."""

from __future__ import annotations

import pytest

from chatscale import backoff
from gateway.admission import Admission, Degrade


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_admission_runs_queues_then_refuses_with_retry_after():
    clock = Clock()
    adm = Admission(2, 1, clock=clock, initial_cost_s=1.0, min_retry_s=0.5)
    assert [adm.offer(n).kind for n in "abc"] == ["run", "run", "queue"]
    refused = adm.offer("d")
    assert refused.kind == "refuse"
    # three ahead (two running, one queued) over two slots at 1 s each
    assert refused.retry_after == pytest.approx(1.5)
    assert (adm.admitted, adm.queued, adm.refused) == (2, 1, 1)


def test_the_refused_get_appointments_spread_at_the_serving_pace():
    """Not one retry_after for the whole herd (it would come back as a second herd): each
    refused client gets the slot after the previous one, cost / concurrency apart."""
    clock = Clock()
    adm = Admission(2, 0, clock=clock, initial_cost_s=1.0, min_retry_s=0.0, max_retry_s=30.0)
    adm.offer("a"), adm.offer("b")  # both slots busy, no queue
    waits = [adm.offer(n).retry_after for n in "cdef"]
    assert waits == pytest.approx([1.0, 1.5, 2.0, 2.5])
    clock.now += 10.0  # appointments in the past do not push a new one later
    assert adm.offer("g").retry_after == pytest.approx(1.0)


def test_finish_hands_the_slot_to_the_oldest_waiter_in_order():
    clock = Clock()
    adm = Admission(1, 3, clock=clock)
    assert adm.offer("a").kind == "run"
    for t in "bcd":
        assert adm.offer(t).kind == "queue"
    assert adm.withdraw("c")  # its connection closed while it waited
    assert not adm.withdraw("c")
    assert adm.finish(clock()) == "b"
    assert adm.running == 1  # the slot passed on, not freed
    assert adm.finish(clock()) == "d"
    assert adm.finish(clock()) is None
    assert adm.running == 0
    assert adm.offer("e").kind == "run"


def test_a_newcomer_never_overtakes_the_queue():
    adm = Admission(1, 2, clock=Clock())
    adm.offer("a")
    adm.offer("b")
    adm.finish(0.0)  # "b" now runs
    assert adm.offer("c").kind == "queue"  # a slot looks busy: "b" holds it


def test_retry_after_follows_the_measured_identify_cost():
    clock = Clock()
    adm = Admission(1, 0, clock=clock, initial_cost_s=0.1, min_retry_s=0.0, max_retry_s=5.0)
    for _ in range(30):  # IDENTIFYs that took 2 s each
        adm.offer("x")
        started = clock()
        clock.now += 2.0
        adm.finish(started)
    adm.offer("busy")
    assert adm.offer("y").retry_after == pytest.approx(2.0, rel=0.01)
    adm.cost_s = 100.0
    assert adm.retry_after() == 5.0  # capped


def test_degrade_enters_on_lag_and_leaves_after_calm_hold():
    clock = Clock()
    d = Degrade(lag_s=0.25, age_s=2.0, hold_s=2.0, clock=clock)
    d.observe_lag(0.1)
    assert not d.active and not d.sheds("PRESENCE_UPDATE")
    d.observe_lag(0.3)
    assert d.active and d.episodes == 1
    assert d.sheds("PRESENCE_UPDATE", 10) and d.sheds("TYPING_START")
    assert not d.sheds("MESSAGE_CREATE", 10)  # never messages
    assert d.shed == {"PRESENCE_UPDATE": 10, "TYPING_START": 1}
    d.observe_lag(0.2)  # under the threshold but over half: not calm
    clock.now += 5
    d.observe_lag(0.2)
    assert d.active
    d.observe_lag(0.05)  # calm from now
    clock.now += 1.9
    d.observe_lag(0.05)
    assert d.active
    clock.now += 0.2
    d.observe_lag(0.05)
    assert not d.active


def test_degrade_on_delivery_age_and_triggers_that_are_off():
    clock = Clock()
    d = Degrade(lag_s=0.0, age_s=2.0, hold_s=0.0, clock=clock)
    d.observe_lag(100.0)  # lag trigger off
    assert not d.active
    d.observe_age(3.0)
    assert d.active
    off = Degrade(lag_s=0.25, age_s=2.0, hold_s=0.0, clock=clock, enabled=False)
    off.observe_lag(9.0)
    assert not off.active and not off.sheds("TYPING_START")


def test_backoff_doubles_caps_and_honours_retry_after():
    assert [backoff.delay(n, jitter=False) for n in (1, 2, 3, 6, 9)] == [0.25, 0.5, 1.0, 5.0, 5.0]
    assert backoff.delay(3, 2.5, jitter=False) == 2.5
    lo, hi = backoff.delay(3, jitter=True, rand=lambda: 0.0), backoff.delay(3, rand=lambda: 1.0)
    assert (lo, hi) == (0.5, 1.5)
    # retry_after is a floor: jitter only ever adds to it
    assert backoff.delay(1, 2.0, rand=lambda: 0.0) == 2.0
    assert backoff.delay(1, 2.0, rand=lambda: 1.0) == 3.0


def test_a_slot_passed_on_for_a_gone_ticket_records_no_duration():
    clock = Clock()
    adm = Admission(1, 2, clock=clock, initial_cost_s=0.5)
    adm.offer("a")
    adm.offer("gone")
    adm.offer("b")
    clock.now += 3.0
    assert adm.finish(clock() - 3.0) == "gone"  # "a" took 3 s
    cost = adm.cost_s
    assert adm.finish(None) == "b"  # "gone" left without working: no 0 s sample
    assert adm.cost_s == cost and adm.running == 1


def test_an_identify_that_failed_is_no_sample_of_the_cost():
    clock = Clock()
    adm = Admission(1, 2, clock=clock, initial_cost_s=0.2)
    adm.offer("a")
    adm.offer("b")
    clock.now += 5.0  # "a" timed out on Redis after 5 s: refused 4017, not served
    assert adm.finish(clock() - 5.0, served=False) == "b"
    assert adm.cost_s == 0.2
    clock.now += 0.4  # "b" reached READY in 0.4 s
    adm.finish(clock() - 0.4)
    assert adm.cost_s == pytest.approx(0.8 * 0.2 + 0.2 * 0.4)


def test_a_wait_longer_than_the_budget_is_refused_at_once_not_queued():
    # refused at once only past HOPELESS (2x) the bound: the queue's own wait enforces the bound
    adm = Admission(2, 100, clock=Clock(), initial_cost_s=4.0, max_wait_s=5.0)
    assert [adm.offer(n).kind for n in "ab"] == ["run", "run"]
    assert [adm.offer(n).kind for n in "cd"] == ["queue", "queue"]  # waits of 4 s and 6 s
    assert adm.offer("e").kind == "queue"  # 4 ahead over 2 slots at 4 s: 8 s
    assert adm.offer("f").kind == "queue"  # 5 ahead: 10 s, just within 2 x 5 s

    late = adm.offer("g")
    assert late.kind == "refuse" and late.retry_after == 12.0
