"""A real Apache Cassandra 5.0 node — or a ring of them (:class:`CassandraCluster`, ``run
--nodes 3``: 127.0.0.1-3, every node a seed, one initial token each) — run from Maven Central
jars, without Docker.

The picture: Apache publishes the whole server as ``org.apache.cassandra:cassandra-all`` with its
runtime dependencies, so Maven (``maven-dependency-plugin:copy-dependencies``) can put every jar
the server needs into one folder, and ``java -cp "<lib>/*" org.apache.cassandra.service
.CassandraDaemon`` runs a node from it. This module does exactly that: :func:`fetch_jars` resolves
the jars once into a cache (``$CHATSCALE_CASSANDRA_CACHE`` or ``~/.cache/chatscale``);
:class:`CassandraNode` writes a minimal ``cassandra.yaml`` and ``logback.xml`` into a work
directory, starts the JVM in its own process group, and waits until a real CQL round trip
(``SELECT release_version FROM system.local`` through cassandra-driver) succeeds. Tests and CI use
it for the Cassandra-backed history store; users with Java 17 and Maven can run
``python -m storage.cassandra_node run`` to get a local node without Docker.

Facts from ``reference/cassandra-5.0-from-maven.md``, checked end to end on a 2-core Debian 12
VM (OpenJDK 17.0.15, Maven 3.8.7, cassandra-driver 3.30.1, running as root):

Verified as written:
  * ``cassandra-all:5.0.8`` resolves from Maven Central; a ``packaging=pom`` project with that one
    dependency and ``maven-dependency-plugin:3.8.1:copy-dependencies -DincludeScope=runtime``
    gives a complete, runnable lib folder, with logback-classic and ``jamm-0.4.0.jar`` in it.
  * ``-Dcassandra.config`` must be a URL (``file:///abs/cassandra.yaml``): a bare path exits with
    code 3, "Expecting URI in variable: [cassandra.config]".
  * The ``--add-exports``/``--add-opens`` flags are required on JDK 17 (without them: exit 3,
    IllegalAccessException on ``sun.nio.ch.DirectBuffer.cleaner``).
  * Without ``-Dcassandra-foreground`` the daemon closes System.out/err after startup (seen in
    ``CassandraDaemon``'s bytecode).
  * The jar ships no ``logback.xml``; ``-Dlogback.configurationFile`` + ``-Dcassandra.logdir`` work.
  * 5.0 accepts the unit-suffixed key names (``commitlog_sync_period: 10000ms``,
    ``commitlog_segment_size: 16MiB``, ``compaction_throughput: 64MiB/s``); SimpleSnitch gives
    data center ``datacenter1``; JMX stays off when unset (one startup WARN); no pidfile.
  * Readiness through cassandra-driver (``protocol_version=5``,
    ``DCAwareRoundRobinPolicy(local_dc="datacenter1")``) works; SIGTERM drains and exits (code 143).

Wrong or changed:
  * 100 jars (67 MB on disk, ~93 MB in ``~/.m2``), not "about 110"; ``antlr-runtime-3.5.2`` *is*
    on the runtime classpath (the CQL parser needs it). Cold fetch: 27 s and 38 s (two runs).
  * Maven's noise is not ``[ERROR] ... systemPath`` lines: a verbose run prints only ``[WARNING]
    The POM for org.perfkit.sjk.parsers:sjk-jfr5/jfr6/nps ... is invalid``; ``-q`` prints nothing.
  * ``-javaagent:jamm`` was *not* needed on 17.0.15: startup and a workload with prepared
    statements, an SAI index and a vector column ran without it. We pass it anyway, as Apache's
    scripts do (exact memory measurement instead of jamm's Unsafe fallback).
  * "Expect 1.5-2 GiB RSS" / ``-Xms1g -Xmx1g``: Cassandra always calls ``mlockall(MCL_CURRENT)``
    and, as root (CAP_IPC_LOCK), that succeeds and faults in the whole committed heap: with
    ``-Xms1g`` the node sat at ~1.4 GiB RSS and the mlockall cost ~7 s of startup. We start with
    ``-Xms256m -Xmx1g``: ~595 MiB RSS at ready, ~635 MiB after 5,000 inserts. (Not tested here:
    as non-root with the usual 8 MiB memlock limit the call should fail with a WARN instead.)
  * Startup: the reference's flags gave 21-25 s to the first CQL round trip. Three additions
    bring it to 5.6-8.1 s (5 runs): ``-Xms256m`` (above); ``-XX:TieredStopAtLevel=1`` (C1 only,
    since C2 compiler threads compete for the 2 cores: 16 s without it; ``c1_only=False`` /
    ``--full-jit`` for long load tests); ``-Dcassandra.memtable.row_overhead_size=180`` (skips a
    ~3 s memtable benchmark at boot). ``-Dcassandra.shutdown_announce_in_ms=0`` cuts a graceful
    stop from ~6 s to ~3 s.
  * cassandra-driver's legacy ``Cluster(load_balancing_policy=...)`` emits a DeprecationWarning
    (fatal under ``filterwarnings=error``); the policy goes into an ``ExecutionProfile`` instead.
  * The seed is written with its port (``127.0.0.1:<storage_port>``) so a free, non-7000 storage
    port works. ``chronicle.analytics.disable`` needs no flag (DatabaseDescriptor sets it).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from storage.jvm import (
    DEPENDENCY_PLUGIN,  # noqa: F401 (was defined here)
    INSTALL_HINT,
    JvmError,
    JvmProcess,
    _free_port,
    _maven_errors,
    _port_open,
    _signal_group,
    _terminate,
    copy_dependencies,
    default_cache_dir,
    jar_cli,
    java_major_version,
    missing_java_or_maven,
    run_cli,
    serve,
)

__all__ = [
    "DEFAULT_VERSION",
    "CassandraCluster",
    "FALLBACK_VERSIONS",
    "CassandraNode",
    "CassandraNodeError",
    "default_cache_dir",
    "fetch_jars",
    "java_major_version",
    "missing_requirements",
]

DEFAULT_VERSION = "5.0.8"
FALLBACK_VERSIONS = ("5.0.6", "5.0.4")
SUPPORTED_JAVA = (11, 17)
_MARKER = ".chatscale-complete"
_LOG_TAIL_LINES = 40


class CassandraNodeError(JvmError):
    """The node could not be fetched, started or stopped; the message carries the log tail."""


# --------------------------------------------------------------------------- requirements


def missing_requirements() -> str | None:
    """None if ``java`` (11 or 17) and ``mvn`` are on PATH, else what to install."""
    return missing_java_or_maven(
        "Cassandra 5.0 node",
        lambda major: major in SUPPORTED_JAVA,
        "Cassandra 5.0 runs on Java 11 or 17 only",
        ", or put a Java 17 JDK and Maven 3 on PATH",
    )


# --------------------------------------------------------------------------- jars

_POM = """<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by chatscale (storage/cassandra_node.py): only used to resolve the jars. -->
<project xmlns="http://maven.apache.org/POM/4.0.0"
         xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
         xsi:schemaLocation="http://maven.apache.org/POM/4.0.0 https://maven.apache.org/xsd/maven-4.0.0.xsd">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.chatscale</groupId>
  <artifactId>cassandra-jars</artifactId>
  <version>{version}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.cassandra</groupId>
      <artifactId>cassandra-all</artifactId>
      <version>{version}</version>
    </dependency>
  </dependencies>
