"""The cold tier's ``s3://`` object store against a real S3-compatible server.

S3Proxy 2.6 (jclouds filesystem backend) runs from Maven Central jars (storage/s3proxy_node.py,
the session fixture in tests/conftest.py): requests are signed and checked, objects land as
files on disk. Paging across history and an S3 cold tier is in test_tiers.py (parametrized over
both backends); here: the store's own contract, credentials and a bucket not made yet.
"""

from __future__ import annotations

from urllib.parse import urlparse

import pytest

from storage.cold import S3Store, open_object_store
from storage.exceptions import StorageUnavailable
from storage.s3proxy_node import S3ProxyNode

pytestmark = pytest.mark.slow


async def test_put_get_list_and_size_round_trip_through_s3(s3_cold_url, s3proxy_node):
    objects = open_object_store(s3_cold_url)
    assert isinstance(objects, S3Store)
    blobs = {f"c/7/{b:010d}.jsonl.z": bytes([b]) * (100 + b) for b in (3, 1, 2)}
    blobs["c/70/0000000001.jsonl.z"] = b"\x00\xffother channel"
    for key, data in blobs.items():
        await objects.put(key, data)
    assert await objects.list("c/7/") == sorted(k for k in blobs if k.startswith("c/7/"))
    assert await objects.list("c/8/") == []
    for key, data in blobs.items():
        assert await objects.get(key) == data
    assert await objects.get("c/7/0000000009.jsonl.z") is None
    assert await objects.total_bytes() == sum(map(len, blobs.values()))
    await objects.put("c/7/0000000001.jsonl.z", b"replaced")  # an archiver re-run merges
    assert await objects.get("c/7/0000000001.jsonl.z") == b"replaced"
    # the server really stored them: under its data directory, in the bucket, below the prefix
    bucket = urlparse(s3_cold_url).hostname
    on_disk = s3proxy_node.data_dir / bucket / "archive" / "c" / "70" / "0000000001.jsonl.z"
    assert on_disk.read_bytes() == b"\x00\xffother channel"


async def test_a_missing_bucket_reads_empty_and_the_first_write_creates_it(s3proxy_node):
    objects = open_object_store(s3proxy_node.cold_url("not-made-yet", "p"))
    assert await objects.list("c/1/") == [] and await objects.total_bytes() == 0
    assert await objects.get("c/1/0000000001.jsonl.z") is None
    await objects.put("c/1/0000000001.jsonl.z", b"first")
    assert await objects.list("c/1/") == ["c/1/0000000001.jsonl.z"]


async def test_a_wrong_secret_is_refused_as_storage_unavailable(s3_cold_url):
    u = urlparse(s3_cold_url)
    wrong = s3_cold_url.replace(f":{u.password}@", ":not-the-secret@")
    objects = open_object_store(wrong)
    with pytest.raises(StorageUnavailable, match="SignatureDoesNotMatch|AccessDenied|Forbidden"):
        await objects.list("c/1/")
    with pytest.raises(StorageUnavailable) as info:
        await objects.put("c/1/0000000001.jsonl.z", b"x")
    assert "not-the-secret" not in str(info.value)


def test_properties_and_command_without_starting(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "s3proxy-2.6.0.jar").write_bytes(b"")
    node = S3ProxyNode(lib_dir=lib, workdir=tmp_path / "n", access_key="k", secret_key="s/+=")
    props = node.properties()
    assert f"s3proxy.endpoint=http://127.0.0.1:{node.port}\n" in props
    assert "jclouds.provider=filesystem\n" in props and "s3proxy.credential=s/+=\n" in props
    cmd = node.command()
    assert cmd[-3:] == ["org.gaul.s3proxy.Main", "--properties", str(node.workdir / "s3proxy.conf")]
    assert cmd[cmd.index("-cp") + 1] == f"{lib}/*"
    url = urlparse(node.cold_url("b", "x/"))
    assert (url.hostname, url.path, url.username, url.password) == ("b", "/x", "k", "s%2F%2B%3D")
    with pytest.raises(Exception, match="no s3proxy"):
        S3ProxyNode(lib_dir=tmp_path, workdir=tmp_path / "m").command()
