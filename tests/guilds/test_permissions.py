"""Channel permissions: tricky cases as a table, then the whole algorithm against a naive
per-bit reference over random guilds (hypothesis)."""

from __future__ import annotations

import functools
import operator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guilds.permissions import (
    ALL,
    NONE,
    GuildContext,
    MemberContext,
    Overwrite,
    Permission,
    Role,
    base_permissions,
    bypasses_slowmode,
    can,
    channel_permissions,
    explain,
    format_explanation,
    permission_names,
)

P = Permission
G = 100  # guild id, and so the @everyone role id
OWNER = 1
ME = 10
OTHER = 11
MODS, MUTED, HELPERS, ADMINS = 201, 202, 203, 204
STALE = 999  # a role id the guild no longer has

SEND_DEPS = P.EMBED_LINKS | P.ATTACH_FILES | P.MENTION_EVERYONE | P.SEND_TTS_MESSAGES
DEFAULT = (
    P.VIEW_CHANNEL
    | P.SEND_MESSAGES
    | P.READ_MESSAGE_HISTORY
    | P.ADD_REACTIONS
    | P.CONNECT
    | P.SPEAK
    | SEND_DEPS
)


def guild(everyone: Permission = DEFAULT) -> GuildContext:
    roles = [
        Role(G, everyone, 0, "@everyone"),
        Role(MODS, P.KICK_MEMBERS | P.MANAGE_MESSAGES | P.MANAGE_CHANNELS, 3, "Mods"),
        Role(MUTED, NONE, 2, "Muted"),
        Role(HELPERS, P.ADD_REACTIONS, 1, "Helpers"),
        Role(ADMINS, P.ADMINISTRATOR, 4, "Admins"),
    ]
    return GuildContext(guild_id=G, owner_id=OWNER, roles={r.id: r for r in roles})


def member(*role_ids: int, user_id: int = ME) -> MemberContext:
    return MemberContext(user_id=user_id, role_ids=frozenset(role_ids))


def role_ow(role_id: int, allow: Permission = NONE, deny: Permission = NONE) -> Overwrite:
    return Overwrite(role_id, "role", allow, deny)


def member_ow(user_id: int, allow: Permission = NONE, deny: Permission = NONE) -> Overwrite:
    return Overwrite(user_id, "member", allow, deny)


MOD_BITS = P.KICK_MEMBERS | P.MANAGE_MESSAGES | P.MANAGE_CHANNELS

