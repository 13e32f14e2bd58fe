"""A real S3-compatible server for the cold tier: S3Proxy, run from Maven Central jars.

S3Proxy (https://github.com/gaul/s3proxy, Apache 2.0) implements the S3 REST API in front of an
Apache jclouds blob store; with jclouds' ``filesystem`` provider a bucket is a directory and an
object a file under ``jclouds.filesystem.basedir``. It is published as ``org.gaul:s3proxy`` with
its runtime dependencies, so the Cassandra recipe (storage/cassandra_node.py) works unchanged:
``maven-dependency-plugin:copy-dependencies`` puts every jar into one cached folder, and
``java -cp "<lib>/*" org.gaul.s3proxy.Main --properties s3proxy.conf`` runs a server from it.
Requests are signed (AWS signature v2 or v4) with a fixed identity/credential pair, so a client
with the wrong secret is refused as it would be by AWS.

Checked on a 2-core Debian 12 VM (OpenJDK 17.0.15, Maven 3.8.7, boto3 1.43):

* ``s3proxy:2.6.0`` resolves to 118 jars, 43 MB (every jclouds provider comes along); a cold
  fetch takes ~10 s. It runs on Java 17 (the jar's manifest says it was built by JDK 21, but
  for release 17).
* The jar ships no logback configuration, so logback's default logs every Jetty event at DEBUG
  to the console: we write a ``logback.xml`` (WARN and up, plus S3Proxy's own INFO lines).
* First successful S3 round trip ~1.8 s after launch with ``-XX:TieredStopAtLevel=1``; RSS
  ~90 MiB at ``-Xmx256m``. SIGTERM stops it at once (exit code 143).
* boto3 >= 1.36 sends CRC32 checksums and ``aws-chunked`` bodies on every PUT; S3Proxy 2.6.0
  answers ``NotImplemented`` ("A header you provided implies functionality that is not
  implemented"). storage/cold.py's client asks for checksums only where the API requires them
  (``request_checksum_calculation="when_required"``), as most S3-compatible servers need.
* S3Proxy logs "filesystem storage backend deprecated -- please use filesystem-nio2" at WARN.
  We keep ``filesystem`` (jclouds' provider, what the docker image andrewgaul/s3proxy uses).

``python -m storage.s3proxy_node run`` starts one for users (Java 17+ and Maven on PATH);
``fetch`` only resolves the jars.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from storage.jvm import (
    INSTALL_HINT,
    JvmError,
    JvmProcess,
    _free_port,
    _maven_errors,
    _port_open,
    copy_dependencies,
    default_cache_dir,
    jar_cli,
    missing_java_or_maven,
    run_cli,
    serve,
)

__all__ = [
    "DEFAULT_VERSION",
    "S3ProxyNode",
    "S3ProxyNodeError",
    "fetch_jars",
    "missing_requirements",
]

DEFAULT_VERSION = "2.6.0"
MIN_JAVA = 17
MAIN_CLASS = "org.gaul.s3proxy.Main"
_MARKER = ".chatscale-complete"


class S3ProxyNodeError(JvmError):
    """The server could not be fetched, started or stopped; the message carries the log tail."""


def missing_requirements() -> str | None:
    """None if ``java`` (17 or newer) and ``mvn`` are on PATH, else what to install."""
    return missing_java_or_maven(
        "S3Proxy", lambda major: major >= MIN_JAVA, f"S3Proxy 2.6 needs Java {MIN_JAVA}+"
    )


# --------------------------------------------------------------------------- jars

_POM = """<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by chatscale (storage/s3proxy_node.py): only used to resolve the jars. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.chatscale</groupId>
  <artifactId>s3proxy-jars</artifactId>
  <version>{version}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.gaul</groupId>
      <artifactId>s3proxy</artifactId>
      <version>{version}</version>
    </dependency>
  </dependencies>
