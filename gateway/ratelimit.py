"""Rate limits shared by every gateway, kept atomically in Redis.

Three limits, one mechanism (``lua/ratelimit.lua``, a sliding-window log per key):

- **per-user message rate**: ``user_messages_per_window`` per ``user_message_window_s``,
  across all of a user's connections and channels (a second connection does not double it);
- **per-channel slowmode**: one message per ``slowmode_s`` seconds per user in a channel that
  sets it; members whose permissions bypass it (MANAGE_MESSAGES or MANAGE_CHANNELS,
  ``permissions.bypasses_slowmode``) are not counted at all;
- **identify rate**: ``identifies_per_window`` IDENTIFYs per ``identify_window_s`` per user.

(The fourth limit, events per connection, is local to one socket and lives in the pure
session state machine, ``gateway/session.py``: it needs no shared state.)

A message's user window and slowmode window are checked and recorded in one script call:
either both admit it or neither records it. On one Redis node a new message's nonce claim,
windows and queueing are one script call too (``lua/send.lua``, ``RateLimiter.queue_message``):
the gateway's one round trip per message instead of three. A sliding-window log (a sorted set
of admitted times) rather than a fixed window, because it answers ``retry_after`` exactly and has no burst
of 2x at window edges; it costs O(limit) memory per user, which is small for these limits.

Time comes from an injected clock (``clock``, wall seconds) and travels to Redis as an
argument, so tests move time instead of sleeping. Gateways on different machines should have
synchronised clocks (NTP); skew shifts a window by the skew, never breaks atomicity.
"""

from __future__ import annotations

import itertools
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from chatscale.config import Settings
from chatscale.keys import Keys


def _lua(name: str) -> str:
    return resources.files("gateway").joinpath(f"lua/{name}").read_text()


# both scripts start with the window functions they share
SCRIPT = _lua("windows.lua") + "\n" + _lua("ratelimit.lua")
SEND_SCRIPT = _lua("windows.lua") + "\n" + _lua("send.lua")


@dataclass(frozen=True, slots=True)
class Verdict:
    """``allowed``, or which limit refused (``scope``) and when to retry (seconds)."""

    allowed: bool
    scope: str = ""
    retry_after: float = 0.0

    def message(self) -> str:
        what = {
            "user": "you are sending messages too fast",
            "slowmode": "this channel is in slowmode",
            "identify": "too many IDENTIFYs",
        }.get(self.scope, "rate limited")
        return f"{what}; retry after {self.retry_after:.3f} s"


ALLOWED = Verdict(True)


@dataclass(frozen=True, slots=True)
class Queued:
    """What ``queue_message`` did: queued (``verdict`` allowed, ``claimed`` None); refused by a
    window (nothing queued, counted or claimed); or found the nonce already claimed:
    ``claimed`` is that id and nothing was queued or counted (the caller queues the retry)."""

    verdict: Verdict
    claimed: int | None = None


class RateLimiter:
    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        execute: Callable[..., Awaitable[Any]] | None = None,
    ) -> None:
        self._redis = redis
        # how a command is sent: the gateway's AutoPipeline (one pipeline per loop turn)
        self._execute = execute or redis.execute_command
        self._keys = keys
        self.settings = settings
        self.clock = clock
        self._script = redis.register_script(SCRIPT)
        self._send = redis.register_script(SEND_SCRIPT)
        self._ids = itertools.count()
        self._origin = secrets.token_hex(4)  # event ids unique across processes

    async def message(self, user_id: int, channel_id: int, *, slowmode_s: float) -> Verdict:
        """One message by ``user_id`` in ``channel_id``; ``slowmode_s`` 0 skips slowmode (pass
        0 for members who bypass it)."""
        return await self._check(self._message_windows(user_id, channel_id, slowmode_s))

    async def queue_message(
        self,
        user_id: int,
        channel_id: int,
        *,
        slowmode_s: float,
        stream: str,
        entry: bytes,
        message_id: int,
        nonce_key: str,
        nonce_ttl_s: int,
    ) -> Queued:
        """One node only: ``message``'s windows, the nonce claim (``nonce_key`` "" for a send
        without a nonce) and the XADD of ``entry`` to ``stream``, in one atomic script call
        (``lua/send.lua``). Raises what the Redis call raises (the message may or may not be
        queued then, as with an XADD that failed)."""
        windows = self._message_windows(user_id, channel_id, slowmode_s)
        keys = [stream, *([nonce_key] if nonce_key else []), *(key for _, key, _, _ in windows)]
        args = self._window_args(windows, message_id, nonce_ttl_s if nonce_key else 0, entry)
        reply = await self._eval(self._send, keys, args)
        if int(reply[0]) == 0:
            return Queued(ALLOWED)
        if int(reply[0]) == 1:
            return Queued(ALLOWED, claimed=int(reply[1]))
        return Queued(Verdict(False, windows[int(reply[1]) - 1][0], int(reply[2]) / 1000))

    def _message_windows(
        self, user_id: int, channel_id: int, slowmode_s: float
    ) -> list[tuple[str, str, int, float]]:
        s = self.settings
        windows = [
            (
                "user",
                self._keys.rate_messages(user_id),
                s.user_messages_per_window,
                s.user_message_window_s,
            )
        ]
        if slowmode_s > 0:
            windows.append(
                ("slowmode", self._keys.rate_slowmode(user_id, channel_id), 1, slowmode_s)
            )
        return windows

    async def identify(self, user_id: int) -> Verdict:
        s = self.settings
        return await self._check(
            [
                (
                    "identify",
                    self._keys.rate_identify(user_id),
                    s.identifies_per_window,
                    s.identify_window_s,
                )
            ]
        )

    async def _check(self, windows: list[tuple[str, str, int, float]]) -> Verdict:
        args = self._window_args(windows)
        keys = [key for _, key, _, _ in windows]
        which, wait_ms = await self._eval(self._script, keys, args)
        if int(which) == 0:
            return ALLOWED
        return Verdict(False, windows[int(which) - 1][0], int(wait_ms) / 1000)

    def _window_args(self, windows: list[tuple[str, str, int, float]], *extra: Any) -> list[Any]:
        """ARGV as the scripts take it: now (ms), a unique event id, the script's own ``extra``
        arguments, then each window's limit and span (ms)."""
        now_ms = math.floor(self.clock() * 1000)
        args: list[Any] = [now_ms, f"{self._origin}.{next(self._ids)}", *extra]
        for _, _, limit, span_s in windows:
            args += [max(0, int(limit)), max(1, math.ceil(span_s * 1000))]
        return args

    async def _eval(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return await self._execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:  # a fresh or flushed server: the Script object loads it, once
            return await script(keys=keys, args=args)
