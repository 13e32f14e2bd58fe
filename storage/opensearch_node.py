"""A real single-node OpenSearch 2.19, run from Maven Central jars, without Docker.

OpenSearch publishes its server as ``org.opensearch:opensearch`` and its modules as
``org.opensearch.plugin:<module>``, so the Cassandra recipe (storage/cassandra_node.py) works
here too, with more assembly: :func:`fetch_jars` resolves, with
``maven-dependency-plugin:copy-dependencies``, into ``<cache>/opensearch-<v>/``

* ``lib/``: the server and its runtime jars, plus two the server's POM leaves out although the
  distribution ships them: ``log4j-core`` (logging) and ``opensearch-plugin-classloader``;
* ``modules/transport-netty4/``: the HTTP and transport layer (without it the node has no
  HTTP port), with a ``plugin-descriptor.properties`` and ``plugin-security.policy`` written
  here as the distribution's build writes them;
* ``modules/analysis-common/``: analyzers and token filters outside the core (``asciifolding``,
  which the chatscale index uses to fold accents as SQLite's FTS5 does);
* ``plugins/``: empty (no security plugin: plain HTTP, no authentication).

That folder is ``path.home``; :class:`OpenSearchNode` writes ``opensearch.yml``,
``log4j2.properties`` and an empty ``jvm.options`` into its work directory (``path.conf``),
with data and logs there too, and starts ``org.opensearch.bootstrap.OpenSearch`` in its own
process group; it is ready when ``GET /_cluster/health?wait_for_status=green`` answers.

Checked on a 2-core Debian 12 VM (OpenJDK 17.0.15, Maven 3.8.7), running as root:

* ``opensearch:2.19.6`` is the newest release that runs on Java 17 (3.x needs 21). The server's
  runtime closure is 43 jars, 40 MB; the two modules add 10 jars.
* As root the node refuses to start ("can not run opensearch as root"): the check calls
  ``geteuid`` through JNA. Removing JNA from the classpath does not work in 2.19.6
  (``NoClassDefFoundError: com/sun/jna/win32/StdCallLibrary$StdCallCallback`` in
  ``Bootstrap.initializeNatives``). Keeping the jar but not its native library
  (``-Djna.nounpack=true -Djna.nosys=true -Djna.noclasspath=true``) takes OpenSearch's own
  "JNA not available" path: no root check, no ``mlockall``, no seccomp filter (WARN lines at
  startup). Fine for a loopback test node; a real deployment runs the docker image.
* ``network.host: 127.0.0.1`` keeps the node in development mode, so the bootstrap checks
  (``vm.max_map_count``, file descriptors, serial GC) are logged as warnings, not enforced.
* ``GET /`` answered 17 s after launch on the loaded 2-core machine (``-XX:TieredStopAtLevel=1``,
  512 MiB heap), ~280 MiB RSS.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from storage.jvm import (
    INSTALL_HINT,
    JvmError,
    JvmProcess,
    _free_port,
    _maven_errors,
    copy_dependencies,
    default_cache_dir,
    jar_cli,
    missing_java_or_maven,
    run_cli,
    serve,
)

__all__ = [
    "DEFAULT_VERSION",
    "OpenSearchNode",
    "OpenSearchNodeError",
    "fetch_jars",
    "missing_requirements",
]

DEFAULT_VERSION = "2.19.6"
LOG4J_VERSION = "2.25.4"  # the log4j-api the server depends on
SUPPORTED_JAVA = (11, 17, 21)
_MARKER = ".chatscale-complete"

# module directory -> (Maven coordinates, plugin class, description)
MODULES = {
    "transport-netty4": (
        "org.opensearch.plugin:transport-netty4-client",
        "org.opensearch.transport.Netty4Plugin",
        "Netty 4 based transport implementation",
    ),
    "analysis-common": (
        "org.opensearch.plugin:analysis-common",
        "org.opensearch.analysis.common.CommonAnalysisPlugin",
        "Adds analysis components that are in OpenSearch core",
    ),
}
# modules/transport-netty4/src/main/plugin-metadata/plugin-security.policy of 2.19
_NETTY_POLICY = """grant {
   permission java.io.FilePermission "/proc/sys/net/core/somaxconn", "read";
   permission java.net.SocketPermission "*", "accept,connect";
   permission java.lang.RuntimePermission "*", "setContextClassLoader";
   permission java.lang.RuntimePermission "getClassLoader";
   permission java.util.PropertyPermission "sun.nio.ch.bugLevel", "write";
};
"""


class OpenSearchNodeError(JvmError):
    """The node could not be fetched, started or stopped; the message carries the log tail."""


def missing_requirements() -> str | None:
    """None if ``java`` (11, 17 or 21) and ``mvn`` are on PATH, else what to install."""
    return missing_java_or_maven(
        "OpenSearch node",
        lambda major: major in SUPPORTED_JAVA,
        "OpenSearch 2.19 runs on 11, 17 or 21",
    )


# --------------------------------------------------------------------------- jars

_POM = """<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by chatscale (storage/opensearch_node.py): only used to resolve the jars. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.chatscale</groupId>
  <artifactId>opensearch-{name}</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
{deps}
  </dependencies>
