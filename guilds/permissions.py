"""Who may do what in which channel: Discord's permission algorithm as pure functions.

Picture: a guild has roles, each carrying a bit set of permissions; every member holds the
@everyone role (whose id is the guild id) plus any roles they were given. A channel may carry
overwrites, each naming a role or one member and listing bits to deny and bits to allow there.
The answer to "may this member send here?" is one integer computed from those three inputs.

The algorithm, in the order Discord publishes it (docs/topics/permissions.md):

1. The guild owner holds every permission; nothing below is consulted.
2. Guild-level base: OR the @everyone role with the member's roles. Roles only ever add, so role
   order and position do not matter here. If the result holds ADMINISTRATOR the member holds
   everything, and channel overwrites are skipped: an admin cannot be locked out by a channel.
3. Channel overwrites, from general to specific, each layer applied as "clear its denies, then
   set its allows", so a more specific layer always has the last word over a more general one:
   the @everyone overwrite; then the overwrites of all the member's roles *pooled* (every deny
   first, then every allow), so among roles an allow beats a deny whatever the role positions
   (a "Muted" role cannot out-vote a role that allows); and last the member's own overwrite.
4. Implicit rules, because some bits only mean something together with another: without
   VIEW_CHANNEL the member has nothing in the channel (we return 0); without SEND_MESSAGES the
   things one attaches to a message (TTS, embeds, files, @everyone mentions) go too; in a voice
   channel, without CONNECT the voice abilities and managing the channel go.

Role positions decide who may moderate whom (the hierarchy), never what a channel allows, so
they play no part here; ``explain`` only uses them to list roles in the order a user sees.

This module does no I/O and keeps no state, so every caller can share it: gateways use it to
list the channels a READY payload may show and to filter deliveries, and workers use it to
authorize a message before persisting it. ``explain`` renders the same computation step by step
for people learning why a member can or cannot do something.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

ChannelKind = Literal["text", "voice"]


class Permission(enum.IntFlag):
    """Discord's bit values. Bits 0-29 only: the later ones (threads, events, expressions,
    timeouts) name features chatscale does not have; they can be added without renumbering."""

    CREATE_INSTANT_INVITE = 1 << 0
    KICK_MEMBERS = 1 << 1
    BAN_MEMBERS = 1 << 2
    ADMINISTRATOR = 1 << 3
    MANAGE_CHANNELS = 1 << 4
    MANAGE_GUILD = 1 << 5
    ADD_REACTIONS = 1 << 6
    VIEW_AUDIT_LOG = 1 << 7
    PRIORITY_SPEAKER = 1 << 8
    STREAM = 1 << 9
    VIEW_CHANNEL = 1 << 10
    SEND_MESSAGES = 1 << 11
    SEND_TTS_MESSAGES = 1 << 12
    MANAGE_MESSAGES = 1 << 13
    EMBED_LINKS = 1 << 14
    ATTACH_FILES = 1 << 15
    READ_MESSAGE_HISTORY = 1 << 16
    MENTION_EVERYONE = 1 << 17
    USE_EXTERNAL_EMOJIS = 1 << 18
    VIEW_GUILD_INSIGHTS = 1 << 19
    CONNECT = 1 << 20
    SPEAK = 1 << 21
    MUTE_MEMBERS = 1 << 22
    DEAFEN_MEMBERS = 1 << 23
    MOVE_MEMBERS = 1 << 24
    USE_VAD = 1 << 25
    CHANGE_NICKNAME = 1 << 26
    MANAGE_NICKNAMES = 1 << 27
    MANAGE_ROLES = 1 << 28
    MANAGE_WEBHOOKS = 1 << 29
    ALL = (1 << 30) - 1


NONE = Permission(0)
ALL = Permission.ALL
_P = Permission
#: Meaningless without SEND_MESSAGES: they qualify a message one is sending.
SEND_DEPENDENTS = _P.SEND_TTS_MESSAGES | _P.EMBED_LINKS | _P.ATTACH_FILES | _P.MENTION_EVERYONE
#: Meaningless in a voice channel one cannot join. Discord's docs name MANAGE_CHANNELS; client
#: libraries (discord.py) also drop MANAGE_ROLES, i.e. editing the channel's overwrites.
CONNECT_DEPENDENTS = (
    _P.SPEAK | _P.STREAM | _P.PRIORITY_SPEAKER | _P.USE_VAD | _P.MUTE_MEMBERS | _P.DEAFEN_MEMBERS
) | (_P.MOVE_MEMBERS | _P.MANAGE_CHANNELS | _P.MANAGE_ROLES)


def _perm(value: int) -> Permission:
    # Storage hands us plain ints; bits this miniature does not model are dropped.
    return Permission(int(value)) & ALL


@dataclass(frozen=True, slots=True)
class Role:
    id: int
    permissions: Permission
    position: int = 0
    name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "permissions", _perm(self.permissions))


@dataclass(frozen=True, slots=True)
class Overwrite:
    """One channel's deny/allow for a role (``id`` is the role id) or one member (user id)."""

    id: int
    kind: Literal["role", "member"]
    allow: Permission
    deny: Permission

    def __post_init__(self) -> None:
        if self.kind not in ("role", "member"):
            raise ValueError(f"overwrite kind must be 'role' or 'member', not {self.kind!r}")
        object.__setattr__(self, "allow", _perm(self.allow))
        object.__setattr__(self, "deny", _perm(self.deny))
        if (self.allow | self.deny) & _P.ADMINISTRATOR:
            raise ValueError("ADMINISTRATOR is guild-wide; a channel overwrite cannot set it")


