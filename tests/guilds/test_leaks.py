"""Zero leaked deliveries, as a property over random small communities and event streams.

Model level, no I/O: a random guild (roles, channels with overwrites, members with roles, bans)
and a random stream of messages interleaved with control-plane changes (ban, kick, join, role
assigned or removed, overwrite set or cleared, a role's permissions changed). The code under
test is what the running system uses — ``guilds.access`` (views, the worker's
``authorize_send``), ``gateway.control.install``/``apply_view`` (what a gateway does to its
sessions on IDENTIFY and on a change, applied only to the sessions the change's scope names,
as the control plane announces it) and ``gateway.fanout.LocalFanout.deliver`` (the delivery
filter). The oracle is independent: membership and bans from the model, and channel
permissions from the naive per-bit reference of ``tests/guilds/test_permissions.py``.

After every step: each session's visible channels are exactly the reference's; every
message is accepted exactly when the reference says the author may send; each accepted
message reaches exactly the sessions that may view its channel, and guild-wide events exactly
the members. ``tests/guilds/test_permission_changes.py`` runs the same idea on the real stack.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatscale.wire import Delivery
from gateway.control import apply_view, install
from gateway.fanout import LocalFanout
from gateway.session import Session
from guilds.access import GuildSnapshot, authorize_send, member_view
from guilds.permissions import (
    ALL,
    NONE,
    GuildContext,
    MemberContext,
    Overwrite,
    Permission,
    Role,
)
from storage import Channel, ChannelOverwrite, Guild, GuildRole
from tests.guilds.test_permissions import reference
from tests.recording import RecordingSends

P = Permission
G = 100  # the guild, and so its @everyone role
OWNER = 1
USERS = [1, 2, 3, 4, 5]
ROLES = [201, 202, 203]
CHANNELS = [301, 302, 303]
BITS = [P.VIEW_CHANNEL, P.SEND_MESSAGES, P.READ_MESSAGE_HISTORY, P.MANAGE_MESSAGES]

bits = st.sets(st.sampled_from(BITS), max_size=3).map(
    lambda s: P(sum(int(b) for b in s)) if s else NONE
)
role_bits = st.tuples(bits, st.integers(0, 24)).map(
    lambda t: t[0] | (P.ADMINISTRATOR if t[1] == 0 else NONE)
)
targets = st.sampled_from(
    [("role", G)] + [("role", r) for r in ROLES] + [("member", u) for u in USERS]
)


@dataclass
class Model:
    """The community as plain rows: what the metadata store would hold."""

    everyone: Permission
    roles: dict[int, Permission]
    overwrites: dict[tuple[int, str, int], tuple[Permission, Permission]]  # (ch, kind, id)
    members: set[int]
    member_roles: dict[int, set[int]]
    bans: set[int]
    channel_kind: dict[int, str] = field(default_factory=dict)

    def snapshot(self) -> GuildSnapshot:
        guild = Guild(G, "g", OWNER)
        channels = [Channel(c, G, f"c{c}", self.channel_kind[c], i) for i, c in enumerate(CHANNELS)]
        roles = [GuildRole(G, G, "@everyone", int(self.everyone))]
        roles += [
            GuildRole(r, G, f"r{r}", int(p), i + 1) for i, (r, p) in enumerate(self.roles.items())
        ]
        ows = [
            ChannelOverwrite(G, c, kind, t, int(a), int(d))  # type: ignore[arg-type]
            for (c, kind, t), (a, d) in self.overwrites.items()
        ]
        return GuildSnapshot.build(guild, channels, roles, ows)

    def roles_of(self, user: int) -> frozenset[int] | None:
        """What ``load_member`` returns."""
        if user not in self.members or user in self.bans:
            return None
        return frozenset(self.member_roles.get(user, set()))

    # -- the oracle --------------------------------------------------------------------------

    def expected(self, user: int, channel: int) -> Permission:
        if user not in self.members or user in self.bans:
            return NONE
        roles = {G: Role(G, self.everyone)} | {r: Role(r, p) for r, p in self.roles.items()}
        ctx = GuildContext(G, OWNER, roles)
        member = MemberContext(user, frozenset(self.member_roles.get(user, set())))
        ows = [
            Overwrite(t, kind, a, d)  # type: ignore[arg-type]
            for (c, kind, t), (a, d) in self.overwrites.items()
            if c == channel
        ]
        return reference(ctx, member, ows, self.channel_kind[channel])


@st.composite
def models(draw) -> Model:
    members = {OWNER} | draw(st.sets(st.sampled_from(USERS)))
    overwrites = {}
    for c in CHANNELS:
        for kind, t in draw(st.lists(targets, unique=True, max_size=3)):
            overwrites[(c, kind, t)] = (draw(bits), draw(bits))
    return Model(
        everyone=draw(st.sampled_from([P.VIEW_CHANNEL | P.SEND_MESSAGES, P.VIEW_CHANNEL]))
        | draw(bits),
        roles={r: draw(role_bits) for r in ROLES},
        overwrites=overwrites,
        members=members,
        member_roles={u: draw(st.sets(st.sampled_from(ROLES))) for u in members},
        bans=draw(st.sets(st.sampled_from(USERS[1:]), max_size=1)),
        channel_kind={c: draw(st.sampled_from(["text", "text", "voice"])) for c in CHANNELS},
    )


user = st.sampled_from(USERS)
ops = st.one_of(
    st.tuples(st.just("msg"), user, st.sampled_from(CHANNELS)),
    st.tuples(st.just("msg"), user, st.sampled_from(CHANNELS)),
    st.tuples(st.just("ban"), user),
    st.tuples(st.just("kick"), user),
    st.tuples(st.just("join"), user),
    st.tuples(st.just("unban"), user),
    st.tuples(st.just("assign"), user, st.sampled_from(ROLES)),
    st.tuples(st.just("unassign"), user, st.sampled_from(ROLES)),
    st.tuples(st.just("overwrite"), st.sampled_from(CHANNELS), targets, bits, bits),
    st.tuples(st.just("clear"), st.sampled_from(CHANNELS), targets),
    st.tuples(st.just("role"), st.sampled_from([G, *ROLES]), role_bits),
)


def change(model: Model, op: tuple) -> int | None:
    """Apply a control-plane change to the model; returns the user it is scoped to (0: the
    whole guild, as ``ControlPlane`` announces it), or None if the control plane refuses."""
    kind = op[0]
    if kind in ("ban", "kick") and op[1] == OWNER:
        return None
    if kind == "ban":
        model.bans.add(op[1])
        model.members.discard(op[1])
        model.member_roles.pop(op[1], None)
    elif kind == "kick":
        model.members.discard(op[1])
        model.member_roles.pop(op[1], None)
    elif kind == "join":
        if op[1] in model.bans:
            return None
        model.members.add(op[1])
    elif kind == "unban":
        model.bans.discard(op[1])
    elif kind == "assign":
        if op[1] not in model.members:
            return None
        model.member_roles.setdefault(op[1], set()).add(op[2])
    elif kind == "unassign":
        model.member_roles.get(op[1], set()).discard(op[2])
    elif kind == "overwrite":
        (t_kind, t_id), allow, deny = op[2], op[3], op[4]
        model.overwrites[(op[1], t_kind, t_id)] = (allow, deny)
        return t_id if t_kind == "member" else 0
    elif kind == "clear":
        t_kind, t_id = op[2]
        model.overwrites.pop((op[1], t_kind, t_id), None)
        return t_id if t_kind == "member" else 0
    elif kind == "role":
        if op[1] == G:
            model.everyone = op[2]
        else:
            model.roles[op[1]] = op[2]
        return 0
    return op[1]


class LocalGateway(RecordingSends):
    """Just what ``LocalFanout.deliver`` touches: the sessions and a ``send`` that records."""

    def __init__(self) -> None:
        super().__init__()
        self.sessions: dict[str, Session] = {}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(models(), st.lists(ops, min_size=1, max_size=25))
def test_no_delivery_reaches_anyone_who_may_not_see_it(model: Model, stream: list[tuple]):
    gw = LocalGateway()
    fanout = LocalFanout(gw)  # type: ignore[arg-type]
    clients = {}
    # IDENTIFY: one session per user, members or not, installed as the gateway does.
    snapshot = model.snapshot()
    for u in USERS:
        session = Session(u, "desktop", 64, session_id=f"s{u}")
        roles = model.roles_of(u)
        install(session, [member_view(snapshot, u, roles)] if roles is not None else [])
        session.seq = 1  # READY was sent
        for g in session.guilds:
            fanout.by_guild.setdefault(g, set()).add(session)
        gw.sessions[session.session_id] = session
        clients[session] = SimpleNamespace(user=u)
        fanout.attached[session] = clients[session]

    def check_views() -> None:
        for session in gw.sessions.values():
            visible = {c for c in CHANNELS if model.expected(session.user_id, c) & P.VIEW_CHANNEL}
            assert set(session.channels) == visible, (session.user_id, model)
            for c in visible:
                assert session.perms[c] == int(model.expected(session.user_id, c))
            in_guild = session.user_id in model.members and session.user_id not in model.bans
            assert (G in session.guilds) == in_guild
            assert (session in fanout.by_guild.get(G, ())) == in_guild

    check_views()
    for n, op in enumerate(stream):
        if op[0] == "msg":
            author, channel = op[1], op[2]
            verdict = authorize_send(model.snapshot(), author, model.roles_of(author), channel)
            may_send = model.expected(author, channel) & (P.VIEW_CHANNEL | P.SEND_MESSAGES)
            assert (verdict is None) == (may_send == P.VIEW_CHANNEL | P.SEND_MESSAGES), op
            if verdict is not None:
                continue
            gw.sent.clear()
            fanout.deliver(
                Delivery(t="MESSAGE_CREATE", guild_id=G, channel_id=channel, payload="{}")
            )
            got = {c.user for c, _ in gw.sent}
            viewers = {u for u in USERS if model.expected(u, channel) & P.VIEW_CHANNEL}
            assert got == viewers, (op, model)
            continue
        scope = change(model, op)
        if scope is None:
            continue
        # What GatewayControl.apply does: reload the guild, recompute the scoped sessions.
        snapshot = model.snapshot()
        for session in gw.sessions.values():
            if scope and session.user_id != scope:
                continue
            if not scope and G not in session.guilds:
                continue
            roles = model.roles_of(session.user_id)
            view = member_view(snapshot, session.user_id, roles) if roles is not None else None
            done = apply_view(session, G, view, fanout.by_guild)
            if done.left:
                assert [t for t, _ in done.dispatches] == ["GUILD_DELETE"]
        check_views()
        # guild-wide events (presence) reach exactly the members
        gw.sent.clear()
        fanout.deliver(
            Delivery(t="PRESENCE_UPDATE", guild_id=G, channel_id=0, payload=f'{{"n":{n}}}')
        )
        members = {u for u in USERS if u in model.members and u not in model.bans}
        assert {c.user for c, _ in gw.sent} == members


def test_owner_and_administrator_see_everything_even_when_everyone_is_denied():
    model = Model(
        everyone=P.VIEW_CHANNEL | P.SEND_MESSAGES,
        roles={201: P.ADMINISTRATOR, 202: NONE, 203: NONE},
        overwrites={(c, "role", G): (NONE, P.VIEW_CHANNEL) for c in CHANNELS},
        members={1, 2, 3},
        member_roles={2: {201}},
        bans=set(),
        channel_kind={c: "text" for c in CHANNELS},
    )
    snap = model.snapshot()
    assert set(snap.view(1, frozenset())) == set(CHANNELS)  # the owner
    assert set(snap.view(2, frozenset({201}))) == set(CHANNELS)  # ADMINISTRATOR
    assert snap.view(3, frozenset()) == {}
    assert snap.permissions(2, frozenset({201}), CHANNELS[0]) == ALL
    assert authorize_send(snap, 3, frozenset(), CHANNELS[0]) == "MISSING_ACCESS"
    assert authorize_send(snap, 3, None, CHANNELS[0]) == "MISSING_ACCESS"
    assert authorize_send(snap, 1, frozenset(), 999) == "UNKNOWN_CHANNEL"
