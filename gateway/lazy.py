"""Lazy guilds: members on request, presence of watched members only.

Why. In a guild of N online members, telling everyone about every arrival costs N deliveries
per arrival, so a crowd of N arriving costs N² (the issue measured 410 MiB of presence for a
1k crowd). Discord's answer, kept here: above ``large_guild_threshold`` members a guild is
*lazy*. READY carries its counts, not its presences (``gateway/presence.py``); a client asks
for members when it needs them (REQUEST_GUILD_MEMBERS, op 8, answered by GUILD_MEMBERS_CHUNK
dispatches), and it says whose presence it wants to hear — the rows of the member list it
shows — with GUILD_SUBSCRIPTIONS (op 14). A PRESENCE_UPDATE of a lazy guild then reaches only
the sessions watching a listed user, so an arrival costs O(its watchers), not O(online).

How. The presence service marks a lazy guild's updates ``"large":true`` and lists every user
who changed (offline included: a watcher must see them leave). ``Watchers`` is this gateway's
index guild -> user -> watching sessions, so splitting an update costs one dict lookup per
listed user plus one small payload per session that watches someone in it; sessions watching
nobody in it cost nothing. Each session watches at most ``wire.MAX_MEMBER_IDS`` users per
guild, so the index is bounded by sessions x guilds x 100.

``MemberDirectory`` caches each guild's members with usernames for a few seconds (one store
read answers every request meanwhile) and answers a username prefix with a binary search.
Pure parts (``Watchers``, ``split_presence``, ``MemberDirectory.select``, ``chunked``) take
no I/O; ``LazyGuilds`` is the gateway's handler.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from chatscale.redisconn import TRANSIENT
from chatscale.wire import (
    Delivery,
    GuildSubscriptions,
    Intent,
    RequestGuildMembers,
    dumps,
)
from gateway import metrics
from storage import StorageUnavailable, User

if TYPE_CHECKING:
    from gateway.host import Client, GatewayHost
    from gateway.session import Session

DIRECTORY_CACHE_S = 5.0  # a member request reads the store at most this often per guild
LAZY_MARK = '"large":true'  # how a lazy guild's PRESENCE_UPDATE payload says so (coalesce.py)


# ---- who watches whom (pure) ----------------------------------------------------------------


class Watchers:
    """guild -> user -> sessions watching that user's presence, and its reverse per session."""

    def __init__(self) -> None:
        self._by_guild: dict[int, dict[int, set[Session]]] = {}
        self._of: dict[Session, dict[int, frozenset[int]]] = {}

    def watch(self, session: Session, guild_id: int, user_ids: Iterable[int]) -> int:
        """Replace what ``session`` watches in ``guild_id``; returns how many users it is now."""
        new = frozenset(user_ids)
        mine = self._of.setdefault(session, {})
        old = mine.get(guild_id, frozenset())
        users = self._by_guild.setdefault(guild_id, {})
        for user in old - new:
            sessions = users.get(user)
            if sessions is not None:
                sessions.discard(session)
                if not sessions:
                    del users[user]
        for user in new - old:
            users.setdefault(user, set()).add(session)
        if new:
            mine[guild_id] = new
        else:
            mine.pop(guild_id, None)
        if not users:
            del self._by_guild[guild_id]
        if not mine:
            del self._of[session]
        return len(new)

    def forget(self, session: Session) -> None:
        """The session expired: it watches nothing any more."""
        for guild_id in list(self._of.get(session, {})):
            self.watch(session, guild_id, ())

    def watching(self, session: Session, guild_id: int) -> frozenset[int]:
        return self._of.get(session, {}).get(guild_id, frozenset())

    def watchers(self, guild_id: int, user_id: int) -> set[Session]:
        return self._by_guild.get(guild_id, {}).get(user_id, set())

    def entries(self) -> int:
        """(session, guild, user) triples held: the index's size, bounded per session."""
        return sum(len(users) for g in self._of.values() for users in g.values())


def split_presence(payload: str, watchers: Callable[[int], set[Session]]) -> dict[Session, str]:
    """One lazy guild's PRESENCE_UPDATE ``d`` -> the ``d`` each watching session gets: the same
    counts, and only the presences of the users it watches. Sessions watching none of the
    listed users are not in the result. Each entry is encoded once, whoever gets it."""
    d = orjson.loads(payload)
    picked: dict[Session, list[str]] = {}
    for entry in d.get("presences", ()):
        sessions = watchers(int(entry["user_id"]))
        if not sessions:
            continue
        text = dumps(entry)
        for session in sessions:
            picked.setdefault(session, []).append(text)
    if not picked:
        return {}
    rest = {k: v for k, v in d.items() if k not in ("guild_id", "presences")}
    head = f'{{"guild_id":{dumps(d["guild_id"])},"presences":['
    tail = "]," + dumps(rest)[1:] if rest else "]}"
    return {s: head + ",".join(entries) + tail for s, entries in picked.items()}


def is_lazy(delivery: Delivery) -> bool:
    return delivery.t == "PRESENCE_UPDATE" and LAZY_MARK in delivery.payload


def deliver_watched(fanout: Any, watchers: Watchers, delivery: Delivery) -> int:
    """``LocalFanout.deliver`` for a lazy guild's PRESENCE_UPDATE: to watchers only. Sessions
    still identifying get nothing held (they cannot have subscribed yet). ``fanout`` is the
    ``gateway.fanout.LocalFanout`` (typed loosely: that module imports this one)."""
    guild_id = delivery.guild_id
    per = split_presence(delivery.payload, lambda user: watchers.watchers(guild_id, user))
    sent = 0
    for session, d_json in per.items():
        if not session.seq or guild_id not in session.guilds:
            continue  # not READY yet, or removed from the guild since it subscribed
        if not session.intents & Intent.GUILD_PRESENCES:
            continue
        text = session.dispatch(delivery.t, d_json)
        client = fanout.attached.get(session)
        if client is not None:
            fanout.gateway.send(client, text)
        sent += 1
    fanout.delivered += sent
    metrics.delivered(delivery, sent)
    return sent