# (member, overwrites, channel kind, expected permissions)
CASES = {
    "no overwrites: @everyone defaults": (member(), [], "text", DEFAULT),
    "everyone denied VIEW, a held role allows it": (
        member(HELPERS),
        [role_ow(G, deny=P.VIEW_CHANNEL), role_ow(HELPERS, allow=P.VIEW_CHANNEL)],
        "text",
        DEFAULT,
    ),
    "everyone denied VIEW, member lacks the allowing role": (
        member(),
        [role_ow(G, deny=P.VIEW_CHANNEL), role_ow(HELPERS, allow=P.VIEW_CHANNEL)],
        "text",
        NONE,
    ),
    "role deny vs role allow: allow wins (Muted is the higher role)": (
        member(MUTED, HELPERS),
        [role_ow(MUTED, deny=P.SEND_MESSAGES), role_ow(HELPERS, allow=P.SEND_MESSAGES)],
        "text",
        DEFAULT,
    ),
    "role deny vs role allow on VIEW (the docs' #coolstuff example)": (
        member(MODS, HELPERS),
        [role_ow(MODS, deny=P.VIEW_CHANNEL), role_ow(HELPERS, allow=P.VIEW_CHANNEL)],
        "text",
        DEFAULT | MOD_BITS,
    ),
    "role deny beats an @everyone allow (more specific layer)": (
        member(MUTED),
        [role_ow(G, allow=P.SEND_MESSAGES), role_ow(MUTED, deny=P.SEND_MESSAGES)],
        "text",
        DEFAULT & ~P.SEND_MESSAGES & ~SEND_DEPS,
    ),
    "member overwrite deny beats a role allow": (
        member(HELPERS),
        [role_ow(HELPERS, allow=P.MANAGE_MESSAGES), member_ow(ME, deny=P.SEND_MESSAGES)],
        "text",
        (DEFAULT | P.MANAGE_MESSAGES) & ~P.SEND_MESSAGES & ~SEND_DEPS,
    ),
    "member overwrite allow beats role and @everyone denies": (
        member(MUTED),
        [
            role_ow(G, deny=P.VIEW_CHANNEL),
            role_ow(MUTED, deny=P.VIEW_CHANNEL),
            member_ow(ME, allow=P.VIEW_CHANNEL),
        ],
        "text",
        DEFAULT,
    ),
    "ADMINISTRATOR bypasses every overwrite": (
        member(ADMINS),
        [role_ow(G, deny=P.VIEW_CHANNEL), member_ow(ME, deny=ALL & ~P.ADMINISTRATOR)],
        "text",
        ALL,
    ),
    "owner bypasses every overwrite": (
        member(user_id=OWNER),
        [role_ow(G, deny=P.VIEW_CHANNEL), member_ow(OWNER, deny=P.SEND_MESSAGES)],
        "voice",
        ALL,
    ),
    "no VIEW_CHANNEL: nothing, even explicitly allowed bits": (
        member(MODS),
        [role_ow(G, deny=P.VIEW_CHANNEL, allow=P.SEND_MESSAGES | P.READ_MESSAGE_HISTORY)],
        "text",
        NONE,
    ),
    "SEND_MESSAGES denied removes embeds, files, TTS, @everyone": (
        member(),
        [role_ow(G, deny=P.SEND_MESSAGES)],
        "text",
        P.VIEW_CHANNEL | P.READ_MESSAGE_HISTORY | P.ADD_REACTIONS | P.CONNECT | P.SPEAK,
    ),
    "overwrite for a role the member lacks has no effect": (
        member(HELPERS),
        [role_ow(MUTED, deny=P.VIEW_CHANNEL), role_ow(MODS, allow=P.MANAGE_ROLES)],
        "text",
        DEFAULT,
    ),
    "overwrite for another member has no effect": (
        member(),
        [member_ow(OTHER, deny=P.VIEW_CHANNEL)],
        "text",
        DEFAULT,
    ),
    "a deleted role grants nothing and its overwrite is ignored": (
        member(STALE),
        [role_ow(STALE, deny=P.VIEW_CHANNEL)],
        "text",
        DEFAULT,
    ),
    "@everyone listed among the member's roles is not applied twice": (
        member(G, MUTED),
        [role_ow(G, allow=P.MANAGE_MESSAGES), role_ow(MUTED, deny=P.MANAGE_MESSAGES)],
        "text",
        DEFAULT,
    ),
    "allow and deny of the same bit in one overwrite: allow wins": (
        member(),
        [member_ow(ME, allow=P.MANAGE_MESSAGES, deny=P.MANAGE_MESSAGES)],
        "text",
        DEFAULT | P.MANAGE_MESSAGES,
    ),
    "voice without CONNECT drops speaking and managing the channel": (
        member(MODS),
        [role_ow(G, deny=P.CONNECT), role_ow(MODS, allow=P.MANAGE_ROLES | P.STREAM)],
        "voice",
        (DEFAULT | P.KICK_MEMBERS | P.MANAGE_MESSAGES) & ~P.CONNECT & ~P.SPEAK,
    ),
    "text channel keeps the voice bits even without CONNECT": (
        member(MODS),
        [role_ow(G, deny=P.CONNECT)],
        "text",
        (DEFAULT | MOD_BITS) & ~P.CONNECT,
    ),
}


@pytest.mark.parametrize(("who", "overwrites", "kind", "expected"), CASES.values(), ids=CASES)
def test_channel_permissions_table(who, overwrites, kind, expected):
    got = channel_permissions(guild(), who, overwrites, channel_kind=kind)
    assert got == expected, f"{permission_names(got)} != {permission_names(expected)}"
    assert channel_permissions(guild(), who, overwrites[::-1], channel_kind=kind) == expected
    assert explain(guild(), who, overwrites, channel_kind=kind)[-1].value == expected


def test_base_permissions():
    assert base_permissions(guild(), member()) == DEFAULT
    assert base_permissions(guild(), member(MODS, HELPERS)) == DEFAULT | MOD_BITS
    assert base_permissions(guild(), member(ADMINS)) == ALL
    assert base_permissions(guild(), member(user_id=OWNER)) == ALL
    assert base_permissions(guild(everyone=P.ADMINISTRATOR), member()) == ALL


@pytest.mark.parametrize(
    ("perms", "expected"),
    [
        (NONE, False),
        (P.SEND_MESSAGES, False),
        (P.MANAGE_MESSAGES, True),
        (P.MANAGE_CHANNELS, True),
        (ALL, True),
    ],
)
def test_bypasses_slowmode(perms, expected):
    assert bypasses_slowmode(perms) is expected


