"""The Cassandra URL: contact points, replication and consistency, and its mistakes (no node)."""

from __future__ import annotations

import pytest
from cassandra import ConsistencyLevel, Unavailable, WriteTimeout, WriteType
from cassandra.cluster import NoHostAvailable

from storage import BadStorageURL, UnknownBackend
from storage.cassandra import _parse, unavailable_message


def test_single_node_url_is_unchanged_and_a_ring_lists_every_contact_point():
    one = _parse("cassandra://127.0.0.1:9042/chatscale")
    assert (one["host"], one["port"], one["contact_points"]) == (
        "127.0.0.1",
        9042,
        [("127.0.0.1", 9042)],
    )
    assert (one["rf"], one["messages"], one["metadata"]) == (
        1,
        ConsistencyLevel.ONE,
        ConsistencyLevel.QUORUM,
    )
    ring = _parse("cassandra://127.0.0.1:9042,127.0.0.2,[::1]:9043/ks?rf=3&metadata=all")
    assert ring["contact_points"] == [("127.0.0.1", 9042), ("127.0.0.2", 9042), ("::1", 9043)]
    assert (ring["keyspace"], ring["rf"], ring["metadata"]) == ("ks", 3, ConsistencyLevel.ALL)


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("cassandra://h/ks?replicas=3", "unknown Cassandra URL parameter(s) replicas"),
        ("cassandra://h/ks?messages=SOME", "unknown consistency messages='SOME'"),
        ("cassandra://h/ks?rf=three", "bad Cassandra URL parameter"),
        ("cassandra://h/ks?rf=0", "rf must be >= 1"),
        ("cassandra://h:99999/ks", "bad Cassandra contact point 'h:99999'"),
        ("cassandra://h1,,h2/ks", "bad Cassandra contact point ''"),
        ("cassandra://h/my-keyspace", "bad Cassandra keyspace name 'my-keyspace'"),
    ],
)
def test_url_mistakes_are_bad_storage_url_naming_the_mistake(url: str, words: str):
    with pytest.raises(BadStorageURL) as err:
        _parse(url)
    assert words in str(err.value)
    assert isinstance(err.value, UnknownBackend)  # the CLI's one-line errors include it


def test_a_refusal_says_how_many_replicas_were_needed_and_alive():
    refused = Unavailable(
        "x", consistency=ConsistencyLevel.QUORUM, required_replicas=2, alive_replicas=1
    )
    expected = (
        "cassandra refused the write to bans at QUORUM: 2 replica(s) needed, only 1 "
        "alive (nodes down?)"
    )
    assert unavailable_message(refused, "write to bans") == expected
    # the driver's retry policy tries the next host, then wraps the refusal
    assert unavailable_message(NoHostAvailable("x", {"h": refused}), "write to bans") == expected
    late = WriteTimeout(
        "x",
        consistency=ConsistencyLevel.QUORUM,
        required_responses=2,
        received_responses=1,
        write_type=WriteType.SIMPLE,
    )
    assert unavailable_message(late, "write to bans") == (
        "cassandra timed out on the write to bans at QUORUM: 1 of 2 replica(s) answered in time"
    )