@dataclass(frozen=True, slots=True)
class GuildContext:
    guild_id: int
    owner_id: int
    roles: Mapping[int, Role]

    def __post_init__(self) -> None:
        if self.guild_id not in self.roles:
            raise ValueError("the @everyone role (id == guild_id) must be in roles")
        for key, role in self.roles.items():
            if key != role.id:
                raise ValueError(f"roles[{key}] holds role {role.id}")


@dataclass(frozen=True, slots=True)
class MemberContext:
    user_id: int
    role_ids: frozenset[int]

    def __post_init__(self) -> None:
        object.__setattr__(self, "role_ids", frozenset(self.role_ids))


@dataclass(frozen=True, slots=True)
class Step:
    """One line of an explanation: the permissions after this step, and why."""

    label: str
    value: Permission
    note: str


def _member_roles(guild: GuildContext, member: MemberContext) -> list[Role]:
    """The member's roles other than @everyone, lowest first. Ids of deleted roles are ignored."""
    ids = member.role_ids - {guild.guild_id}
    roles = [guild.roles[i] for i in ids if i in guild.roles]
    return sorted(roles, key=lambda r: (r.position, r.id))


def _split_overwrites(
    guild: GuildContext, member: MemberContext, overwrites: Sequence[Overwrite]
) -> tuple[Overwrite | None, list[Overwrite], Overwrite | None]:
    """The overwrites that concern this member: (@everyone, their roles', their own)."""
    seen: set[tuple[str, int]] = set()
    role_ids = {r.id for r in _member_roles(guild, member)}
    everyone: Overwrite | None = None
    roles: list[Overwrite] = []
    own: Overwrite | None = None
    for ow in overwrites:
        if (ow.kind, ow.id) in seen:
            raise ValueError(f"two overwrites for {ow.kind} {ow.id} on one channel")
        seen.add((ow.kind, ow.id))
        if ow.kind == "role" and ow.id == guild.guild_id:
            everyone = ow
        elif ow.kind == "role" and ow.id in role_ids:
            roles.append(ow)
        elif ow.kind == "member" and ow.id == member.user_id:
            own = ow
    roles.sort(key=lambda ow: (guild.roles[ow.id].position, ow.id))  # pooling is order-free
    return everyone, roles, own


def _pool(overwrites: Sequence[Overwrite]) -> tuple[Permission, Permission]:
    deny, allow = NONE, NONE
    for ow in overwrites:
        deny |= ow.deny
        allow |= ow.allow
    return deny, allow


