"""What a member may see and do, computed from stored metadata with ``guilds.permissions``.

Picture: a ``GuildSnapshot`` is one guild's channels, roles and channel overwrites, read from
the metadata store in one go. Given a member's role ids it answers "which channels can they
view, and with which bits" — ``view()`` — and "what may they do in this channel" —
``permissions()``. Everything that enforces permissions goes through it:

- the gateway builds READY from it and recomputes live sessions from it when the control
  plane announces a change (``gateway/control.py``);
- the worker's ``Authorizer`` checks membership, bans and SEND_MESSAGES with it;
- ``chatscale explain-permissions`` prints its computation step by step.

Loading (``load_guild``, ``load_member``) is kept apart from computing, so the leak property
test can drive the computing half with random communities and no store at all.

A guild without a stored @everyone role (data written before roles existed) gets Discord's
default @everyone permissions, so old databases keep their old behaviour: every member sees
every channel.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from guilds.permissions import (
    DEFAULT_EVERYONE,
    NONE,
    GuildContext,
    MemberContext,
    Overwrite,
    Permission,
    Role,
    Step,
    channel_permissions,
    explain,
)
from storage.base import Channel, ChannelOverwrite, Guild, GuildRole, MetadataStore

_P = Permission


@dataclass(frozen=True, slots=True)
class GuildSnapshot:
    guild: Guild
    context: GuildContext
    channels: dict[int, Channel]  # in display order (position, id)
    overwrites: dict[int, tuple[Overwrite, ...]]  # channel id -> its overwrites

    @classmethod
    def build(
        cls,
        guild: Guild,
        channels: Iterable[Channel],
        roles: Iterable[GuildRole],
        overwrites: Iterable[ChannelOverwrite],
    ) -> GuildSnapshot:
        by_id = {
            r.id: Role(r.id, Permission(r.permissions), r.position, r.name)
            for r in roles
            if r.guild_id == guild.id
        }
        by_id.setdefault(guild.id, Role(guild.id, DEFAULT_EVERYONE, 0, "@everyone"))
        ows: dict[int, list[Overwrite]] = {}
        for o in overwrites:
            # ADMINISTRATOR cannot be set per channel; the control plane refuses it, and a row
            # that holds it anyway is read without it rather than failing every reader.
            allow = Permission(o.allow) & ~_P.ADMINISTRATOR
            deny = Permission(o.deny) & ~_P.ADMINISTRATOR
            ows.setdefault(o.channel_id, []).append(Overwrite(o.target_id, o.kind, allow, deny))
        ordered = sorted(
            (c for c in channels if c.guild_id == guild.id), key=lambda c: (c.position, c.id)
        )
        return cls(
            guild=guild,
            context=GuildContext(guild_id=guild.id, owner_id=guild.owner_id, roles=by_id),
            channels={c.id: c for c in ordered},
            overwrites={cid: tuple(v) for cid, v in ows.items()},
        )

    def member(self, user_id: int, role_ids: Iterable[int]) -> MemberContext:
        return MemberContext(user_id=user_id, role_ids=frozenset(role_ids))

    def permissions(self, user_id: int, role_ids: Iterable[int], channel_id: int) -> Permission:
        """Effective bits in one channel; NONE for a channel that is not in this guild."""
        channel = self.channels.get(channel_id)
        if channel is None:
            return NONE
        return channel_permissions(
            self.context,
            self.member(user_id, role_ids),
            self.overwrites.get(channel_id, ()),
            channel_kind="voice" if channel.kind == "voice" else "text",
        )

    def explain(self, user_id: int, role_ids: Iterable[int], channel_id: int) -> list[Step]:
        channel = self.channels[channel_id]
        return explain(
            self.context,
            self.member(user_id, role_ids),
            self.overwrites.get(channel_id, ()),
            channel_kind="voice" if channel.kind == "voice" else "text",
        )

    def view(self, user_id: int, role_ids: Iterable[int]) -> dict[int, Permission]:
        """Channels the member can VIEW, in display order, with their effective bits."""
        roles = frozenset(role_ids)
        out = {}
        for cid in self.channels:
            perms = self.permissions(user_id, roles, cid)
            if perms & _P.VIEW_CHANNEL:
                out[cid] = perms
        return out


@dataclass(frozen=True, slots=True)
class GuildView:
    """What one member sees of one guild: the channels they can view and their bits there."""

    snapshot: GuildSnapshot
    role_ids: frozenset[int]
    channels: dict[int, Permission]

    @property
    def guild(self) -> Guild:
        return self.snapshot.guild

    def guild_object(self) -> dict[str, Any]:
        """The guild as READY and GUILD_CREATE show it."""
        g = self.snapshot.guild
        return {
            "id": str(g.id),
            "name": g.name,
            "owner_id": str(g.owner_id),
            "roles": [str(r) for r in sorted(self.role_ids)],
            "channels": [
                channel_object(self.snapshot.channels[cid], perms)
                for cid, perms in self.channels.items()
            ],
        }


def channel_object(channel: Channel, perms: Permission) -> dict[str, Any]:
    """A channel on the wire; ``permissions`` is the member's effective bits there (string)."""
    return {
        "id": str(channel.id),
        "guild_id": str(channel.guild_id),
        "name": channel.name,
        "kind": channel.kind,
        "position": channel.position,
        "rate_limit_per_user": channel.slowmode_s,
        "permissions": str(int(perms)),
    }