def test_can_needs_every_bit():
    perms = P.VIEW_CHANNEL | P.SEND_MESSAGES
    assert can(perms, P.SEND_MESSAGES)
    assert can(perms, P.VIEW_CHANNEL | P.SEND_MESSAGES)
    assert not can(perms, P.SEND_MESSAGES | P.ATTACH_FILES)


def test_plain_ints_are_accepted_and_unknown_bits_dropped():
    role = Role(5, (1 << 40) | 0x400)  # type: ignore[arg-type]
    assert role.permissions == P.VIEW_CHANNEL
    assert isinstance(role.permissions, Permission)
    assert MemberContext(1, [2, 3]).role_ids == frozenset({2, 3})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "make",
    [
        lambda: channel_permissions(guild(), member(), [role_ow(G), role_ow(G)]),
        lambda: Overwrite(G, "role", P.ADMINISTRATOR, NONE),
        lambda: Overwrite(G, "channel", NONE, NONE),  # type: ignore[arg-type]
        lambda: GuildContext(G, OWNER, {MODS: Role(MODS, NONE)}),
        lambda: GuildContext(G, OWNER, {G: Role(G, NONE), 7: Role(8, NONE)}),
    ],
    ids=["duplicate overwrite", "admin in overwrite", "bad kind", "no @everyone", "key != id"],
)
def test_caller_bugs_raise(make):
    with pytest.raises(ValueError):
        make()


def test_permission_names():
    assert permission_names(NONE) == "none"
    assert permission_names(ALL) == "ALL"
    assert permission_names(P.SEND_MESSAGES | P.VIEW_CHANNEL) == "VIEW_CHANNEL | SEND_MESSAGES"
    assert permission_names(ALL & ~P.ADMINISTRATOR) == "ALL except ADMINISTRATOR"


def test_explanation_reads_like_the_algorithm():
    overwrites = [
        role_ow(G, deny=P.VIEW_CHANNEL),
        role_ow(MUTED, deny=P.SEND_MESSAGES),
        role_ow(HELPERS, allow=P.VIEW_CHANNEL),
        member_ow(ME, allow=P.MANAGE_MESSAGES),
    ]
    steps = explain(guild(), member(MUTED, HELPERS), overwrites)
    assert [s.label for s in steps] == [
        "@everyone role",
        "role 'Helpers' (203)",  # lowest position first, as the client lists them
        "role 'Muted' (202)",
        "@everyone overwrite",
        "role overwrites, deny",
        "role overwrites, allow",
        "member overwrite",
        "implicit rule",
    ]
    text = format_explanation(steps)
    assert "'Muted' (202): SEND_MESSAGES" in text
    assert "no SEND_MESSAGES" in text
    assert text.splitlines()[-1] == (
        "result: ADD_REACTIONS | VIEW_CHANNEL | MANAGE_MESSAGES | READ_MESSAGE_HISTORY"
        " | CONNECT | SPEAK"
    )
    assert str(int(DEFAULT)) not in text


def test_explanation_short_circuits():
    owner = explain(guild(), member(user_id=OWNER), [role_ow(G, deny=P.VIEW_CHANNEL)])
    assert [(s.label, s.value) for s in owner] == [("guild owner", ALL)]
    admin = explain(guild(), member(ADMINS), [role_ow(G, deny=P.VIEW_CHANNEL)])
    assert [s.label for s in admin] == ["@everyone role", "role 'Admins' (204)", "ADMINISTRATOR"]
    assert "ADMINISTRATOR" in format_explanation(admin)


# --- the whole algorithm against a naive reference ------------------------------------------

ROLE_IDS = [MODS, MUTED, HELPERS, ADMINS, 205]
INTERESTING = [
    P.VIEW_CHANNEL,
    P.SEND_MESSAGES,
    P.READ_MESSAGE_HISTORY,
    P.EMBED_LINKS,
    P.ATTACH_FILES,
    P.MENTION_EVERYONE,
    P.SEND_TTS_MESSAGES,
    P.CONNECT,
    P.SPEAK,
    P.STREAM,
    P.MANAGE_CHANNELS,
    P.MANAGE_MESSAGES,
    P.MANAGE_ROLES,
    P.KICK_MEMBERS,
]
TARGETS = [("role", r) for r in [G, *ROLE_IDS, STALE]] + [("member", ME), ("member", OTHER)]