def _implicit_rules(perms: Permission, channel_kind: ChannelKind) -> list[tuple[Permission, str]]:
    """Each implicit rule that fires, with the permissions after it."""
    fired: list[tuple[Permission, str]] = []
    if not perms & _P.VIEW_CHANNEL:
        return [(NONE, "no VIEW_CHANNEL: the channel is invisible, so nothing else applies")]
    if not perms & _P.SEND_MESSAGES and perms & SEND_DEPENDENTS:
        perms &= ~SEND_DEPENDENTS
        fired.append((perms, "no SEND_MESSAGES: drops TTS, embeds, files and @everyone mentions"))
    if channel_kind == "voice" and not perms & _P.CONNECT and perms & CONNECT_DEPENDENTS:
        perms &= ~CONNECT_DEPENDENTS
        fired.append((perms, "no CONNECT: drops voice abilities and managing the channel"))
    return fired


def base_permissions(guild: GuildContext, member: MemberContext) -> Permission:
    """Guild-level permissions: owner => ALL; @everyone | roles; ADMINISTRATOR => ALL."""
    if member.user_id == guild.owner_id:
        return ALL
    perms = guild.roles[guild.guild_id].permissions
    for role in _member_roles(guild, member):
        perms |= role.permissions
    return ALL if perms & _P.ADMINISTRATOR else perms


def channel_permissions(
    guild: GuildContext,
    member: MemberContext,
    overwrites: Sequence[Overwrite],
    *,
    channel_kind: ChannelKind = "text",
) -> Permission:
    """Effective permissions in one channel. The order of ``overwrites`` does not matter; two
    overwrites for the same target are a caller bug (ValueError)."""
    perms = base_permissions(guild, member)
    if perms & _P.ADMINISTRATOR:  # also the owner: ALL includes it
        return ALL
    everyone, roles, own = _split_overwrites(guild, member, overwrites)
    if everyone is not None:
        perms = (perms & ~everyone.deny) | everyone.allow
    deny, allow = _pool(roles)
    perms = (perms & ~deny) | allow
    if own is not None:
        perms = (perms & ~own.deny) | own.allow
    for after, _ in _implicit_rules(perms, channel_kind):
        perms = after
    return perms


def explain(
    guild: GuildContext,
    member: MemberContext,
    overwrites: Sequence[Overwrite],
    *,
    channel_kind: ChannelKind = "text",
) -> list[Step]:
    """The computation of ``channel_permissions`` as steps; the last step's value is the answer.

    Written separately from ``channel_permissions`` (which runs for every channel on every
    READY and must not build lists of strings); the tests check that the two agree."""
    if member.user_id == guild.owner_id:
        return [Step("guild owner", ALL, "the owner holds everything; roles are not consulted")]
    value = guild.roles[guild.guild_id].permissions
    steps = [Step("@everyone role", value, "every member holds it; its id is the guild id")]
    for role in _member_roles(guild, member):
        before, value = value, value | role.permissions
        steps.append(Step(f"role {_role_label(role)}", value, _delta(before, value)))
    if value & _P.ADMINISTRATOR:
        steps.append(Step("ADMINISTRATOR", ALL, "grants everything; overwrites are skipped"))
        return steps
    everyone, roles, own = _split_overwrites(guild, member, overwrites)
    if everyone is not None:
        value = _overwrite_step(steps, "@everyone overwrite", value, everyone)
    if roles:
        deny, allow = _pool(roles)
        names = {r.id: _role_label(r) for r in _member_roles(guild, member)}
        denies = "; ".join(f"{names[o.id]}: {permission_names(o.deny)}" for o in roles if o.deny)
        allows = "; ".join(f"{names[o.id]}: {permission_names(o.allow)}" for o in roles if o.allow)
        before, value = value, value & ~deny
        note = f"all role denies pooled ({denies or 'none'}) -> {_delta(before, value)}"
        steps.append(Step("role overwrites, deny", value, note))
        before, value = value, value | allow
        note = f"then all role allows pooled ({allows or 'none'}) -> {_delta(before, value)}"
        steps.append(Step("role overwrites, allow", value, note))
    if own is not None:
        value = _overwrite_step(steps, "member overwrite", value, own)
    for after, why in _implicit_rules(value, channel_kind):
        before, value = value, after
        steps.append(Step("implicit rule", value, f"{why} -> {_delta(before, value)}"))
    return steps


