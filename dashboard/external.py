"""The page's actions against a topology this process does not supervise (``chatscale
dashboard``: a docker compose stack, or a ``chatscale run`` elsewhere).

Everything that goes through Valkey, the store or a gateway works as under ``chatscale run``:
figures, traced messages, knobs (slowmode through the control plane), the built-in chat and its
ledger. What needs a process of the topology to be this one's child does not: killing a worker
or a gateway and pausing the history store are refused with the reason (under docker compose:
``docker compose kill worker`` from the host; the dashboard's container is given no Docker
socket). Pausing Valkey is Valkey's own ``CLIENT PAUSE … ALL`` — every client's commands wait
for N seconds, as they would for a stopped server, but no process is signalled and connections
are still accepted; the fault log says which it was.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from chatscale.config import Settings
from chatscale.redisconn import connect
from dashboard.actions import Actions
from ops import top

UNAVAILABLE = {
    "kill-worker": "not under `chatscale dashboard`: it supervises no process (under docker "
    "compose: `docker compose kill worker` on the host; `chatscale run`'s own dashboard can)",
    "kill-gateway": "not under `chatscale dashboard`: it supervises no process (under docker "
    "compose: `docker compose kill gateway-1` on the host; `chatscale run`'s own dashboard can)",
    "pause-store": "not under `chatscale dashboard`: the history store is not its child process "
    "(under docker compose: `docker compose pause cassandra` on the host)",
}


class ExternalActions(Actions):
    """``Actions`` without process control: the topology is found through Valkey."""

    def __init__(self, settings: Settings, gateway_urls: list[str], chat: Any = None) -> None:  # noqa: D107
        self._settings = settings
        self.gateway_urls = list(gateway_urls)  # given (--gateway): used as they are
        self.chat = chat
        self.faults: deque[dict[str, Any]] = deque(maxlen=20)
        self.traces: deque[dict[str, Any]] = deque(maxlen=10)
        self.paused: dict[str, float] = {}
        self._resumes: set[Any] = set()
        self.snapshot: top.Snapshot | None = None

    @property
    def settings(self) -> Settings:
        return self._settings

    def unavailable(self) -> dict[str, str]:
        return dict(UNAVAILABLE)

    def observe(self, snap: top.Snapshot) -> None:
        self.snapshot = snap

    async def refresh(self) -> None:
        """Read the registrations once (before the first page opens)."""
        self.observe(await top.collect(self.settings, scrape=False))

    def live_gateways(self) -> list[str]:
        if self.gateway_urls:
            return list(self.gateway_urls)
        gateways = self.snapshot.gateways if self.snapshot else {}
        return [g["url"] for _, g in sorted(gateways.items()) if g.get("alive") and g.get("url")]

    def processes(self) -> list[dict[str, Any]]:
        snap = self.snapshot
        rows: list[dict[str, Any]] = []
        if snap is not None:
            for i, (gw_id, info) in enumerate(sorted(snap.gateways.items())):
                rows.append(
                    {"role": "gateway", "index": i, "name": gw_id, "alive": bool(info.get("alive"))}
                )
            for i, consumer in enumerate(sorted(snap.workers)):
                rows.append({"role": "worker", "index": i, "name": consumer, "alive": True})
            if snap.presence is not None:
                rows.append({"role": "presence", "index": 0, "name": "presence", "alive": True})
        rows.append({"role": "valkey", "index": 0, "name": "valkey", "alive": True})
        now = time.monotonic()
        for row in rows:
            row.update(pid=None, restarts=0)
            until = self.paused.get(row["role"])
            row["paused_s"] = round(until - now, 1) if until and until > now else 0
        return rows

    async def fault(self, kind: str, *, index: int = 0, seconds: float = 5.0) -> dict[str, Any]:
        if kind in UNAVAILABLE:
            raise LookupError(f"{kind} is unavailable: {UNAVAILABLE[kind]}")
        if kind != "pause-valkey":
            raise ValueError(f"unknown fault {kind!r}")
        if not 0 < seconds <= 60:
            raise ValueError("pause for 1..60 seconds")
        redis = connect(self.settings)
        try:
            await redis.execute_command("CLIENT", "PAUSE", int(seconds * 1000), "ALL")
        finally:
            await redis.aclose()
        self.paused["valkey"] = time.monotonic() + seconds
        return self._log(
            kind,
            f"CLIENT PAUSE {seconds:g}s ALL: Valkey holds every client's commands (its own "
            "pause: no process is signalled, connections are still accepted)",
        )


__all__ = ["UNAVAILABLE", "ExternalActions"]
