"""The cold tier: old history compacted into one immutable compressed object per (channel, bucket).

Layout: ``c/<channel_id>/<bucket, 10 digits>.jsonl.z`` in an object store: zlib-compressed
lines of ``[message_id, author_id, payload]`` (JSON), oldest first, one line per message. The
payload string is the MESSAGE_CREATE ``d`` as the gateway built it; JSON encodes a string
losslessly, so a message read back is byte-identical to the row that was archived.

Two object stores behind one URL:

- ``file:///path`` (or a bare path): a local directory, the embedded default. A put writes a
  temporary file and renames it over the key, so a reader sees a whole object or none.
- ``s3://bucket/prefix?endpoint=http://host:port&region=us-east-1``: any S3-compatible server
  (AWS S3, MinIO, S3Proxy), through boto3; credentials from the URL's user part
  (``s3://ACCESS_KEY:SECRET@bucket/...``, percent-encoded) or else the usual AWS environment
  variables and files. A PUT is atomic per object in S3's model too. A bucket that does not
  exist yet reads as an empty archive, and the first write creates it. Tested against a real
  S3Proxy (storage/s3proxy_node.py).

Compaction (``storage.tiers.Archiver``) writes the object *before* it deletes the bucket's rows
from the history store, so at every instant each message is in history, in the cold tier, or in
both (readers de-duplicate by id); it never is in neither.
"""

from __future__ import annotations

import asyncio
import os
import zlib
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlparse

import orjson

from storage.base import StoredMessage
from storage.exceptions import StorageUnavailable

KEY_PREFIX = "c"


def object_key(channel_id: int, bucket: int) -> str:
    return f"{KEY_PREFIX}/{channel_id}/{bucket:010d}.jsonl.z"


def encode_bucket(messages: list[StoredMessage]) -> bytes:
    """One object's bytes: the bucket's messages oldest first, one JSON line each, zlib'd."""
    ordered = sorted(messages, key=lambda m: m.message_id)
    lines = b"".join(orjson.dumps([m.message_id, m.author_id, m.payload]) + b"\n" for m in ordered)
    return zlib.compress(lines, 6)


def decode_bucket(channel_id: int, data: bytes) -> list[StoredMessage]:
    out = []
    for line in zlib.decompress(data).splitlines():
        message_id, author_id, payload = orjson.loads(line)
        out.append(StoredMessage(channel_id, message_id, author_id, payload))
    return out


class ObjectStore(Protocol):
    async def put(self, key: str, data: bytes) -> None: ...
    async def get(self, key: str) -> bytes | None: ...
    async def list(self, prefix: str) -> list[str]:
        """Keys under ``prefix`` (a folder, ending in ``/``), sorted."""
        ...

    async def total_bytes(self) -> int: ...
    async def close(self) -> None: ...


class LocalDirStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _put(self, key: str, data: bytes) -> None:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def _get(self, key: str) -> bytes | None:
        try:
            return (self.root / key).read_bytes()
        except FileNotFoundError:
            return None

    def _list(self, prefix: str) -> list[str]:
        folder = self.root / prefix
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return []
        return sorted(f"{prefix}{n}" for n in names if not n.startswith("."))

    def _total(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())

    async def put(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self._put, key, data)

    async def get(self, key: str) -> bytes | None:
        return await asyncio.to_thread(self._get, key)

    async def list(self, prefix: str) -> list[str]:
        return await asyncio.to_thread(self._list, prefix)

    async def total_bytes(self) -> int:
        return await asyncio.to_thread(self._total)

    async def close(self) -> None:
        return None


