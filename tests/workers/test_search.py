"""Search end to end: workers feed the stored stream, the indexer indexes it, SEARCH answers
with what the requester may read *now* (a permission change or a ban applies to the very next
search), and an indexer SIGKILLed mid-batch resumes from its committed offset. Both on SQLite
FTS5 and on a real OpenSearch node (``opensearch://``, tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys

import pytest

from chatscale.client import GatewayError
from chatscale.closecodes import Close
from chatscale.keys import Keys
from chatscale.redisconn import connect
from chatscale.wire import StoredEntry
from guilds.controlplane import ControlPlane
from guilds.permissions import Permission as P
from storage.search_index import SearchIndex, match_expression, path_of
from tests.conftest import Stack
from workers.indexer import Indexer, feed

BACKENDS = ["sqlite", pytest.param("opensearch", marks=pytest.mark.slow)]


@pytest.fixture
def search_backend() -> str:
    """SQLite FTS5 unless a test is parametrized over BACKENDS (OpenSearch: a real node)."""
    return "sqlite"


@pytest.fixture
def settings(settings, search_backend, search_url_for):
    return settings.model_copy(update={"search_url": search_url_for(search_backend)})


async def guild_named(stack: Stack, name: str) -> int:
    [guild] = await stack.store.find_guilds(name)
    return guild.id


def contents(messages: list[dict]) -> list[str]:
    return [m["content"] for m in messages]


def test_user_text_cannot_inject_query_syntax():
    assert (
        match_expression('deploy OR "x" NEAR(a b) -c*') == '"deploy" "OR" "x" "NEAR" "a" "b" "c"*'
    )
    assert match_expression("  ?! ") is None


@pytest.mark.parametrize("search_backend", BACKENDS)
async def test_search_sees_only_what_the_requester_may_read_now(stack: Stack, plane: ControlPlane):
    alice = await stack.client("alice", gateway=0)
    carol = await stack.client("carol", gateway=1)
    # erin on carol's gateway: one snowflake generator, so her later message has the larger id
    # (ids from two gateways in the same millisecond order by node, not by time)
    erin = await stack.client("erin", gateway=1)
    bob = await stack.client("bob", gateway=1)
    dave = await stack.client("dave", gateway=0)
    general, mentors, papers = (stack.channels[c] for c in ("general", "mentors-only", "papers"))
    sent = [(await alice.send_message(general, f"deploy step {i}"))["id"] for i in range(5)]
    await carol.send_message(mentors, "deploy the secret plan")
    await erin.send_message(papers, "deployment papers")
    await stack.drain()
    index = await SearchIndex.open(stack.settings.search_url)
    indexer = Indexer(stack.settings, index=index, redis=stack.gateways[0].redis)
    try:
        assert await indexer.drain() == 7
    finally:
        await index.close()

    # bob: a member of interview-prep without the mentors role, not in ml-reading-group
    assert contents(await bob.search(content="deploy")) == [
        f"deploy step {i}" for i in range(4, -1, -1)
    ]
    assert contents(await carol.search(content="secret deploy")) == ["deploy the secret plan"]
    assert contents(await alice.search(content="deploy", limit=50))[0] == "deployment papers"
    # paged with before, an author filter, and a channel that is not readable
    pages, before = [], None
    while page := await bob.search(
        content="step", author_id=stack.users["alice"], limit=2, before=before
    ):
        pages += [m["id"] for m in page]
        before = page[-1]["id"]
    assert pages == sent[::-1]
    with pytest.raises(GatewayError, match="UNKNOWN_CHANNEL"):
        await bob.search(content="deploy", channel_id=mentors)
    with pytest.raises(GatewayError, match="UNKNOWN_CHANNEL"):
        await bob.search(content="deploy", channel_id=papers)

    # a permission change applies to the next search, before any session update is awaited
    await plane.set_overwrite(
        general, "member", stack.users["bob"], allow=P(0), deny=P.READ_MESSAGE_HISTORY
    )
    assert await bob.search(content="deploy") == []
    # a ban: dave saw general a moment ago, and sees nothing of the guild now
    assert len(await dave.search(content="deploy")) == 5
    await plane.ban(await guild_named(stack, "interview-prep"), stack.users["dave"])
    assert await dave.search(content="deploy") == []  # the same open session, asked anew

    # jump over the gateway: around the middle message, after the first
    page = await alice.history(general, around=sent[2], limit=3)
    assert [m["id"] for m in page] == [sent[3], sent[2], sent[1]]
    page = await alice.history(general, after=sent[0], limit=2)
    assert [m["id"] for m in page] == [sent[2], sent[1]]
    # two anchors at once is a malformed request: INVALID_PAYLOAD, as any bad shape. The
    # pending request ends either way the client learns of the close first: its reader fails
    # the waiter (ConnectionError) or the waiter is cancelled with the connection.
    with pytest.raises((asyncio.CancelledError, ConnectionError)):
        await alice.history(general, after=sent[0], before=sent[4], timeout=10)
    await asyncio.wait_for(alice.closed.wait(), 10)
    assert alice.close_code == Close.INVALID_PAYLOAD


@pytest.mark.parametrize("search_backend", BACKENDS)
async def test_indexer_killed_mid_batch_resumes_from_its_offset(settings, tmp_path, search_backend):
    redis = connect(settings)
    keys = Keys(settings.key_prefix)
    n = 95
    await feed(
        redis,
        keys,
        [
            StoredEntry(
                id=(1 << 40) + i,
                channel_id=5,
                guild_id=4,
                author_id=3,
                payload=f'{{"content":"word{i} common"}}',
            )
            for i in range(n)
        ],
        maxlen=settings.stored_stream_maxlen,
    )
    env = {
        **os.environ,
        "CHATSCALE_REDIS_URL": str(settings.redis_url),
        "CHATSCALE_STORAGE_URL": settings.storage_url,
        "CHATSCALE_KEY_PREFIX": settings.key_prefix,
        "CHATSCALE_SEARCH_URL": settings.search_url,
        "CHATSCALE_SEARCH_BATCH": "20",
        "CHATSCALE_METRICS_PORT": "0",
    }
    log = (tmp_path / "indexer.log").open("w")
    victim = subprocess.Popen(
        [sys.executable, "-m", "chatscale", "indexer", "--stop-after", "2"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:  # it commits 2 batches (40 entries), reads a 3rd and stops itself before committing
        _, status = await asyncio.wait_for(
            asyncio.to_thread(os.waitpid, victim.pid, os.WUNTRACED), 60
        )
        assert os.WIFSTOPPED(status), (tmp_path / "indexer.log").read_text()[-2000:]
        victim.kill()
        victim.wait()
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
        log.close()
    index = await SearchIndex.open(settings.search_url)
    try:
        assert await index.count() == 40
        survivor = Indexer(
            settings.model_copy(update={"search_batch": 20}), index=index, redis=redis
        )
        assert await survivor.drain() == n - 40  # from the committed offset, not from the start
        assert await index.count() == n
        assert len(await index.search([5], text="common", limit=200)) == n
        assert [i for i, _ in await index.search([5], text="word7 common")] == [(1 << 40) + 7]
        assert await index.search([6], text="common") == []  # another channel
        # a deletion on the stream removes the document from the index
        await feed(
            redis, keys, [StoredEntry(kind="delete", id=(1 << 40) + 7, channel_id=5)], maxlen=1000
        )
        await survivor.drain()
        assert await index.search([5], text="word7 common") == []
    finally:
        await index.close()
        await redis.aclose()
    if search_backend == "sqlite":
        db = sqlite3.connect(path_of(settings.search_url))
        db.execute(
            "INSERT INTO fts (fts) VALUES ('integrity-check')"
        )  # raises if index and docs differ
        db.close()


def test_cli_mistakes_are_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    from chatscale.cli import main

    for k in [k for k in os.environ if k.startswith("CHATSCALE_") or k == "REDIS_URL"]:
        monkeypatch.delenv(k)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CHATSCALE_STORAGE_URL", f"sqlite:///{tmp_path}/cli.db")
    monkeypatch.setenv("CHATSCALE_SEARCH_URL", f"sqlite:///{tmp_path}/search.db")
    for argv, said in (
        (["archive", "--cold-url", "ftp://x", "--older-than", "5"], "unknown cold store URL"),
        (["archive", "--cold-url", f"file://{tmp_path}/c", "--older-than", "-1"], "positive"),
        (["search", "deploy", "--as", "nobody"], "no user 'nobody'"),
    ):
        assert main(argv) == 2, argv
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and said in lines[0], lines