# ---- members on request (pure selection) -------------------------------------------------------


@dataclass(frozen=True)
class Directory:
    """A guild's members at one time: by id, and by casefolded username for prefix search."""

    by_id: dict[int, User]
    names: list[tuple[str, int]]  # (casefolded username, id), sorted

    @classmethod
    def of(cls, users: Iterable[User]) -> Directory:
        by_id = {u.id: u for u in users}
        return cls(by_id, sorted((u.username.casefold(), u.id) for u in by_id.values()))

    def select(self, query: str, limit: int) -> list[User]:
        """Members whose username starts with ``query`` (case-insensitive), by username; at
        most ``limit``. ``""`` matches everyone. A binary search: O(log n + limit)."""
        q = query.casefold()
        i = bisect.bisect_left(self.names, (q, -1))
        out: list[User] = []
        while i < len(self.names) and len(out) < limit and self.names[i][0].startswith(q):
            out.append(self.by_id[self.names[i][1]])
            i += 1
        return out

    def lookup(self, user_ids: Iterable[int]) -> tuple[list[User], list[int]]:
        """(members found, ids that are not members), each in request order, repeats once."""
        found: list[User] = []
        missing: list[int] = []
        for uid in dict.fromkeys(user_ids):
            user = self.by_id.get(uid)
            if user is None:
                missing.append(uid)
            else:
                found.append(user)
        return found, missing


def chunked(items: list[Any], size: int) -> list[list[Any]]:
    """At least one chunk (an empty answer is one empty chunk, as Discord's)."""
    return [items[i : i + size] for i in range(0, len(items), size)] or [[]]


def chunk_payloads(
    guild_id: int,
    members: list[User],
    *,
    size: int,
    not_found: list[int],
    presences: dict[int, dict[str, Any]] | None,
    nonce: Any,
) -> list[str]:
    """The GUILD_MEMBERS_CHUNK ``d``s answering one request. ``not_found`` (user_ids asked for
    that are not members) is in the first chunk; ``presences`` (when asked) lists each chunk's
    members who are not offline."""
    parts = chunked(members, size)
    out = []
    for index, part in enumerate(parts):
        d: dict[str, Any] = {
            "guild_id": str(guild_id),
            "members": [{"user": {"id": str(u.id), "username": u.username}} for u in part],
            "chunk_index": index,
            "chunk_count": len(parts),
            "not_found": [str(i) for i in not_found] if index == 0 else [],
            "nonce": nonce,
        }
        if presences is not None:
            d["presences"] = [
                {"user_id": str(u.id), **presences[u.id]} for u in part if u.id in presences
            ]
        out.append(dumps(d))
    return out


# ---- the gateway's handler --------------------------------------------------------------------


class LazyGuilds:
    """REQUEST_GUILD_MEMBERS and GUILD_SUBSCRIPTIONS for one gateway (``gateway.server``)."""

    def __init__(self, gateway: GatewayHost, watchers: Watchers) -> None:
        self.gateway = gateway
        self.watchers = watchers
        self._directories: dict[int, tuple[float, Directory]] = {}
        self.requests = 0
        self.chunks_sent = 0

    async def handle(self, client: Client, request: Any) -> None:
        session = client.session
        assert session is not None
        if request.guild_id not in session.guilds:
            self.gateway.send_error(
                client,
                "UNKNOWN_GUILD",
                "no such guild visible to you",
                nonce=getattr(request, "nonce", None),
            )
            return
        if isinstance(request, GuildSubscriptions):
            self.watchers.watch(session, request.guild_id, request.user_ids)
            return
        assert isinstance(request, RequestGuildMembers)
        await self._members(client, session, request)

    async def _members(
        self, client: Client, session: Session, request: RequestGuildMembers
    ) -> None:
        gw = self.gateway
        self.requests += 1
        try:
            directory = await self._directory(request.guild_id)
            if request.user_ids is not None:
                found, missing = directory.lookup(request.user_ids)
            else:
                found, missing = directory.select(request.query or "", request.limit), []
            presences = None
            if request.presences and found:
                views = await gw.redis.hmget(gw.keys.presence_users(), [str(u.id) for u in found])
                presences = {u.id: orjson.loads(v) for u, v in zip(found, views, strict=True) if v}
        except (StorageUnavailable, *TRANSIENT):
            gw.send_error(
                client,
                "UNAVAILABLE",
                "the member list is unavailable",
                nonce=request.nonce,
                retry_after=1.0,
            )
            return
        if request.presences and presences is None:
            presences = {}
        for d_json in chunk_payloads(
            request.guild_id,
            found,
            size=gw.settings.member_chunk_size,
            not_found=missing,
            presences=presences,
            nonce=request.nonce,
        ):
            # An answer, not an event: not kept for RESUME (as HISTORY).
            gw.send(client, session.dispatch("GUILD_MEMBERS_CHUNK", d_json, replay=False))
            self.chunks_sent += 1

    async def _directory(self, guild_id: int) -> Directory:
        now = time.monotonic()
        hit = self._directories.get(guild_id)
        if hit is None or now - hit[0] > DIRECTORY_CACHE_S:
            hit = (now, Directory.of(await self.gateway.store.guild_member_users(guild_id)))
            self._directories[guild_id] = hit
        return hit[1]
