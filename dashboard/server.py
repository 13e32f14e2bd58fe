"""The dashboard's HTTP server: the standard library's asyncio streams, one port, loopback.

Routes: ``GET /`` and ``/static/*`` (the page, every asset served from this package: no CDN),
``GET /events`` (server-sent events once a second while a page is open: the Redis figures
read every second, the per-process /metrics figures scraped every ``METRICS_EVERY_S``), ``GET /api/state|knobs|results``, ``GET /results/{lab|loadtest}/NAME/`` (a result's
page), and the actions ``POST /api/trace|fault|knob|chat``, which need the run's admin token in
``X-Admin-Token`` (403 otherwise). Figures are collected only while at least one page listens,
so a closed dashboard costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from chatscale.config import Settings
from chatscale.redisconn import connect
from dashboard import results
from dashboard.figures import SHOWN, figures, parse
from ops import top

STATIC = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
           409: "Conflict", 413: "Payload Too Large", 500: "Internal Server Error"}  # fmt: skip
MAX_BODY = 64 * 1024
#: How often the per-process /metrics pages are scraped while a page is open; Redis (queues,
#: workers, presence) is read every ``interval_s``. Scraping and rendering every process's
#: histograms once a second was most of the page's cost (README, "Dashboard").
METRICS_EVERY_S = 5.0
log = logging.getLogger("dashboard")
FAVICON = (
    b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">'
    b'<rect width="16" height="16" rx="3" fill="#5fb3f9"/></svg>'
)


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Dashboard:
    def __init__(
        self,
        settings_of: Callable[[], Settings],
        actions: Any,
        chat: Any,
        *,
        admin_token: str,
        lab_dir: Path,
        loadtest_dir: Path,
        interval_s: float = 1.0,
        metrics_every_s: float = METRICS_EVERY_S,
    ) -> None:
        self.settings_of = settings_of
        self.actions = actions
        self.chat = chat
        self.admin_token = admin_token
        self.folders = {"lab": lab_dir, "loadtest": loadtest_dir}
        self.interval_s = interval_s
        self.metrics_every_s = max(interval_s, metrics_every_s)
        self.subscribers: set[asyncio.Queue[bytes]] = set()
        self.latest: dict[str, Any] | None = None
        self._wake = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._collector: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self.port = 0

    # ---- life cycle ------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._serve, host, port, limit=MAX_BODY)
        self.port = self._server.sockets[0].getsockname()[1]
        self._collector = asyncio.create_task(self._collect())
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._collector is not None:
            self._collector.cancel()
            await asyncio.gather(self._collector, return_exceptions=True)
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    # ---- the live figures ------------------------------------------------------------------

    def state(self, figs: dict[str, Any] | None, error: str = "") -> dict[str, Any]:
        """Everything the page draws; ``figs`` None keeps the last figures (Valkey paused)."""
        return {
            "figures": figs if figs is not None else (self.latest or {}).get("figures"),
            "error": error,
            "processes": self.actions.processes(),
            "storage_url": self.settings_of().storage_url,
            "chat": self.chat.summary() if self.chat is not None else None,
            "faults": list(self.actions.faults),
            "unavailable": self.actions.unavailable(),
            "traces": list(self.actions.traces),
            "sent_at": time.time(),
        }

    async def now(self) -> dict[str, Any]:
        """The state for ``GET /api/state``: the live one while a page listens, else a fresh
        snapshot (no rates: they need two)."""
        if self.subscribers and self.latest is not None:
            return self.latest
        try:
            cur = await top.collect(self.settings_of(), timeout=0.8, parse_text=parse, names=SHOWN)
        except Exception as exc:  # noqa: BLE001 - shown, never fatal
            return self.state(None, str(exc) or type(exc).__name__)
        self.actions.observe(cur)
        return self.state(figures(cur, None))

    async def _collect(self) -> None:
        redis = connect(self.settings_of())  # one connection, kept: a new one a second costs
        try:
            await self._collect_with(redis)
        finally:
            await redis.aclose()

    async def _collect_with(self, redis: Any) -> None:
        prev: top.Snapshot | None = None
        scraped: top.Snapshot | None = None  # the last snapshot with /metrics scrapes
        scraped_prev: top.Snapshot | None = None
        while True:
            if not self.subscribers:
                prev = scraped = scraped_prev = None  # rates over a gap mean nothing: restart
                self._wake.clear()
                await self._wake.wait()
            started = time.monotonic()
            due = scraped is None or started - scraped.at >= self.metrics_every_s - 0.05
            try:
                # bounded: while Valkey is paused the page still gets the ledger every second
                cur = await asyncio.wait_for(
                    top.collect(
                        self.settings_of(),
                        timeout=0.8,
                        redis=redis,
                        parse_text=parse,
                        scrape=due,
                        names=SHOWN,
                    ),
                    max(1.0, 2 * self.interval_s),
                )
                self.actions.observe(cur)
                if due:
                    scraped_prev, scraped = scraped, cur
                assert scraped is not None
                self.latest = self.state(figures(cur, prev, scraped, scraped_prev))
                prev = cur
            except TimeoutError:
                self.latest = self.state(None, "collecting: Valkey does not answer (paused?)")
                prev = scraped = scraped_prev = None
            except Exception as exc:  # noqa: BLE001 - Valkey paused or restarting: say so
                self.latest = self.state(None, f"collecting: {exc or type(exc).__name__}")
                prev = scraped = scraped_prev = None
            data = b"data: " + json.dumps(self.latest, default=str).encode() + b"\n\n"
            for queue in list(self.subscribers):
                if queue.qsize() < 5:  # a stalled page skips frames, never grows memory
                    queue.put_nowait(data)
            await asyncio.sleep(max(0.05, self.interval_s - (time.monotonic() - started)))

    # ---- HTTP ------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._one(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except Exception:
            log.exception("dashboard request failed")
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 2)

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, _ = lines[0].split(" ", 2)
        except ValueError:
            return await self._send(writer, 400, b"bad request", "text/plain")
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        path = target.split("?", 1)[0]
        body = b""
        length = int(headers.get("content-length") or 0)
        if length > MAX_BODY:
            return await self._send(writer, 413, b"too large", "text/plain")
        if length:
            body = await asyncio.wait_for(reader.readexactly(length), 10)
        if method == "GET" and path == "/events":
            return await self._events(writer)
        try:
            status, payload, ctype = await self._route(method, path, headers, body)
        except HttpError as exc:
            status, payload, ctype = exc.status, _json({"error": str(exc)}), "application/json"
        except (LookupError, ValueError) as exc:
            status, payload, ctype = 409, _json({"error": str(exc)}), "application/json"
        except Exception as exc:  # noqa: BLE001 - an action failed: the page shows why
            log.warning("%s %s failed: %s", method, path, exc)
            status = 500
            payload, ctype = _json({"error": f"{type(exc).__name__}: {exc}"}), "application/json"
        await self._send(writer, status, payload, ctype)

    async def _send(
        self, writer: asyncio.StreamWriter, status: int, body: bytes, ctype: str
    ) -> None:
        writer.write(
            (
                f"HTTP/1.1 {status} {REASONS.get(status, '')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n"
                "X-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n"
            ).encode()
            + body
        )
        await writer.drain()

    async def _events(self, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n"
            b"Connection: keep-alive\r\n\r\nretry: 1000\n\n"
        )
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        if self.latest is not None:
            queue.put_nowait(b"data: " + json.dumps(self.latest, default=str).encode() + b"\n\n")
        self.subscribers.add(queue)
        self._wake.set()
        try:
            while True:
                writer.write(await queue.get())
                await asyncio.wait_for(writer.drain(), 10)
        finally:
            self.subscribers.discard(queue)

    def _admin(self, headers: dict[str, str]) -> None:
        given = headers.get("x-admin-token", "")
        if not given or not hmac.compare_digest(given.encode(), self.admin_token.encode()):
            raise HttpError(
                403, "this action needs the run's admin token (printed by chatscale run)"
            )

    async def _route(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, bytes, str]:
        if method == "GET":
            if path == "/":
                path = "/static/index.html"
            if path.startswith("/static/"):
                name = path.removeprefix("/static/")
                if name not in STATIC:
                    raise HttpError(404, "no such file")
                data = resources.files("dashboard").joinpath("static", name).read_bytes()
                return 200, data, STATIC[name]
            if path == "/favicon.ico":
                return 200, FAVICON, "image/svg+xml"
            if path == "/api/state":
                return 200, _json(await self.now()), "application/json"
            if path == "/api/knobs":
                return 200, _json(await self.actions.knobs()), "application/json"
            if path == "/api/results":
                doc = {kind: {"folder": str(folder), "items": results.listing(kind, folder)}
                       for kind, folder in self.folders.items()}  # fmt: skip
                return 200, _json(doc), "application/json"
            if path.startswith("/results/"):
                parts = path.strip("/").split("/")
                if len(parts) in (3, 4) and parts[1] in self.folders:
                    page = results.page(parts[1], self.folders[parts[1]], parts[2])
                    if page is not None and (len(parts) == 3 or parts[3] == page.name):
                        return 200, page.read_bytes(), "text/html; charset=utf-8"
                raise HttpError(404, "no such result")
            raise HttpError(404, "not found")
        if method != "POST":
            raise HttpError(405, "GET or POST")
        self._admin(headers)
        try:
            d = json.loads(body or b"{}")
        except ValueError:
            raise HttpError(400, "the body must be JSON") from None
        if not isinstance(d, dict):
            raise HttpError(400, "the body must be a JSON object")
        if path == "/api/trace":
            return 200, _json(await self.actions.trace()), "application/json"
        if path == "/api/fault":
            entry = await self.actions.fault(
                str(d.get("kind", "")),
                index=int(d.get("index", 0)),
                seconds=float(d.get("seconds", 5)),
            )
            return 200, _json(entry), "application/json"
        if path == "/api/knob":
            if d.get("name") != "slowmode":
                raise HttpError(
                    409,
                    f"{d.get('name')!r} is read at process start: restart with its variable set",
                )
            text = await self.actions.set_slowmode(int(d["channel_id"]), int(d["seconds"]))
            return 200, _json({"ok": True, "text": text}), "application/json"
        if path == "/api/chat":
            if self.chat is None:
                raise HttpError(409, "no built-in chat in this run")
            if d.get("running"):
                self.chat.start()
            else:
                await self.chat.stop()
            return 200, _json({"running": self.chat.running}), "application/json"
        raise HttpError(404, "not found")


def _json(doc: Any) -> bytes:
    return json.dumps(doc, default=str).encode()
