"""What the page may do to the running topology: faults, knobs, traced messages.

Faults reuse the load tests' fault injection (``loadtest.topology``): SIGKILL a worker (the
supervisor restarts it and evicts its leases) or a gateway (``chatscale run`` does not restart
gateways: its clients IDENTIFY elsewhere), SIGSTOP Valkey or a local Cassandra for N seconds
and SIGCONT it after. Knobs: every setting is shown; only what the running processes re-read
can change from the page — per-channel slowmode, through the control plane like
``chatscale slowmode``. The rest are read once at process start and are shown read-only.
A trace is ``chatscale trace``'s: an operator token, alice on the first live gateway, bob on
the last, every hop stamped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import deque
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from chatscale import tokens
from chatscale.config import Settings
from chatscale.trace import HOPS, ToolError, identify, send_patiently
from guilds.controlplane import ControlPlane
from loadtest.topology import Embedded, resume_after, storage_pid
from ops import supervisor
from storage import open_store

#: Settings never shown (the page shows that they are set). No setting is re-read by a running
#: process; slowmode, the one knob the page changes, is per-channel metadata.
SECRET = {"token_secret", "dashboard_admin_token"}


class RunningTopology(Embedded):
    """The load tests' fault handles on the ``chatscale run`` topology this process supervises
    (``Embedded`` starts its own; this one only borrows ``kill_worker``/``kill_gateway``/
    ``valkey_pid``, which act on ``self.topo``)."""

    def __init__(self, topo: supervisor.Topology) -> None:  # noqa: D107 - no topology of its own
        self.topo = topo
        self.timed_events: list[tuple[float, str]] = []


class Actions:
    def __init__(self, topo: supervisor.Topology, chat: Any) -> None:
        self.topo = topo
        self.handles = RunningTopology(topo)
        self.chat = chat
        self.faults: deque[dict[str, Any]] = deque(maxlen=20)
        self.traces: deque[dict[str, Any]] = deque(maxlen=10)
        self.paused: dict[str, float] = {}  # what -> monotonic time it resumes
        self._resumes: set[asyncio.Task[None]] = set()

    @property
    def settings(self) -> Settings:
        return self.topo.settings

    # ---- topology facts --------------------------------------------------------------------

    def unavailable(self) -> dict[str, str]:
        """Faults this dashboard cannot inject, with why (none: it supervises the topology)."""
        return {}

    def observe(self, snap: Any) -> None:
        """Each collected snapshot (``chatscale dashboard`` reads its processes from them)."""

    def live_gateways(self) -> list[str]:
        out = []
        for child in self.topo.children:
            if child.role == "gateway" and child.proc and child.proc.poll() is None:
                if child.index < len(self.topo.gateway_urls):
                    out.append(self.topo.gateway_urls[child.index])
        return out

    def processes(self) -> list[dict[str, Any]]:
        rows = []
        for c in self.topo.children:
            alive = bool(c.proc and c.proc.poll() is None)
            rows.append(
                {
                    "role": c.role,
                    "index": c.index,
                    "name": c.consumer or (f"gw-{c.index}" if c.role == "gateway" else c.role),
                    "pid": c.proc.pid if c.proc else None,
                    "alive": alive,
                    "restarts": c.restarts,
                }
            )
        v = self.topo.valkey
        rows.append(
            {
                "role": "valkey",
                "index": 0,
                "name": "valkey",
                "pid": v.proc.pid if v and v.proc else None,
                "alive": bool(v and v.exited() is None) if v else True,
                "restarts": v.restarts if v else 0,
            }
        )
        now = time.monotonic()
        for row in rows:
            until = self.paused.get(row["role"])
            row["paused_s"] = round(until - now, 1) if until and until > now else 0
        return rows

    # ---- faults ----------------------------------------------------------------------------

    def _log(self, kind: str, text: str) -> dict[str, Any]:
        entry = {"at": time.time(), "kind": kind, "text": text}
        if self.chat is not None:
            before = self.chat.summary()
            entry["before"] = {k: before[k] for k in ("lost", "duplicated", "acknowledged")}
        self.faults.appendleft(entry)
        return entry

    async def fault(self, kind: str, *, index: int = 0, seconds: float = 5.0) -> dict[str, Any]:
        if kind == "kill-worker":
            return self._log(kind, await self.handles.kill_worker(index))
        if kind == "kill-gateway":
            if len(self.live_gateways()) <= 1:
                raise LookupError("only one gateway is alive: killing it would end the chat")
            return self._log(kind, await self.handles.kill_gateway(index))
        if kind in ("pause-valkey", "pause-store"):
            if not 0 < seconds <= 60:
                raise ValueError("pause for 1..60 seconds")
            what = "valkey" if kind == "pause-valkey" else "history store"
            pid = (
                self.handles.valkey_pid() if kind == "pause-valkey" else storage_pid(self.settings)
            )
            os.kill(pid, signal.SIGSTOP)
            self.paused["valkey" if kind == "pause-valkey" else "store"] = (
                time.monotonic() + seconds
            )
            entry = self._log(kind, f"SIGSTOP {what} (pid {pid}) for {seconds:g}s")
            events: list[str] = []

            async def resume() -> None:
                await resume_after(pid, seconds, events, what)
                entry["text"] += "; " + "; ".join(events)

            task = asyncio.create_task(resume())
            self._resumes.add(task)
            task.add_done_callback(self._resumes.discard)
            return entry
        raise ValueError(f"unknown fault {kind!r}")

    async def close(self) -> None:
        for task in list(self._resumes):  # SIGCONT now: never leave a process stopped
            task.cancel()
        await asyncio.gather(*self._resumes, return_exceptions=True)

    # ---- knobs -----------------------------------------------------------------------------

    async def knobs(self) -> dict[str, Any]:
        settings = []
        for name, field in type(self.settings).model_fields.items():
            value = getattr(self.settings, name)
            if name in SECRET:
                value = "(set, hidden)" if value else "(unset)"
            elif name == "redis_url" and value:
                parts = urlsplit(str(value))
                if parts.password:  # never show a password
                    netloc = f"{parts.username or ''}:***@{parts.hostname}:{parts.port}"
                    value = urlunsplit(parts._replace(netloc=netloc))
            settings.append(
                {
                    "name": name,
                    "env": f"CHATSCALE_{name.upper()}",
                    "value": value if isinstance(value, int | float | bool | str) else str(value),
                    "about": field.description or "",
                    "live": False,
                }
            )
        s = self.settings
        store = await open_store(s.storage_url, bucket_span_ms=s.bucket_span_ms)
        channels = []
        try:
            for guild in await store.find_guilds("interview-prep"):
                for c in await store.guild_channels(guild.id):
                    if c.kind == "text":
                        channels.append(
                            {"id": str(c.id), "name": c.name, "slowmode_s": c.slowmode_s}
                        )
        finally:
            await store.close()
        return {"settings": settings, "slowmode": channels}

    async def set_slowmode(self, channel_id: int, seconds: int) -> str:
        s = self.settings
        store = await open_store(s.storage_url, bucket_span_ms=s.bucket_span_ms)
        plane = ControlPlane(s, store=store)
        try:
            receipt = await plane.set_slowmode(channel_id, seconds)
        finally:
            await plane.close()
            await store.close()
        text = (
            f"{receipt.change}: confirmed by {len(receipt.confirmed)} of "
            f"{len(receipt.gateways)} gateway(s)"
            + (f", fenced {', '.join(receipt.fenced)}" if receipt.fenced else "")
        )
        self.faults.appendleft({"at": time.time(), "kind": "knob", "text": text})
        return text

    # ---- a traced message ------------------------------------------------------------------

    async def trace(self, timeout: float = 10.0) -> dict[str, Any]:
        urls = self.live_gateways()
        if not urls:
            raise LookupError("no live gateway")
        s = self.settings
        store = await open_store(s.storage_url, bucket_span_ms=s.bucket_span_ms)
        try:
            users = [await store.find_user(n) for n in ("alice", "bob")]
        finally:
            await store.close()
        if None in users:
            raise LookupError("the demo community's alice and bob are missing")
        now = time.time()
        toks = [
            tokens.mint(u.id, secret=s.token_secret, ttl_s=600, now=now, operator=i == 0)
            for i, u in enumerate(users)
            if u
        ]
        clients = []
        try:
            a = await identify(urls[0], toks[0], timeout=timeout)
            clients.append(a)
            b = await identify(urls[-1], toks[1], timeout=timeout)
            clients.append(b)
            channel = next(
                c for g in a.ready["guilds"] for c in g["channels"] if c["name"] == "general"
            )
            try:
                ack = await send_patiently(
                    a,
                    channel["id"],
                    "traced from the dashboard",
                    nonce=f"tr{time.time_ns()}",  # nonces are at most 25 characters
                    deadline=time.monotonic() + timeout + 10,
                    trace=True,
                )
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task and task.cancelling():
                    raise
                # the client cancels its waiter when the socket closes under a send
                raise ToolError(f"the connection to {urls[0]} closed before the ACK") from None
            until = time.monotonic() + timeout
            got = await b.next_event("MESSAGE_CREATE", timeout=timeout)
            while got["d"]["id"] != ack["id"]:
                got = await b.next_event("MESSAGE_CREATE", timeout=until - time.monotonic())
        finally:
            for c in clients:
                with contextlib.suppress(Exception):
                    await c.close()
        hops = [(h, int(ns)) for h, ns in got["trace"]]
        start = hops[0][1]
        prev = start
        rows = []
        for hop, ns in hops:
            rows.append({"hop": hop, "t_ms": (ns - start) / 1e6, "delta_ms": (ns - prev) / 1e6})
            prev = ns
        entry = {
            "at": now,
            "id": ack["id"],
            "from": f"alice via {urls[0]}",
            "to": f"bob via {urls[-1]}",
            "hops": rows,
            "shard": int(channel["id"]) % s.ingest_shards,  # whose worker's lease it crossed
            "total_ms": (hops[-1][1] - start) / 1e6,
            "missing": [h for h in HOPS if h not in {r["hop"] for r in rows}],
        }
        self.traces.appendleft(entry)
        return entry


__all__ = ["Actions", "RunningTopology", "ToolError"]
