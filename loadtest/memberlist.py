"""Whose presence a simulated client watches in a lazy guild (GUILD_SUBSCRIPTIONS, op 14).

A real client subscribes to the rows of the member list it shows. The load generator gives each
client a "sidebar": the ``SIDEBAR`` online members after it in the community's online list (a
ring), so every member has exactly ``SIDEBAR`` watchers and an arrival costs the same whatever
the crowd — the point of lazy guilds. Observers (which measure how fast status changes
propagate) watch the members whose changes they measure instead, at most the protocol's 100.
Small guilds ignore subscriptions, so this changes nothing there.
"""

from __future__ import annotations

from chatscale.wire import MAX_MEMBER_IDS

SIDEBAR = 20  # members watched per client: about one screen of a member list


def watch_list(
    online: list[int],
    index: int,
    *,
    observer: bool = False,
    observed: list[int] | None = None,
    size: int = SIDEBAR,
) -> list[int]:
    """Community member indexes (cids) the client ``online[index]`` watches."""
    if observer and observed:
        return observed[:MAX_MEMBER_IDS]
    n = len(online)
    return [online[(index + j) % n] for j in range(1, min(size, n - 1) + 1)]
