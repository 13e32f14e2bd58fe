"""What an arm runs on, and the tools it measures with (the I/O half of the lab).

``Trial`` is one run of one arm: its parameters (the size's, overlaid by the arm's ``params``),
a work directory of its own, and ``topology()``: a real embedded topology (``loadtest.topology.
Embedded``: Valkey, gateways, workers, presence as separate processes, SQLite history) started
with the arm's ``settings`` and stopped afterwards, so switching the knob between arms needs no
restart by the user. Around it: seeding a guild, connecting members, reading the CPU seconds of
every server process and Valkey's own command counters.

Every wait here is bounded; a bound that expires raises ``TimeoutError`` saying what was
awaited.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import redis.asyncio as aioredis

from chatscale import tokens
from chatscale.client import ChatClient
from chatscale.config import Settings
from chatscale.redisconn import connect as redis_connect
from chatscale.trace import identify as identify_tool
from guilds import community
from lab.experiment import Arm, Experiment
from loadtest.topology import Embedded

#: What every lab topology gets besides the arm's settings (``Embedded`` adds the load tester's
#: raised rate limits): sessions that outlive a slow lab step.
LAB_ENV: dict[str, str] = {"CHATSCALE_HEARTBEAT_INTERVAL_MS": "60000"}


@dataclass
class Trial:
    experiment: Experiment
    arm: Arm
    size: str
    params: dict[str, Any]
    workdir: Path
    say: Callable[[str], None]
    round: int = 0

    @property
    def settings_env(self) -> dict[str, str]:
        return dict(self.arm.settings)

    @contextlib.asynccontextmanager
    async def topology(
        self,
        *,
        gateways: int = 1,
        workers: int = 1,
        env: dict[str, str] | None = None,
        storage_url: str | None = None,
        extras: frozenset[str] = frozenset(),
    ) -> AsyncIterator[Embedded]:
        """A fresh topology with this arm's settings (``env`` overlays them), stopped on exit."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        merged = {**LAB_ENV, **self.arm.settings, **(env or {})}
        topo = Embedded(
            self.workdir,
            storage_url=storage_url or f"sqlite:///{self.workdir}/history.db",
            gateways=gateways,
            workers=workers,
            env=merged,
            extras=extras,
        )
        try:
            await asyncio.wait_for(topo.start(say=lambda _text: None), 60)
        except TimeoutError:
            await topo.stop()
            raise TimeoutError("the lab topology did not start within 60 s") from None
        except BaseException:
            await topo.stop()
            raise
        try:
            yield topo
        finally:
            await topo.stop()


# ---- a guild and its members --------------------------------------------------------------------


@dataclass
class Seeded:
    guild_id: int
    user_ids: list[int]
    channel_ids: list[int]


def lab_community(
    members: int,
    *,
    name: str = "lab",
    channels: Iterable[str | community.ChannelSpec] = ("lab",),
) -> community.Community:
    names = [f"{name}-{i:05d}" for i in range(members)]
    return community.Community(
        name=name,
        guilds=[
            community.GuildSpec(name=name, owner=names[0], channels=list(channels), members=names)
        ],
    )


async def seed(settings: Settings, spec: community.Community) -> Seeded:
    """Load ``spec`` into this topology's store and Redis (as ``chatscale seed`` does)."""
    await community.apply_to(spec, settings)
    users, guilds, channels, _ = spec.plan()
    return Seeded(guilds[0].id, [u.id for u in users], [c.id for c in channels])


def token(settings: Settings, user_id: int) -> str:
    return tokens.mint(user_id, secret=settings.token_secret, ttl_s=3600, now=time.time())


async def connect(
    settings: Settings,
    urls: list[str],
    user_ids: list[int],
    *,
    concurrency: int = 32,
    timeout: float = 60.0,
    client_cls: type[ChatClient] | None = None,
    **identify: Any,
) -> list[Any]:
    """Identify every user (round-robin over the gateways); READY for all within ``timeout``,
    or none is left open. ``client_cls`` (a ``ChatClient`` subclass, e.g. one that counts
    bytes) and ``identify`` (``device=``, ``intents=``) change how each one connects."""
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int, uid: int) -> ChatClient:
        async with gate:
            url, tok = urls[i % len(urls)], token(settings, uid)
            if client_cls is None and not identify:
                return await identify_tool(url, tok)  # names a close before READY
            return await (client_cls or ChatClient).identify(url, tok, **identify)

    tasks = [asyncio.create_task(one(i, u)) for i, u in enumerate(user_ids)]
    try:
        async with asyncio.timeout(timeout):
            return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        await close_all([c for c in done if isinstance(c, ChatClient)])
        raise


async def close_all(clients: Iterable[ChatClient]) -> None:
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


# ---- what the servers spent ---------------------------------------------------------------------


class Cpu:
    """CPU seconds (user + system) each server process of a topology spent between ``start``
    and ``stop``; a process that exits in between is counted until its last reading."""

    def __init__(self, topo: Embedded) -> None:
        self.topo = topo
        self._before: dict[str, float] = {}
        self._last: dict[str, float] = {}

    @staticmethod
    def _read(procs: dict[str, psutil.Process]) -> dict[str, float]:
        out = {}
        for name, proc in procs.items():
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                out[name] = t.user + t.system
        return out

    def start(self) -> Cpu:
        self._before = self._read(self.topo.processes())
        return self

    def stop(self) -> dict[str, float]:
        now = self._read(self.topo.processes())
        return {
            name: round(now.get(name, before) - before, 4) for name, before in self._before.items()
        }

    def total(self) -> float:
        return sum(self.stop().values())


async def redis_counters(redis: aioredis.Redis) -> dict[str, float]:
    """Valkey's own view: commands processed, memory used, keys."""
    stats = await redis.info("stats")
    memory = await redis.info("memory")
    return {
        "commands": float(stats["total_commands_processed"]),
        "used_memory": float(memory["used_memory"]),
        "keys": float(await redis.dbsize()),
    }


def redis_for(topo: Embedded) -> aioredis.Redis:
    return redis_connect(topo.settings)


async def bounded(awaitable: Any, seconds: float, what: str) -> Any:
    """Await with a bound whose expiry says what was being waited for."""
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except TimeoutError:
        raise TimeoutError(f"{what}: nothing within {seconds:g}s") from None
