"""The search index contract, on both backends: SQLite FTS5 (``sqlite:///``) and a real
OpenSearch 2.19 node from Maven jars (``opensearch://``, tests/conftest.py).

The indexer and the gateway only use this API, so what holds here holds end to end
(tests/workers/test_search.py runs the gateway's SEARCH on both too). Visibility stays the
caller's: the index only filters to the channel ids it is given.
"""

from __future__ import annotations

import pytest

from storage.search_index import IndexDoc, SearchIndex

BACKENDS = ["sqlite", pytest.param("opensearch", marks=pytest.mark.slow)]

DOCS = [
    IndexDoc(101, 1, 9, 7, "deploy the thing", '{"id":"101"}'),
    IndexDoc(102, 1, 9, 8, "Déploiement café deploy", '{"id":"102","x":"é ✓"}'),
    IndexDoc(103, 2, 9, 7, "deploy secret plan", '{"id":"103"}'),
    IndexDoc(104, 1, 9, 7, "hello world", '{"id":"104"}'),
    IndexDoc(105, 1, 9, 7, "deployment notes", '{"id":"105"}'),
]


def ids(hits: list[tuple[int, str]]) -> list[int]:
    return [i for i, _ in hits]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_index_search_page_delete_and_resume(backend, search_url_for):
    index = await SearchIndex.open(search_url_for(backend))
    try:
        assert await index.offset("cs:stored") is None
        assert await index.apply("cs:stored", "1-0", DOCS[:3]) == 3
        # a redelivered batch (the indexer died before its offset moved) adds nothing
        assert await index.apply("cs:stored", "2-0", DOCS[1:]) == 2
        assert await index.offset("cs:stored") == "2-0" and await index.count() == 5

        assert ids(await index.search([1, 2], text="deploy")) == [105, 103, 102, 101]  # prefix
        assert ids(await index.search([1], text="deploy")) == [105, 102, 101]  # channels
        assert ids(await index.search([], text="deploy")) == []
        assert ids(await index.search([1, 2], text="secret deploy")) == [103]  # every word
        assert ids(await index.search([1, 2], text="CAFE")) == [102]  # case and accents fold
        assert ids(await index.search([1, 2], text="deploy", author_id=8)) == [102]
        assert ids(await index.search([1, 2], author_id=7)) == [105, 104, 103, 101]  # no text
        assert ids(await index.search([1, 2], text="deploy", before=103, limit=1)) == [102]
        assert ids(await index.search([1, 2], text="deploy", after=102)) == [105, 103]
        # user text is words, never query syntax
        assert ids(await index.search([1, 2], text='deploy" OR "hello*')) == []
        assert ids(await index.search([1, 2], text="  ?! ")) == [105, 104, 103, 102, 101]
        # the payload comes back byte for byte
        assert dict(await index.search([1], text="café")) == {102: DOCS[1].payload}

        assert await index.apply("cs:stored", "3-0", [], deletes=[103, 999]) == 0
        assert ids(await index.search([1, 2], text="deploy")) == [105, 102, 101]
        assert await index.offset("cs:stored") == "3-0" and await index.count() == 4
        # a deleted message stays deleted: an add after the deletion (indexing at write, a
        # retried batch or a replayed stream) does not bring it back, and moves no offset
        assert await index.add([DOCS[2], IndexDoc(106, 1, 9, 7, "deploy again", "{}")]) == 1
        assert ids(await index.search([1, 2], text="deploy")) == [106, 105, 102, 101]
        assert await index.offset("cs:stored") == "3-0" and await index.count() == 5
    finally:
        await index.close()
    reopened = await SearchIndex.open(index_url(index))
    try:
        assert await reopened.offset("cs:stored") == "3-0" and await reopened.count() == 5
    finally:
        await reopened.close()


def index_url(index) -> str:
    """The URL an index was opened with (to reopen it)."""
    if hasattr(index, "path"):
        return f"sqlite:///{index.path}"
    return f"opensearch://{index.base_url.removeprefix('http://')}/{index.index}"


def test_opensearch_urls_and_node_command_without_starting(tmp_path):
    from storage.opensearch_node import OpenSearchNode
    from storage.search_opensearch import parse_url

    assert parse_url("opensearch://h:9201/msgs") == ("http://h:9201", "msgs")
    assert parse_url("opensearch://h/msgs") == ("http://h:9200", "msgs")
    for bad in ("opensearch://h:9200", "opensearch://h:9200/a/b", "http://h:9200/msgs"):
        with pytest.raises(ValueError, match="opensearch://host:port/index"):
            parse_url(bad)
    (tmp_path / "home" / "lib").mkdir(parents=True)
    (tmp_path / "home" / "lib" / "opensearch-2.19.6.jar").write_bytes(b"")
    node = OpenSearchNode(home=tmp_path / "home", workdir=tmp_path / "n", java="java")
    assert node.port != node.transport_port
    cmd = node.command()
    assert cmd[-1] == "org.opensearch.bootstrap.OpenSearch"
    assert f"-Dopensearch.path.conf={tmp_path / 'n' / 'config'}" in cmd
    assert "-Djna.nounpack=true" in cmd  # JNA's native part off: the root check (docstring)
    config = node.config()
    assert f"http.port: {node.port}\n" in config and "discovery.type: single-node\n" in config
    assert node.search_url("x") == f"opensearch://127.0.0.1:{node.port}/x"