class S3Store:
    """An S3-compatible bucket through boto3 (blocking calls run in threads)."""

    def __init__(self, url: str) -> None:
        import boto3  # only when an s3:// URL is chosen (the `s3` extra)
        from botocore.config import Config

        u = urlparse(url)
        q = {k: v[-1] for k, v in parse_qs(u.query).items()}
        self.bucket = u.hostname or ""
        if not self.bucket:
            raise ValueError("cold store URL names no bucket: use s3://bucket/prefix")
        self.prefix = u.path.strip("/")
        self.prefix = f"{self.prefix}/" if self.prefix else ""
        keys = {}
        if u.username is not None:
            keys = {
                "aws_access_key_id": unquote(u.username),
                "aws_secret_access_key": unquote(u.password or ""),
            }
        self._s3 = boto3.client(
            "s3",
            endpoint_url=q.get("endpoint") or None,
            region_name=q.get("region", "us-east-1"),
            # boto3 >= 1.36 adds CRC checksums and aws-chunked bodies to every PUT, which
            # S3-compatible servers (S3Proxy 2.6, older MinIO) refuse: only where S3 needs them.
            # Bounded: a page that needs the cold tier fails (UNAVAILABLE) within seconds when the
            # server is down, instead of botocore's 60 s connect timeout times 5 attempts.
            config=Config(
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                connect_timeout=5,
                read_timeout=30,
                retries={"max_attempts": 3, "mode": "standard"},
            ),
            **keys,
        )
        self._bucket_made = False

    def _put(self, key: str, data: bytes) -> None:
        try:
            self._s3.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data)
        except self._s3.exceptions.NoSuchBucket:
            if self._bucket_made:
                raise
            self._bucket_made = True  # the first write makes the bucket, once
            try:
                self._s3.create_bucket(Bucket=self.bucket)
            except self._s3.exceptions.BucketAlreadyOwnedByYou:
                pass  # another archiver made it in between
            self._s3.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data)

    def _get(self, key: str) -> bytes | None:
        try:
            return self._s3.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"].read()
        except (self._s3.exceptions.NoSuchKey, self._s3.exceptions.NoSuchBucket):
            return None

    def _objects(self, prefix: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        try:
            for page in self._s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix
            ):
                # A key ending in "/" is a folder marker (the S3 console's "folders", S3Proxy's
                # filesystem backend lists its directories so), never an object of ours.
                out += [o for o in page.get("Contents", []) if not o["Key"].endswith("/")]
        except self._s3.exceptions.NoSuchBucket:
            return []  # nothing archived yet
        return out

    def _list(self, prefix: str) -> list[str]:
        return sorted(o["Key"][len(self.prefix) :] for o in self._objects(prefix))

    def _total(self) -> int:
        return sum(o["Size"] for o in self._objects(""))

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """A boto3 call in a thread; any S3 or network failure is ``StorageUnavailable`` (the
        gateway answers UNAVAILABLE, the archiver's run fails and is retried next time)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise StorageUnavailable(f"cold store s3://{self.bucket}: {exc}") from exc

    async def put(self, key: str, data: bytes) -> None:
        await self._call(self._put, key, data)

    async def get(self, key: str) -> bytes | None:
        return await self._call(self._get, key)

    async def list(self, prefix: str) -> list[str]:
        return await self._call(self._list, prefix)

    async def total_bytes(self) -> int:
        return await self._call(self._total)

    async def close(self) -> None:
        return None


def open_object_store(url: str) -> ObjectStore:
    if url.startswith("s3://"):
        return S3Store(url)
    if url.startswith("file://"):
        return LocalDirStore(url.removeprefix("file://"))
    if "://" in url:
        raise ValueError(f"unknown cold store URL {url!r}: use file:///path or s3://bucket/prefix")
    return LocalDirStore(url)


class ColdArchive:
    """Reads and writes whole buckets of one channel in an object store."""

    def __init__(self, objects: ObjectStore) -> None:
        self.objects = objects

    async def buckets(self, channel_id: int) -> list[int]:
        keys = await self.objects.list(f"{KEY_PREFIX}/{channel_id}/")
        return sorted(int(k.rsplit("/", 1)[1].split(".", 1)[0]) for k in keys)

    async def read(self, channel_id: int, bucket: int) -> list[StoredMessage]:
        data = await self.objects.get(object_key(channel_id, bucket))
        return [] if data is None else decode_bucket(channel_id, data)

    async def write(self, channel_id: int, bucket: int, messages: list[StoredMessage]) -> int:
        data = encode_bucket(messages)
        await self.objects.put(object_key(channel_id, bucket), data)
        return len(data)


def redact_url(url: str) -> str:
    """``url`` fit for a log line: an ``s3://key:secret@bucket`` URL loses its secret."""
    u = urlparse(url)
    if u.password is None:
        return url
    return u._replace(netloc=f"{u.username}:***@{u.hostname or ''}").geturl()
