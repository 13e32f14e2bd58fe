"""Which channels' history a user may read *now*: the query-time check behind SEARCH.

Computed from the metadata store when asked, with the permission code everything else uses
(``guilds.access.load_view``: membership, bans, roles, overwrites), never from what was true
when a message was indexed. A channel counts if the member has VIEW_CHANNEL and
READ_MESSAGE_HISTORY there; a banned or removed member gets nothing from that guild.
"""

from __future__ import annotations

from guilds.access import load_view
from guilds.permissions import Permission
from storage.base import MetadataStore

READABLE = Permission.VIEW_CHANNEL | Permission.READ_MESSAGE_HISTORY


async def readable_channels(
    store: MetadataStore, user_id: int, *, guild_id: int | None = None
) -> set[int]:
    """Channels whose history ``user_id`` may read right now, in one guild or all of theirs."""
    guild_ids = (
        [guild_id] if guild_id is not None else [g.id for g in await store.user_guilds(user_id)]
    )
    out: set[int] = set()
    for gid in guild_ids:
        view = await load_view(store, gid, user_id)
        if view is None:  # gone, not a member, or banned
            continue
        out.update(cid for cid, perms in view.channels.items() if perms & READABLE == READABLE)
    return out
