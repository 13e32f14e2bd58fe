"""What the gateway's parts see of each other: a connected ``Client``, and ``GatewayHost``, the
face of ``gateway.server.Gateway`` that ``control.py`` (permissions, rate limits, the control
plane's strong path) and ``fanout.py`` (local delivery, routes) use.

``server.py`` wires sockets and Redis to the session machine and owns the ``Gateway``; the parts
it delegates to depend on this interface rather than on ``server.py``, so the arrows run one
way: ``server -> control, fanout -> host, session``.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as aioredis
from websockets.asyncio.server import ServerConnection

from chatscale.closecodes import Close
from chatscale.config import Settings
from chatscale.keys import Keys
from gateway.session import Connection, Session
from storage import Store


@dataclass(eq=False)
class Client:
    ws: ServerConnection
    conn: Connection
    opened_at: float = 0.0  # gateway clock at HELLO: the IDENTIFY deadline counts from here
    address: str = ""
    closing: bool = False  # a bounded close is under way; never start a second one

    @property
    def session(self) -> Session | None:
        return self.conn.session


class GatewayHost(Protocol):
    """The gateway as its parts use it (implemented by ``gateway.server.Gateway``)."""

    settings: Settings
    id: str
    keys: Keys
    redis: aioredis.Redis
    batched: Any  # chatscale.autopipe.AutoPipeline over ``redis`` (per-message commands)
    store: Store
    sessions: dict[str, Session]
    clients: set[Client]
    fanout: Any  # gateway.fanout.LocalFanout (typed loosely: host.py sits below fanout.py)
    presence: Any  # gateway.presence.PresenceReporter
    storm: Any  # gateway.storm.StormGuard (admission, degrade mode)
    voice: Any  # gateway.voice.VoiceSignaling
    clock: Callable[[], float]
    wall_clock: Callable[[], float]
    stopping: bool  # set when stop() begins: background loops end at their next turn

    def send(self, client: Client, text: str) -> None:
        """Queue one frame to one client without waiting (bounded by its buffer)."""

    def send_dispatches(
        self, dispatch: Any, sessions: list[Session], attached: dict[Session, Client]
    ) -> None:
        """One fan-out dispatch (``gateway.wsframe.DispatchBytes``) to ``sessions``: each
        numbers it (kept for RESUME); the attached ones' clients are sent its frame."""

    def send_error(self, client: Client, code: str, message: str, **extra: Any) -> None:
        """Queue an ERROR reply; the connection stays open."""

    def close_client(self, client: Client, code: Close, reason: str) -> None:
        """Close in the background, bounded by ``close_timeout_s``, then abort the transport."""

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a background task the gateway holds and cancels on stop."""

    async def _refresh_alive(self, *, create: bool = False) -> bool:
        """Renew (or, after a fence, re-create) this gateway's liveness key."""

    async def _forget(self, session: Session) -> None:
        """Drop a session: routes, presence offline, replay buffer."""
