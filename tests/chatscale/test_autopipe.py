"""AutoPipeline against a real Valkey (and the cluster): one pipeline per loop turn, and each
caller gets exactly what it would have got awaiting its command alone."""

from __future__ import annotations

import asyncio
import socket
import uuid

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from chatscale.autopipe import MAX_BATCH, AutoPipeline
from chatscale.config import Settings
from chatscale.redisconn import connect
from tests.conftest import on_redis_cluster_too


@pytest.fixture
async def redis(redis_url: str):
    client = connect(Settings(redis_url=redis_url))
    yield client
    await client.aclose()


@on_redis_cluster_too
async def test_commands_of_one_turn_go_as_one_pipeline_with_their_own_replies(redis) -> None:
    auto = AutoPipeline(redis)
    k = f"ap-{uuid.uuid4().hex}"
    await redis.rpush(f"{{{k}}}:list", "x")  # a key of the wrong type for INCR
    replies = await asyncio.gather(
        *(auto.execute("INCR", f"{{{k}}}:n{i % 3}") for i in range(9)),
        auto.execute("SET", f"{{{k}}}:s", "v", "NX", "GET", get=True),
        auto.execute("SET", f"{{{k}}}:s", "w", "NX", "GET", get=True),
        auto.execute("XADD", f"{{{k}}}:stream", "*", "e", b"1"),
        auto.execute("INCR", f"{{{k}}}:list"),
        return_exceptions=True,
    )
    assert replies[:9] == [1, 1, 1, 2, 2, 2, 3, 3, 3]  # call order within the turn
    assert replies[9] is None and replies[10] == b"v"  # SET ... GET: the old value, parsed
    assert isinstance(replies[11], bytes) and b"-" in replies[11]  # an entry id
    assert isinstance(replies[12], ResponseError)  # only that caller sees its error
    assert (auto.pipelines, auto.commands) == (1, 13)


async def test_a_large_turn_is_split_and_later_turns_get_their_own_pipeline(redis) -> None:
    auto = AutoPipeline(redis)
    k = f"ap-{uuid.uuid4().hex}"
    got = await asyncio.gather(*(auto.execute("INCR", k) for _ in range(MAX_BATCH + 5)))
    assert sorted(got) == list(range(1, MAX_BATCH + 6))
    assert auto.pipelines == 2
    assert await auto.execute("GET", k) == str(MAX_BATCH + 5).encode()
    assert auto.pipelines == 3


async def test_disabled_it_sends_each_command_alone(redis) -> None:
    auto = AutoPipeline(redis, enabled=False)
    k = f"ap-{uuid.uuid4().hex}"
    got = await asyncio.gather(auto.execute("INCR", k), auto.execute("INCR", k))
    assert sorted(got) == [1, 2]  # two connections: either may come first
    assert auto.pipelines == 0


async def test_a_connection_failure_fails_every_command_of_the_pipeline() -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = connect(Settings(redis_url=f"redis://127.0.0.1:{port}/0", redis_retries=0))
    auto = AutoPipeline(client)
    try:
        replies = await asyncio.gather(
            auto.execute("INCR", "a"), auto.execute("GET", "b"), return_exceptions=True
        )
        assert all(isinstance(r, (RedisConnectionError, OSError)) for r in replies), replies
    finally:
        await auto.aclose()
        await client.aclose()
