"""The control plane: every change to who may see or do what, in force when the call returns.

Each call (create a guild, channel or role; change a role's permissions; add, kick or ban a
member; unban; assign or remove a role; set or clear a channel overwrite; set slowmode) does,
in this order:

1. **validate**, then **write the metadata store**. On Cassandra this data is written and read
   at QUORUM, so once the write is acknowledged every later read sees it (R + W > RF).
   Multi-row changes are ordered so each intermediate state is safe: a ban is written before
   the membership is removed, and every reader checks bans as well as membership; a channel's
   overwrites are written before the channel itself, so a private channel is never briefly
   public.
2. **INCR the metadata version** (Redis). Workers read it before authorizing a batch and
   compare it again *atomically* with their hot-cache write, which is where a message is
   accepted (``storage/lua/hot_add.lua``): a batch authorized under an older version is
   re-authorized. From this step on, no worker accepts a message the new rules forbid.
3. **Announce and wait**: publish a ``Change`` on the metadata pub/sub channel and wait until
   every live gateway (registered in ``keys.gateways()`` with its liveness key set) has
   recomputed the sessions it affects, told them (``gateway/control.py``) and confirmed on
   this change's ack list — at most ``control_timeout_s``. A gateway that does not confirm is
   **fenced**: its liveness key is deleted, so workers stop writing to its delivery stream,
   and the gateway drops its sessions before it registers again (its clients re-IDENTIFY).

So when a call returns, its ``Receipt`` says: the change is stored, no worker will accept
against it, and every gateway either confirmed (``confirmed``) or was cut off (``fenced``).

With ``CHATSCALE_PERMISSION_MODE=cached`` (the eventual arm of the ``bans`` lab experiment;
the default is ``strong``) a call stops after step 2 and announces nothing: gateways and
workers keep their permission views for up to ``PERMISSION_CACHE_TTL_S`` and reload them
then, so a ban is in force only that much later. Its ``Receipt`` lists no gateways.

What this does not make strongly consistent (docs/permissions.md has the full list): messages
accepted *before* step 2 are still delivered to the members who may see them (after the call
returns, if the worker was slow), and the caller is trusted — a moderator UI would check
BAN_MEMBERS and the role hierarchy before calling ``ban``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import orjson

from chatscale import snowflake
from chatscale.config import Settings
from chatscale.keys import Keys
from chatscale.redisconn import connect
from chatscale.wire import dumps
from guilds.automod import Rules
from guilds.directory import Directory
from guilds.permissions import DEFAULT_EVERYONE, Permission
from storage import Ban, Channel, ChannelOverwrite, Guild, GuildRole, Store

MAX_SLOWMODE_S = 6 * 3600  # Discord's ceiling


class ControlError(ValueError):
    """The change is invalid (unknown guild, banned user, ADMINISTRATOR in an overwrite...)."""


@dataclass(frozen=True, slots=True)
class Change:
    """What the control plane announces to gateways. ``user_id`` set: only that user's
    sessions are affected; otherwise every session in the guild. ``reply``: the list each
    gateway RPUSHes its id to once applied."""

    id: str
    version: int
    kind: str
    guild_id: int
    user_id: int = 0
    channel_id: int = 0
    reply: str = ""

    def to_json(self) -> str:
        return dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> Change:
        try:
            return cls(**orjson.loads(raw))
        except (orjson.JSONDecodeError, TypeError) as exc:
            raise ValueError(f"not a control change: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Receipt:
    """What a control-plane call did and who confirmed it."""

    change: str
    version: int
    gateways: tuple[str, ...] = ()  # live gateways that were asked
    confirmed: tuple[str, ...] = ()
    fenced: tuple[str, ...] = ()  # did not confirm in time: cut off from deliveries
    created: Any = None  # the Guild, Channel or GuildRole a create call made

    @property
    def complete(self) -> bool:
        return not self.fenced


class ControlPlane:
    """Admin operations on communities. One instance per process; ``close()`` when done."""

    def __init__(self, settings: Settings, *, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.keys = Keys(settings.key_prefix)
        self.redis = connect(settings)
        # BLPOP waits up to control_timeout_s: its socket timeout must be longer than that.
        self._waiter = connect(settings, block_ms=int(settings.control_timeout_s * 1000) + 1000)
        self._ids: snowflake.SnowflakeGenerator | None = None
        self.directory = Directory(self.redis, self.keys)  # discovery's name index

    async def close(self) -> None:
        await self.redis.aclose()
        await self._waiter.aclose()

    # ---- guilds, channels, roles -------------------------------------------------------------

    async def create_guild(
        self,
        name: str,
        owner_id: int,
        *,
        channels: Sequence[str] = ("general",),
        everyone: Permission = DEFAULT_EVERYONE,
        public: bool = False,
    ) -> Receipt:
        """A guild with its @everyone role (id = guild id), the owner as a member, channels."""
        if await self.store.get_user(owner_id) is None:
            raise ControlError(f"no user {owner_id}")
        guild = Guild(await self._next_id(), name, owner_id)
        await self.store.put_role(GuildRole(guild.id, guild.id, "@everyone", int(everyone), 0))
        for position, channel_name in enumerate(channels):
            await self.store.put_channel(
                Channel(await self._next_id(), guild.id, channel_name, "text", position)
            )
        await self.store.put_guild(guild)
        await self.store.add_member(guild.id, owner_id)
        await self.directory.index(guild.id, name, public=public)  # searchable from now on
        return await self._commit(
            "member_add", guild.id, f"created guild {name!r}", user_id=owner_id, created=guild
        )

    async def rename_guild(self, guild_id: int, name: str) -> Receipt:
        """A new name, stored, then in the directory's autocomplete index."""
        guild = await self._guild(guild_id)
        if not name.strip():
            raise ControlError("a guild name is not empty")
        await self.store.put_guild(Guild(guild.id, name, guild.owner_id))
        await self.directory.index(guild.id, name)
        return await self._commit("guild", guild_id, f"renamed guild to {name!r}")

    async def set_public(self, guild_id: int, public: bool) -> Receipt:
        """List the guild in the public directory (and autocomplete), or take it out. Only the
        directory changes: membership and permissions are untouched, nothing is announced."""
        guild = await self._guild(guild_id)
        await self.directory.index(guild.id, guild.name, public=public)
        version = int(await self.redis.get(self.keys.metadata_version()) or 0)
        return Receipt(f"guild {guild.name!r} {'public' if public else 'private'}", version)

    async def create_channel(
        self,
        guild_id: int,
        name: str,
        *,
        kind: Literal["text", "voice"] = "text",
        position: int | None = None,
        slowmode_s: int = 0,
        overwrites: Sequence[tuple[Literal["role", "member"], int, Permission, Permission]] = (),
    ) -> Receipt:
        """``overwrites`` as (kind, target id, allow, deny); written before the channel, so a
        private channel is never visible to @everyone, not even for a moment."""
        await self._guild(guild_id)
        _check_slowmode(slowmode_s)
        if position is None:
            position = len(await self.store.guild_channels(guild_id))
        channel = Channel(await self._next_id(), guild_id, name, kind, position, slowmode_s)
        for ow_kind, target, allow, deny in overwrites:
            await self.store.put_overwrite(
                await self._overwrite(guild_id, channel.id, ow_kind, target, allow, deny)
            )
        await self.store.put_channel(channel)
        return await self._commit(
            "channel", guild_id, f"created channel #{name}", channel_id=channel.id, created=channel
        )

    async def set_slowmode(self, channel_id: int, seconds: int) -> Receipt:
        channel = await self._channel(channel_id)
        _check_slowmode(seconds)
        await self.store.put_channel(
            Channel(
                channel.id, channel.guild_id, channel.name, channel.kind, channel.position, seconds
            )
        )
        return await self._commit(
            "channel",
            channel.guild_id,
            f"slowmode of #{channel.name} = {seconds}s",
            channel_id=channel.id,
        )

    async def create_role(
        self, guild_id: int, name: str, permissions: Permission, *, position: int | None = None
    ) -> Receipt:
        await self._guild(guild_id)
        if position is None:
            position = max((r.position for r in await self.store.guild_roles(guild_id)), default=0)
            position += 1
        role = GuildRole(await self._next_id(), guild_id, name, int(permissions), position)
        await self.store.put_role(role)
        return await self._commit("role", guild_id, f"created role {name!r}", created=role)

    async def set_role_permissions(
        self, guild_id: int, role_id: int, permissions: Permission
    ) -> Receipt:
        """Change what a role grants (``role_id == guild_id``: the @everyone role)."""
        role = await self._role(guild_id, role_id)
        await self.store.put_role(
            GuildRole(role.id, guild_id, role.name, int(permissions), role.position)
        )
        return await self._commit("role", guild_id, f"permissions of role {role.name!r}")

    # ---- members -----------------------------------------------------------------------------

    async def add_member(self, guild_id: int, user_id: int) -> Receipt:
        await self._guild(guild_id)
        if await self.store.get_user(user_id) is None:
            raise ControlError(f"no user {user_id}")
        if await self.store.is_banned(guild_id, user_id):
            raise ControlError(f"user {user_id} is banned from guild {guild_id}; unban first")
        await self.store.add_member(guild_id, user_id)
        await self._record_join(guild_id, user_id)
        return await self._commit("member_add", guild_id, "member added", user_id=user_id)

    async def kick(self, guild_id: int, user_id: int) -> Receipt:
        guild = await self._guild(guild_id)
        if user_id == guild.owner_id:
            raise ControlError("the owner cannot be removed from their guild")
        await self.store.remove_member(guild_id, user_id)
        return await self._commit("member_remove", guild_id, "member kicked", user_id=user_id)

    async def ban(self, guild_id: int, user_id: int, reason: str = "") -> Receipt:
        """Ban, then remove the membership (and with it the member's roles). A user who is not
        a member may be banned too: they cannot join until unbanned."""
        guild = await self._guild(guild_id)
        if user_id == guild.owner_id:
            raise ControlError("the owner cannot be banned from their guild")
        await self.store.put_ban(Ban(guild_id, user_id, reason))  # first: see module docstring
        await self.store.remove_member(guild_id, user_id)
        return await self._commit("member_remove", guild_id, "member banned", user_id=user_id)

    async def unban(self, guild_id: int, user_id: int) -> Receipt:
        """Lift the ban; the user is not re-added (they join again with ``add_member``)."""
        await self._guild(guild_id)
        await self.store.delete_ban(guild_id, user_id)
        return await self._commit("unban", guild_id, "ban lifted", user_id=user_id)

    async def assign_role(self, guild_id: int, user_id: int, role_id: int) -> Receipt:
        role = await self._role(guild_id, role_id)
        if role.id == guild_id:
            raise ControlError("every member holds @everyone; it cannot be assigned")
        if not await self.store.is_member(guild_id, user_id):
            raise ControlError(f"user {user_id} is not a member of guild {guild_id}")
        await self.store.add_member_role(guild_id, user_id, role_id)
        return await self._commit(
            "member_roles", guild_id, f"role {role.name!r} assigned", user_id=user_id
        )

    async def remove_role(self, guild_id: int, user_id: int, role_id: int) -> Receipt:
        role = await self._role(guild_id, role_id)
        await self.store.remove_member_role(guild_id, user_id, role_id)
        return await self._commit(
            "member_roles", guild_id, f"role {role.name!r} removed", user_id=user_id
        )

    # ---- trust & safety (docs/safety.md) -------------------------------------------------------

    async def set_automod(self, guild_id: int, rules: Rules) -> Receipt:
        """Replace the guild's AutoMod rules; workers score against them once this returns
        (their moderation stage reads the rules with every batch)."""
        await self._guild(guild_id)
        await self.redis.set(self.keys.automod_rules(guild_id), rules.to_json())
        return await self._commit("automod", guild_id, "automod rules set")

    async def timeout_member(
        self, guild_id: int, user_id: int, seconds: int, *, now_ms: int | None = None
    ) -> Receipt:
        """The member may not send in the guild for ``seconds`` (Discord's timeout): every
        worker refuses their messages (MEMBER_TIMED_OUT) from the moment this returns; they
        keep reading. A timeout is replaced, never extended; 0 lifts it."""
        guild = await self._guild(guild_id)
        if user_id == guild.owner_id:
            raise ControlError("the owner cannot be timed out")
        if not 0 <= seconds <= 28 * 24 * 3600:
            raise ControlError("a timeout is 0 s .. 28 days")
        key = self.keys.timeouts(guild_id)
        if seconds == 0:
            await self.redis.hdel(key, str(user_id))
        else:
            now_ms = int(time.time() * 1000) if now_ms is None else now_ms
            await self.redis.hset(key, str(user_id), now_ms + seconds * 1000)
        return await self._commit(
            "member_roles", guild_id, f"member timed out for {seconds}s", user_id=user_id
        )

    async def quarantine(self, user_id: int, reason: str = "") -> Receipt:
        """Take an account out (the spam-bot detector's action): it is banned from every guild
        it belongs to (so no worker accepts its messages), marked quarantined (so no gateway
        lets it IDENTIFY again), and every gateway ends its sessions (close 4016) before
        confirming. When this returns the account has no session anywhere."""
        if await self.store.get_user(user_id) is None:
            raise ControlError(f"no user {user_id}")
        await self.redis.sadd(self.keys.quarantined(), str(user_id))
        for guild in await self.store.user_guilds(user_id):
            if guild.owner_id == user_id:
                continue  # an owner keeps its guild; its sessions still end
            await self.store.put_ban(Ban(guild.id, user_id, reason or "quarantined"))
            await self.store.remove_member(guild.id, user_id)
        return await self._commit("quarantine", 0, "account quarantined", user_id=user_id)

    async def _record_join(self, guild_id: int, user_id: int) -> None:
        """A feature of the spam-bot detector (joins per minute, workers/features.py): kept for
        young accounts only, so an old account's join costs no write."""
        now_ms = int(time.time() * 1000)
        if now_ms - snowflake.timestamp_ms(user_id) > self.settings.spam_window_s * 1000:
            return
        key = self.keys.feature_window(user_id, "joins")
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(key, {str(guild_id): now_ms})
            pipe.expire(key, 2 * self.settings.spam_window_s)
            await pipe.execute()

    async def release(self, user_id: int) -> Receipt:
        """Lift a quarantine: the account may IDENTIFY again (its bans stay; unban per guild)."""
        await self.redis.srem(self.keys.quarantined(), str(user_id))
        return await self._commit("unquarantine", 0, "quarantine lifted", user_id=user_id)

    # ---- channel overwrites ---------------------------------------------------------------------

    async def set_overwrite(
        self,
        channel_id: int,
        kind: Literal["role", "member"],
        target_id: int,
        *,
        allow: Permission,
        deny: Permission,
    ) -> Receipt:
        """Replace the channel's overwrite for a role (the guild id: @everyone) or a member."""
        channel = await self._channel(channel_id)
        ow = await self._overwrite(channel.guild_id, channel.id, kind, target_id, allow, deny)
        await self.store.put_overwrite(ow)
        return await self._commit(
            "overwrite",
            channel.guild_id,
            f"overwrite on #{channel.name} for {kind} {target_id}",
            user_id=target_id if kind == "member" else 0,
            channel_id=channel.id,
        )

    async def clear_overwrite(
        self, channel_id: int, kind: Literal["role", "member"], target_id: int
    ) -> Receipt:
        channel = await self._channel(channel_id)
        await self.store.delete_overwrite(channel.guild_id, channel.id, kind, target_id)
        return await self._commit(
            "overwrite",
            channel.guild_id,
            f"overwrite on #{channel.name} for {kind} {target_id} cleared",
            user_id=target_id if kind == "member" else 0,
            channel_id=channel.id,
        )

    # ---- the strong path ----------------------------------------------------------------------

    async def _commit(
        self,
        kind: str,
        guild_id: int,
        what: str,
        *,
        user_id: int = 0,
        channel_id: int = 0,
        created: Any = None,
    ) -> Receipt:
        """Steps 2 and 3 of the module docstring, after the caller wrote the store."""
        version = int(await self.redis.incr(self.keys.metadata_version()))
        if self.settings.permission_mode == "cached":
            # The eventual arm: stored and versioned, nobody told or waited for. Gateways and
            # workers pick it up when their views expire (PERMISSION_CACHE_TTL_S).
            return Receipt(what, version, created=created)
        change_id = secrets.token_hex(8)
        reply = self.keys.control_acks(change_id)
        change = Change(change_id, version, kind, guild_id, user_id, channel_id, reply)
        live = await self.live_gateways()
        await self.redis.publish(self.keys.metadata_events(), change.to_json())
        confirmed: set[str] = set()
        deadline = time.monotonic() + self.settings.control_timeout_s
        while not confirmed >= set(live):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            # BLPOP's timeout 0 means "forever": never pass less than 10 ms.
            got = await self._waiter.blpop([reply], timeout=max(0.01, remaining))
            if got is None:
                break
            confirmed.add(got[1].decode())
        await self.redis.delete(reply)
        fenced = tuple(g for g in live if g not in confirmed)
        for gateway_id in fenced:
            await self.redis.delete(self.keys.gateway_alive(gateway_id))
        return Receipt(
            what,
            version,
            gateways=tuple(live),
            confirmed=tuple(sorted(confirmed & set(live))),
            fenced=fenced,
            created=created,
        )

    async def live_gateways(self) -> list[str]:
        registered = sorted(g.decode() for g in await self.redis.hkeys(self.keys.gateways()))
        if not registered:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for gateway_id in registered:
                pipe.exists(self.keys.gateway_alive(gateway_id))
            alive = await pipe.execute()
        return [g for g, up in zip(registered, alive, strict=True) if up]

    # ---- helpers --------------------------------------------------------------------------------

    async def _next_id(self) -> int:
        if self._ids is None:
            node = await self.redis.incr(self.keys.node_ids()) % (snowflake.MAX_NODE + 1)
            self._ids = snowflake.SnowflakeGenerator(node)
        return self._ids.next()

    async def _guild(self, guild_id: int) -> Guild:
        guild = await self.store.get_guild(guild_id)
        if guild is None:
            raise ControlError(f"no guild {guild_id}")
        return guild

    async def _channel(self, channel_id: int) -> Channel:
        channel = await self.store.get_channel(channel_id)
        if channel is None:
            raise ControlError(f"no channel {channel_id}")
        return channel

    async def _role(self, guild_id: int, role_id: int) -> GuildRole:
        await self._guild(guild_id)
        for role in await self.store.guild_roles(guild_id):
            if role.id == role_id:
                return role
        if role_id == guild_id:  # a guild from before roles existed: its implicit @everyone
            return GuildRole(guild_id, guild_id, "@everyone", int(DEFAULT_EVERYONE), 0)
        raise ControlError(f"no role {role_id} in guild {guild_id}")

    async def _overwrite(
        self,
        guild_id: int,
        channel_id: int,
        kind: str,
        target_id: int,
        allow: Permission,
        deny: Permission,
    ) -> ChannelOverwrite:
        if kind not in ("role", "member"):
            raise ControlError(f"overwrite kind must be 'role' or 'member', not {kind!r}")
        if (allow | deny) & Permission.ADMINISTRATOR:
            raise ControlError("ADMINISTRATOR is guild-wide; a channel overwrite cannot set it")
        if kind == "role":
            await self._role(guild_id, target_id)
        return ChannelOverwrite(guild_id, channel_id, kind, target_id, int(allow), int(deny))  # type: ignore[arg-type]


def _check_slowmode(seconds: int) -> None:
    if not 0 <= seconds <= MAX_SLOWMODE_S:
        raise ControlError(f"slowmode must be 0..{MAX_SLOWMODE_S} seconds")
