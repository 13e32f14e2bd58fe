"""The gateway's side of presence: collect events, send one batch per tick.

Every session going online or offline, every status, voice and typing request is buffered and
sent to the presence service as ONE stream entry per tick per gateway — never one Redis write
per client heartbeat. Heartbeats themselves are reported for all live sessions every third of
the presence timeout: a session the gateway still holds is alive, because the gateway already
closes sessions whose heartbeats stop (4009).

READY carries the current presence of each guild's members, read from the service's
``presence:users`` hash; guilds above ``large_guild_threshold`` members get only an online
count, as Discord sends large guilds less up front.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import TYPE_CHECKING, Any

import orjson

from chatscale.keys import Keys, presence_partition
from presence.state import Heartbeat, Offline, Online, SetStatus, VoiceUpdate, event_to_dict

MEMBER_CACHE_S = 5.0

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from gateway.session import Session
    from storage import Guild, Store


class PresenceReporter:
    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        *,
        gateway_id: str,
        heartbeat_every_s: float,
        partitions: int = 1,
    ) -> None:
        """partitions: ``presence_partitions``; each event goes to its user's partition's
        stream, so a tick writes one entry per partition that has something (one, unpartitioned)."""
        self._redis = redis
        self._keys = keys
        self._gateway_id = gateway_id
        self._heartbeat_every = heartbeat_every_s
        self._partitions = partitions
        self._last_heartbeats = float("-inf")
        # (partition, event) in the order they happened: each partition's entry keeps it.
        self._events: list[tuple[int, dict[str, Any]]] = []
        self._typing: list[tuple[int, dict[str, Any]]] = []
        self.batches_sent = 0
        self._member_cache: dict[int, tuple[float, list[int]]] = {}
        self._member_loads: dict[int, asyncio.Future[list[int]]] = {}

    def _part(self, session: Session) -> int:
        return presence_partition(session.user_id, self._partitions)

    def online(self, session: Session) -> None:
        event = Online(session.session_id, session.user_id, session.device, "online")
        self._events.append((self._part(session), event_to_dict(event)))

    def offline(self, session: Session) -> None:
        self._events.append((self._part(session), event_to_dict(Offline(session.session_id))))

    def status(self, session: Session, status: str) -> None:
        session.status = status  # heartbeats carry it, so a revived session keeps it
        event = SetStatus(session.session_id, status)
        self._events.append((self._part(session), event_to_dict(event)))

    def voice(self, session: Session, guild_id: int, channel_id: int | None) -> None:
        event = VoiceUpdate(session.session_id, guild_id, channel_id)
        self._events.append((self._part(session), event_to_dict(event)))

    def typing(self, session: Session, guild_id: int, channel_id: int) -> None:
        self._typing.append(
            (
                self._part(session),
                {"user_id": session.user_id, "guild_id": guild_id, "channel_id": channel_id},
            )
        )

    async def flush(self, sessions: list[Session], now: float) -> bool:
        """Send this tick's batch (if any); returns whether an entry was written."""
        if now - self._last_heartbeats >= self._heartbeat_every and sessions:
            self._last_heartbeats = now
            self._events += [
                (
                    self._part(s),
                    event_to_dict(Heartbeat(s.session_id, s.user_id, s.device, s.status)),
                )
                for s in sessions
            ]
        if not self._events and not self._typing:
            return False
        events, typing = self._events, self._typing
        self._events, self._typing = [], []
        batches: dict[int, dict[str, Any]] = {}
        for part, event in events:
            batch = batches.setdefault(part, {"gw": self._gateway_id, "events": [], "typing": []})
            batch["events"].append(event)
        for part, t in typing:
            batch = batches.setdefault(part, {"gw": self._gateway_id, "events": [], "typing": []})
            batch["typing"].append(t)
        try:
            if len(batches) == 1:
                [(part, batch)] = batches.items()
                await self._redis.xadd(self._keys.presence_in_of(part), {"e": orjson.dumps(batch)})
            else:  # one round trip; a partial failure resends the whole tick (idempotent events)
                async with self._redis.pipeline(transaction=False) as pipe:
                    for part, batch in sorted(batches.items()):
                        pipe.xadd(self._keys.presence_in_of(part), {"e": orjson.dumps(batch)})
                    await pipe.execute()
        except Exception:
            # Redis unreachable: keep the batch for the next tick (order kept, nothing dropped).
            self._events = events + self._events
            self._typing = typing + self._typing
            raise
        self.batches_sent += 1
        return True

    async def _members(self, store: Store, guild_id: int) -> list[int]:
        """Member ids, cached for a few seconds: an IDENTIFY storm into a 50k-member guild would
        otherwise read the whole member list once per connection. Only READY's presence list
        uses it, so a few seconds of staleness cost nothing but a late presence entry."""
        hit = self._member_cache.get(guild_id)
        if hit is not None and time.monotonic() - hit[0] <= MEMBER_CACHE_S:
            return hit[1]
        # One load per guild at a time: the IDENTIFYs that miss together share it (a herd that
        # arrives as the cache expires would otherwise read the member list once each).
        loading = self._member_loads.get(guild_id)
        if loading is None:
            loading = asyncio.ensure_future(store.guild_members(guild_id))
            self._member_loads[guild_id] = loading
            loading.add_done_callback(functools.partial(self._members_loaded, guild_id))
        return await asyncio.shield(loading)

    def _members_loaded(self, guild_id: int, loading: asyncio.Future[list[int]]) -> None:
        self._member_loads.pop(guild_id, None)
        if not loading.cancelled() and loading.exception() is None:
            self._member_cache[guild_id] = (time.monotonic(), loading.result())

    async def ready_presences(
        self, store: Store, guilds: list[Guild], large_threshold: int
    ) -> dict[int, Any]:
        """guild id -> {"presences": [...]}, or for large guilds {"large": true, "member_count": n}."""
        out: dict[int, Any] = {}
        for guild in guilds:
            members = await self._members(store, guild.id)
            if (
                len(members) > large_threshold
            ):  # counts arrive with the guild's next PRESENCE_UPDATE
                out[guild.id] = {"large": True, "member_count": len(members)}
                continue
            views = (
                await self._redis.hmget(self._keys.presence_users(), [str(m) for m in members])
                if members
                else []
            )
            out[guild.id] = {
                "presences": [
                    {"user_id": str(m), **orjson.loads(v)}
                    for m, v in zip(members, views, strict=True)
                    if v is not None
                ]
            }
        return out