def member_view(snapshot: GuildSnapshot, user_id: int, role_ids: frozenset[int]) -> GuildView:
    return GuildView(snapshot, role_ids, snapshot.view(user_id, role_ids))


def authorize_send(
    snapshot: GuildSnapshot | None, user_id: int, role_ids: frozenset[int] | None, channel_id: int
) -> str | None:
    """May this user post in this channel? None if yes, else the rejection code.

    ``role_ids`` None means "not a member, or banned" (``load_member``). The worker's
    ``Authorizer`` decides with this function; the gateway's early check agrees with it
    because both compute the bits with ``GuildSnapshot.permissions``.
    """
    if snapshot is None or channel_id not in snapshot.channels:
        return "UNKNOWN_CHANNEL"
    if role_ids is None:
        return "MISSING_ACCESS"
    perms = snapshot.permissions(user_id, role_ids, channel_id)
    if not perms & _P.VIEW_CHANNEL:
        return "MISSING_ACCESS"
    if not perms & _P.SEND_MESSAGES:
        return "MISSING_PERMISSIONS"
    return None


# ---- loading ------------------------------------------------------------------------------


async def load_guild(store: MetadataStore, guild_id: int) -> GuildSnapshot | None:
    """One guild's channels, roles and overwrites; None if the guild does not exist."""
    guild = await store.get_guild(guild_id)
    if guild is None:
        return None
    channels = await store.guild_channels(guild_id)
    roles = await store.guild_roles(guild_id)
    overwrites = await store.guild_overwrites(guild_id)
    return GuildSnapshot.build(guild, channels, roles, overwrites)


async def load_member(store: MetadataStore, guild_id: int, user_id: int) -> frozenset[int] | None:
    """The member's role ids, or None if they are not a member or are banned.

    Bans are checked on their own, not only through membership: the control plane writes the
    ban before it removes the membership, so the state in between is still a denial, and a
    membership added concurrently with a ban is denied too.
    """
    if not await store.is_member(guild_id, user_id):
        return None
    if await store.is_banned(guild_id, user_id):
        return None
    return await store.member_roles(guild_id, user_id)


async def load_view(
    store: MetadataStore, guild_id: int, user_id: int, snapshot: GuildSnapshot | None = None
) -> GuildView | None:
    """What the user sees of the guild; None if the guild is gone, or they are not a member."""
    snapshot = snapshot or await load_guild(store, guild_id)
    if snapshot is None:
        return None
    roles = await load_member(store, guild_id, user_id)
    if roles is None:
        return None
    return member_view(snapshot, user_id, roles)
