"""The load generator's measurement core finds each fault when one is injected on purpose.

Every test builds a tiny run by hand, breaks exactly one thing, and checks that exactly that
count moves — so a clean load-test report means something.
"""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadtest.accounting import DeliveryLedger, StoredCheck, content_key
from loadtest.latency import LatencyRecorder, TimeSeries

MEMBERS = frozenset({"alice", "bob", "carol"})
CHANNEL = 7


def sent_ledger(count: int = 3, sender: str = "alice", start: int = 0) -> DeliveryLedger:
    """`count` messages from one sender to MEMBERS, one per second, keys (CHANNEL, 100 + i)."""
    ledger = DeliveryLedger()
    for i in range(start, start + count):
        ledger.record_send(
            (CHANNEL, 100 + i), channel_id=CHANNEL, sender=sender, sent_at=i, recipients=MEMBERS
        )
    return ledger


def deliver_all(ledger: DeliveryLedger, keys, clients=MEMBERS, at: float = 50.0) -> None:
    for client in sorted(clients):
        for n, key in enumerate(keys):
            ledger.record_receipt(client, key, at + n / 100)


KEYS = [(CHANNEL, 100), (CHANNEL, 101), (CHANNEL, 102)]


def faults(report) -> dict[str, int]:
    names = ("lost", "duplicated", "unexpected", "reordered", "unknown")
    return {name: getattr(report, name) for name in names}


NO_FAULTS = dict.fromkeys(("lost", "duplicated", "unexpected", "reordered", "unknown"), 0)


# --- accounting -------------------------------------------------------------------------------


def test_perfect_run_is_clean():
    ledger = sent_ledger()
    deliver_all(ledger, KEYS)
    report = ledger.report(grace_deadline=10)
    assert faults(report) == NO_FAULTS and report.clean
    assert (report.sent, report.expected, report.delivered, report.receipts) == (3, 9, 9, 9)


def test_dropped_receipt_is_lost():
    ledger = sent_ledger()
    deliver_all(ledger, KEYS, clients={"alice", "carol"})
    deliver_all(ledger, KEYS[:2], clients={"bob"})
    report = ledger.report(grace_deadline=10)
    assert faults(report) == {**NO_FAULTS, "lost": 1}
    assert report.delivered == 8
    assert report.examples["lost"] == [{"client": "bob", "key": (CHANNEL, 102), "sent_at": 2.0}]


def test_double_delivery_is_duplicated_not_extra_delivery():
    ledger = sent_ledger()
    deliver_all(ledger, KEYS)
    ledger.record_receipt("carol", (CHANNEL, 101), 60.0)
    report = ledger.report(grace_deadline=10)
    assert faults(report) == {**NO_FAULTS, "duplicated": 1}
    assert report.delivered == 9 and report.receipts == 10
    assert report.examples["duplicated"] == [{"client": "carol", "key": (CHANNEL, 101)}]


def test_swapped_receipts_from_one_sender_are_reordered():
    ledger = sent_ledger()
    deliver_all(ledger, KEYS, clients={"alice", "carol"})
    deliver_all(ledger, [KEYS[1], KEYS[0], KEYS[2]], clients={"bob"})
    report = ledger.report(grace_deadline=10)
    assert faults(report) == {**NO_FAULTS, "reordered": 1}
    assert report.examples["reordered"] == [
        {"client": "bob", "key": (CHANNEL, 100), "seq": 0, "after_seq": 1}
    ]


def test_swapped_receipts_from_different_senders_are_not_reordered():
    ledger = sent_ledger(count=1, sender="alice")
    ledger.merge(sent_ledger(count=1, sender="bob", start=1))
    deliver_all(ledger, [KEYS[1], KEYS[0]])  # bob's later message first, everywhere
    assert faults(ledger.report(grace_deadline=10)) == NO_FAULTS


def test_one_late_message_counts_every_receipt_it_trails():
    ledger = sent_ledger(count=4)
    keys = [(CHANNEL, 103), (CHANNEL, 100), (CHANNEL, 101), (CHANNEL, 102)]
    deliver_all(ledger, keys, clients={"bob"})
    deliver_all(ledger, sorted(keys), clients={"alice", "carol"})
    assert ledger.report(grace_deadline=10).reordered == 3


def test_receipt_by_non_member_is_unexpected():
    ledger = sent_ledger()
    deliver_all(ledger, KEYS)
    ledger.record_receipt("mallory", (CHANNEL, 100), 55.0)
    report = ledger.report(grace_deadline=10)
    assert faults(report) == {**NO_FAULTS, "unexpected": 1}
    assert report.examples["unexpected"] == [
        {"client": "mallory", "key": (CHANNEL, 100), "channel_id": CHANNEL}
    ]


