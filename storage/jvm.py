"""What every JVM server chatscale runs from Maven Central jars has in common.

Cassandra (storage/cassandra_node.py), S3Proxy (storage/s3proxy_node.py) and OpenSearch
(storage/opensearch_node.py) are each one ``java -cp "<lib>/*" <main class>`` child process with
the same life: config files into a work directory, the JVM in its own process group (so a signal
reaches the server and nothing else) with stdout/stderr appended to a console log, a readiness
probe polled until it answers, SIGTERM then SIGKILL to stop, and a finalizer that kills the group
if the owner forgets (also at interpreter exit). :class:`JvmProcess` is that life; a subclass says
only what is its own: files, command line, readiness probe, address.

Also shared: the Java/Maven check (:func:`missing_java_or_maven`), the jar cache
(:func:`default_cache_dir`) and Maven's ``copy-dependencies`` run (:func:`copy_dependencies`),
and the ``python -m storage.<x>_node fetch|run`` command line (:func:`jar_cli`, :func:`run_cli`;
:func:`serve` is the run loop: start, print the address, wait for SIGINT/SIGTERM, stop).

A core module: imports nothing above storage/.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import weakref
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Self

from chatscale.procutil import die_with_parent

__all__ = [
    "DEPENDENCY_PLUGIN",
    "INSTALL_HINT",
    "JvmError",
    "JvmProcess",
    "copy_dependencies",
    "default_cache_dir",
    "jar_cli",
    "java_major_version",
    "missing_java_or_maven",
    "run_cli",
    "serve",
]

DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
INSTALL_HINT = "apt-get install openjdk-17-jre-headless maven"
_LOG_TAIL_LINES = 40


class JvmError(RuntimeError):
    """Base of the node errors (``CassandraNodeError``, ...): fetch, start or stop failed."""


def java_major_version(java: str = "java") -> int | None:
    """Major version of ``java`` (8, 11, 17, 21, ...), or None if it cannot be run."""
    exe = shutil.which(java)
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not m:
        return None
    major = int(m.group(1))
    if major == 1 and m.group(2):  # "1.8.0_392" -> 8
        major = int(m.group(2))
    return major


def missing_java_or_maven(
    server: str, java_ok: Callable[[int], bool], wrong_java: str, advice: str = ""
) -> str | None:
    """None if a ``java`` that ``java_ok`` accepts and ``mvn`` are on PATH, else a sentence
    saying what to install ("Cannot run a local <server>: ...; <wrong_java>. Install ...")."""
    problems = []
    major = java_major_version()
    if major is None:
        problems.append("no `java` on PATH")
    elif not java_ok(major):
        problems.append(f"`java` on PATH is Java {major}; {wrong_java}")
    if shutil.which("mvn") is None:
        problems.append("no `mvn` (Maven) on PATH")
    if not problems:
        return None
    return (
        f"Cannot run a local {server}: "
        + "; ".join(problems)
        + f". Install them, e.g. `{INSTALL_HINT}` (Debian/Ubuntu){advice}."
    )


def default_cache_dir() -> Path:
    """``$CHATSCALE_CASSANDRA_CACHE`` or ``~/.cache/chatscale``."""
    env = os.environ.get("CHATSCALE_CASSANDRA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "chatscale"


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_MAVEN_BOILERPLATE = re.compile(
    r"^\[ERROR\]\s*(|To see the full stack.*|Re-run Maven.*|For more information.*|\[Help 1\].*)$"
)


def _maven_errors(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    kept = [
        line
        for line in _ANSI.sub("", text).splitlines()
        if line.strip() and not _MAVEN_BOILERPLATE.match(line.strip())
    ]
    return "\n".join(kept[-lines:]) or "(no output)"


def copy_dependencies(pom: Path, out: Path) -> subprocess.CompletedProcess[str]:
    """``mvn dependency:copy-dependencies``: every runtime jar of ``pom``'s dependencies into
    ``out``. The caller checks the result (``_maven_errors`` makes its output readable)."""
    cmd = [
        shutil.which("mvn") or "mvn",
        "-B",
        "-q",
        "-U",  # re-check artifacts an earlier failed download marked *.lastUpdated
        "-Dstyle.color=never",
        "-f",
        str(pom),
        f"{DEPENDENCY_PLUGIN}:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={out}",
    ]
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _reap(proc: subprocess.Popen, log_file) -> None:
    """Finalizer (also at interpreter exit): kill the server's process group, close the log."""
    try:
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGKILL)
            _signal_group(proc.pid, signal.SIGCONT)  # a SIGSTOPped group, too
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
    finally:
        with contextlib.suppress(Exception):
            log_file.close()