</project>
"""


def _lib_complete(lib: Path, version: str) -> bool:
    return (lib / _MARKER).is_file() and (lib / f"s3proxy-{version}.jar").is_file()


def fetch_jars(
    version: str = DEFAULT_VERSION,
    cache_dir: Path | None = None,
    progress: Callable[[str], Any] = print,
) -> Path:
    """Resolve ``org.gaul:s3proxy:<version>`` and its runtime jars into
    ``<cache>/s3proxy-<version>/lib`` (the cache is Cassandra's: ``$CHATSCALE_CASSANDRA_CACHE``
    or ``~/.cache/chatscale``). A completed lib dir is returned at once, without Maven."""
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    base = cache / f"s3proxy-{version}"
    lib = base / "lib"
    if _lib_complete(lib, version):
        return lib
    if shutil.which("mvn") is None:
        raise S3ProxyNodeError(missing_requirements() or "mvn not found on PATH")
    base.mkdir(parents=True, exist_ok=True)
    with open(base / ".lock", "w") as lock:  # one Maven run at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _lib_complete(lib, version):  # another process finished it while we waited
            return lib
        progress(f"s3proxy: resolving org.gaul:s3proxy:{version} from Maven (~43 MB) ...")
        staging = base / f"lib.partial-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        (base / "pom.xml").write_text(_POM.format(version=version))
        t0 = time.monotonic()
        proc = copy_dependencies(base / "pom.xml", staging)
        if proc.returncode != 0 or not (staging / f"s3proxy-{version}.jar").is_file():
            shutil.rmtree(staging, ignore_errors=True)
            raise S3ProxyNodeError(
                f"mvn failed for org.gaul:s3proxy:{version} (exit {proc.returncode}):\n"
                + _maven_errors(proc.stdout + "\n" + proc.stderr)
            )
        jars = sorted(staging.glob("*.jar"))
        (staging / _MARKER).write_text(f"s3proxy {version}\n{len(jars)} jars\n")
        shutil.rmtree(lib, ignore_errors=True)
        staging.rename(lib)
        progress(f"s3proxy: {len(jars)} jars in {time.monotonic() - t0:.1f}s -> {lib}")
        return lib


# --------------------------------------------------------------------------- server

_LOGBACK = """<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by chatscale: without it logback logs every Jetty event at DEBUG. -->
<configuration scan="false" debug="false">
  <appender name="CONSOLE" class="ch.qos.logback.core.ConsoleAppender">
    <encoder><pattern>%date{ISO8601} %-5level %logger{30} - %msg%n</pattern></encoder>
  </appender>
  <root level="WARN"><appender-ref ref="CONSOLE" /></root>
  <logger name="org.gaul.s3proxy.Main" level="INFO" />
