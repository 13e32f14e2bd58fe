"""What every service's Prometheus metrics share (documented in docs/metrics.md): the registry,
the HTTP endpoint and its registration in Redis, the stage and message-age histograms every
service observes, the queue gauges, and a base for collectors over live service objects.

Each service defines its own metrics next to its code (``gateway/metrics.py``,
``workers/metrics.py``, ``presence/metrics.py``) and imports this module; this module imports no
service. A hook in a hot path stays a counter increment or a histogram observation.

Two kinds of latency:

- ``chatscale_stage_seconds{stage}``: how long one piece of work took inside one process,
  measured with ``perf_counter`` (a gateway's XADD, a worker's hot-cache MULTI, ...).
- ``chatscale_message_age_seconds{hop}``: how old a message is when it reaches a hop, counted
  from the millisecond in its snowflake id, which the gateway mints on receipt. Every message
  has one, so no envelope field is needed; the price is millisecond resolution and, across
  machines, clock skew (the same caveat as ``chatscale trace``).

Counters that the services already keep (the worker pipeline's ``Stats``, the presence
coalescer's ``CoalescerStats``, a gateway's open connections) are read at scrape time by
collectors holding weak references, so they cost nothing between scrapes. Consumer-group lag
and pending entries are read from Redis at scrape time by worker processes (every worker
reports the same numbers: aggregate with ``max``).

``serve()`` starts the endpoint when ``CHATSCALE_METRICS_PORT`` is set (0, the default, keeps
it off, as in tests) and registers the URL in Redis with a TTL so ``chatscale top`` can find
every process without being told.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any, ParamSpec, TypeVar
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, Counter, Histogram, Info, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from chatscale import snowflake
from chatscale.config import Settings
from chatscale.keys import INGEST_GROUP, PRESENCE_GROUP, Keys

log = logging.getLogger("chatscale.metrics")

P = ParamSpec("P")
T = TypeVar("T")

STAGE_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
)  # fmt: skip
AGE_BUCKETS = (
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
REGISTRATION_TTL_S = 15
REGISTRATION_EVERY_S = 5.0

# ---- metrics updated by hooks ---------------------------------------------------------------

SERVICE = Info("chatscale_service", "Which service this process is (role, name).")
STAGE = Histogram(
    "chatscale_stage_seconds",
    "Time one stage took inside one process (gateway_publish per message; worker stages per "
    "batch, authorize per message; presence_publish and presence_save per tick).",
    ["stage"],
    buckets=STAGE_BUCKETS,
)
STAGE_FAILURES = Counter(
    "chatscale_stage_failures_total", "Stages that raised (the work is retried).", ["stage"]
)
AGE = Histogram(
    "chatscale_message_age_seconds",
    "Age of a message (since the gateway received it, from its snowflake id) when it reaches "
    "a hop: worker_read, worker_done (stored and fanned out), delivered (queued to sockets).",
    ["hop"],
    buckets=AGE_BUCKETS,
)


def clock() -> float:
    return time.perf_counter()


def stage(name: str, started: float) -> None:
    """Observe a stage that began at ``started`` (a ``clock()`` value)."""
    STAGE.labels(name).observe(time.perf_counter() - started)


def timed(name: str) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """Decorate an async stage: its duration goes to ``chatscale_stage_seconds{stage=name}``,
    a raise to ``chatscale_stage_failures_total``."""
    hist = STAGE.labels(name)
    failures = STAGE_FAILURES.labels(name)

    def wrap(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        @functools.wraps(fn)
        async def inner(*args: P.args, **kwargs: P.kwargs) -> T:
            started = time.perf_counter()
            try:
                result = await fn(*args, **kwargs)
            except BaseException:
                failures.inc()
                raise
            hist.observe(time.perf_counter() - started)
            return result

        return inner

    return wrap


def age_s(message_id: int, now_ms: float) -> float:
    return max(0.0, (now_ms - snowflake.timestamp_ms(message_id)) / 1000)


def messages_at(hop: str, messages: Iterable[Any]) -> int:
    """Observe the age of each message (anything with an ``id`` snowflake) at ``hop``; returns
    how many there were."""
    hist = AGE.labels(hop)
    now_ms = time.time() * 1000
    n = 0
    for m in messages:
        hist.observe(age_s(m.id, now_ms))
        n += 1
    return n


# ---- collectors: state the services already keep, read at scrape time -------------------------


class Watched(Collector):
    """A collector over weakly held service objects (tests create and drop many)."""

    def __init__(self) -> None:
        self.objects: weakref.WeakSet[Any] = weakref.WeakSet()

    def alive(self) -> list[Any]:
        return list(self.objects)


class QueueCollector(Collector):
    """Consumer-group lag and pending entries of every stream, read from Redis per scrape.

    Runs in the HTTP server's thread with its own synchronous client, so a slow Redis delays
    a scrape, never the service's event loop.
    """

    def __init__(self, settings: Settings) -> None:

        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        from chatscale.redisconn import connect_sync

        self.redis = connect_sync(str(settings.redis_url), timeout_s=settings.redis_timeout_s)

    def collect(self) -> Iterator[Any]:
        lag = GaugeMetricFamily(
            "chatscale_stream_lag",
            "Entries in the stream not yet delivered to the consumer group.",
            labels=["stream", "group"],
        )
        pending = GaugeMetricFamily(
            "chatscale_stream_pending",
            "Entries delivered to a consumer but not acked (in flight, or left by a dead one).",
            labels=["stream", "group"],
        )
        length = GaugeMetricFamily(
            "chatscale_stream_length", "XLEN of the stream.", labels=["stream"]
        )
        errors = 0
        streams = [(s, INGEST_GROUP) for s in self.keys.ingest_all(self.settings.ingest_shards)]
        streams += [
            (s, PRESENCE_GROUP)
            for s in self.keys.presence_in_all(self.settings.presence_partitions)
        ]
        for stream, group in streams:
            try:
                info = queue_info(self.redis, stream, group)
            except Exception:  # noqa: BLE001 - a scrape must not fail because Redis did
                errors += 1
                continue
            lag.add_metric([stream, group], info["lag"])
            pending.add_metric([stream, group], info["pending"])
            length.add_metric([stream], info["length"])
        try:
            length.add_metric([self.keys.dead_letter()], self.redis.xlen(self.keys.dead_letter()))
        except Exception:  # noqa: BLE001
            errors += 1
        yield lag
        yield pending
        yield length
        yield GaugeMetricFamily(
            "chatscale_stream_scrape_errors",
            "Streams whose numbers could not be read from Redis during this scrape.",
            value=errors,
        )


def queue_info(redis: Any, stream: str, group: str) -> dict[str, int]:
    """Length, lag and pending of one consumer group (sync client; 0s if nothing exists)."""
    from redis.exceptions import ResponseError

    try:
        groups = redis.xinfo_groups(stream)
    except ResponseError:  # no such key yet
        return {"length": 0, "lag": 0, "pending": 0}
    length = redis.xlen(stream)
    for g in groups:
        name = g.get("name")
        if (name.decode() if isinstance(name, bytes) else name) == group:
            lag = g.get("lag")
            return {
                "length": int(length),
                # lag is nil when Redis cannot compute it (after XDEL); fall back to length.
                "lag": int(lag) if lag is not None else int(length),
                "pending": int(g.get("pending", 0)),
            }
    return {"length": int(length), "lag": int(length), "pending": 0}


_queues: QueueCollector | None = None  # worker processes register one


# ---- the endpoint ---------------------------------------------------------------------------


_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\n"
    b"Connection: close\r\n\r\n"
)


class _BoundedServer(ThreadingMixIn, WSGIServer):
    """A thread per request, as prometheus_client's server, but at most ``max_threads`` at
    once, and each request's socket has a timeout (the handler's ``timeout``).

    prometheus_client's own server starts an unbounded thread per connection with no timeout:
    a client that opens connections and sends nothing (or reads nothing) holds a thread each,
    for as long as it likes. Here a connection over the cap gets an immediate 503 and is
    closed, and a slow one is dropped after the timeout, so a scraper finds a free slot again
    within that time.
    """

    daemon_threads = True
    max_threads = 4
    request_queue_size = 64  # listen backlog: a burst is answered (503) rather than left in SYN

    def server_activate(self) -> None:
        self._slots = threading.BoundedSemaphore(self.max_threads)
        super().server_activate()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            try:
                request.settimeout(0.1)
                request.sendall(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("metrics request from %s failed", client_address, exc_info=True)


class _QuietHandler(WSGIRequestHandler):
    timeout = 5.0

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass


class Exporter:
    """A running /metrics endpoint and its registration in Redis."""

    def __init__(self, settings: Settings, *, role: str, name: str, port: int) -> None:
        self.settings = settings
        self.role = role
        self.name = name
        self.port = port
        self.url = self._url(port)
        self._stop = threading.Event()
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def _url(self, port: int) -> str:
        host = self.settings.metrics_host
        advertised = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
        return f"http://{advertised}:{port}/metrics"

    def start(self) -> None:
        """Serve on ``metrics_host:port`` (0 picks a free port) from a background thread, with
        at most ``metrics_max_requests`` request threads of ``metrics_request_timeout_s``."""
        server = type(
            "MetricsServer",
            (_BoundedServer,),
            {
                "max_threads": self.settings.metrics_max_requests,
                "address_family": socket.AF_INET6
                if ":" in self.settings.metrics_host
                else socket.AF_INET,
            },
        )
        handler = type(
            "MetricsHandler", (_QuietHandler,), {"timeout": self.settings.metrics_request_timeout_s}
        )
        self._server = make_server(
            self.settings.metrics_host,
            max(self.port, 0),  # 0 or -1: any free port; advertise the one bound
            make_wsgi_app(REGISTRY),
            server_class=server,
            handler_class=handler,
        )
        self.port = self._server.server_port
        self.url = self._url(self.port)
        threading.Thread(
            target=self._server.serve_forever, name="metrics-http", daemon=True
        ).start()
        self.register_forever()

    def register_forever(self) -> None:
        """Renew the registration until ``close()``; a thread, so no event loop is needed."""
        if not self.settings.redis_url:
            return
        self._thread = threading.Thread(
            target=self._register_loop, name="metrics-registration", daemon=True
        )
        self._thread.start()

    def _register_loop(self) -> None:

        from chatscale.redisconn import connect_sync

        client = connect_sync(str(self.settings.redis_url), timeout_s=self.settings.redis_timeout_s)
        key = Keys(self.settings.key_prefix).metrics_endpoint(self.name)
        value = json.dumps(
            {"role": self.role, "name": self.name, "url": self.url, "pid": os.getpid()}
        )
        try:
            while not self._stop.is_set():
                try:
                    client.set(key, value, ex=REGISTRATION_TTL_S)
                except Exception as exc:  # noqa: BLE001 - Redis down: try again next time
                    log.debug("metrics registration failed: %s", exc)
                self._stop.wait(REGISTRATION_EVERY_S)
            try:
                client.delete(key)
            except Exception:  # noqa: BLE001
                pass
        finally:
            client.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.settings.redis_timeout_s + 1)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def serve(settings: Settings, *, role: str, name: str) -> Exporter | None:
    """Start this process's /metrics endpoint if ``metrics_port`` is set; None otherwise.

    role: gateway, worker or presence (workers also export the queue gauges).
    name: this process's id (gateway id, consumer name), unique in the topology.
    """
    global _queues
    if not settings.metrics_port:
        return None
    SERVICE.info({"role": role, "name": name})
    if role == "worker" and settings.redis_url and _queues is None:
        _queues = QueueCollector(settings)
        REGISTRY.register(_queues)
    exporter = Exporter(settings, role=role, name=name, port=settings.metrics_port)
    exporter.start()
    log.info("metrics for %s %s on %s", role, name, exporter.url)
    return exporter


def child_port(settings: Settings, index: int) -> int:
    """The metrics port of the ``index``-th child of ``chatscale run`` (0 when metrics are off,
    -1 for every child when each picks a free port)."""
    return settings.metrics_port + index if settings.metrics_port > 0 else settings.metrics_port