</project>
"""


def _lib_complete(lib: Path, version: str) -> bool:
    return (
        (lib / _MARKER).is_file()
        and (lib / f"cassandra-all-{version}.jar").is_file()
        and any(lib.glob("jamm-*.jar"))
    )


def _run_maven(base: Path, version: str, progress: Callable[[str], Any]) -> Path:
    """Resolve one version into ``base/lib``; raise CassandraNodeError on failure."""
    lib = base / "lib"
    staging = base / f"lib.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    (base / "pom.xml").write_text(_POM.format(version=version))
    t0 = time.monotonic()
    proc = copy_dependencies(base / "pom.xml", staging)
    if proc.returncode != 0 or not (staging / f"cassandra-all-{version}.jar").is_file():
        shutil.rmtree(staging, ignore_errors=True)
        raise CassandraNodeError(
            f"mvn failed for cassandra-all:{version} (exit {proc.returncode}):\n"
            + _maven_errors(proc.stdout + "\n" + proc.stderr)
        )
    jars = sorted(staging.glob("*.jar"))
    (staging / _MARKER).write_text(
        f"cassandra-all {version}\n{len(jars)} jars\n" + "".join(f"{j.name}\n" for j in jars)
    )
    shutil.rmtree(lib, ignore_errors=True)
    staging.rename(lib)
    progress(f"cassandra: {len(jars)} jars for {version} in {time.monotonic() - t0:.1f}s -> {lib}")
    return lib


def fetch_jars(
    version: str = DEFAULT_VERSION,
    cache_dir: Path | None = None,
    progress: Callable[[str], Any] = print,
) -> Path:
    """Resolve ``cassandra-all:<version>`` and its runtime jars into ``<cache>/cassandra-<v>/lib``.

    Returns the lib dir. A completed lib dir (marker file) is returned at once without running
    Maven. If the default version cannot be resolved, 5.0.6 and then 5.0.4 are tried.
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    candidates = [version]
    if version == DEFAULT_VERSION:
        candidates += [v for v in FALLBACK_VERSIONS if v != version]
    for v in candidates:  # anything already cached wins, without touching the network
        lib = cache / f"cassandra-{v}" / "lib"
        if _lib_complete(lib, v):
            return lib
    if shutil.which("mvn") is None:
        raise CassandraNodeError(missing_requirements() or "mvn not found on PATH")
    errors = []
    for v in candidates:
        base = cache / f"cassandra-{v}"
        base.mkdir(parents=True, exist_ok=True)
        with open(base / ".lock", "w") as lock:  # one Maven run per version at a time
            fcntl.flock(lock, fcntl.LOCK_EX)
            lib = base / "lib"
            if _lib_complete(lib, v):  # another process finished it while we waited
                return lib
            progress(
                f"cassandra: resolving org.apache.cassandra:cassandra-all:{v} from Maven "
                f"(first run downloads ~70 MB into ~/.m2 and {base}) ..."
            )
            try:
                return _run_maven(base, v, progress)
            except CassandraNodeError as exc:
                errors.append(str(exc))
        shutil.rmtree(base, ignore_errors=True)  # leave no half-made version behind
        if v != candidates[-1]:
            progress(f"cassandra: {v} could not be fetched; trying the next fallback version")
    raise CassandraNodeError("could not fetch Cassandra jars:\n\n" + "\n\n".join(errors))