</project>
"""


def _dep(coordinates: str) -> str:
    group, artifact, version = coordinates.split(":")
    return (
        f"    <dependency><groupId>{group}</groupId><artifactId>{artifact}</artifactId>"
        f"<version>{version}</version></dependency>"
    )


def _copy_dependencies(work: Path, name: str, coordinates: list[str], out: Path) -> None:
    pom = work / f"pom-{name}.xml"
    pom.write_text(_POM.format(name=name, deps="\n".join(_dep(c) for c in coordinates)))
    proc = copy_dependencies(pom, out)
    if proc.returncode != 0:
        raise OpenSearchNodeError(
            f"mvn failed for {', '.join(coordinates)} (exit {proc.returncode}):\n"
            + _maven_errors(proc.stdout + "\n" + proc.stderr)
        )


def _home_complete(home: Path, version: str) -> bool:
    return (home / _MARKER).is_file() and (home / "lib" / f"opensearch-{version}.jar").is_file()


def fetch_jars(
    version: str = DEFAULT_VERSION,
    cache_dir: Path | None = None,
    progress: Callable[[str], Any] = print,
) -> Path:
    """Assemble ``<cache>/opensearch-<version>/`` (lib, modules, plugins) and return it: the
    node's ``path.home``. A completed folder is returned at once, without Maven."""
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    home = cache / f"opensearch-{version}"
    if _home_complete(home, version):
        return home
    if shutil.which("mvn") is None:
        raise OpenSearchNodeError(missing_requirements() or "mvn not found on PATH")
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f".opensearch-{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _home_complete(home, version):
            return home
        progress(f"opensearch: resolving org.opensearch:opensearch:{version} from Maven (~45 MB)")
        t0 = time.monotonic()
        staging = cache / f"opensearch-{version}.partial-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            _copy_dependencies(
                staging,
                "server",
                [
                    f"org.opensearch:opensearch:{version}",
                    f"org.opensearch:opensearch-plugin-classloader:{version}",
                    f"org.apache.logging.log4j:log4j-core:{LOG4J_VERSION}",
                ],
                staging / "lib",
            )
            for name, (artifact, classname, description) in MODULES.items():
                folder = staging / "modules" / name
                _copy_dependencies(staging, name, [f"{artifact}:{version}"], folder)
                (folder / "plugin-descriptor.properties").write_text(
                    f"description={description}\nversion={version}\nname={name}\n"
                    f"classname={classname}\njava.version=11\nopensearch.version={version}\n"
                    "extended.plugins=\nhas.native.controller=false\n"
                )
                if name == "transport-netty4":
                    (folder / "plugin-security.policy").write_text(_NETTY_POLICY)
            (staging / "plugins").mkdir()
            for pom in staging.glob("pom-*.xml"):
                pom.unlink()
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        jars = len(list(staging.rglob("*.jar")))
        (staging / _MARKER).write_text(f"opensearch {version}\n{jars} jars\n")
        shutil.rmtree(home, ignore_errors=True)
        staging.rename(home)
        progress(f"opensearch: {jars} jars in {time.monotonic() - t0:.1f}s -> {home}")
        return home


# --------------------------------------------------------------------------- node

_LOG4J2 = """status = error
appender.console.type = Console
appender.console.name = console
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d{ISO8601}][%-5p][%-25c{1.}] %m%n
rootLogger.level = info
rootLogger.appenderRef.console.ref = console
logger.deprecation.name = org.opensearch.deprecation
logger.deprecation.level = error
"""