class JvmProcess:
    """One JVM child process with its files in ``workdir``.

    A subclass sets the class attributes and implements :meth:`_write_config`, :meth:`command`,
    :meth:`_ready` (one readiness probe: True when ready; an exception in ``probe_errors`` means
    "not yet" and is reported if the wait times out), :meth:`_address` and
    :meth:`_missing_requirements`.
    """

    #: the server's name in messages ("Cassandra exited with code 3 during startup")
    name = "JVM"
    #: what "already running" calls it
    noun = "node"
    #: raised for every failure, with the log tail
    error: type[Exception] = JvmError
    start_timeout = 180.0
    stop_timeout = 30.0
    poll_interval = 0.25
    probe_errors: tuple[type[BaseException], ...] = (Exception,)

    def __init__(self, *, workdir: Path, java: str | None = None) -> None:
        self.workdir = Path(workdir).resolve()
        self.java = java
        self._proc: subprocess.Popen | None = None
        self._finalizer: weakref.finalize | None = None
        self._started_in: float | None = None

    # ---- what a subclass provides

    def _write_config(self) -> object:
        raise NotImplementedError

    def command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self, deadline: float) -> bool:
        raise NotImplementedError

    def _address(self) -> str:
        raise NotImplementedError

    def _missing_requirements(self) -> str | None:
        return None

    def _env(self) -> dict[str, str] | None:
        """The JVM's environment (None: this process's)."""
        return None

    # ---- state

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def started_in(self) -> float | None:
        """Seconds the last successful :meth:`start` took (launch to ready)."""
        return self._started_in

    @property
    def console_log(self) -> Path:
        """JVM stdout/stderr (WARN+ log lines, JVM errors)."""
        return self.workdir / "logs" / "console.log"

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        try:
            with open(self.console_log, errors="replace") as f:
                tail = "".join(deque(f, maxlen=lines)).rstrip()
        except OSError:
            return "(no log output)"
        return f"--- last {lines} lines of {self.console_log} ---\n{tail or '(empty)'}"

    def _java(self) -> str:
        if self.java:
            return self.java
        java_home = os.environ.get("JAVA_HOME")
        if java_home and (Path(java_home) / "bin" / "java").is_file():
            return str(Path(java_home) / "bin" / "java")
        exe = shutil.which("java")
        if exe is None:
            raise self.error(self._missing_requirements() or "java not found on PATH")
        return exe

    # ---- lifecycle

    def start(self, timeout: float | None = None) -> Self:
        """Launch the JVM and block until it is ready; raise with the log tail if not."""
        t0 = self.launch()
        try:
            self._wait_ready(t0, self.start_timeout if timeout is None else timeout)
        except BaseException:
            self.kill()
            raise
        self._started_in = time.monotonic() - t0
        return self

    def launch(self) -> float:
        """Start the JVM without waiting; returns the launch time (``time.monotonic()``)."""
        if self.running:
            raise self.error(f"{self.noun} already running (pid {self.pid})")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        cmd = self.command()
        self.console_log.parent.mkdir(parents=True, exist_ok=True)
        log_file = open(self.console_log, "ab")  # closed by the finalizer
        log_file.write(f"\n=== {time.strftime('%F %T')} chatscale start ===\n".encode())
        log_file.flush()
        t0 = time.monotonic()
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=self._env(),
                start_new_session=True,  # own process group: signals reach only the server
                preexec_fn=die_with_parent(signal.SIGKILL),
            )
        except OSError as exc:
            log_file.close()
            raise self.error(f"could not launch {cmd[0]}: {exc}") from exc
        self._proc = proc
        self._started_in = None
        self._finalizer = weakref.finalize(self, _reap, proc, log_file)
        return t0

    def _wait_ready(self, t0: float, timeout: float) -> None:
        assert self._proc is not None
        deadline = t0 + timeout
        last_error: BaseException | None = None
        while True:
            code = self._proc.poll()
            if code is not None:
                raise self.error(
                    f"{self.name} exited with code {code} during startup "
                    f"(after {time.monotonic() - t0:.1f}s)\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise self.error(
                    f"{self.name} not ready on {self._address()} after {timeout:.0f}s "
                    f"(last error: {last_error!r})\n{self.log_tail()}"
                )
            try:
                if self._ready(deadline):
                    return
            except self.probe_errors as exc:  # refused, reset, ... while the server starts
                last_error = exc
            time.sleep(self.poll_interval)

    def _after_sigterm(self, proc: subprocess.Popen) -> None:
        """Hook between SIGTERM and the wait (a paused node must be continued)."""

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM (graceful), then SIGKILL after ``timeout``. Returns the JVM's exit code."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            self._after_sigterm(proc)
            try:
                proc.wait(timeout=self.stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        if self._finalizer is not None:
            self._finalizer()  # closes the log file; nothing left to kill
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL at once (no drain)."""
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def serve(
    prog: str,
    node: JvmProcess,
    *,
    timeout: float,
    ready: Callable[[], str],
    starting: str | None = None,
    setup: Callable[[], object] | None = None,
    stopping: str | None = None,
    what: str = "node",
) -> int:
    """The ``run`` command: start ``node`` (then ``setup()``), print ``ready()``, run until
    SIGINT/SIGTERM, stop gracefully. Returns the exit status: 0 after a signal, 1 if the server
    failed to start or exited by itself."""
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)  # also when started with SIGINT ignored (nohup, &)
    if starting:
        print(f"{prog}: {starting}", flush=True)
    try:
        node.start(timeout=timeout)
        if setup is not None:
            setup()
    except node.error as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        node.stop()  # no-op after a failed start (it kills); stops it if setup() failed
        return 1
    print(ready(), flush=True)
    try:
        while node.running:
            time.sleep(1)
        print(f"{prog}: {what} exited unexpectedly\n{node.log_tail()}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, SystemExit):
        if stopping:
            print(f"{prog}: {stopping}", flush=True)
        code = node.stop()
        print(f"{prog}: stopped (JVM exit code {code})", flush=True)
        return 0
    finally:
        node.stop()  # no-op when already stopped; SIGKILL fallback otherwise


def jar_cli(
    prog: str,
    description: str,
    *,
    version_flag: str,
    default_version: str,
    version_help: str | None = None,
    missing: Callable[[], str | None],
    fetch: Callable[[str, Path | None], Path],
    fetch_help: str,
    run: Callable[[argparse.Namespace, Path, Path], int],
    run_help: str,
    run_description: str | None = None,
) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The parser of ``python -m storage.<x>_node``: ``fetch`` (resolve the jars, print where
    they are) and ``run``, both with ``version_flag`` and ``--cache-dir``. ``run`` exits 2 with
    ``missing()``'s sentence if Java or Maven is missing, else fetches and calls
    ``run(args, cache_dir, fetched)``. Returns the parser and the ``run`` subparser, for the
    module's own options; :func:`run_cli` runs it."""

    def _run(args: argparse.Namespace) -> int:
        problem = missing()
        if problem:
            print(problem, file=sys.stderr)
            return 2
        cache = args.cache_dir or default_cache_dir()
        return run(args, cache, fetch(args.version, cache))

    parser = argparse.ArgumentParser(prog=prog, description=description)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(version_flag, dest="version", default=default_version, help=version_help)
    common.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="jar cache (default $CHATSCALE_CASSANDRA_CACHE or ~/.cache/chatscale)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_fetch = sub.add_parser("fetch", parents=[common], help=fetch_help)
    p_fetch.set_defaults(func=lambda args: print(fetch(args.version, args.cache_dir)) or 0)
    p_run = sub.add_parser("run", parents=[common], help=run_help, description=run_description)
    p_run.set_defaults(func=_run)
    return parser, p_run


def run_cli(
    parser: argparse.ArgumentParser, argv: list[str] | None, tag: str, error: type[Exception]
) -> int:
    """Parse ``argv`` and run the command; ``error`` becomes one line on stderr and exit 1."""
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except error as exc:
        print(f"{tag}: {exc}", file=sys.stderr)
        return 1