# --------------------------------------------------------------------------- node


def _size_bytes(size: str) -> int:
    """JVM-style size ("256m", "1g", "1048576") to bytes."""
    m = re.fullmatch(r"\s*(\d+)\s*([kmgt]?)b?\s*", size.lower())
    if not m:
        raise ValueError(f"not a JVM memory size: {size!r} (use e.g. 512m, 1g)")
    return int(m.group(1)) * 1024 ** " kmgt".index(m.group(2) or " ")


# JVM flags from Apache's conf/jvm17-server.options (5.0); harmless on Java 11.
_ADD_EXPORTS = (
    "java.base/jdk.internal.misc",
    "java.management.rmi/com.sun.jmx.remote.internal.rmi",
    "java.rmi/sun.rmi.registry",
    "java.rmi/sun.rmi.server",
    "java.sql/java.sql",
    "java.base/java.lang.ref",
    "jdk.unsupported/sun.misc",
    "jdk.compiler/com.sun.tools.javac.file",
    "jdk.attach/sun.tools.attach",
    "java.management/com.sun.jmx.remote.security",
)
_ADD_OPENS = (
    "java.base/java.lang.module",
    "java.base/jdk.internal.loader",
    "java.base/jdk.internal.ref",
    "java.base/jdk.internal.reflect",
    "java.base/jdk.internal.math",
    "java.base/jdk.internal.module",
    "java.base/jdk.internal.util.jar",
    "jdk.management/com.sun.management.internal",
    "java.base/sun.nio.ch",
    "java.base/java.io",
    "java.base/java.lang.reflect",
    "jdk.compiler/com.sun.tools.javac",
    "java.base/java.lang",
    "java.base/java.util",
    "java.base/java.nio",
    "java.base/java.net",
    "java.base/java.nio.charset",
    "java.base/java.util.concurrent",
    "java.base/java.util.concurrent.atomic",
    "java.base/java.util.concurrent.locks",
)

_LOGBACK = """<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by chatscale: INFO and up to system.log, WARN and up to the console. -->
<configuration scan="false" debug="false">
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>{system_log}</file>
    <append>true</append>
    <encoder>
      <pattern>%-5level [%thread] %date{{ISO8601}} %F:%L - %msg%n</pattern>
    </encoder>
  </appender>
  <appender name="STDOUT" class="ch.qos.logback.core.ConsoleAppender">
    <filter class="ch.qos.logback.classic.filter.ThresholdFilter">
      <level>WARN</level>
    </filter>
    <encoder>
      <pattern>%-5level [%thread] %date{{ISO8601}} %F:%L - %msg%n</pattern>
    </encoder>
  </appender>
  <root level="INFO">
    <appender-ref ref="FILE" />
    <appender-ref ref="STDOUT" />
  </root>
  <logger name="org.apache.cassandra" level="INFO" />
</configuration>
"""


def _q(value: str) -> str:
    """Single-quoted YAML scalar."""
    return "'" + str(value).replace("'", "''") + "'"


def _wait_all_threads_stopped(pid: int, timeout: float = 5.0) -> None:
    """SIGSTOP is delivered to every thread of the JVM, but not in the same instant: on a
    loaded machine a network thread can still answer one request right after ``kill``
    returns. Wait until every thread shows state T, so a paused node is paused."""
    deadline = time.monotonic() + timeout
    tasks = Path(f"/proc/{pid}/task")
    while time.monotonic() < deadline:
        try:
            states = [
                (t / "stat").read_text().rsplit(")", 1)[1].split()[0] for t in tasks.iterdir()
            ]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return  # not Linux /proc, or the process is gone
        if all(state in ("T", "t") for state in states):
            return
        time.sleep(0.005)