def test_receipt_of_never_sent_message_is_unknown():
    ledger = sent_ledger()
    deliver_all(ledger, KEYS)
    ledger.record_receipt("bob", "nonce-from-nowhere", 55.0)
    assert faults(ledger.report(grace_deadline=10)) == {**NO_FAULTS, "unknown": 1}


def test_messages_sent_after_grace_deadline_are_in_flight_not_lost():
    ledger = sent_ledger(count=5)  # sent at t = 0..4
    deliver_all(ledger, KEYS)  # t = 0..2 delivered
    ledger.record_receipt("bob", (CHANNEL, 104), 60.0)  # one in-flight message partly arrived
    report = ledger.report(grace_deadline=2.5)
    assert faults(report) == NO_FAULTS
    assert (report.sent, report.expected, report.delivered) == (3, 9, 9)
    in_flight = (report.in_flight_sent, report.in_flight_expected, report.in_flight_delivered)
    assert in_flight == (2, 6, 1)
    assert ledger.report(grace_deadline=4).lost == 5  # judged once the deadline covers them


def test_every_receipt_is_counted_exactly_once():
    ledger = sent_ledger(count=4)
    deliver_all(ledger, KEYS)
    for client, key in [("bob", KEYS[0]), ("eve", KEYS[1]), ("bob", "ghost"), ("bob", (7, 103))]:
        ledger.record_receipt(client, key, 70.0)
    r = ledger.report(grace_deadline=2)
    counts = (r.delivered, r.in_flight_delivered, r.duplicated, r.unexpected, r.unknown)
    assert counts == (9, 1, 1, 1, 1)
    assert r.receipts == 13 == r.delivered + r.in_flight_delivered + 3


def test_examples_are_capped():
    ledger = sent_ledger(count=20)
    report = ledger.report(grace_deadline=100, max_examples=4)
    assert report.lost == 60 and len(report.examples["lost"]) == 4
    assert [e["key"] for e in report.examples["lost"]] == [(CHANNEL, 100)] * 3 + [(CHANNEL, 101)]


def test_membership_function_supplies_recipients():
    ledger = DeliveryLedger(membership=lambda channel: {"x", "y"} if channel == 1 else set())
    ledger.record_send("n1", channel_id=1, sender="x", sent_at=0)
    ledger.record_send("n2", channel_id=2, sender="x", sent_at=0)
    ledger.record_receipt("x", "n1", 1)
    report = ledger.report(grace_deadline=5)
    assert (report.expected, report.delivered, report.lost) == (2, 1, 1)


def test_misuse_is_refused():
    ledger = sent_ledger(count=1)
    with pytest.raises(ValueError, match="sent twice"):
        ledger.record_send(KEYS[0], channel_id=CHANNEL, sender="a", sent_at=0, recipients=[])
    with pytest.raises(TypeError, match="membership"):
        ledger.record_send("n", channel_id=CHANNEL, sender="a", sent_at=0)
    with pytest.raises(TypeError, match="message key"):
        ledger.record_receipt("bob", 12345, 0)
    with pytest.raises(ValueError, match="format"):
        DeliveryLedger.from_dict({"format": 99})


def test_merge_equals_one_ledger():
    whole = sent_ledger(count=2, sender="alice")
    whole.merge(sent_ledger(count=2, sender="bob", start=2))
    receipts = [("alice", KEYS[0], 5.0), ("bob", (CHANNEL, 103), 5.1), ("bob", KEYS[0], 5.2)]
    receipts += [("carol", KEYS[1], 5.3), ("carol", KEYS[0], 5.4), ("eve", KEYS[2], 5.5)]
    receipts += [("bob", KEYS[0], 5.6)]
    for receipt in receipts:
        whole.record_receipt(*receipt)

    one, two = sent_ledger(count=2, sender="alice"), sent_ledger(count=2, sender="bob", start=2)
    for receipt in receipts[:4]:
        one.record_receipt(*receipt)
    for receipt in receipts[4:]:
        two.record_receipt(*receipt)
    one.merge(two)

    expected = whole.report(grace_deadline=10)
    assert one.report(grace_deadline=10) == expected
    assert faults(expected) == {
        "lost": 7,
        "duplicated": 1,
        "unexpected": 1,
        "reordered": 1,
        "unknown": 0,
    }


def test_merge_refuses_split_sender_and_changes_nothing():
    ledger = sent_ledger(count=2)
    ledger.record_receipt("bob", KEYS[0], 9.0)
    before = ledger.to_dict()
    with pytest.raises(ValueError, match="reuses order"):
        ledger.merge(sent_ledger(count=1, start=5))  # same sender again from seq 0
    with pytest.raises(ValueError, match="sent in both"):
        ledger.merge(sent_ledger(count=1))
    assert ledger.to_dict() == before