</configuration>
"""


class S3ProxyNode(JvmProcess):
    """One S3Proxy JVM on ``host:port`` with the filesystem blob store in ``workdir/data``.

    >>> with S3ProxyNode(lib_dir=fetch_jars(), workdir=Path("/tmp/s3")) as node:
    ...     node.create_bucket("cold"); print(node.cold_url("cold"))
    """

    name = "S3Proxy"
    noun = "S3Proxy"
    error = S3ProxyNodeError
    start_timeout = 60.0
    stop_timeout = 15.0
    poll_interval = 0.1

    def __init__(
        self,
        *,
        lib_dir: Path,
        workdir: Path,
        port: int | None = None,
        host: str = "127.0.0.1",
        access_key: str = "chatscale",
        secret_key: str = "chatscale-secret-key",
        heap: str = "256m",
        c1_only: bool = True,
        java: str | None = None,
    ) -> None:
        super().__init__(workdir=workdir, java=java)
        self.lib_dir = Path(lib_dir).resolve()
        self.host = host
        self.port = port or _free_port(host)
        self.access_key = access_key
        self.secret_key = secret_key
        self.heap = heap
        self.c1_only = c1_only
        self._probe = None  # the boto3 client of the readiness wait

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def console_log(self) -> Path:
        return self.workdir / "console.log"

    def cold_url(self, bucket: str, prefix: str = "") -> str:
        """The ``CHATSCALE_COLD_URL`` for a bucket here (credentials in the URL's user part)."""
        cred = f"{quote(self.access_key, safe='')}:{quote(self.secret_key, safe='')}"
        path = f"/{prefix.strip('/')}" if prefix.strip("/") else ""
        return f"s3://{cred}@{bucket}{path}?endpoint={self.endpoint}&region=us-east-1"

    def properties(self) -> str:
        return (
            "# Written by chatscale (storage/s3proxy_node.py).\n"
            f"s3proxy.endpoint={self.endpoint}\n"
            "s3proxy.authorization=aws-v2-or-v4\n"
            f"s3proxy.identity={self.access_key}\n"
            f"s3proxy.credential={self.secret_key}\n"
            "jclouds.provider=filesystem\n"
            f"jclouds.filesystem.basedir={self.data_dir}\n"
        )

    def _write_config(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "s3proxy.conf"
        conf.write_text(self.properties())
        (self.workdir / "logback.xml").write_text(_LOGBACK)
        return conf

    def _missing_requirements(self) -> str | None:
        return missing_requirements()

    def command(self) -> list[str]:
        if not any(self.lib_dir.glob("s3proxy-*.jar")):
            raise S3ProxyNodeError(f"no s3proxy-*.jar in {self.lib_dir}; run fetch_jars() first")
        return [
            self._java(),
            f"-Xmx{self.heap}",
            "-XX:+UseSerialGC",  # a small heap and 2 cores: no concurrent GC threads
            *(["-XX:TieredStopAtLevel=1"] if self.c1_only else []),
            "-Djava.net.preferIPv4Stack=true",
            f"-Dlogback.configurationFile={self.workdir / 'logback.xml'}",
            "-cp",
            f"{self.lib_dir}/*",
            MAIN_CLASS,
            "--properties",
            str(self.workdir / "s3proxy.conf"),
        ]

    def client(self, timeout: float = 10.0):
        """A boto3 S3 client for this server, configured as storage/cold.py's is."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                connect_timeout=timeout,
                read_timeout=timeout,
                retries={"max_attempts": 1},
            ),
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def _address(self) -> str:
        return self.endpoint

    def _ready(self, deadline: float) -> bool:
        """A signed S3 request (ListBuckets) succeeds."""
        if not _port_open(self.host, self.port):
            return False
        if self._probe is None:
            self._probe = self.client(timeout=5.0)
        self._probe.list_buckets()  # connection reset while Jetty starts, etc.
        return True

    def __repr__(self) -> str:
        return f"<S3ProxyNode {self.endpoint} pid={self.pid} running={self.running}>"


# --------------------------------------------------------------------------- CLI


def _cmd_run(args: argparse.Namespace, cache: Path, lib: Path) -> int:
    node = S3ProxyNode(
        lib_dir=lib,
        workdir=args.workdir or (cache / f"s3proxy-node-{args.port}"),
        port=args.port,
        access_key=args.access_key,
        secret_key=args.secret_key,
    )

    def _bucket() -> None:
        if args.bucket and args.bucket not in {
            b["Name"] for b in node.client().list_buckets().get("Buckets", [])
        }:
            node.create_bucket(args.bucket)

    def _ready() -> str:
        lines = [
            f"s3proxy: ready at {node.endpoint} in {node.started_in:.1f}s, pid {node.pid}, "
            f"objects in {node.data_dir}"
        ]
        if args.bucket:
            lines.append(f"s3proxy: CHATSCALE_COLD_URL='{node.cold_url(args.bucket)}'")
        return "\n".join([*lines, "s3proxy: Ctrl-C to stop"])

    return serve("s3proxy", node, timeout=args.timeout, setup=_bucket, ready=_ready, what="server")


def main(argv: list[str] | None = None) -> int:
    parser, p_run = jar_cli(
        "python -m storage.s3proxy_node",
        "Run a real S3-compatible server (S3Proxy, filesystem backend) from Maven "
        f"Central jars, without Docker. Needs Java 17+ and Maven ({INSTALL_HINT}).",
        version_flag="--s3proxy-version",
        default_version=DEFAULT_VERSION,
        missing=missing_requirements,
        version_help="org.gaul:s3proxy",
        fetch=fetch_jars,
        fetch_help="download the jars, print the dir",
        run=_cmd_run,
        run_help="start a server and keep it running until Ctrl-C",
    )
    p_run.add_argument("--port", type=int, default=8081, help="HTTP port (default 8081)")
    p_run.add_argument("--workdir", type=Path, default=None, help="config, objects and log")
    p_run.add_argument("--bucket", default="chatscale-cold", help="create it if missing ('' none)")
    p_run.add_argument("--access-key", default="chatscale")
    p_run.add_argument("--secret-key", default="chatscale-secret-key")
    p_run.add_argument("--timeout", type=float, default=60.0, help="readiness wait, seconds")
    return run_cli(parser, argv, "s3proxy", S3ProxyNodeError)


if __name__ == "__main__":
    sys.exit(main())
