"""Community definitions (``seeds/*.toml``) and loading them into the metadata store.

A community file names users, guilds, their channels and members, and optionally roles,
@everyone's permissions and channel overwrites. Ids are snowflakes derived from the file (a
fixed creation time plus the position of each thing), so loading a file twice is a no-op and
every run of the same seed has the same ids.

The format (``seeds/demo.toml`` uses every part; everything but the first four keys optional)::

    [[guilds]]
    name = "interview-prep"
    owner = "alice"
    members = ["alice", "bob", "carol"]
    channels = [
      "general",                                        # a plain text channel
      { name = "announcements", slowmode = 30, overwrites = [
          { role = "@everyone", deny = ["SEND_MESSAGES"] },
          { role = "mentors", allow = "SEND_MESSAGES" },    # a list or "A|B"
          { member = "bob", deny = ["VIEW_CHANNEL"] } ] },
    ]
    everyone = ["VIEW_CHANNEL", "SEND_MESSAGES", "READ_MESSAGE_HISTORY"]  # default: Discord's
    roles = [ { name = "mentors", permissions = ["MANAGE_MESSAGES"], members = ["carol"] } ]
    public = true                                       # in the server directory; default false

Loading is a bulk write, not the control plane's strong path: it bumps the metadata version
once at the end, and running gateways catch up within a second (``gateway/control.py``).
"""

from __future__ import annotations

import tomllib
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, Field, model_validator

from chatscale import snowflake
from chatscale.keys import Keys
from guilds.directory import Directory
from guilds.permissions import DEFAULT_EVERYONE, parse_permissions
from storage import Channel, ChannelOverwrite, Guild, GuildRole, Store, User

if TYPE_CHECKING:
    from chatscale.config import Settings

ROLE_NODE, USER_NODE, GUILD_NODE, CHANNEL_NODE = 1020, 1021, 1022, 1023
SEEDS = Path(__file__).resolve().parent.parent / "seeds"
EVERYONE = "@everyone"

Perms = int | str | list[str]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OverwriteSpec(_Spec):
    role: str | None = None  # a role name of the guild, or "@everyone"
    member: str | None = None  # a username
    allow: Perms = 0
    deny: Perms = 0

    @model_validator(mode="after")
    def _one_target(self) -> OverwriteSpec:
        if (self.role is None) == (self.member is None):
            raise ValueError("an overwrite names exactly one of role or member")
        parse_permissions(self.allow), parse_permissions(self.deny)  # fail early on typos
        return self


class ChannelSpec(_Spec):
    name: str
    kind: Literal["text", "voice"] = "text"
    slowmode: int = Field(default=0, ge=0, le=6 * 3600)
    overwrites: list[OverwriteSpec] = []


class RoleSpec(_Spec):
    name: str
    permissions: Perms = 0
    members: list[str] = []


class GuildSpec(_Spec):
    name: str
    owner: str
    channels: list[str | ChannelSpec] = Field(min_length=1)
    members: list[str] = Field(min_length=1)
    everyone: Perms | None = None  # None: Discord's defaults
    roles: list[RoleSpec] = []
    public: bool = False  # listed in the server directory (docs/discovery.md)

    def channel_specs(self) -> list[ChannelSpec]:
        return [ChannelSpec(name=c) if isinstance(c, str) else c for c in self.channels]

    @model_validator(mode="after")
    def _consistent(self) -> GuildSpec:
        members = {self.owner, *self.members}
        names = {r.name for r in self.roles}
        if EVERYONE in names or len(names) != len(self.roles):
            raise ValueError(f"guild {self.name!r}: role names must be unique and not @everyone")
        for role in self.roles:
            parse_permissions(role.permissions)
            if strangers := set(role.members) - members:
                raise ValueError(f"role {role.name!r} lists non-members {sorted(strangers)}")
        for channel in self.channel_specs():
            for ow in channel.overwrites:
                if ow.role is not None and ow.role != EVERYONE and ow.role not in names:
                    raise ValueError(f"#{channel.name}: no role named {ow.role!r}")
        return self


