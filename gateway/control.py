"""The gateway's side of permissions: keep every local session's view of its guilds current.

Picture. A session holds, per guild it is in, the channels the user can VIEW and their
permission bits there (``Session.channels`` / ``Session.perms``). Deliveries are filtered by
``channels`` (``gateway/fanout.py``), sends and history requests are checked against
``perms``. This module keeps those maps right at three moments:

- **IDENTIFY** (``load_views`` then ``settle``): the views are loaded under a metadata version
  and the session is registered with no channels at all (nothing can be delivered to it); only
  when the version is unchanged *after* registration — and no change touched the session in
  between — are the channels installed and READY sent, with no await in between. A change that
  raced the load is therefore either seen by the re-check or applied by ``apply`` afterwards.
- **A control-plane change** (``run``/``handle``): the control plane publishes a ``Change`` on
  the metadata pub/sub channel; this gateway reloads the guild, recomputes the affected
  sessions, tells live ones what changed (GUILD_CREATE / GUILD_DELETE / CHANNEL_CREATE /
  CHANNEL_UPDATE / CHANNEL_DELETE, GUILD_MEMBER_ADD / GUILD_MEMBER_REMOVE to the others), and
  only then confirms (RPUSH to the change's ack list). The control plane returns once every
  live gateway confirmed, so "the ban returned" implies "no gateway delivers to them".
- **Cached mode** (``CHATSCALE_PERMISSION_MODE=cached``, the eventual arm of the ``bans``
  lab experiment): the control plane announces nothing, and ``check`` reloads views only every
  ``PERMISSION_CACHE_TTL_S``, so sessions keep what they may see and send until then.
- **Housekeeping** (``check``, every second; the liveness key is renewed by its own task, which
  only extends an existing key): a version that moved without an event (a missed pub/sub
  message, ``chatscale seed``) resyncs every session; a liveness key that vanished means the
  control plane fenced this gateway (it did not confirm in time) or it stalled past the key's
  TTL — workers skipped it, so its sessions may have missed deliveries: they are dropped,
  clients re-IDENTIFY, and only then is the key created again.

``apply_view`` and ``install`` are pure (no I/O): the leak property test drives them directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from chatscale.closecodes import Close
from chatscale.redisconn import TRANSIENT, connect, ready
from chatscale.wire import dumps
from gateway.host import Client, GatewayHost
from gateway.ratelimit import RateLimiter
from gateway.session import Session
from guilds.access import GuildSnapshot, GuildView, channel_object, load_guild, load_member
from guilds.access import member_view as make_view
from guilds.controlplane import Change
from guilds.permissions import Permission, bypasses_slowmode
from storage import StorageUnavailable

log = logging.getLogger("chatscale.gateway.control")

_P = Permission

#: How often a load that raced another view change is redone before giving up this round.
LOAD_TRIES = 5


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request the gateway answers with ERROR instead of doing it."""

    code: str
    message: str
    retry_after: float | None = None


@dataclass
class ViewChange:
    """What ``apply_view`` did to one session in one guild."""

    dispatches: list[tuple[str, str]] = field(default_factory=list)  # (event name, d JSON)
    joined: bool = False
    left: bool = False


# ---- pure: sessions and views ---------------------------------------------------------------


def install(
    session: Session, views: Iterable[GuildView], by_guild: dict[int, set[Session]] | None = None
) -> set[int]:
    """Replace the session's whole view (IDENTIFY); returns the guilds it no longer holds.

    ``by_guild`` (the gateway's guild -> sessions index) loses the session for those guilds.
    """
    views = list(views)
    held = {v.guild.id for v in views}
    lost = session.guilds - held
    session.guilds = held
    session.channels = {c: v.guild.id for v in views for c in v.channels}
    session.perms = {c: int(p) for v in views for c, p in v.channels.items()}
    if by_guild is not None:
        for guild_id in lost:
            _leave(by_guild, guild_id, session)
    return lost