def test_dict_round_trip_through_json():
    ledger = sent_ledger(count=3)
    ledger.record_send("nonce-9", channel_id="dm:1", sender=42, sent_at=3.5, recipients=[42, "bob"])
    deliver_all(ledger, [KEYS[1], KEYS[0], "nonce-9"])
    ledger.record_receipt("bob", "nonce-9", 99.0)
    data = json.loads(json.dumps(ledger.to_dict()))
    copy = DeliveryLedger.from_dict(data)
    assert copy.to_dict() == data
    assert copy.report(grace_deadline=3) == ledger.report(grace_deadline=3)
    assert (
        copy.record_send("more", channel_id=CHANNEL, sender="alice", sent_at=9, recipients=[]) == 3
    )


@settings(max_examples=50, deadline=None)
@given(
    st.permutations(range(12)),
    st.lists(st.booleans(), min_size=12, max_size=12),
)
def test_any_split_merges_to_the_same_report(order, goes_left):
    """Receipts for one client split arbitrarily between two processes: same verdict."""
    senders = ["alice", "bob", "carol"]
    whole, left, right = DeliveryLedger(), DeliveryLedger(), DeliveryLedger()
    for i in range(12):
        kwargs = dict(channel_id=CHANNEL, sender=senders[i % 3], sent_at=i, recipients=MEMBERS)
        key = f"n{i}"
        whole.record_send(key, **kwargs)
        (left if i % 3 == 0 else right).record_send(key, **kwargs)
    for position, i in enumerate(order):
        if position % 5 == 4:
            continue  # drop some
        whole.record_receipt("bob", f"n{i}", position)
        (left if goes_left[position] else right).record_receipt("bob", f"n{i}", position)
    left.merge(right)
    assert left.report(grace_deadline=20) == whole.report(grace_deadline=20)


# --- stored messages ------------------------------------------------------------------------


def stored(message_id: int, content: object, channel_id: int = CHANNEL) -> str:
    return json.dumps({"id": str(message_id), "channel_id": str(channel_id), "content": content})


def test_the_key_is_the_first_word_of_the_content():
    assert content_key("3.17.k2f0a hello there") == "3.17.k2f0a"
    assert content_key("3.17.k2f0a") == "3.17.k2f0a"
    assert content_key("") is None and content_key(None) is None and content_key(7) is None


def test_every_acknowledged_message_stored_once_is_clean():
    check = StoredCheck({(CHANNEL, 100): "a.0.x", (CHANNEL, 101): "a.1.x"})
    for mid, key in ((100, "a.0.x"), (101, "a.1.x"), (99, "someone else")):
        check.see(CHANNEL, mid, stored(mid, f"{key} hi"))
    report = check.report()
    assert (report["acknowledged"], report["missing_from_history"], report["stored_twice"]) == (
        2,
        0,
        0,
    )


def test_a_key_stored_under_two_ids_is_stored_twice():
    """Stored messages carry no nonce: a send that became two messages is found by the key in
    its content, the acknowledged id and a second one."""
    check = StoredCheck({(CHANNEL, 100): "a.0.x", (CHANNEL, 101): "a.1.x"}, also=["a.2.x"])
    rows = [(100, "a.0.x hi"), (101, "a.1.x yo"), (105, "a.0.x hi"), (106, "a.2.x"), (107, "a.2.x")]
    for mid, content in rows:
        check.see(CHANNEL, mid, stored(mid, content))
    check.see(CHANNEL, 108, "not json")  # ignored, not a crash
    report = check.report()
    assert report["missing_from_history"] == 0
    assert report["stored_twice"] == 2  # the acknowledged a.0 and the never-acknowledged a.2
    assert report["stored_twice_examples"] == [
        {"key": "a.0.x", "stored_as": [[CHANNEL, 100], [CHANNEL, 105]]},
        {"key": "a.2.x", "stored_as": [[CHANNEL, 106], [CHANNEL, 107]]},
    ]


def test_an_acknowledged_message_not_in_history_is_missing():
    check = StoredCheck({(CHANNEL, 100): "a.0.x", (CHANNEL, 101): "a.1.x"})
    check.see(CHANNEL, 100, stored(100, "a.0.x hi"))
    check.see(CHANNEL, 102, stored(102, "a.1.x hi"))  # its content, but not the acked id
    report = check.report()
    assert report["missing_from_history"] == 1
    assert report["missing_examples"] == [{"channel_id": CHANNEL, "id": 101, "key": "a.1.x"}]
    assert report["stored_twice"] == 0


# --- latency ----------------------------------------------------------------------------------


def close(actual: float, expected: float) -> bool:
    return actual == pytest.approx(expected, rel=2e-3)  # hdr 3 significant figures: 0.1%