class CassandraNode(JvmProcess):
    """One Cassandra 5.0 JVM on 127.0.0.1, with its config, data and logs in ``workdir``.

    >>> with CassandraNode(lib_dir=fetch_jars(), workdir=Path("/tmp/c1")) as node:
    ...     print(node.host, node.port, node.started_in)
    """

    name = "Cassandra"
    error = CassandraNodeError
    start_timeout = 180.0
    stop_timeout = 30.0

    def __init__(
        self,
        *,
        lib_dir: Path,
        workdir: Path,
        heap: str = "1g",
        cql_port: int | None = None,
        storage_port: int | None = None,
        cluster_name: str = "chatscale",
        host: str = "127.0.0.1",
        initial_heap: str | None = "256m",
        c1_only: bool = True,
        java: str | None = None,
        extra_jvm_args: tuple[str, ...] | list[str] = (),
        seeds: str | None = None,
        initial_token: int | str = 0,
    ) -> None:
        """``seeds`` (``host:port,...``; default this node alone) and ``initial_token`` (its one
        token) are what a member of a :class:`CassandraCluster` sets differently."""
        super().__init__(workdir=workdir, java=java)
        self.lib_dir = Path(lib_dir).resolve()
        self.heap = heap
        self.cluster_name = cluster_name
        self._host = host
        self._cql_port = cql_port or _free_port(host)
        self._storage_port = storage_port or _free_port(host)
        while self._storage_port == self._cql_port:
            self._storage_port = _free_port(host)
        if initial_heap is None or _size_bytes(initial_heap) >= _size_bytes(heap):
            initial_heap = heap
        self.initial_heap = initial_heap
        self.c1_only = c1_only
        self.extra_jvm_args = tuple(extra_jvm_args)
        self.seeds = seeds
        self.initial_token = str(initial_token)
        self._paused = False

    # ---- properties

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        """The CQL (native transport) port."""
        return self._cql_port

    @property
    def storage_port(self) -> int:
        return self._storage_port

    @property
    def system_log(self) -> Path:
        return self.workdir / "logs" / "system.log"

    def rss_bytes(self) -> int | None:
        """Resident memory of the JVM, from /proc (Linux), or None."""
        if not self.running:
            return None
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        m = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        return int(m.group(1)) * 1024 if m else None

    # ---- files

    def _dirs(self) -> dict[str, Path]:
        d = self.workdir
        return {
            "data": d / "data" / "data",
            "commitlog": d / "data" / "commitlog",
            "saved_caches": d / "data" / "saved_caches",
            "hints": d / "data" / "hints",
            "cdc_raw": d / "data" / "cdc_raw",
            "logs": d / "logs",
            "triggers": d / "triggers",
        }

    def _yaml(self) -> str:
        d = self._dirs()
        return f"""# Written by chatscale (storage/cassandra_node.py) for a single local test node.
cluster_name: {_q(self.cluster_name)}
num_tokens: 1
initial_token: {_q(self.initial_token)}
auto_bootstrap: false
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: {_q(self.seeds or f"{self._host}:{self._storage_port}")}
listen_address: {self._host}
rpc_address: {self._host}
storage_port: {self._storage_port}
native_transport_port: {self._cql_port}
start_native_transport: true
data_file_directories:
  - {_q(str(d["data"]))}
commitlog_directory: {_q(str(d["commitlog"]))}
saved_caches_directory: {_q(str(d["saved_caches"]))}
hints_directory: {_q(str(d["hints"]))}
cdc_raw_directory: {_q(str(d["cdc_raw"]))}
commitlog_sync: periodic
commitlog_sync_period: 10000ms
commitlog_segment_size: 16MiB
auto_snapshot: false
snapshot_before_compaction: false
incremental_backups: false
concurrent_reads: 4
concurrent_writes: 4
concurrent_counter_writes: 4
concurrent_materialized_view_writes: 2
concurrent_compactors: 1
memtable_flush_writers: 1
compaction_throughput: 64MiB/s
"""

    def _write_config(self) -> tuple[Path, Path]:
        for p in self._dirs().values():
            p.mkdir(parents=True, exist_ok=True)
        yaml_path = self.workdir / "cassandra.yaml"
        yaml_path.write_text(self._yaml())
        logback_path = self.workdir / "logback.xml"
        logback_path.write_text(_LOGBACK.format(system_log=self.system_log))
        return yaml_path, logback_path

    def _missing_requirements(self) -> str | None:
        return missing_requirements()

    def command(self) -> list[str]:
        """The full ``java`` command line (config files are written by :meth:`start`)."""
        jamm = sorted(self.lib_dir.glob("jamm-*.jar"))
        if not jamm:
            raise CassandraNodeError(f"no jamm-*.jar in {self.lib_dir}; run fetch_jars() first")
        d = self._dirs()
        cmd = [
            self._java(),
            f"-Xms{self.initial_heap}",
            f"-Xmx{self.heap}",
            "-XX:MaxDirectMemorySize=512m",
            "-Xss256k",
            "-XX:+UseG1GC",
            "-XX:+ParallelRefProcEnabled",
            "-XX:+HeapDumpOnOutOfMemoryError",
            f"-XX:HeapDumpPath={d['logs']}",
            "-XX:+ExitOnOutOfMemoryError",
            *(["-XX:TieredStopAtLevel=1"] if self.c1_only else []),
            f"-javaagent:{jamm[-1]}",
            "-Djdk.attach.allowAttachSelf=true",
            *(f"--add-exports={m}=ALL-UNNAMED" for m in _ADD_EXPORTS),
            *(f"--add-opens={m}=ALL-UNNAMED" for m in _ADD_OPENS),
            "-Djava.net.preferIPv4Stack=true",
            "-Dio.netty.tryReflectionSetAccessible=true",
            f"-Dcassandra.config={(self.workdir / 'cassandra.yaml').as_uri()}",
            f"-Dlogback.configurationFile={self.workdir / 'logback.xml'}",
            f"-Dcassandra.logdir={d['logs']}",
            f"-Dcassandra.storagedir={self.workdir / 'data'}",
            f"-Dcassandra.triggers_dir={d['triggers']}",
            "-Dcassandra-foreground=yes",
            "-Dcassandra.skip_wait_for_gossip_to_settle=0",
            "-Dcassandra.load_ring_state=false",
            # Skip the ~3 s memtable row-overhead benchmark at startup; 180 is what 5.0.8 measures
            # on a 64-bit JVM with compressed oops (it only feeds memtable heap accounting).
            "-Dcassandra.memtable.row_overhead_size=180",
            # Single node: nobody to tell about the shutdown (saves 2 s per stop).
            "-Dcassandra.shutdown_announce_in_ms=0",
            *self.extra_jvm_args,
            "-cp",
            f"{self.lib_dir}/*",
            "org.apache.cassandra.service.CassandraDaemon",
        ]
        return cmd

    # ---- lifecycle

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        parts = []
        for path in (self.system_log, self.console_log):
            try:
                with open(path, errors="replace") as f:
                    tail = "".join(deque(f, maxlen=lines)).rstrip()
            except OSError:
                continue
            if tail:
                parts.append(f"--- last {lines} lines of {path} ---\n{tail}")
        return "\n".join(parts) or "(no log output)"

    def cluster(self, **kwargs: Any):
        """A cassandra-driver ``Cluster`` for this node (protocol 5, DC-aware to datacenter1)."""
        from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
        from cassandra.policies import DCAwareRoundRobinPolicy

        request_timeout = kwargs.pop("request_timeout", 10.0)
        profile = ExecutionProfile(
            load_balancing_policy=DCAwareRoundRobinPolicy(local_dc="datacenter1"),
            request_timeout=request_timeout,
        )
        kwargs.setdefault("execution_profiles", {EXEC_PROFILE_DEFAULT: profile})
        kwargs.setdefault("protocol_version", 5)
        return Cluster(contact_points=[self._host], port=self._cql_port, **kwargs)

    def query_release_version(self, timeout: float = 10.0) -> str:
        """One real CQL round trip: ``SELECT release_version FROM system.local``."""
        cluster = self.cluster(
            connect_timeout=timeout,
            control_connection_timeout=timeout,
            request_timeout=timeout,
        )
        try:
            session = cluster.connect()
            row = session.execute("SELECT release_version FROM system.local").one()
            return row.release_version
        finally:
            cluster.shutdown()

    def launch(self) -> float:
        """Start the JVM without waiting (a cluster launches all its nodes, then waits for
        them); returns the launch time (``time.monotonic()``)."""
        t0 = super().launch()
        self._paused = False
        return t0

    def _address(self) -> str:
        return f"{self._host}:{self._cql_port}"

    def _ready(self, deadline: float) -> bool:
        """A real CQL round trip (the driver raises many types while the node warms up)."""
        if not _port_open(self._host, self._cql_port):
            return False
        self.query_release_version(timeout=min(10.0, max(1.0, deadline - time.monotonic())))
        return True

    def _after_sigterm(self, proc: subprocess.Popen) -> None:
        if self._paused:  # a stopped process only acts on SIGTERM once continued
            _signal_group(proc.pid, signal.SIGCONT)
            self._paused = False

    def kill(self) -> None:
        """SIGKILL at once (no drain)."""
        super().kill()
        self._paused = False

    def pause(self) -> None:
        """SIGSTOP the node (it stops answering; connections stay open) - for fault tests."""
        if not self.running:
            raise CassandraNodeError("node is not running")
        _signal_group(self._proc.pid, signal.SIGSTOP)
        self._paused = True
        _wait_all_threads_stopped(self._proc.pid)

    def resume(self) -> None:
        """SIGCONT a paused node."""
        if not self.running:
            raise CassandraNodeError("node is not running")
        _signal_group(self._proc.pid, signal.SIGCONT)
        self._paused = False

    def __repr__(self) -> str:
        state = "paused" if self._paused else ("running" if self.running else "stopped")
        return f"<CassandraNode {self._host}:{self._cql_port} pid={self.pid} {state}>"


