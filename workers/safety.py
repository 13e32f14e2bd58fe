"""Trust & safety wired into a worker: the moderation stage, the spam-bot detector, and the
control-plane actions they take (docs/safety.md).

``attach(worker)`` does nothing unless ``MODERATION_MODE`` is not ``off`` or ``SPAM_DETECT`` is
on; then it sets ``worker.pipeline.moderation`` to a ``SafetyStage``, which the pipeline calls
before authorization (``screen``) and after fan-out (``after``). Control-plane actions
(timeouts, quarantines, bans) run as background tasks on one ``ControlPlane`` per worker: the
strong path waits for every gateway to confirm, and the batch must not wait for that.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from chatscale import snowflake
from chatscale.wire import IngestMessage, dumps
from guilds.controlplane import ControlError, ControlPlane
from storage import StorageUnavailable
from workers.features import AccountFeatures
from workers.moderation import Moderation, Screened
from workers.spam import SpamDetector

log = logging.getLogger("chatscale.safety")


class Actions:
    """Background control-plane calls, at most one at a time per (what, guild, user)."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        self._plane: ControlPlane | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self._pending: set[tuple[str, int, int]] = set()

    def plane(self) -> ControlPlane:
        if self._plane is None:
            self._plane = ControlPlane(self.worker.settings, store=self.worker.store)
        return self._plane

    def start(self, what: str, guild_id: int, user_id: int, coro_fn: Any) -> None:
        key = (what, guild_id, user_id)
        if key in self._pending:
            return
        self._pending.add(key)

        async def run() -> None:
            try:
                await coro_fn(self.plane())
            except (ControlError, StorageUnavailable, ConnectionError, TimeoutError) as exc:
                log.warning("%s of %s in %s failed: %s", what, user_id, guild_id, exc)
            finally:
                self._pending.discard(key)

        task = asyncio.ensure_future(run())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def timeout(self, guild_id: int, user_id: int, seconds: int) -> None:
        self.start(
            "timeout", guild_id, user_id, lambda p: p.timeout_member(guild_id, user_id, seconds)
        )

    async def wait(self) -> None:
        """Until every started action returned (tests, the raid scenario's drain)."""
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)

    async def close(self) -> None:
        await self.wait()
        if self._plane is not None:
            await self._plane.close()


class SafetyStage:
    def __init__(self, worker: Any) -> None:
        settings = worker.settings
        self.actions = Actions(worker)
        self.moderation = (
            Moderation(
                settings, redis=worker.redis, keys=worker.keys, timeouts=self.actions.timeout
            )
            if settings.moderation_mode != "off"
            else None
        )
        self.detector = (
            SpamDetector(settings, redis=worker.redis, keys=worker.keys)
            if settings.spam_detect
            else None
        )
        self.settings = settings
        self.redis = worker.redis
        self.keys = worker.keys

    async def screen(self, messages: list[IngestMessage]) -> Screened:
        screened = (
            await self.moderation.screen(messages)
            if self.moderation is not None
            else Screened(list(messages), [], {})
        )
        screened.seen = list(messages)
        return screened

    async def after(self, accepted: list[IngestMessage], screened: Screened) -> None:
        if self.moderation is not None:
            await self.moderation.after(accepted, screened)
        if self.detector is not None:
            for feats, score, m in await self.detector.observe(screened.seen):
                self._act(feats, score, m)

    def _act(self, feats: AccountFeatures, score: float, m: IngestMessage) -> None:
        action = self.settings.spam_action
        user_id, guild_id = m.author_id, m.guild_id
        log.warning("spam bot %s (score %.2f): %s", user_id, score, action)

        async def run(plane: ControlPlane) -> None:
            if action == "quarantine":
                await plane.quarantine(user_id, f"spam score {score:.2f}")
            elif action == "ban":
                await plane.ban(guild_id, user_id, f"spam score {score:.2f}")
            now_ms = int(time.time() * 1000)
            await self.redis.xadd(
                self.keys.spam_actions(),
                {
                    b"user": str(user_id).encode(),
                    b"action": action.encode(),
                    b"score": f"{score:.3f}".encode(),
                    b"created_ms": str(snowflake.timestamp_ms(user_id)).encode(),
                    b"acted_ms": str(now_ms).encode(),
                    b"features": dumps(feats.to_dict()).encode(),
                },
                maxlen=100_000,
                approximate=True,
            )

        self.actions.start(action, guild_id, user_id, run)


def attach(worker: Any) -> None:
    s = worker.settings
    if s.moderation_mode == "off" and not s.spam_detect:
        return
    stage = SafetyStage(worker)
    worker.pipeline.moderation = stage
    worker.safety = stage


async def close(worker: Any) -> None:
    stage = getattr(worker, "safety", None)
    if stage is not None:
        await stage.actions.close()