def combine(bits) -> Permission:
    return functools.reduce(operator.or_, bits, NONE)


# Overwrites mention a few bits; roles hold about half of them, ADMINISTRATOR on one role in
# thirty, so most examples get past the short-circuits and into the overwrites.
sparse_bits = st.sets(st.sampled_from(INTERESTING), max_size=4).map(combine)
dense_bits = st.lists(st.booleans(), min_size=len(INTERESTING), max_size=len(INTERESTING)).map(
    lambda flags: combine(bit for bit, on in zip(INTERESTING, flags, strict=True) if on)
)
role_bits = st.tuples(dense_bits, st.integers(0, 29)).map(
    lambda t: t[0] | (P.ADMINISTRATOR if t[1] == 0 else NONE)
)


@st.composite
def scenarios(draw):
    roles = {G: Role(G, draw(role_bits))}
    for rid in ROLE_IDS:
        roles[rid] = Role(rid, draw(role_bits), draw(st.integers(0, 5)), f"r{rid}")
    owner = draw(st.sampled_from([OWNER] * 19 + [ME]))
    g = GuildContext(guild_id=G, owner_id=owner, roles=roles)
    m = member(*draw(st.frozensets(st.sampled_from([*ROLE_IDS, STALE, G]))))
    targets = draw(st.lists(st.sampled_from(TARGETS), unique=True))
    ows = [Overwrite(i, kind, draw(sparse_bits), draw(sparse_bits)) for kind, i in targets]
    return g, m, ows, draw(st.sampled_from(["text", "voice"]))


def reference(g: GuildContext, m: MemberContext, ows: list[Overwrite], kind: str) -> Permission:
    """Bit by bit: the most specific layer that mentions the bit decides (within a layer an
    allow beats a deny); if none does, the guild roles decide. Then the implicit rules."""
    if m.user_id == g.owner_id:
        return ALL
    held = [g.roles[G]] + [g.roles[r] for r in m.role_ids if r in g.roles and r != G]
    if any(P.ADMINISTRATOR in r.permissions for r in held):
        return ALL
    mine = [o for o in ows if o.kind == "member" and o.id == m.user_id]
    my_roles = [o for o in ows if o.kind == "role" and o.id in {r.id for r in held[1:]}]
    everyone = [o for o in ows if o.kind == "role" and o.id == G]
    result = NONE
    for bit in Permission:
        decided = None
        for layer in (mine, my_roles, everyone):
            if any(bit in o.allow for o in layer):
                decided = True
            elif any(bit in o.deny for o in layer):
                decided = False
            if decided is not None:
                break
        if decided is None:
            decided = any(bit in r.permissions for r in held)
        if decided:
            result |= bit
    if P.VIEW_CHANNEL not in result:
        return NONE
    if P.SEND_MESSAGES not in result:
        for bit in (P.EMBED_LINKS, P.ATTACH_FILES, P.MENTION_EVERYONE, P.SEND_TTS_MESSAGES):
            result &= ~bit
    if kind == "voice" and P.CONNECT not in result:
        for bit in (P.SPEAK, P.STREAM, P.PRIORITY_SPEAKER, P.USE_VAD, P.MUTE_MEMBERS):
            result &= ~bit
        for bit in (P.DEAFEN_MEMBERS, P.MOVE_MEMBERS, P.MANAGE_CHANNELS, P.MANAGE_ROLES):
            result &= ~bit
    return result


@settings(max_examples=300)
@given(scenarios())
def test_matches_naive_reference(scenario):
    g, m, ows, kind = scenario
    assert channel_permissions(g, m, ows, channel_kind=kind) == reference(g, m, ows, kind)


@given(scenarios())
def test_explain_ends_at_channel_permissions(scenario):
    g, m, ows, kind = scenario
    steps = explain(g, m, ows, channel_kind=kind)
    assert steps[-1].value == channel_permissions(g, m, ows, channel_kind=kind)
    assert format_explanation(steps).splitlines()[-1].startswith("result: ")


@given(scenarios(), st.data())
def test_overwrite_order_does_not_matter(scenario, data):
    g, m, ows, kind = scenario
    shuffled = data.draw(st.permutations(ows))
    expected = channel_permissions(g, m, ows, channel_kind=kind)
    assert channel_permissions(g, m, shuffled, channel_kind=kind) == expected
    assert explain(g, m, shuffled, channel_kind=kind) == explain(g, m, ows, channel_kind=kind)
