"""Lazy guilds in the load test: each client's sidebar, and presence per arrival in the report."""

from __future__ import annotations

from collections import Counter

from loadtest.memberlist import SIDEBAR, watch_list
from loadtest.report import presence_per_arrival, presence_per_arrival_line


def test_every_member_has_the_same_number_of_watchers():
    online = list(range(0, 500, 3))  # cids of online members, not contiguous
    watched = Counter(c for k in range(len(online)) for c in watch_list(online, k))
    assert set(watched) == set(online) and set(watched.values()) == {SIDEBAR}
    assert all(online[k] not in watch_list(online, k) for k in range(len(online)))
    assert watch_list([4, 9], 0) == [9]  # never itself, even in a tiny crowd
    assert watch_list(online, 0, observer=True, observed=list(range(300))) == list(range(100))


def test_presence_per_arrival_divides_by_the_clients_that_reached_ready():
    report = {
        "connections": {"ready": 400},
        "presence": {"bytes_received": 100_000, "updates_received": 1_000},
    }
    per = presence_per_arrival(report)
    assert per == {"arrivals": 400, "bytes": 250.0, "frames": 2.5}
    assert "250 bytes in 2.50 updates" in presence_per_arrival_line(per)
    assert presence_per_arrival({**report, "connections": {"ready": 0}}) is None
