"""Community definitions (``seeds/*.toml``) and loading them through the control plane.

A community file names users, guilds, their channels and members. Ids are snowflakes derived
from the file (a fixed creation time plus the position of each thing), so loading a file twice
is a no-op and every run of the same seed has the same ids.
"""

from __future__ import annotations

import tomllib
import zlib
from datetime import UTC, datetime
from pathlib import Path

import redis.asyncio as aioredis
from pydantic import BaseModel, Field

from chatscale import snowflake
from chatscale.keys import Keys
from storage import Channel, Guild, Store, User

USER_NODE, GUILD_NODE, CHANNEL_NODE = 1021, 1022, 1023
SEEDS = Path(__file__).resolve().parent.parent / "seeds"


class GuildSpec(BaseModel):
    name: str
    owner: str
    channels: list[str] = Field(min_length=1)
    members: list[str] = Field(min_length=1)


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
        names = sorted({m for g in self.guilds for m in [g.owner, *g.members]})
        return [User(self._id(USER_NODE, i), name) for i, name in enumerate(names)]

    def plan(self) -> tuple[list[User], list[Guild], list[Channel], list[tuple[int, int]]]:
        users = {u.username: u.id for u in self.users()}
        guilds, channels, members = [], [], []
        for gi, spec in enumerate(self.guilds):
            guild = Guild(self._id(GUILD_NODE, gi), spec.name, users[spec.owner])
            guilds.append(guild)
            for ci, name in enumerate(spec.channels):
                channels.append(
                    Channel(self._id(CHANNEL_NODE, gi * 64 + ci), guild.id, name, "text", ci)
                )
            members += [(guild.id, users[m]) for m in sorted({spec.owner, *spec.members})]
        return self.users(), guilds, channels, members


def load_file(path: str | Path) -> Community:
    path = Path(path)
    if not path.exists() and (SEEDS / f"{path.name}.toml").exists():
        path = SEEDS / f"{path.name}.toml"
    with open(path, "rb") as f:
        return Community.model_validate(tomllib.load(f))


async def apply(
    community: Community, store: Store, redis: aioredis.Redis | None, keys: Keys
) -> dict[str, int]:
    """Write a community through the metadata interface, then bump the metadata version."""
    users, guilds, channels, members = community.plan()
    for user in users:
        existing = await store.get_user(user.id)
        if existing is not None and existing.username != user.username:
            raise ValueError(
                f"id clash: {user.id} is {existing.username!r} already; rename community {community.name!r}"
            )
        await store.put_user(user)
    for guild in guilds:
        await store.put_guild(guild)
    for channel in channels:
        await store.put_channel(channel)
    for guild_id, user_id in members:
        await store.add_member(guild_id, user_id)
    if redis is not None:
        await redis.incr(keys.metadata_version())
    return {
        "users": len(users),
        "guilds": len(guilds),
        "channels": len(channels),
        "members": len(members),
    }
