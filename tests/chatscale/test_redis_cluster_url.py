"""``redis+cluster://`` URLs: parsed into seed nodes and credentials, a bad one is one line."""

from __future__ import annotations

import pytest

from chatscale.config import Settings
from chatscale.redisconn import BadRedisURL, ClusterURL, connect, is_cluster, is_cluster_url


def test_a_cluster_url_names_its_seed_nodes_and_password():
    parsed = ClusterURL("redis+cluster://:s%40cret@10.0.0.1:7000,10.0.0.2:7001, [::1]:7002")
    assert parsed.nodes == [("10.0.0.1", 7000), ("10.0.0.2", 7001), ("::1", 7002)]
    assert parsed.password == "s@cret" and parsed.username is None
    assert is_cluster_url("redis+cluster://h:1") and not is_cluster_url("redis://h:1/0")


@pytest.mark.parametrize("url", ["redis+cluster://", "redis+cluster://host", "redis+cluster://h:x"])
def test_a_cluster_url_without_host_port_is_refused_by_name(url: str):
    with pytest.raises(BadRedisURL, match="host:port|names no node"):
        ClusterURL(url)


async def test_the_scheme_picks_the_client():
    cluster = connect(Settings(redis_url="redis+cluster://127.0.0.1:1,127.0.0.1:2"))
    single = connect(Settings(redis_url="redis://127.0.0.1:1/0"))
    try:
        assert is_cluster(cluster) and not is_cluster(single)
    finally:
        await cluster.aclose()
        await single.aclose()