def apply_view(
    session: Session,
    guild_id: int,
    view: GuildView | None,
    by_guild: dict[int, set[Session]],
    *,
    touched_channel: int = 0,
) -> ViewChange:
    """Move the session's view of one guild to ``view`` (None: not a member any more) and say
    what changed, as dispatches. ``touched_channel`` gets a CHANNEL_UPDATE even if the
    member's bits there did not change (its slowmode did)."""
    change = ViewChange()
    old = {c: p for c, p in session.perms.items() if session.channels.get(c) == guild_id}
    if view is None:
        if guild_id not in session.guilds:
            return change
        session.guilds.discard(guild_id)
        for c in old:
            session.channels.pop(c, None)
            session.perms.pop(c, None)
        _leave(by_guild, guild_id, session)
        change.dispatches.append(("GUILD_DELETE", dumps({"id": str(guild_id)})))
        change.left = True
        return change
    if guild_id not in session.guilds:
        session.guilds.add(guild_id)
        for c, p in view.channels.items():
            session.channels[c] = guild_id
            session.perms[c] = int(p)
        change.joined = not by_guild.get(guild_id)
        by_guild.setdefault(guild_id, set()).add(session)
        change.dispatches.append(("GUILD_CREATE", dumps(view.guild_object())))
        return change
    channels = view.snapshot.channels
    for c in old.keys() - view.channels.keys():
        session.channels.pop(c, None)
        session.perms.pop(c, None)
        d = {"id": str(c), "guild_id": str(guild_id)}
        change.dispatches.append(("CHANNEL_DELETE", dumps(d)))
    for c, p in view.channels.items():
        if c not in old:
            session.channels[c] = guild_id
            session.perms[c] = int(p)
            change.dispatches.append(("CHANNEL_CREATE", dumps(channel_object(channels[c], p))))
        elif int(p) != old[c] or c == touched_channel:
            session.perms[c] = int(p)
            change.dispatches.append(("CHANNEL_UPDATE", dumps(channel_object(channels[c], p))))
    return change


def _leave(by_guild: dict[int, set[Session]], guild_id: int, session: Session) -> None:
    members = by_guild.get(guild_id)
    if members is not None:
        members.discard(session)
        if not members:
            del by_guild[guild_id]


# ---- the gateway's control component ---------------------------------------------------------