def test_known_inputs_give_known_percentiles():
    recorder = LatencyRecorder()
    for ms in range(1, 1001):
        recorder.record(ms / 1000)
    s = recorder.summary()
    assert s["count"] == s["measured"] == 1000
    for key, want in [("p50_ms", 500), ("p90_ms", 900), ("p99_ms", 990), ("p999_ms", 999)]:
        assert close(s[key], want), (key, s[key])
    assert close(s["max_ms"], 1000) and close(s["mean_ms"], 500.5)
    assert close(recorder.percentile_ms(25), 250)


def test_empty_recorder_reports_zeros():
    s = LatencyRecorder().summary()
    assert s["count"] == 0 and s["p99_ms"] == 0.0 and s["max_ms"] == 0.0 and s["mean_ms"] == 0.0


def test_coordinated_omission_backfills_a_stall():
    recorder = LatencyRecorder()
    for _ in range(100):
        recorder.record(0.002, expected_interval=0.010)  # under the interval: no back-fill
    recorder.record(1.0, expected_interval=0.010)  # one 1 s stall
    assert recorder.measured == 101
    assert recorder.synthetic == 99 and recorder.count == 200
    assert close(recorder.percentile_ms(75), 500)  # the stall now weighs like real users saw it

    uncorrected = LatencyRecorder()
    uncorrected.record(1.0)
    assert uncorrected.count == 1 and uncorrected.synthetic == 0
    with pytest.raises(ValueError, match="expected_interval"):
        uncorrected.record(1.0, expected_interval=0)


def test_out_of_range_samples_are_kept_and_counted():
    recorder = LatencyRecorder(max_latency_s=10)
    recorder.record(-0.003)
    recorder.record(50.0)
    assert (recorder.count, recorder.negative, recorder.clamped) == (2, 1, 1)
    assert close(recorder.max_ms(), 10_000)


def test_merged_recorders_equal_one_recorder():
    whole, a, b = LatencyRecorder(), LatencyRecorder(), LatencyRecorder()
    for ms in range(1, 2001):
        whole.record(ms / 1000, expected_interval=0.5)
        (a if ms % 3 else b).record(ms / 1000, expected_interval=0.5)
    a.merge(b)
    assert a.summary() == whole.summary()


def test_recorder_round_trips_through_json_and_keeps_recording():
    recorder = LatencyRecorder()
    for ms in (3, 5, 8, 13, 21):
        recorder.record(ms / 1000)
    recorder.record(-1)
    copy = LatencyRecorder.from_dict(json.loads(json.dumps(recorder.to_dict())))
    assert copy.summary() == recorder.summary()
    copy.record(0.034)
    copy.merge(recorder)
    assert copy.count == 13 and close(copy.max_ms(), 34)


def test_time_series_buckets_by_second():
    series = TimeSeries(start=100.0)
    for at in (100.2, 100.9, 101.0, 103.5):
        series.record_send(at)
    series.record_delivery(sent_at=100.5, received_at=102.1)  # 1.6 s, sent in second 0
    series.record_delivery(sent_at=100.9, received_at=100.91)  # 10 ms
    rows = series.rows()
    assert [r["t"] for r in rows] == [0.0, 1.0, 2.0, 3.0]
    assert [r["sends"] for r in rows] == [2, 1, 0, 1]
    assert [r["deliveries"] for r in rows] == [1, 0, 1, 0]
    assert [r["latency_samples"] for r in rows] == [2, 0, 0, 0]
    assert rows[0]["p50_ms"] == pytest.approx(10, rel=0.02)
    assert rows[0]["p99_ms"] == pytest.approx(1600, rel=0.02)
    assert rows[1]["p50_ms"] is None and rows[3]["p99_ms"] is None
    assert TimeSeries(start=0).rows() == []


def test_time_series_merge_and_round_trip():
    a, b, whole = (TimeSeries(start=0.0, bucket_s=0.5) for _ in range(3))
    events = [(0.1, 0.3), (0.2, 0.9), (1.4, 1.45), (1.6, 2.0), (-0.2, 0.1)]
    for n, (sent, received) in enumerate(events):
        for series in (whole, a if n % 2 else b):
            series.record_send(sent)
            series.record_delivery(sent, received)
    a.merge(b)
    assert a.rows() == whole.rows()
    assert whole.rows()[0]["t"] == -0.5  # a send before start is not folded into bucket 0
    copy = TimeSeries.from_dict(json.loads(json.dumps(a.to_dict())))
    assert copy.rows() == whole.rows()
    copy.merge(b)
    assert sum(r["deliveries"] for r in copy.rows()) == len(events) + 3
    with pytest.raises(ValueError, match="differ"):
        a.merge(TimeSeries(start=1.0, bucket_s=0.5))