class OpenSearchNode(JvmProcess):
    """One OpenSearch JVM on 127.0.0.1 with config, data and logs in ``workdir``; ready when
    ``GET /_cluster/health?wait_for_status=green`` answers."""

    name = "OpenSearch"
    error = OpenSearchNodeError
    start_timeout = 180.0
    stop_timeout = 30.0
    probe_errors = (OSError, urllib.error.URLError, ValueError)

    def __init__(
        self,
        *,
        home: Path,
        workdir: Path,
        http_port: int | None = None,
        transport_port: int | None = None,
        heap: str = "512m",
        c1_only: bool = True,
        java: str | None = None,
    ) -> None:
        super().__init__(workdir=workdir, java=java)
        self.home = Path(home).resolve()
        self.host = "127.0.0.1"
        self.port = http_port or _free_port(self.host)
        self.transport_port = transport_port or _free_port(self.host)
        while self.transport_port == self.port:
            self.transport_port = _free_port(self.host)
        self.heap = heap
        self.c1_only = c1_only

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def search_url(self, index: str) -> str:
        """The ``CHATSCALE_SEARCH_URL`` for an index on this node."""
        return f"opensearch://{self.host}:{self.port}/{index}"

    def config(self) -> str:
        w = self.workdir
        return (
            "# Written by chatscale (storage/opensearch_node.py) for a single local node.\n"
            "cluster.name: chatscale-search\n"
            "node.name: node-1\n"
            f"path.data: {json.dumps(str(w / 'data'))}\n"
            f"path.logs: {json.dumps(str(w / 'logs'))}\n"
            f"network.host: {self.host}\n"
            f"http.port: {self.port}\n"
            f"transport.port: {self.transport_port}\n"
            "discovery.type: single-node\n"
            # a nearly full shared disk must not turn test indices read-only
            "cluster.routing.allocation.disk.threshold_enabled: false\n"
        )

    def _write_config(self) -> None:
        for sub in ("config", "data", "logs", "tmp"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        (self.workdir / "config" / "opensearch.yml").write_text(self.config())
        (self.workdir / "config" / "log4j2.properties").write_text(_LOG4J2)
        (self.workdir / "config" / "jvm.options").write_text("")

    def _missing_requirements(self) -> str | None:
        return missing_requirements()

    def _env(self) -> dict[str, str]:
        return {**os.environ, "OPENSEARCH_PATH_CONF": str(self.workdir / "config")}

    def command(self) -> list[str]:
        if not any((self.home / "lib").glob("opensearch-*.jar")):
            raise OpenSearchNodeError(f"no opensearch jar in {self.home}/lib; run fetch_jars()")
        w = self.workdir
        return [
            self._java(),
            "-Xms256m",
            f"-Xmx{self.heap}",
            "-XX:+UseSerialGC",  # small heap, 2 shared cores
            *(["-XX:TieredStopAtLevel=1"] if self.c1_only else []),
            "-Xss1m",
            "-Djava.awt.headless=true",
            "-Dfile.encoding=UTF-8",
            "-Djna.nounpack=true",  # JNA's native part off: see the module docstring (root)
            "-Djna.nosys=true",
            "-Djna.noclasspath=true",
            "-Dio.netty.noUnsafe=true",
            "-Dio.netty.noKeySetOptimization=true",
            "-Dio.netty.recycler.maxCapacityPerThread=0",
            "-Dlog4j.shutdownHookEnabled=false",
            "-Dlog4j2.disable.jmx=true",
            "-Dlog4j2.formatMsgNoLookups=true",
            "-Djava.locale.providers=SPI,COMPAT",
            "-Djava.security.manager=allow",
            f"-Djava.io.tmpdir={w / 'tmp'}",
            f"-Dopensearch.path.home={self.home}",
            f"-Dopensearch.path.conf={w / 'config'}",
            "-Dopensearch.distribution.type=tar",
            "-Dopensearch.bundled_jdk=false",
            "-cp",
            f"{self.home / 'lib'}/*",
            "org.opensearch.bootstrap.OpenSearch",
        ]

    def request(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
        """One HTTP request to the node (stdlib only); the decoded JSON answer."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"null")

    def _address(self) -> str:
        return self.url

    def _ready(self, deadline: float) -> bool:
        health = self.request("GET", "/_cluster/health?wait_for_status=green&timeout=1s")
        return health.get("status") == "green"

    def __repr__(self) -> str:
        return f"<OpenSearchNode {self.url} pid={self.pid} running={self.running}>"


# --------------------------------------------------------------------------- CLI


def _cmd_run(args: argparse.Namespace, cache: Path, home: Path) -> int:
    node = OpenSearchNode(
        home=home,
        workdir=args.workdir or (cache / f"opensearch-node-{args.port}"),
        http_port=args.port,
    )
    return serve(
        "opensearch",
        node,
        timeout=args.timeout,
        starting=f"starting in {node.workdir} ...",
        ready=lambda: (
            f"opensearch: ready at {node.url} in {node.started_in:.1f}s, pid {node.pid}; "
            f"CHATSCALE_SEARCH_URL='{node.search_url('chatscale-messages')}'; Ctrl-C to stop"
        ),
    )


def main(argv: list[str] | None = None) -> int:
    parser, p_run = jar_cli(
        "python -m storage.opensearch_node",
        "Run a real single-node OpenSearch 2.19 from Maven Central jars, without "
        f"Docker (no security plugin: plain HTTP). Needs Java 17 and Maven ({INSTALL_HINT}).",
        version_flag="--opensearch-version",
        default_version=DEFAULT_VERSION,
        missing=missing_requirements,
        fetch=fetch_jars,
        fetch_help="assemble the jars, print the home",
        run=_cmd_run,
        run_help="start a node until Ctrl-C",
    )
    p_run.add_argument("--port", type=int, default=9200, help="HTTP port (default 9200)")
    p_run.add_argument("--workdir", type=Path, default=None, help="config, data and logs")
    p_run.add_argument("--timeout", type=float, default=180.0, help="readiness wait, seconds")
    return run_cli(parser, argv, "opensearch", OpenSearchNodeError)


if __name__ == "__main__":
    sys.exit(main())