class GatewayControl:
    def __init__(self, gateway: GatewayHost) -> None:
        self.gw = gateway
        self.limiter = RateLimiter(
            gateway.redis,
            gateway.keys,
            gateway.settings,
            clock=gateway.wall_clock,
            execute=gateway.batched.execute,
        )
        self.seen_version = 0
        self._refreshed_at = gateway.clock()  # last periodic reload (PERMISSION_MODE=cached)
        self.applied = 0  # changes applied and confirmed (a metric)
        self.slowmode: dict[int, int] = {}  # channel id -> seconds, from the latest snapshot
        self._snapshots: dict[int, tuple[int, GuildSnapshot]] = {}  # guild -> (version, snap)
        self._dirty: set[Session] = set()  # not yet READY, but a change touched them
        # Bumped whenever apply() or resync_all() is about to change sessions' views: a load
        # that straddles a bump may be older than what the sessions hold, and is redone.
        self._generation = 0
        self._sub_redis = connect(gateway.settings)
        self._pubsub = self._sub_redis.pubsub(ignore_subscribe_messages=True)

    # ---- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe before the gateway registers as alive: the control plane waits for every
        live gateway, so a live gateway must already hear every change."""
        await ready(self._sub_redis)  # a cluster client reads its slot map first
        await self._pubsub.subscribe(self.gw.keys.metadata_events())
        self.seen_version = await self._version()

    async def close(self) -> None:
        try:
            await self._pubsub.aclose()
        except TRANSIENT as exc:
            log.warning("closing the metadata subscription failed (%r)", exc)
        await self._sub_redis.aclose()

    async def run(self) -> None:
        """Apply announced changes one at a time, in the order they arrive, until the gateway
        stops."""
        while not self.gw.stopping:
            try:
                message = await self._pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=1.0
                )
            except TRANSIENT as exc:
                log.warning("metadata subscription failed (%s); resubscribing", exc)
                await asyncio.sleep(0.5)
                with contextlib.suppress(*TRANSIENT, StorageUnavailable):
                    await self.resync_all()  # changes announced meanwhile were missed
                continue
            if message is None or message.get("type") != "message":
                continue
            try:
                change = Change.from_json(message["data"])
            except ValueError:
                log.error("undecodable control message: %r", message["data"][:200])
                continue
            await self.handle(change)

    async def handle(self, change: Change) -> None:
        """Apply, then confirm. A failure means no confirmation: the control plane fences us."""
        try:
            await self.apply(change)
            if change.reply:
                async with self.gw.redis.pipeline(transaction=False) as pipe:
                    pipe.rpush(change.reply, self.gw.id)
                    pipe.expire(change.reply, 60)
                    await pipe.execute()
        except (*TRANSIENT, StorageUnavailable) as exc:
            log.warning("could not apply change %s (%s); not confirming it", change.id, exc)

    # ---- applying changes -------------------------------------------------------------------

    async def apply(self, change: Change) -> None:
        if change.kind in ("quarantine", "unquarantine"):  # account-wide (docs/safety.md)
            if change.kind == "quarantine":
                await self.quarantine(change.user_id)
            self.seen_version = max(self.seen_version, change.version)
            self.applied += 1
            return
        guild_id = change.guild_id
        for _ in range(LOAD_TRIES):
            # Loaded after the change was stored, so fresh for it; reloaded if a resync applied
            # (possibly newer) views meanwhile, so this apply does not undo them with older ones.
            generation = self._generation
            snapshot = await load_guild(self.gw.store, guild_id)
            roles: dict[int, frozenset[int] | None] = {}
            while True:  # the targets are taken after the last await, so none is missed
                targets = self._targets(change)
                missing = {s.user_id for s in targets} - roles.keys()
                if not missing:
                    break
                for user_id in missing:
                    roles[user_id] = (
                        await load_member(self.gw.store, guild_id, user_id) if snapshot else None
                    )
            if self._generation == generation:
                break
        self._generation += 1  # no await from here to the last dispatch below
        if snapshot is not None:
            self._remember(snapshot, change.version)
        joined: set[int] = set()
        left: set[int] = set()
        for session in targets:
            member_roles = roles[session.user_id]
            view = (
                make_view(snapshot, session.user_id, member_roles)
                if snapshot is not None and member_roles is not None
                else None
            )
            done = self._apply(session, guild_id, view, touched_channel=change.channel_id)
            if done.joined:
                joined.add(guild_id)
            if done.left:
                left.add(guild_id)
        if change.user_id and change.kind in ("member_remove", "member_add"):
            t = "GUILD_MEMBER_REMOVE" if change.kind == "member_remove" else "GUILD_MEMBER_ADD"
            d = dumps({"guild_id": str(guild_id), "user": {"id": str(change.user_id)}})
            for other in list(self.gw.fanout.by_guild.get(guild_id, ())):
                if other.user_id != change.user_id and other.seq > 0:
                    self._dispatch(other, t, d)
        await self._routes(joined, left)
        await self.gw.voice.enforce(targets)  # relays drop who lost voice, before we confirm
        self.seen_version = max(self.seen_version, change.version)
        self.applied += 1

    def _targets(self, change: Change) -> list[Session]:
        sessions = self.gw.sessions.values()
        if change.user_id:
            return [s for s in sessions if s.user_id == change.user_id]
        return [s for s in sessions if change.guild_id in s.guilds]

    def _apply(
        self, session: Session, guild_id: int, view: GuildView | None, *, touched_channel: int = 0
    ) -> ViewChange:
        if session.seq == 0:  # still identifying: settle() reloads it before READY
            self._dirty.add(session)
            return ViewChange()
        done = apply_view(
            session, guild_id, view, self.gw.fanout.by_guild, touched_channel=touched_channel
        )
        for t, d in done.dispatches:
            self._dispatch(session, t, d)
        if done.left:  # out of the guild (kick, ban): out of its voice channels too
            self.gw.presence.voice(session, guild_id, None)
        return done

    def _dispatch(self, session: Session, t: str, d: str) -> None:
        text = session.dispatch(t, d)  # into the replay buffer even if detached
        client = self.gw.fanout.attached.get(session)
        if client is not None:
            self.gw.send(client, text)

    async def _routes(self, joined: set[int], left: set[int]) -> None:
        if not joined and not left:
            return
        keys, by_guild = self.gw.keys, self.gw.fanout.by_guild
        async with self.gw.redis.pipeline(transaction=False) as pipe:
            for guild_id in joined:
                pipe.sadd(keys.route(guild_id), self.gw.id)
            for guild_id in left:
                if not by_guild.get(guild_id):
                    pipe.srem(keys.route(guild_id), self.gw.id)
            await pipe.execute()

    # ---- housekeeping -----------------------------------------------------------------------

    async def check(self) -> None:
        """Handle a fence (then re-create the liveness key), catch up a missed change."""
        if not await self.gw.redis.exists(self.gw.keys.gateway_alive(self.gw.id)):
            await self.drop_sessions("this gateway missed deliveries; IDENTIFY again")
            await self.gw._refresh_alive(create=True)  # only now: renewals never re-create it
        if self.gw.settings.permission_mode == "cached":
            # The eventual arm: views are reloaded every PERMISSION_CACHE_TTL_S, not when a
            # change happens (the control plane does not announce changes in this mode).
            now = self.gw.clock()
            if now - self._refreshed_at < self.gw.settings.permission_cache_ttl_s:
                return
            self._refreshed_at = now
        if await self._version() > self.seen_version:
            await self.resync_all()

    async def resync_all(self) -> None:
        """Recompute every session from the store (after a missed announcement).

        The loads take many awaits. If ``apply`` changed any session meanwhile (a ban
        announced and applied while we loaded), what we loaded may be older than what the
        sessions already hold — applying it would hand a banned user the guild back
        (GUILD_CREATE, then its messages and presence). So the load is only used if no view
        was changed while it ran; otherwise it is redone, and after ``LOAD_TRIES`` busy
        rounds left to the next housekeeping tick (``seen_version`` stays behind). Applying
        nothing is safe: every announced change is applied by ``apply`` on its own.
        """
        for _ in range(LOAD_TRIES):
            generation = self._generation
            version = await self._version()
            loaded: dict[int, list[GuildView]] = {}
            while True:
                users = {s.user_id for s in self.gw.sessions.values()} - loaded.keys()
                if not users:
                    break
                for user_id in users:
                    loaded[user_id], _ = await self.load_views(user_id)
            if self._generation == generation:
                break
        else:
            log.info("views kept changing during a resync; retrying at the next check")
            return
        self._generation += 1  # no await from here until every session is updated
        joined: set[int] = set()
        left: set[int] = set()
        for session in list(self.gw.sessions.values()):
            views = {v.guild.id: v for v in loaded[session.user_id]}
            for guild_id in session.guilds | views.keys():
                done = self._apply(session, guild_id, views.get(guild_id))
                joined |= {guild_id} if done.joined else set()
                left |= {guild_id} if done.left else set()
        await self._routes(joined, left)
        await self.gw.voice.enforce(list(self.gw.sessions.values()))
        self.seen_version = max(self.seen_version, version)

    async def drop_sessions(self, reason: str) -> None:
        """Forget every session (so RESUME fails and clients IDENTIFY afresh) and close them."""
        log.warning(
            "gateway %s dropping %d sessions: %s", self.gw.id, len(self.gw.sessions), reason
        )
        for session in list(self.gw.sessions.values()):
            await self.gw._forget(session)
        for client in list(self.gw.clients):
            self.gw.close_client(client, Close.UNKNOWN_ERROR, reason)  # bounded, in the background

    async def quarantine(self, user_id: int) -> None:
        """End every local session of a quarantined account (close 4016, not resumable):
        forgotten (no RESUME, no delivery) and closing before this gateway confirms."""
        for session in [s for s in self.gw.sessions.values() if s.user_id == user_id]:
            client = self.gw.fanout.attached.get(session)
            await self.gw._forget(session)
            if client is not None:
                self.gw.close_client(client, Close.ACCOUNT_QUARANTINED, "account quarantined")

    # ---- IDENTIFY ---------------------------------------------------------------------------

    async def admit_identify(self, client: Client, user_id: int) -> bool:
        """The identify rate limit; on refusal sends ERROR RATE_LIMITED and closes with 4008."""
        try:
            verdict = await self.limiter.identify(user_id)
        except TRANSIENT:
            self.gw.storm.unavailable(client, "rate limiter unavailable")  # 4017 or 4000
            return False
        if verdict.allowed:
            try:
                quarantined = await self.gw.redis.sismember(
                    self.gw.keys.quarantined(), str(user_id)
                )
            except TRANSIENT:
                quarantined = False  # fail open: the workers still refuse its messages (bans)
            if quarantined:
                self.gw.close_client(client, Close.ACCOUNT_QUARANTINED, "account quarantined")
                return False
            return True
        self.gw.send_error(
            client, "RATE_LIMITED", verdict.message(), retry_after=verdict.retry_after
        )
        self.gw.close_client(
            client,
            Close.RATE_LIMITED,
            f"identify rate limited; retry after {verdict.retry_after:.3f} s",
        )
        return False

    async def load_views(self, user_id: int) -> tuple[list[GuildView], int]:
        """The user's view of each guild they belong to, and the version it was loaded under
        (the version did not move during the load; after five tries, the last one)."""
        version = await self._version()
        views: list[GuildView] = []
        for _ in range(5):
            views = []
            for guild in await self.gw.store.user_guilds(user_id):
                snapshot = await self._snapshot(guild.id, version)
                roles = await load_member(self.gw.store, guild.id, user_id) if snapshot else None
                if snapshot is not None and roles is not None:
                    views.append(make_view(snapshot, user_id, roles))
            after = await self._version()
            if after == version:
                break
            version = after
        return views, version

    async def settle(
        self, session: Session, views: list[GuildView], version: int
    ) -> list[GuildView]:
        """Call with the session registered and attached but not yet READY (``channels``
        empty). Returns the views to show in READY, installed with no await before it."""
        for _ in range(10):
            if await self._version() == version and session not in self._dirty:
                break
            self._dirty.discard(session)
            views, version = await self.load_views(session.user_id)
            gained = {v.guild.id for v in views} - session.guilds
            if gained:  # joined while identifying: route deliveries here before READY
                session.guilds |= gained
                for guild_id in gained:
                    self.gw.fanout.by_guild.setdefault(guild_id, set()).add(session)
                await self._routes(gained, set())
        self._dirty.discard(session)
        lost = install(session, views, self.gw.fanout.by_guild)
        if lost:
            self.gw._spawn(self._routes(set(), lost))
        return views

    # ---- requests ---------------------------------------------------------------------------

    async def send_refusal(
        self, session: Session, channel_id: int, *, count: bool
    ) -> Refusal | None:
        """SEND_MESSAGES, then (``count``: a new message, not a retry) the user's message rate
        and the channel's slowmode, which members who may manage messages bypass. The caller
        checked visibility before awaiting (the nonce claim), so a ban or permission change may
        have removed the channel since: that answer is UNKNOWN_CHANNEL, as for any channel the
        session cannot see."""
        refusal = self.send_permission(session, channel_id)
        if refusal is not None or not count:
            return refusal
        try:
            verdict = await self.limiter.message(
                session.user_id, channel_id, slowmode_s=self._slowmode(session, channel_id)
            )
        except TRANSIENT:
            return Refusal("UNAVAILABLE", "could not check rate limits; retry", 1.0)
        if verdict.allowed:
            return None
        return Refusal("RATE_LIMITED", verdict.message(), verdict.retry_after)

    def send_permission(self, session: Session, channel_id: int) -> Refusal | None:
        """The channel is visible and SEND_MESSAGES is granted (no Redis: the session's view)."""
        if channel_id not in session.channels:
            return Refusal("UNKNOWN_CHANNEL", "no such guild or channel visible to you")
        if not session.perms.get(channel_id, 0) & _P.SEND_MESSAGES:
            return Refusal("MISSING_PERMISSIONS", "you may not send messages in this channel")
        return None

    async def queue_send(
        self,
        session: Session,
        channel_id: int,
        *,
        stream: str,
        entry: bytes,
        message_id: int,
        nonce_key: str,
    ) -> tuple[Refusal | None, int | None]:
        """One node: a new message's rate limits, nonce claim and XADD in one script call
        (``RateLimiter.queue_message``); the caller checked ``send_permission`` in the same
        loop turn. Returns (refusal, None) when a window refused it (nothing queued or
        claimed), (None, id) when its nonce already held ``id`` (nothing queued: the caller
        queues the retry under that id), (None, None) when it was queued. Raises TRANSIENT."""
        queued = await self.limiter.queue_message(
            session.user_id,
            channel_id,
            slowmode_s=self._slowmode(session, channel_id),
            stream=stream,
            entry=entry,
            message_id=message_id,
            nonce_key=nonce_key,
            nonce_ttl_s=self.gw.settings.nonce_ttl_s,
        )
        verdict = queued.verdict
        if not verdict.allowed:
            return Refusal("RATE_LIMITED", verdict.message(), verdict.retry_after), None
        return None, queued.claimed

    def _slowmode(self, session: Session, channel_id: int) -> int:
        perms = _P(session.perms.get(channel_id, 0))
        return 0 if bypasses_slowmode(perms) else self.slowmode.get(channel_id, 0)

    def voice_refusal(
        self, session: Session, guild_id: int, channel_id: int | None
    ) -> Refusal | None:
        """Joining (or moving to) a voice channel needs it visible, a voice channel, and
        CONNECT there (``Session.perms`` already has the voice bits dropped without it).
        Leaving (``channel_id`` None) needs only the guild."""
        if guild_id not in session.guilds or (
            channel_id is not None and session.channels.get(channel_id) != guild_id
        ):
            return Refusal("UNKNOWN_CHANNEL", "no such guild or channel visible to you")
        if channel_id is None:
            return None
        cached = self._snapshots.get(guild_id)
        channel = cached[1].channels.get(channel_id) if cached is not None else None
        if channel is None or channel.kind != "voice":
            return Refusal("NOT_VOICE_CHANNEL", "only a voice channel can be joined")
        if not session.perms.get(channel_id, 0) & _P.CONNECT:
            return Refusal("MISSING_PERMISSIONS", "you may not connect to this voice channel")
        return None

    def history_refusal(self, session: Session, channel_id: int) -> Refusal | None:
        if not session.perms.get(channel_id, 0) & _P.READ_MESSAGE_HISTORY:
            return Refusal("MISSING_PERMISSIONS", "you may not read this channel's history")
        return None

    # ---- helpers ----------------------------------------------------------------------------

    async def _version(self) -> int:
        return int(await self.gw.redis.get(self.gw.keys.metadata_version()) or 0)

    async def _snapshot(self, guild_id: int, version: int) -> GuildSnapshot | None:
        """A guild's snapshot, shared by every IDENTIFY under the same metadata version."""
        cached = self._snapshots.get(guild_id)
        if cached is not None and cached[0] == version:
            return cached[1]
        snapshot = await load_guild(self.gw.store, guild_id)
        if snapshot is not None:
            self._remember(snapshot, version)
        return snapshot

    def _remember(self, snapshot: GuildSnapshot, version: int) -> None:
        cached = self._snapshots.get(snapshot.guild.id)
        if cached is None or cached[0] <= version:
            self._snapshots[snapshot.guild.id] = (version, snapshot)
            for channel in snapshot.channels.values():
                self.slowmode[channel.id] = channel.slowmode_s
