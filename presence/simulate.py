"""A seeded simulation of one busy guild: what presence costs with and without coalescing.

Used by ``chatscale bench presence`` and by the tests. Every status change is fed to two
coalescers over the same input — one in raw-broadcast mode, one coalescing per tick — and each
update is charged one delivery per online member (every online member's session receives it).
Pure code with a simulated clock, so the figures are exactly repeatable from the seed.
"""

from __future__ import annotations

import random
from typing import Any

from presence.coalesce import Coalescer, GuildUpdate
from presence.state import (
    Event,
    Offline,
    Online,
    PresenceState,
    SetStatus,
    SetUserStatus,
    StatusChange,
    VoiceUpdate,
)

GUILD = 100


def simulate_guild(
    *,
    seed: int = 20240611,
    members: int = 5000,
    online: int = 3000,
    seconds: int = 60,
    tick_s: float = 0.1,
    events_per_s: int = 30,
    interval_s: float = 1.0,
    large_guild_threshold: int = 1000,
) -> dict[str, Any]:
    rng = random.Random(seed)
    state = PresenceState(timeout=60.0)
    for uid in range(online):
        state.online(f"d{uid}", uid, "desktop", "online", 0.0)
    online_now = [online]
    counts = {
        "member_count": lambda g: members,
        "recipients": lambda g: online_now[0],
        "large_guild_threshold": large_guild_threshold,
    }
    coalesced = Coalescer(interval=interval_s, **counts)
    raw = Coalescer(enabled=False, **counts)
    events = 0
    updates: list[GuildUpdate] = []
    per_tick = max(1, round(events_per_s * tick_s))
    for tick in range(1, int(seconds / tick_s) + 1):
        now = tick * tick_s
        batch: list[Event] = []
        for _ in range(per_tick):
            # A third of the churn comes from 50 restless users (flaky phones, AFK toggles).
            uid = rng.randrange(50) if rng.random() < 0.33 else rng.randrange(members)
            roll = rng.random()
            if state.status(uid) == "offline":
                batch.append(Online(f"d{uid}", uid, "desktop", "online"))
            elif roll < 0.4:  # idle flap: away, often back within the same second
                batch.append(SetStatus(f"d{uid}", rng.choice(["idle", "online"])))
            elif roll < 0.6:  # phone connects or drops
                batch.append(
                    rng.choice([Online(f"m{uid}", uid, "mobile", "online"), Offline(f"m{uid}")])
                )
            elif roll < 0.75:
                batch.append(Offline(f"d{uid}"))
            elif roll < 0.85:
                batch.append(SetUserStatus(uid, rng.choice(["dnd", "online"])))
            else:
                batch.append(VoiceUpdate(f"d{uid}", GUILD, rng.choice([None, 1, 2])))
        events += len(batch)
        changes = state.apply_batch(batch, now)
        for c in changes:
            if isinstance(c, StatusChange):
                online_now[0] += (c.new_visible != "offline") - (c.old_visible != "offline")
        raw.submit(changes, lambda user: (GUILD,))
        coalesced.submit(changes, lambda user: (GUILD,))
        updates += coalesced.flush(now)
    return {
        "seed": seed,
        "members": members,
        "online_at_start": online,
        "seconds": seconds,
        "events": events,
        "raw": raw.stats,
        "coalesced": coalesced.stats,
        "updates": updates,
    }