# --------------------------------------------------------------------------- cluster

#: JVM flags a cluster member adds to a single node's: a stopping node announces it to its peers
#: (they mark it down at once instead of after the failure detector's ~10 s), and a fresh node
#: whose seeds are all starting too waits at most 2 s in the gossip shadow round.
CLUSTER_JVM_ARGS = (
    "-Dcassandra.shutdown_announce_in_ms=300",
    "-Dcassandra.ring_delay_ms=2000",
)


def _free_port_on(hosts: list[str], exclude: set[int] = frozenset()) -> int:  # type: ignore[assignment]
    """A port free on every one of ``hosts`` (all members listen on the same ports)."""
    for _ in range(50):
        port = _free_port(hosts[0])
        if port in exclude:
            continue
        try:
            for host in hosts[1:]:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.bind((host, port))
        except OSError:
            continue
        return port
    raise CassandraNodeError(f"no port free on all of {', '.join(hosts)}")


def cluster_tokens(n: int) -> list[int]:
    """One Murmur3 token per node, evenly spaced: each node owns 1/n of the ring."""
    return [-(2**63) + i * (2**64 // n) for i in range(n)]


class CassandraCluster:
    """N real Cassandra 5.0 nodes on this machine, one per loopback address (127.0.0.1, .2, .3:
    Linux routes all of 127/8 to ``lo``), all on the same CQL and storage ports.

    A fresh ring, made to start fast: every node is a seed (so none waits for another to boot
    first: all JVMs start at once), each has one pre-computed token (``initial_token``, evenly
    spaced; ``auto_bootstrap: false``: there is no data to stream), and gossip settle waits are
    skipped. Ready means every node answers CQL, the driver sees all N hosts up, and a read at
    consistency ALL of ``system_distributed`` (RF=3) succeeds with each node as coordinator, i.e.
    every node's gossip sees every other one up.

    Faults per node: ``cluster.nodes[i].stop() / kill() / pause() / resume()``, and
    :meth:`restart` to bring one back with its data.
    """

    def __init__(
        self,
        *,
        lib_dir: Path,
        workdir: Path,
        nodes: int = 3,
        hosts: list[str] | None = None,
        cql_port: int | None = None,
        storage_port: int | None = None,
        heap: str = "1g",
        cluster_name: str = "chatscale",
        c1_only: bool = True,
        extra_jvm_args: tuple[str, ...] | list[str] = (),
    ) -> None:
        hosts = list(hosts or [f"127.0.0.{i + 1}" for i in range(nodes)])
        if len(set(hosts)) != len(hosts) or not hosts:
            raise CassandraNodeError(f"cluster hosts must be distinct: {hosts}")
        self.workdir = Path(workdir).resolve()
        self.cql_port = cql_port or _free_port_on(hosts)
        self.storage_port = storage_port or _free_port_on(hosts, {self.cql_port})
        seeds = ",".join(f"{h}:{self.storage_port}" for h in hosts)
        self.nodes = [
            CassandraNode(
                lib_dir=lib_dir,
                workdir=self.workdir / f"node{i + 1}",
                heap=heap,
                cql_port=self.cql_port,
                storage_port=self.storage_port,
                cluster_name=cluster_name,
                host=host,
                c1_only=c1_only,
                extra_jvm_args=(*CLUSTER_JVM_ARGS, *extra_jvm_args),
                seeds=seeds,
                initial_token=token,
            )
            for i, (host, token) in enumerate(zip(hosts, cluster_tokens(len(hosts)), strict=True))
        ]
        self._started_in: float | None = None

    @property
    def hosts(self) -> list[str]:
        return [n.host for n in self.nodes]

    @property
    def contact_points(self) -> str:
        """``127.0.0.1:9042,127.0.0.2:9042,...`` - the host part of a ``cassandra://`` URL."""
        return ",".join(f"{n.host}:{n.port}" for n in self.nodes)

    def url(self, keyspace: str = "chatscale", **query: object) -> str:
        """A storage URL for this cluster; keyword arguments become the query (``rf=3``)."""
        q = "&".join(f"{k}={v}" for k, v in query.items())
        return f"cassandra://{self.contact_points}/{keyspace}" + (f"?{q}" if q else "")

    @property
    def started_in(self) -> float | None:
        """Seconds the last :meth:`start` took (first launch to ready)."""
        return self._started_in

    @property
    def running(self) -> list[bool]:
        return [n.running for n in self.nodes]

    def start(self, timeout: float = 240.0) -> CassandraCluster:
        """Launch every node at once, then wait until the whole ring is up (see the class)."""
        t0 = time.monotonic()
        try:
            launched = [node.launch() for node in self.nodes]
            for node, started in zip(self.nodes, launched, strict=True):
                node._wait_ready(started, timeout - (started - t0))
                node._started_in = time.monotonic() - started
            self.wait_ring_up(timeout=max(10.0, t0 + timeout - time.monotonic()))
        except BaseException:
            for node in self.nodes:
                node.kill()
            raise
        self._started_in = time.monotonic() - t0
        return self

    def restart(self, *indexes: int, timeout: float = 180.0) -> None:
        """Start stopped members again (same data, token and ports; all at once) and wait for
        the whole ring."""
        nodes = [self.nodes[i] for i in indexes]
        try:
            launched = [node.launch() for node in nodes]
            for node, started in zip(nodes, launched, strict=True):
                node._wait_ready(started, timeout)
                node._started_in = time.monotonic() - started
        except BaseException:
            for node in nodes:
                node.kill()
            raise
        self.wait_ring_up(timeout=timeout)

    def cluster(self, **kwargs: Any):
        """A cassandra-driver ``Cluster`` with every node as a contact point."""
        cluster = self.nodes[0].cluster(**kwargs)
        cluster.contact_points = [n.host for n in self.nodes]
        return cluster

    def wait_ring_up(self, timeout: float = 60.0) -> None:
        """Block until the driver sees every node up and each node, as coordinator, can reach
        all replicas (a consistency-ALL read of ``system_distributed``, RF=3)."""
        from cassandra import ConsistencyLevel
        from cassandra.query import SimpleStatement

        deadline = time.monotonic() + timeout
        probe = SimpleStatement(
            "SELECT id FROM system_distributed.repair_history LIMIT 1",
            consistency_level=ConsistencyLevel.ALL,
        )
        last: object = None
        cluster = self.cluster(connect_timeout=5, control_connection_timeout=5)
        try:
            session = cluster.connect()
            while True:
                hosts = cluster.metadata.all_hosts()
                up = sorted(h.address for h in hosts if h.is_up)
                if up == sorted(self.hosts):
                    try:
                        for h in hosts:
                            session.execute(probe, host=h, timeout=5)
                        return
                    except Exception as exc:  # Unavailable while gossip converges
                        last = exc
                else:
                    last = f"driver sees up: {up or 'none'} of {self.hosts}"
                for node in self.nodes:
                    if not node.running:
                        raise CassandraNodeError(
                            f"{node.host} exited while the ring formed\n{node.log_tail()}"
                        )
                if time.monotonic() > deadline:
                    raise CassandraNodeError(
                        f"ring of {len(self.nodes)} not up after {timeout:.0f}s (last: {last})"
                    )
                time.sleep(0.25)
        finally:
            cluster.shutdown()

    def stop_node(self, index: int, timeout: float = 30.0) -> None:
        """Stop one member gracefully, then wait until every running member sees it down."""
        self.nodes[index].stop()
        self.wait_down(timeout=timeout)

    def wait_down(self, timeout: float = 30.0) -> None:
        """Block until each running member, as coordinator, counts every stopped member as
        down: a read of ``system_distributed`` (RF=3) at a consistency of one more replica
        than are running (TWO with one running, THREE with two) must be refused as
        Unavailable by each of them. For rings of up to 3 nodes."""
        from cassandra import ConsistencyLevel, Unavailable
        from cassandra.query import SimpleStatement

        live = [n for n in self.nodes if n.running]
        if not live or len(live) == len(self.nodes):
            return
        level = {1: ConsistencyLevel.TWO, 2: ConsistencyLevel.THREE}.get(len(live))
        if level is None:
            raise CassandraNodeError("wait_down covers rings of up to 3 nodes")
        probe = SimpleStatement(
            "SELECT id FROM system_distributed.repair_history LIMIT 1", consistency_level=level
        )
        deadline = time.monotonic() + timeout
        cluster = self.cluster(connect_timeout=5, control_connection_timeout=5)
        try:
            session = cluster.connect()
            pending = {n.host for n in live}
            while pending:
                for h in cluster.metadata.all_hosts():
                    if h.address not in pending or not h.is_up:
                        continue
                    try:
                        session.execute(probe, host=h, timeout=5)
                    except Unavailable:
                        pending.discard(h.address)
                    except Exception:  # a timeout: the coordinator still waits on a dead peer
                        pass
                if pending and time.monotonic() > deadline:
                    raise CassandraNodeError(
                        f"{', '.join(sorted(pending))} still count a stopped node as up "
                        f"after {timeout:.0f}s"
                    )
                if pending:
                    time.sleep(0.1)
        finally:
            cluster.shutdown()

    def stop(self) -> None:
        """Stop every node (SIGTERM, concurrently: each waits for its own drain)."""
        for node in self.nodes:
            if node.running:
                _signal_group(node.pid, signal.SIGTERM)
                if node._paused:
                    node.resume()
        for node in self.nodes:
            node.stop()

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()

    def __enter__(self) -> CassandraCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<CassandraCluster {self.contact_points} {self.running}>"


# --------------------------------------------------------------------------- CLI


def _cmd_run(args: argparse.Namespace, cache: Path, lib: Path) -> int:
    if args.nodes > 1:
        return _run_cluster(args, lib, cache)
    workdir = args.workdir or (cache / f"node-{args.port}")
    node = CassandraNode(
        lib_dir=lib,
        workdir=workdir,
        heap=args.heap,
        cql_port=args.port,
        storage_port=args.storage_port,
        cluster_name=args.cluster_name,
        c1_only=not args.full_jit,
    )

    def _ready() -> str:
        rss = node.rss_bytes()
        return (
            f"cassandra: ready at {node.host}:{node.port} (CQL, protocol v5, dc datacenter1) "
            f"in {node.started_in:.1f}s, pid {node.pid}"
            + (f", RSS {rss / 2**20:.0f} MiB" if rss else "")
            + "; Ctrl-C to stop"
        )

    return serve(
        "cassandra",
        node,
        timeout=args.timeout,
        starting=f"starting node in {node.workdir} (log: {node.system_log}) ...",
        ready=_ready,
        stopping="stopping (signal again to kill at once) ...",
    )


def _run_cluster(args: argparse.Namespace, lib: Path, cache: Path) -> int:
    hosts = [f"127.0.0.{i + 1}" for i in range(args.nodes)]
    port = args.port or _free_port_on(hosts)
    cluster = CassandraCluster(
        lib_dir=lib,
        workdir=args.workdir or (cache / f"cluster{args.nodes}-{port}"),
        hosts=hosts,
        cql_port=port,
        storage_port=args.storage_port or None,
        heap=args.heap,
        cluster_name=args.cluster_name,
        c1_only=not args.full_jit,
    )

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    print(
        f"cassandra: starting {args.nodes} nodes in {cluster.workdir} "
        f"(logs: node<N>/logs/system.log) ...",
        flush=True,
    )
    try:
        cluster.start(timeout=args.timeout)
    except CassandraNodeError as exc:
        print(f"cassandra: {exc}", file=sys.stderr)
        return 1
    rss = sum(n.rss_bytes() or 0 for n in cluster.nodes)
    print(
        f"cassandra: {args.nodes} nodes up in {cluster.started_in:.1f}s "
        f"(pids {', '.join(str(n.pid) for n in cluster.nodes)}, RSS {rss / 2**20:.0f} MiB in all)"
        f"\ncassandra: CHATSCALE_STORAGE_URL={cluster.url('chatscale', rf=args.nodes)}"
        "\ncassandra: Ctrl-C to stop",
        flush=True,
    )
    try:
        while all(cluster.running):
            time.sleep(1)
        gone = [n.host for n in cluster.nodes if not n.running]
        print(f"cassandra: node {', '.join(gone)} exited unexpectedly", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, SystemExit):
        print("cassandra: stopping ...", flush=True)
        cluster.stop()
        print("cassandra: stopped", flush=True)
        return 0
    finally:
        cluster.stop()


def main(argv: list[str] | None = None) -> int:
    parser, p_run = jar_cli(
        "python -m storage.cassandra_node",
        "Run a real Apache Cassandra 5.0 node (or a ring of --nodes N on 127.0.0.1..N) from "
        "Maven Central jars, without Docker. "
        f"Needs Java 11 or 17 and Maven on PATH ({INSTALL_HINT}).",
        version_flag="--cassandra-version",
        default_version=DEFAULT_VERSION,
        missing=missing_requirements,
        version_help=f"cassandra-all version (default {DEFAULT_VERSION}; falls back to "
        + ", ".join(FALLBACK_VERSIONS)
        + ")",
        fetch=fetch_jars,
        fetch_help="download the jars (cached) and print the lib dir",
        run=_cmd_run,
        run_help="start a node and keep it running until Ctrl-C / SIGTERM",
        run_description="Start a node, print its CQL address when a query succeeds, run until "
        "Ctrl-C or SIGTERM, then stop it gracefully. Data persists in --workdir.",
    )
    p_run.add_argument("--port", type=int, default=9042, help="CQL port (default 9042; 0 = free)")
    p_run.add_argument(
        "--storage-port", type=int, default=0, help="internode port (default: a free port)"
    )
    p_run.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="config, data and logs (default <cache-dir>/node-<port>)",
    )
    p_run.add_argument(
        "--heap", default="1g", help="maximum JVM heap, -Xmx (default 1g; -Xms is 256m)"
    )
    p_run.add_argument(
        "--full-jit",
        action="store_true",
        help="use the C2 JIT too: slower start (~2x on 2 cores), faster under sustained load",
    )
    p_run.add_argument("--cluster-name", default="chatscale", help="cluster_name in cassandra.yaml")
    p_run.add_argument(
        "--nodes",
        type=int,
        default=1,
        choices=range(1, 10),
        metavar="N",
        help="N > 1: a ring of N nodes on 127.0.0.1..N, same ports, every node a seed "
        "(default <cache-dir>/clusterN-<port> for --workdir)",
    )
    p_run.add_argument(
        "--timeout", type=float, default=180.0, help="seconds to wait for readiness (default 180)"
    )
    return run_cli(parser, argv, "cassandra", CassandraNodeError)


if __name__ == "__main__":
    sys.exit(main())