class Community(BaseModel):
    name: str
    created: datetime = datetime(2026, 1, 1, tzinfo=UTC)
    guilds: list[GuildSpec]

    def _id(self, node: int, index: int) -> int:
        """A stable id: each community owns a 100 ms window of snowflake time after ``created``
        (chosen by a hash of its name), each kind of thing its own node bits inside it."""
        window = zlib.crc32(self.name.encode()) % 100_000 * 100
        ms = int(self.created.timestamp() * 1000) + window + index // (snowflake.MAX_SEQ + 1)
        return (
            snowflake.from_timestamp_ms(ms)
            | (node << snowflake.SEQ_BITS)
            | index % (snowflake.MAX_SEQ + 1)
        )

    def users(self) -> list[User]:
        names = {m for g in self.guilds for m in [g.owner, *g.members]}
        for g in self.guilds:  # a member overwrite may name someone outside the guild
            names |= {ow.member for c in g.channel_specs() for ow in c.overwrites if ow.member}
        return [User(self._id(USER_NODE, i), name) for i, name in enumerate(sorted(names))]

    def plan(self) -> tuple[list[User], list[Guild], list[Channel], list[tuple[int, int]]]:
        users = {u.username: u.id for u in self.users()}
        guilds, channels, members = [], [], []
        for gi, spec in enumerate(self.guilds):
            guild = Guild(self._id(GUILD_NODE, gi), spec.name, users[spec.owner])
            guilds.append(guild)
            for ci, c in enumerate(spec.channel_specs()):
                channels.append(
                    Channel(
                        self._id(CHANNEL_NODE, gi * 64 + ci),
                        guild.id,
                        c.name,
                        c.kind,
                        ci,
                        c.slowmode,
                    )
                )
            members += [(guild.id, users[m]) for m in sorted({spec.owner, *spec.members})]
        return self.users(), guilds, channels, members

    def access_plan(
        self,
    ) -> tuple[list[GuildRole], list[tuple[int, int, int]], list[ChannelOverwrite]]:
        """Roles (with each guild's @everyone), member roles (guild, user, role), overwrites."""
        users = {u.username: u.id for u in self.users()}
        _, guilds, channels, _ = self.plan()
        roles: list[GuildRole] = []
        member_roles: list[tuple[int, int, int]] = []
        overwrites: list[ChannelOverwrite] = []
        for gi, (spec, guild) in enumerate(zip(self.guilds, guilds, strict=True)):
            everyone = DEFAULT_EVERYONE if spec.everyone is None else spec.everyone
            roles.append(
                GuildRole(guild.id, guild.id, EVERYONE, int(parse_permissions(everyone)), 0)
            )
            role_ids = {EVERYONE: guild.id}
            for ri, r in enumerate(spec.roles):
                role = GuildRole(
                    self._id(ROLE_NODE, gi * 64 + ri),
                    guild.id,
                    r.name,
                    int(parse_permissions(r.permissions)),
                    ri + 1,
                )
                roles.append(role)
                role_ids[r.name] = role.id
                member_roles += [(guild.id, users[m], role.id) for m in sorted(set(r.members))]
            mine = [c for c in channels if c.guild_id == guild.id]
            for channel, c in zip(mine, spec.channel_specs(), strict=True):
                for ow in c.overwrites:
                    if ow.role is not None:
                        kind, target = "role", role_ids[ow.role]
                    else:
                        kind, target = "member", users[str(ow.member)]
                    overwrites.append(
                        ChannelOverwrite(
                            guild.id,
                            channel.id,
                            kind,  # type: ignore[arg-type]
                            target,
                            int(parse_permissions(ow.allow)),
                            int(parse_permissions(ow.deny)),
                        )
                    )
        return roles, member_roles, overwrites


def load_file(path: str | Path) -> Community:
    path = Path(path)
    if not path.exists() and (SEEDS / f"{path.name}.toml").exists():
        path = SEEDS / f"{path.name}.toml"
    with open(path, "rb") as f:
        return Community.model_validate(tomllib.load(f))


async def apply(
    community: Community, store: Store, redis: aioredis.Redis | None, keys: Keys
) -> dict[str, int]:
    """Write a community through the metadata interface, then bump the metadata version.

    Roles and overwrites go in before the channels they protect and the members they concern,
    so a reader never sees a private channel without its overwrites."""
    users, guilds, channels, members = community.plan()
    roles, member_roles, overwrites = community.access_plan()
    for user in users:
        existing = await store.get_user(user.id)
        if existing is not None and existing.username != user.username:
            raise ValueError(
                f"id clash: {user.id} is {existing.username!r} already; rename community {community.name!r}"
            )
        await store.put_user(user)
    for role in roles:
        await store.put_role(role)
    for overwrite in overwrites:
        await store.put_overwrite(overwrite)
    for guild in guilds:
        await store.put_guild(guild)
    for channel in channels:
        await store.put_channel(channel)
    for guild_id, user_id in members:
        await store.add_member(guild_id, user_id)
    for guild_id, user_id, role_id in member_roles:
        await store.add_member_role(guild_id, user_id, role_id)
    if redis is not None:
        directory = Directory(redis, keys)
        for guild, spec in zip(guilds, community.guilds, strict=True):
            await directory.index(guild.id, guild.name, public=spec.public)
        await redis.incr(keys.metadata_version())
    return {
        "users": len(users),
        "guilds": len(guilds),
        "channels": len(channels),
        "members": len(members),
        "roles": len(roles),
        "overwrites": len(overwrites),
    }


async def apply_to(community: Community, settings: Settings) -> dict[str, int]:
    """``apply`` against the store and Redis a topology's ``settings`` name (opened and closed
    here): how the benchmarks and the lab seed the topology they started."""
    from chatscale.redisconn import connect
    from storage import open_store

    store = await open_store(settings.storage_url, bucket_span_ms=settings.bucket_span_ms)
    redis = connect(settings)
    try:
        return await apply(community, store, redis, Keys(settings.key_prefix))
    finally:
        await store.close()
        await redis.aclose()
