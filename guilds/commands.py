"""``chatscale`` admin commands: the control plane from a terminal, and explain-permissions.

Every command takes names or ids (``--guild interview-prep`` or ``--guild 1456...``) and, for
changes, prints the control plane's receipt: the new metadata version and which gateways
confirmed. A change that some live gateway did not confirm in time exits with status 3 and
names the gateways it fenced (see ``guilds/controlplane.py``).

``explain-permissions`` and ``create-user`` need only the metadata store; the others also need
Redis (the running topology's, found like the other tools: ``chatscale.discovery``). None of
them creates a database: run in the wrong directory, they say where the data is expected.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from chatscale import discovery
from chatscale.commandline import UsageError
from chatscale.config import Settings
from chatscale.discovery import settings_for_tools
from chatscale.keys import Keys
from chatscale.redisconn import connect
from guilds import community
from guilds.access import load_guild, load_member
from guilds.controlplane import ControlError, ControlPlane, Receipt
from guilds.permissions import format_explanation, parse_permissions, permission_names
from storage import Channel, Guild, Store, User, open_store

#: Reads a file of another format into a community, or raises ``ValidationError``.
CommunityReader = Callable[[Path], community.Community]


class Unresolved(Exception):
    """A name or id on the command line matches nothing (or several things)."""


class Refused(Exception):
    """The change makes no sense as asked (a duplicate name, lifting a ban that is not there)."""


# ---- resolving names --------------------------------------------------------------------------


async def resolve_user(store: Store, ref: str) -> User:
    user = await store.find_user(ref)
    if user is None and ref.isdigit():
        user = await store.get_user(int(ref))
    if user is None:
        raise Unresolved(f"no user {ref!r}")
    return user


async def resolve_guild(store: Store, ref: str) -> Guild:
    if ref.isdigit() and (guild := await store.get_guild(int(ref))) is not None:
        return guild
    found = await store.find_guilds(ref)
    if not found:
        raise Unresolved(f"no guild {ref!r}")
    if len(found) > 1:
        ids = ", ".join(str(g.id) for g in found)
        raise Unresolved(f"{len(found)} guilds are named {ref!r} ({ids}): pass an id")
    return found[0]


async def resolve_channel(store: Store, guild: Guild, ref: str) -> Channel:
    for channel in await store.guild_channels(guild.id):
        if channel.name == ref.lstrip("#") or str(channel.id) == ref:
            return channel
    raise Unresolved(f"no channel {ref!r} in {guild.name!r}")


async def resolve_role(store: Store, guild: Guild, ref: str) -> int:
    if ref in ("@everyone", "everyone", str(guild.id)):
        return guild.id
    for role in await store.guild_roles(guild.id):
        if role.name == ref or str(role.id) == ref:
            return role.id
    raise Unresolved(f"no role {ref!r} in {guild.name!r}")


# ---- running a command --------------------------------------------------------------------------


def _print_receipt(receipt: Receipt) -> int:
    created = f" -> id {receipt.created.id}" if receipt.created is not None else ""
    print(f"{receipt.change}{created} (metadata version {receipt.version})")
    if receipt.gateways:
        print(f"  confirmed by: {', '.join(receipt.confirmed) or 'none'}")
    else:
        print("  no live gateway to confirm (takes effect at the next IDENTIFY)")
    if receipt.fenced:
        print(
            f"  NOT confirmed in time, fenced from deliveries: {', '.join(receipt.fenced)} "
            "(their sessions are dropped; clients IDENTIFY again)",
            file=sys.stderr,
        )
        return 3
    return 0


async def _with_store(
    fn: Callable[[Store], Awaitable[int]], settings: Settings | None = None
) -> int:
    # Only the store of this directory's topology is needed here: a stale run.json still says
    # where it is. Commands that need the live topology pass settings checked for staleness.
    settings = settings or discovery.settings_for_tools(need_live=False)
    discovery.require_existing_store(settings)
    store = await open_store(settings.storage_url, bucket_span_ms=settings.bucket_span_ms)
    try:
        return await fn(store)
    except (Unresolved, Refused, ControlError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        await store.close()


def _control(
    change: Callable[[argparse.Namespace, Store, ControlPlane], Awaitable[Receipt]],
) -> Callable[[argparse.Namespace], Awaitable[int]]:
    async def run(args: argparse.Namespace) -> int:
        settings = discovery.settings_for_tools()
        if not settings.redis_url:
            print(
                "error: no Redis: start `chatscale run` here or set REDIS_URL (control-plane "
                "changes must reach the gateways and workers)",
                file=sys.stderr,
            )
            return 2

        async def go(store: Store) -> int:
            plane = ControlPlane(settings, store=store)
            try:
                return _print_receipt(await change(args, store, plane))
            finally:
                await plane.close()

        return await _with_store(go, settings)

    return run


async def _create_user(args: argparse.Namespace) -> int:
    from chatscale import snowflake

    async def go(store: Store) -> int:
        existing = await store.find_user(args.name)
        if existing is not None:
            print(f"user {args.name!r} exists: id {existing.id}")
            return 0
        user = User(snowflake.SnowflakeGenerator(1019).next(), args.name)
        await store.put_user(user)
        print(f"created user {args.name!r} -> id {user.id}")
        return 0

    return await _with_store(go)


async def _create_guild(a: Any, store: Store, plane: ControlPlane) -> Receipt:
    owner = await resolve_user(store, a.owner)
    if same := await store.find_guilds(a.name):
        # Names are how every other command finds a guild: a second one would make them fail.
        raise Refused(f"a guild named {a.name!r} exists (id {same[0].id}): choose another name")
    return await plane.create_guild(a.name, owner.id, channels=a.channel or ["general"])


async def _create_channel(a: Any, store: Store, plane: ControlPlane) -> Receipt:
    guild = await resolve_guild(store, a.guild)
    name = a.name.lstrip("#")
    for channel in await store.guild_channels(guild.id):
        if channel.name == name:
            raise Refused(
                f"#{name} exists in {guild.name!r} (id {channel.id}): choose another name"
            )
    overwrites: list[Any] = []
    if a.private:
        view = parse_permissions("VIEW_CHANNEL")
        overwrites.append(("role", guild.id, 0, view))
        for ref in a.role or []:
            overwrites.append(("role", await resolve_role(store, guild, ref), view, 0))
    return await plane.create_channel(
        guild.id, a.name, kind=a.kind, slowmode_s=a.slowmode, overwrites=overwrites
    )


async def _create_role(a: Any, store: Store, plane: ControlPlane) -> Receipt:
    guild = await resolve_guild(store, a.guild)
    return await plane.create_role(guild.id, a.name, parse_permissions(a.permissions))


async def _set_role_permissions(a: Any, store: Store, plane: ControlPlane) -> Receipt:
    guild = await resolve_guild(store, a.guild)
    role = await resolve_role(store, guild, a.role)
    return await plane.set_role_permissions(guild.id, role, parse_permissions(a.permissions))


async def _member_change(a: Any, store: Store, plane: ControlPlane) -> Receipt:
    guild = await resolve_guild(store, a.guild)
    user = await resolve_user(store, a.user)
    if a.action == "add-member":
        return await plane.add_member(guild.id, user.id)
    if a.action == "kick":
        return await plane.kick(guild.id, user.id)
    if a.action == "ban":
        return await plane.ban(guild.id, user.id, a.reason or "")
    if a.action == "unban":
        if not await store.is_banned(guild.id, user.id):
            raise Refused(f"{user.username} is not banned from {guild.name!r}: nothing to lift")
        return await plane.unban(guild.id, user.id)
    role = await resolve_role(store, guild, a.role)
    if a.action == "assign-role":
        return await plane.assign_role(guild.id, user.id, role)
    return await plane.remove_role(guild.id, user.id, role)


async def _set_overwrite(a: Any, store: Store, plane: ControlPlane) -> Receipt:
    guild = await resolve_guild(store, a.guild)
    channel = await resolve_channel(store, guild, a.channel)
    if a.role is not None:
        kind, target = "role", await resolve_role(store, guild, a.role)
    else:
        kind, target = "member", (await resolve_user(store, a.member)).id
    if a.clear:
        return await plane.clear_overwrite(channel.id, kind, target)  # type: ignore[arg-type]
    return await plane.set_overwrite(
        channel.id,
        kind,  # type: ignore[arg-type]
        target,
        allow=parse_permissions(a.allow),
        deny=parse_permissions(a.deny),
    )


async def _slowmode(a: Any, store: Store, plane: ControlPlane) -> Receipt:
    guild = await resolve_guild(store, a.guild)
    channel = await resolve_channel(store, guild, a.channel)
    return await plane.set_slowmode(channel.id, a.seconds)


async def explain_permissions(args: argparse.Namespace) -> int:
    async def go(store: Store) -> int:
        guild = await resolve_guild(store, args.guild)
        user = await resolve_user(store, args.user)
        channel = await resolve_channel(store, guild, args.channel)
        print(await explanation(store, guild, user, channel))
        return 0

    return await _with_store(go)


async def explanation(store: Store, guild: Guild, user: User, channel: Channel) -> str:
    """The text ``explain-permissions`` prints: who, which roles, then each step."""
    snapshot = await load_guild(store, guild.id)
    assert snapshot is not None
    head = f"{user.username} in #{channel.name} of {guild.name!r}"
    if await store.is_banned(guild.id, user.id):
        return f"{head}: banned from the guild, so nothing (bans are checked before roles)"
    roles = await load_member(store, guild.id, user.id)
    if roles is None:
        return f"{head}: not a member of the guild, so nothing"
    names = {r.id: r.name for r in snapshot.context.roles.values()}
    held = ", ".join(names.get(r, f"deleted role {r}") for r in sorted(roles)) or "none"
    lines = [f"{head}", f"roles: @everyone + {held}"]
    for ow in snapshot.overwrites.get(channel.id, ()):
        target = names.get(ow.id, str(ow.id)) if ow.kind == "role" else f"member {ow.id}"
        lines.append(
            f"overwrite for {target}: allow {permission_names(ow.allow)}; "
            f"deny {permission_names(ow.deny)}"
        )
    lines.append(format_explanation(snapshot.explain(user.id, roles, channel.id)))
    return "\n".join(lines)


# ---- loading a community file ------------------------------------------------------------


def seed_path(ref: str) -> Path:
    """A community file: a path as given, else a file of that name in the package's seeds/
    (so ``seeds/demo.toml``, ``demo.toml`` and ``demo`` work from any directory)."""
    path = Path(ref)
    if path.is_file():
        return path
    for candidate in (community.SEEDS / path.name, community.SEEDS / f"{path.name}.toml"):
        if candidate.is_file():
            return candidate
    known = ", ".join(sorted(p.stem for p in community.SEEDS.glob("*.toml"))) or "none"
    raise UsageError(f"no community file {ref!r} here or in {community.SEEDS} (known: {known})")


async def cmd_seed(args: argparse.Namespace) -> int:
    from storage import open_store

    settings = settings_for_tools()
    path = seed_path(args.file)
    try:
        spec = community.load_file(path)
    except ValidationError:
        # Not a structure file: another kind of file that defines a community (the load tester's
        # behaviour files, seeds/study-group.toml ..., generate one from their seed) — readers
        # the CLI wiring hands in, so this package imports none of them.
        spec = None
        for read in args.readers:
            try:
                spec = read(path)
                break
            except ValidationError as exc:
                last = exc
        if spec is None:
            raise UsageError(
                f"{path} is neither a community file nor a load-test behaviour file "
                f"({last.error_count()} errors, first: {last.errors()[0]['msg']} at "
                f"{'.'.join(map(str, last.errors()[0]['loc']))})"
            ) from None
    except (OSError, ValueError) as exc:  # unreadable, or not TOML
        raise UsageError(f"cannot load {path}: {exc}") from None
    store = await open_store(settings.storage_url, bucket_span_ms=settings.bucket_span_ms)
    redis = connect(settings) if settings.redis_url else None
    try:
        counts = await community.apply(spec, store, redis, Keys(settings.key_prefix))
    finally:
        await store.close()
        if redis is not None:
            await redis.aclose()
    print(f"loaded {spec.name!r} into {settings.storage_url}: {counts}")
    return 0


# ---- the parser ------------------------------------------------------------------------------


def add_commands(sub: Any, *, community_readers: Sequence[CommunityReader] = ()) -> None:
    """Register the admin commands and ``seed`` on ``chatscale``'s subparsers.

    ``community_readers``: other file formats ``seed`` accepts (tried in order when a file is
    not a community file); each returns a ``Community`` or raises ``ValidationError``.
    """
    s = sub.add_parser(
        "seed", help="load a community file (seeds/NAME.toml) through the control plane"
    )
    s.add_argument("file", help="path, or a name in seeds/ such as demo")
    s.set_defaults(fn=cmd_seed, readers=list(community_readers))

    def cmd(name: str, help: str, fn: Callable[..., Awaitable[int]]) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.set_defaults(fn=fn, action=name)
        return p

    perms_help = 'names joined by "|" or ",", e.g. "VIEW_CHANNEL|SEND_MESSAGES", or an integer'

    p = cmd(
        "explain-permissions",
        "print, step by step, how a member's permissions in a channel are computed",
        explain_permissions,
    )
    p.add_argument("--guild", required=True, help="guild name or id")
    p.add_argument("--user", required=True, help="username or id")
    p.add_argument("--channel", required=True, help="channel name or id")

    p = cmd("create-user", "create a user (ids are snowflakes)", _create_user)
    p.add_argument("name")

    p = cmd("create-guild", "create a guild with its @everyone role", _control(_create_guild))
    p.add_argument("name")
    p.add_argument("--owner", required=True, help="username or id")
    p.add_argument(
        "--channel", action="append", help="a channel to create (repeat; default general)"
    )

    p = cmd("create-channel", "create a channel in a guild", _control(_create_channel))
    p.add_argument("--guild", required=True)
    p.add_argument("name")
    p.add_argument("--kind", choices=["text", "voice"], default="text")
    p.add_argument("--slowmode", type=int, default=0, help="seconds between a member's messages")
    p.add_argument(
        "--private",
        action="store_true",
        help="deny VIEW_CHANNEL to @everyone (set before creation)",
    )
    p.add_argument("--role", action="append", help="with --private: a role that may view (repeat)")

    p = cmd("create-role", "create a role in a guild", _control(_create_role))
    p.add_argument("--guild", required=True)
    p.add_argument("name")
    p.add_argument("--permissions", default="0", help=perms_help)

    p = cmd(
        "set-role-permissions",
        "change what a role grants (@everyone included)",
        _control(_set_role_permissions),
    )
    p.add_argument("--guild", required=True)
    p.add_argument("--role", required=True, help="role name or id, or @everyone")
    p.add_argument("--permissions", required=True, help=perms_help)

    for name, help in [
        ("add-member", "add a user to a guild (refused while banned)"),
        ("kick", "remove a member from a guild"),
        ("ban", "ban a user: removes them at once from every gateway's deliveries"),
        ("unban", "lift a ban (the user must be added again)"),
        ("assign-role", "give a member a role"),
        ("remove-role", "take a role from a member"),
    ]:
        p = cmd(name, help, _control(_member_change))
        p.add_argument("--guild", required=True)
        p.add_argument("--user", required=True)
        if name in ("assign-role", "remove-role"):
            p.add_argument("--role", required=True)
        if name == "ban":
            p.add_argument("--reason", default="")

    p = cmd(
        "set-overwrite",
        "set (or --clear) a channel's permission overwrite for a role or a member",
        _control(_set_overwrite),
    )
    p.add_argument("--guild", required=True)
    p.add_argument("--channel", required=True)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--role", help="role name or id, or @everyone")
    target.add_argument("--member", help="username or id")
    p.add_argument("--allow", default="0", help=perms_help)
    p.add_argument("--deny", default="0", help=perms_help)
    p.add_argument("--clear", action="store_true", help="remove the overwrite instead")

    p = cmd("slowmode", "set a channel's slowmode (0 turns it off)", _control(_slowmode))
    p.add_argument("--guild", required=True)
    p.add_argument("--channel", required=True)
    p.add_argument("seconds", type=int)

    add_safety_commands(sub)  # automod set, timeout, quarantine


# ---- trust & safety: AutoMod rules, timeouts, quarantine (docs/safety.md) ------------------------


async def _automod_set(a: Any, store: Store, plane: ControlPlane) -> Receipt:
    from guilds.automod import Rules

    guild = await resolve_guild(store, a.guild)
    alert = (await resolve_channel(store, guild, a.alert_channel)).id if a.alert_channel else 0
    exempt = tuple([(await resolve_user(store, u)).id for u in a.exempt or []])
    rules = Rules(  # RulesError (a ValueError) on a bad regex or value: one line, exit 2
        keywords=tuple(a.keyword or ()),
        regexes=tuple(a.regex or ()),
        alert_keywords=tuple(a.alert_keyword or ()),
        max_mentions=a.max_mentions,
        mention_action=a.mention_action,
        max_repeats=a.max_repeats,
        block_invites=not a.allow_invites,
        max_links=a.max_links,
        alert_channel_id=alert,
        timeout_s=a.timeout_seconds,
        exempt_users=exempt,
    )
    return await plane.set_automod(guild.id, rules)


async def _timeout(a: Any, store: Store, plane: ControlPlane) -> Receipt:
    if a.minutes < 0:
        raise Refused("--minutes must be 0 (lift the timeout) or more")
    guild = await resolve_guild(store, a.guild)
    user = await resolve_user(store, a.user)
    return await plane.timeout_member(guild.id, user.id, round(a.minutes * 60))


async def _quarantine(a: Any, store: Store, plane: ControlPlane) -> Receipt:
    user = await resolve_user(store, a.user)
    if a.release:
        return await plane.release(user.id)
    return await plane.quarantine(user.id, a.reason)


def add_safety_commands(sub: Any) -> None:
    """``automod set``, ``timeout`` and ``quarantine``: the trust & safety actions an operator
    takes by hand, through the same control-plane calls the workers use."""
    from chatscale.commandline import DefaultsHelp

    am = sub.add_parser("automod", help="a guild's AutoMod rules (docs/safety.md)")
    amsub = am.add_subparsers(dest="automod_command", required=True, metavar="COMMAND")
    p = amsub.add_parser(
        "set",
        help="replace a guild's AutoMod rules (workers use them once this returns)",
        formatter_class=DefaultsHelp,
    )
    p.set_defaults(fn=_control(_automod_set))
    p.add_argument("guild", metavar="GUILD", help="guild name or id")
    p.add_argument("--keyword", action="append", help="block this word (repeat; * for prefix)")
    p.add_argument("--regex", action="append", help="block text matching this (repeat, <= 10)")
    p.add_argument("--alert-keyword", action="append", help="deliver, but alert moderators")
    p.add_argument("--max-mentions", type=int, default=5, help="more mentions: spam (0: off)")
    p.add_argument("--mention-action", choices=["block", "timeout"], default="block")
    p.add_argument("--max-repeats", type=int, default=3, help="same text within 60 s (0: off)")
    p.add_argument("--allow-invites", action="store_true", help="do not block invite links")
    p.add_argument("--max-links", type=int, default=3, help="more links: spam (0: off)")
    p.add_argument("--alert-channel", help="channel name or id that gets AUTOMOD_ALERT")
    p.add_argument("--timeout-seconds", type=int, default=60, help="for --mention-action timeout")
    p.add_argument("--exempt", action="append", help="username or id the rules skip (repeat)")

    p = sub.add_parser(
        "timeout",
        help="time a member out: no sending in the guild until it ends (0 lifts it)",
        formatter_class=DefaultsHelp,
    )
    p.set_defaults(fn=_control(_timeout))
    p.add_argument("guild", metavar="GUILD", help="guild name or id")
    p.add_argument("user", metavar="USER", help="username or id")
    p.add_argument("--minutes", type=float, required=True, help="length (0: lift)")

    p = sub.add_parser(
        "quarantine",
        help="take an account out: banned from its guilds, sessions closed (4016), "
        "no IDENTIFY until released",
        formatter_class=DefaultsHelp,
    )
    p.set_defaults(fn=_control(_quarantine))
    p.add_argument("user", metavar="USER", help="username or id")
    p.add_argument("--reason", default="quarantined by an operator")
    p.add_argument(
        "--release", action="store_true", help="lift the quarantine (bans stay; unban per guild)"
    )