def format_explanation(steps: Sequence[Step]) -> str:
    """Numbered lines: what each step did and the permissions after it."""
    lines: list[str] = []
    for n, step in enumerate(steps, 1):
        lines.append(f"{n:>2}. {step.label}: {step.note}")
        lines.append(f"    = {permission_names(step.value)}")
    if steps:
        lines.append(f"result: {permission_names(steps[-1].value)}")
    return "\n".join(lines)


def permission_names(perms: Permission) -> str:
    """Readable names: 'none', 'ALL', 'A | B', or 'ALL except A | B' when most bits are set."""
    perms = _perm(perms)
    if perms == NONE:
        return "none"
    if perms == ALL:
        return "ALL"
    held = [p.name for p in Permission if p & perms and p.name]
    missing = [p.name for p in Permission if not p & perms and p.name]
    if len(missing) < len(held):
        return "ALL except " + " | ".join(missing)
    return " | ".join(held)


def _overwrite_step(steps: list[Step], label: str, value: Permission, ow: Overwrite) -> Permission:
    after = (value & ~ow.deny) | ow.allow
    why = f"deny {permission_names(ow.deny)}, then allow {permission_names(ow.allow)}"
    steps.append(Step(label, after, f"{why} -> {_delta(value, after)}"))
    return after


def _delta(before: Permission, after: Permission) -> str:
    parts = []
    if gained := after & ~before:
        parts.append(f"+ {permission_names(gained)}")
    if lost := before & ~after:
        parts.append(f"- {permission_names(lost)}")
    return ", ".join(parts) or "no change"


def _role_label(role: Role) -> str:
    return f"{role.name!r} ({role.id})" if role.name else str(role.id)


def can(perms: Permission, wanted: Permission) -> bool:
    """True if ``perms`` holds every bit of ``wanted``."""
    return perms & wanted == wanted


def bypasses_slowmode(perms: Permission) -> bool:
    """Discord exempts members who can manage messages or the channel from slowmode."""
    return bool(perms & (_P.MANAGE_MESSAGES | _P.MANAGE_CHANNELS))


#: What @everyone holds in a new guild: Discord's defaults, for the bits modelled here.
DEFAULT_EVERYONE = (
    _P.CREATE_INSTANT_INVITE
    | _P.ADD_REACTIONS
    | _P.STREAM
    | _P.VIEW_CHANNEL
    | _P.SEND_MESSAGES
    | _P.SEND_TTS_MESSAGES
    | _P.EMBED_LINKS
    | _P.ATTACH_FILES
    | _P.READ_MESSAGE_HISTORY
    | _P.MENTION_EVERYONE
    | _P.USE_EXTERNAL_EMOJIS
    | _P.CONNECT
    | _P.SPEAK
    | _P.USE_VAD
    | _P.CHANGE_NICKNAME
)


def parse_permissions(value: str | int | Sequence[str]) -> Permission:
    """Bits from what people type or write in a seed: an int, ``"none"``, ``"ALL"``,
    ``"VIEW_CHANNEL|SEND_MESSAGES"`` (``,`` or ``|`` separated, case-insensitive) or a list of
    names. An unknown name is a ValueError that lists the known ones."""
    if isinstance(value, int):
        return _perm(value)
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return _perm(int(text))
        names = [n for n in text.replace(",", "|").split("|") if n.strip()]
    else:
        names = list(value)
    perms = NONE
    for raw in names:
        name = raw.strip().upper()
        if name == "NONE":
            continue
        if name not in Permission.__members__:
            known = ", ".join(p.name for p in Permission if p.name)
            raise ValueError(f"unknown permission {raw!r}; known: {known}")
        perms |= Permission[name]
    return perms
