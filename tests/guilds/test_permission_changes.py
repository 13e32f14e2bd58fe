"""Permissions enforced on the real stack, and the strong path for bans and permission changes.

Two in-process gateways, a real Valkey, real SQLite (and, for the ban race, a real Cassandra
node), the demo community: alice owns interview-prep; carol holds the mentors role (sees
#mentors-only, may post in #announcements); bob and dave are plain members; erin is not a
member. No sleeps: workers are drained, clients wait on events, and a HEARTBEAT/ACK round trip
proves a client has received everything its gateway sent before.
"""

from __future__ import annotations

import asyncio

import orjson
import pytest

from chatscale.client import ChatClient, GatewayError
from chatscale.closecodes import Close
from chatscale.wire import IngestMessage, encode_entry
from guilds.controlplane import ControlError, ControlPlane
from guilds.permissions import Permission
from tests.conftest import Stack, on_redis_cluster_too, settled
from workers.worker import Worker

P = Permission


async def guild_id(stack: Stack, name: str = "interview-prep") -> int:
    [guild] = await stack.store.find_guilds(name)
    return guild.id


def channel_names(client: ChatClient, guild: str = "interview-prep") -> list[str]:
    g = next((g for g in client.ready["guilds"] if g["name"] == guild), None)
    return [c["name"] for c in g["channels"]] if g else []


async def hot_authors(stack: Stack, channel: int) -> dict[str, str]:
    """message id -> author id of the channel's hot cache (where a message is accepted)."""
    page = await stack.gateways[0].hot.page(channel, before=None, limit=1000)
    return {str(i): orjson.loads(p)["author"]["id"] for i, p in page}


# ---- what READY shows and what requests may do --------------------------------------------------


async def test_ready_lists_only_viewable_channels_with_their_permissions(stack: Stack):
    bob = await stack.client("bob", gateway=1)
    carol = await stack.client("carol", gateway=0)
    assert channel_names(bob) == ["general", "system-design", "mock-interviews", "announcements"]
    assert channel_names(carol)[-1] == "mentors-only"
    bob_channels = {c["name"]: c for g in bob.ready["guilds"] for c in g["channels"]}
    assert not int(bob_channels["announcements"]["permissions"]) & P.SEND_MESSAGES
    assert int(bob_channels["general"]["permissions"]) & P.SEND_MESSAGES
    assert bob_channels["mock-interviews"]["rate_limit_per_user"] == 10
    with pytest.raises(GatewayError, match="MISSING_PERMISSIONS"):
        await bob.send_message(stack.channels["announcements"], "may I?")
    with pytest.raises(GatewayError, match="UNKNOWN_CHANNEL"):
        await bob.send_message(stack.channels["mentors-only"], "let me in")
    await carol.send_message(stack.channels["announcements"], "mentors may")
    await carol.send_message(stack.channels["mentors-only"], "secret")
    await stack.drain()
    assert (await bob.next_event("MESSAGE_CREATE"))["d"]["content"] == "mentors may"
    frames = await settled(bob)
    assert "secret" not in [f["d"].get("content") for f in frames if f.get("t")]


async def test_history_needs_read_message_history(stack: Stack, plane: ControlPlane):
    bob = await stack.client("bob", gateway=1)
    general = stack.channels["general"]
    assert await bob.history(general) == []
    await plane.set_overwrite(
        general, "member", stack.users["bob"], allow=P(0), deny=P.READ_MESSAGE_HISTORY
    )
    update = await bob.next_event("CHANNEL_UPDATE")
    assert not int(update["d"]["permissions"]) & P.READ_MESSAGE_HISTORY
    with pytest.raises(GatewayError, match="MISSING_PERMISSIONS"):
        await bob.history(general)
    await bob.send_message(general, "still may write")  # only history was denied


async def test_the_worker_rejects_what_no_gateway_should_have_let_through(stack: Stack):
    """Entries written straight to the ingest stream (a buggy or stale gateway): the worker's
    Authorizer is the last line, with its own reading of membership, bans and overwrites."""
    redis = stack.gateways[0].redis
    guild = await guild_id(stack)
    cases = [
        ("bob", "mentors-only", "MISSING_ACCESS"),  # cannot view
        ("bob", "announcements", "MISSING_PERMISSIONS"),  # views, may not send
        ("erin", "general", "MISSING_ACCESS"),  # not a member
        ("bob", "papers", "UNKNOWN_CHANNEL"),  # another guild's channel
    ]
    carol = await stack.client("carol", gateway=0)
    for i, (who, channel, _) in enumerate(cases):
        m = IngestMessage(
            id=10_000 + i,
            channel_id=stack.channels[channel],
            guild_id=guild,
            author_id=stack.users[who],
            gateway_id="gw-0",
            session_id="nobody",
            payload=f'{{"id":"{10_000 + i}","content":"forged {i}"}}',
        )
        shard = m.channel_id % stack.settings.ingest_shards
        await redis.xadd(stack.gateways[0].keys.ingest(shard), encode_entry(m))
    await stack.drain()
    assert stack.worker.stats.rejected == len(cases)
    assert stack.worker.stats.processed == 0
    rejections = await redis.xrange(stack.gateways[0].keys.deliver("gw-0"))
    replies = [orjson.loads(orjson.loads(f[b"e"])["payload"]) for _, f in rejections]
    codes = {int(r["id"]) - 10_000: r["code"] for r in replies}
    assert codes == {i: code for i, (_, _, code) in enumerate(cases)}
    for _, channel, _ in cases:
        assert await hot_authors(stack, stack.channels[channel]) == {}
    assert not [f for f in await settled(carol) if f.get("t") == "MESSAGE_CREATE"]


# ---- live sessions follow every change -----------------------------------------------------------


async def test_role_overwrite_and_membership_changes_reach_live_sessions(
    stack: Stack, plane: ControlPlane
):
    guild = await guild_id(stack)
    alice = await stack.client("alice", gateway=0)
    carol = await stack.client("carol", gateway=1)
    dave = await stack.client("dave", gateway=0)
    [mentors] = [r for r in await stack.store.guild_roles(guild) if r.name == "mentors"]

    # carol loses the mentors role: #mentors-only disappears, #announcements becomes read-only
    await plane.remove_role(guild, stack.users["carol"], mentors.id)
    frames = await settled(carol)
    [gone] = [f["d"] for f in frames if f.get("t") == "CHANNEL_DELETE"]
    assert gone["id"] == str(stack.channels["mentors-only"])
    # every channel changes (MANAGE_MESSAGES and KICK_MEMBERS went with the role)
    updated = {
        f["d"]["name"]: int(f["d"]["permissions"]) for f in frames if f.get("t") == "CHANNEL_UPDATE"
    }
    assert set(updated) == {"general", "system-design", "mock-interviews", "announcements"}
    assert not updated["announcements"] & P.SEND_MESSAGES
    assert not updated["general"] & P.MANAGE_MESSAGES
    await alice.send_message(stack.channels["mentors-only"], "mentors only, now without carol")
    with pytest.raises(GatewayError, match="MISSING_PERMISSIONS"):
        await carol.send_message(stack.channels["announcements"], "no longer")
    await stack.drain()
    assert not [f for f in await settled(carol) if f.get("t") == "MESSAGE_CREATE"]

    # and gets it back
    await plane.assign_role(guild, stack.users["carol"], mentors.id)
    created = await carol.next_event("CHANNEL_CREATE")
    assert created["d"]["name"] == "mentors-only"

    # a member overwrite hides #general from dave only
    await plane.set_overwrite(
        stack.channels["general"], "member", stack.users["dave"], allow=P(0), deny=P.VIEW_CHANNEL
    )
    assert (await dave.next_event("CHANNEL_DELETE"))["d"]["id"] == str(stack.channels["general"])
    await plane.clear_overwrite(stack.channels["general"], "member", stack.users["dave"])
    assert (await dave.next_event("CHANNEL_CREATE"))["d"]["name"] == "general"

    # a private channel created with its overwrites: only those who may see it hear of it
    receipt = await plane.create_channel(
        guild,
        "staff",
        overwrites=[
            ("role", guild, P(0), P.VIEW_CHANNEL),
            ("role", mentors.id, P.VIEW_CHANNEL, P(0)),
        ],
    )
    assert receipt.confirmed == ("gw-0", "gw-1")
    assert (await carol.next_event("CHANNEL_CREATE"))["d"]["name"] == "staff"
    assert (await alice.next_event("CHANNEL_CREATE"))["d"]["name"] == "staff"
    assert "CHANNEL_CREATE" not in [f.get("t") for f in await settled(dave)]

    # erin joins (GUILD_CREATE to her, GUILD_MEMBER_ADD to the others), then is kicked
    erin = await stack.client("erin", gateway=1)
    await plane.add_member(guild, stack.users["erin"])
    joined = await erin.next_event("GUILD_CREATE")
    assert joined["d"]["name"] == "interview-prep" and "staff" not in [
        c["name"] for c in joined["d"]["channels"]
    ]
    assert (await dave.next_event("GUILD_MEMBER_ADD"))["d"]["user"]["id"] == str(
        stack.users["erin"]
    )
    await erin.send_message(stack.channels["general"], "hello, new here")
    await stack.drain()
    assert (await alice.next_event("MESSAGE_CREATE"))["d"]["content"] == "hello, new here"
    await plane.kick(guild, stack.users["erin"])
    assert (await erin.next_event("GUILD_DELETE"))["d"]["id"] == str(guild)
    assert (await alice.next_event("GUILD_MEMBER_REMOVE"))["d"]["user"]["id"] == str(
        stack.users["erin"]
    )
    with pytest.raises(GatewayError, match="UNKNOWN_CHANNEL"):
        await erin.send_message(stack.channels["general"], "still here?")


async def test_control_plane_refuses_invalid_changes(stack: Stack, plane: ControlPlane):
    guild = await guild_id(stack)
    with pytest.raises(ControlError, match="owner"):
        await plane.ban(guild, stack.users["alice"])
    with pytest.raises(ControlError, match="ADMINISTRATOR"):
        await plane.set_overwrite(
            stack.channels["general"], "role", guild, allow=P.ADMINISTRATOR, deny=P(0)
        )
    with pytest.raises(ControlError, match="no role"):
        await plane.assign_role(guild, stack.users["bob"], guild + 1)
    [mentors] = [r for r in await stack.store.guild_roles(guild) if r.name == "mentors"]
    with pytest.raises(ControlError, match="not a member"):
        await plane.assign_role(guild, stack.users["erin"], mentors.id)
    await plane.ban(guild, stack.users["erin"])  # not a member: banned ahead of time
    with pytest.raises(ControlError, match="banned"):
        await plane.add_member(guild, stack.users["erin"])
    await plane.unban(guild, stack.users["erin"])
    await plane.add_member(guild, stack.users["erin"])
    assert await stack.store.is_member(guild, stack.users["erin"])


# ---- the ban race -------------------------------------------------------------------------------


@pytest.fixture
def storage_url(request, tmp_path) -> str:
    """SQLite, unless a test asks for Cassandra (then a keyspace of its own: the demo's ids are
    fixed and this module bans people, which must not leak into other modules' keyspace)."""
    if getattr(request, "param", "sqlite") == "sqlite":
        return f"sqlite:///{tmp_path}/chatscale.db"
    base = request.getfixturevalue("cassandra_url").rsplit("/", 1)[0]
    return f"{base}/chatscale_ban_race"


@pytest.mark.parametrize(
    "storage_url",
    ["sqlite", pytest.param("cassandra", marks=[pytest.mark.cassandra, pytest.mark.slow])],
    indirect=True,
)
@on_redis_cluster_too
async def test_ban_racing_a_flood_takes_effect_everywhere_when_it_returns(
    stack: Stack, plane: ControlPlane
):
    """Bob (gateway 1) floods #general while a worker runs; he is banned mid-flood. When ban()
    returns: no worker accepts another message of his, no delivery reaches him, and his
    gateway refuses his sends. Messages accepted before it still reach everyone else."""
    guild = await guild_id(stack)
    general = stack.channels["general"]
    bob_id = str(stack.users["bob"])
    alice = await stack.client("alice", gateway=0)
    carol = await stack.client("carol", gateway=0)
    dave = await stack.client("dave", gateway=1)  # shares bob's gateway
    bob = await stack.client("bob", gateway=1)
    # a hot cache big enough to hold the whole flood: it is where acceptance is observed
    roomy = stack.settings.model_copy(update={"hot_size": 1000})
    background = Worker(roomy, store=stack.store, consumer="w-background")
    stack.worker.pipeline.hot.size = 1000
    worker = asyncio.create_task(background.run())
    acked: list[str] = []
    ten_sent, stop = asyncio.Event(), asyncio.Event()

    async def flood() -> None:
        with pytest.raises(GatewayError, match="UNKNOWN_CHANNEL"):
            for i in range(900):
                acked.append((await bob.send_message(general, f"flood {i}"))["id"])
                if i == 9:
                    ten_sent.set()
                if stop.is_set():
                    await bob.send_message(general, "after my ban")  # must be refused

    flooding = asyncio.create_task(flood())
    await ten_sent.wait()
    receipt = await plane.ban(guild, stack.users["bob"], "spam")
    accepted = {i for i, a in (await hot_authors(stack, general)).items() if a == bob_id}
    stop.set()
    await flooding
    assert receipt.confirmed == ("gw-0", "gw-1") and receipt.fenced == ()
    await alice.send_message(general, "after the ban")
    background.stop()
    await worker
    await background.close()
    await stack.drain()  # whatever the background worker left

    # no worker accepted anything of bob's after ban() returned; all accepted ones are stored
    after = {i for i, a in (await hot_authors(stack, general)).items() if a == bob_id}
    assert after == accepted
    stored = await stack.store.page(general, before=None, limit=1000)
    assert {str(m.message_id) for m in stored if str(m.author_id) == bob_id} == accepted
    assert accepted <= set(acked)

    # everyone else got exactly the accepted messages, then the sentinel
    for member in (carol, dave):
        got = [f["d"] for f in await settled(member) if f.get("t") == "MESSAGE_CREATE"]
        while not got or got[-1]["content"] != "after the ban":
            got.append((await member.next_event("MESSAGE_CREATE"))["d"])
        assert {m["id"] for m in got if m["author"]["id"] == bob_id} == accepted

    # bob: told he is out, and after that nothing of the guild; rejections for the rest
    frames = await settled(bob)
    names = [f.get("t") for f in frames]
    assert "GUILD_DELETE" in names
    after_delete = frames[names.index("GUILD_DELETE") + 1 :]
    assert not [f for f in after_delete if f.get("t") == "MESSAGE_CREATE"]
    rejected = {f["d"]["id"]: f["d"]["code"] for f in frames if f.get("t") == "MESSAGE_REJECTED"}
    assert set(rejected) == set(acked) - accepted
    assert set(rejected.values()) <= {"MISSING_ACCESS"}
    assert (await alice.next_event("GUILD_MEMBER_REMOVE"))["d"]["user"]["id"] == bob_id

    again = await stack.client("bob", gateway=0)
    assert [g["name"] for g in again.ready["guilds"]] == []


@on_redis_cluster_too
async def test_a_batch_checked_before_a_ban_is_checked_again_and_rejected(
    stack: Stack, plane: ControlPlane
):
    """The race made deterministic: the ban commits after the worker authorized bob's message
    and before it accepted it (the hot-cache write). The version check in that write sends
    the batch back to authorization, which now rejects it."""
    guild = await guild_id(stack)
    general = stack.channels["general"]
    bob = await stack.client("bob", gateway=1)
    dave = await stack.client("dave", gateway=1)
    ack = await bob.send_message(general, "sent just before my ban")
    pipeline = stack.worker.pipeline
    accept = pipeline._hot
    banned = []

    async def ban_in_between(accepted, version):  # noqa: ANN001, ANN202
        if not banned:
            banned.append(await plane.ban(guild, stack.users["bob"]))
        return await accept(accepted, version)

    pipeline._hot = ban_in_between  # type: ignore[method-assign]
    await stack.drain()
    assert banned and pipeline.stats.reauthorized == 1
    assert pipeline.stats.processed == 0 and pipeline.stats.rejected == 1
    assert await hot_authors(stack, general) == {}
    assert await stack.store.page(general, before=None, limit=10) == []
    rejected = await bob.next_event("MESSAGE_REJECTED")
    assert (rejected["d"]["id"], rejected["d"]["code"]) == (ack["id"], "MISSING_ACCESS")
    assert "MESSAGE_CREATE" not in [f.get("t") for f in await settled(dave)]


async def test_an_identify_racing_a_ban_never_shows_the_guild(stack: Stack, plane: ControlPlane):
    """The ban lands after the gateway loaded bob's guilds and before READY: the gateway sees
    the version moved, reloads, and READY never lists the guild."""
    guild = await guild_id(stack)
    control = stack.gateways[1].control
    load = control.load_views
    raced = []

    async def load_then_ban(user_id: int):  # noqa: ANN202
        views, version = await load(user_id)
        if not raced:
            raced.append(await plane.ban(guild, stack.users["bob"]))
        return views, version

    control.load_views = load_then_ban  # type: ignore[method-assign]
    bob = await stack.client("bob", gateway=1)
    assert raced and [g["name"] for g in bob.ready["guilds"]] == []
    assert (
        bob.ready["v"] == 1 and bob.seq == 1
    )  # READY was the first dispatch: nothing leaked before
    alice = await stack.client("alice", gateway=0)
    await alice.send_message(stack.channels["general"], "bob is gone")
    await stack.drain()
    await alice.next_event("MESSAGE_CREATE")
    assert "MESSAGE_CREATE" not in [f.get("t") for f in await settled(bob)]


# ---- when gateways do not confirm, or miss an announcement ----------------------------------------


async def test_a_gateway_that_does_not_confirm_is_fenced_and_drops_its_sessions(
    stack: Stack, settings
):
    gw1 = stack.gateways[1]
    bob = await stack.client("bob", gateway=1)
    await gw1.control._pubsub.unsubscribe()  # gateway 1 goes deaf to the control plane
    for task in gw1._tasks:  # and its housekeeping runs only when this test calls it
        if task.get_coro().__qualname__ == "Gateway._housekeeping":
            task.cancel()
    impatient = ControlPlane(
        settings.model_copy(update={"control_timeout_s": 0.2}), store=stack.store
    )
    try:
        receipt = await impatient.set_overwrite(
            stack.channels["general"], "member", stack.users["bob"], allow=P(0), deny=P.VIEW_CHANNEL
        )
    finally:
        await impatient.close()
    assert receipt.confirmed == ("gw-0",) and receipt.fenced == ("gw-1",)
    assert not await gw1.redis.exists(gw1.keys.gateway_alive(gw1.id))
    assert (
        "general" in channel_names(bob)
        and stack.channels["general"] in gw1.sessions[bob.session_id].channels
    )  # gateway 1 never applied the change...
    # ...but workers skip a fenced gateway: bob's stale session gets nothing more
    alice = await stack.client("alice", gateway=0)
    await alice.send_message(stack.channels["general"], "while gateway 1 is fenced")
    await stack.drain()
    await alice.next_event("MESSAGE_CREATE")
    assert await gw1.redis.xlen(gw1.keys.deliver(gw1.id)) == 0
    # its next housekeeping tick drops every session; clients must IDENTIFY again
    await gw1.control.check()
    await asyncio.wait_for(bob.closed.wait(), 10)
    assert bob.close_code == Close.UNKNOWN_ERROR and gw1.sessions == {}
    await gw1._refresh_alive()
    again = await stack.client("bob", gateway=1)
    assert "general" not in channel_names(again)


async def test_a_missed_announcement_is_caught_up_by_housekeeping(stack: Stack):
    """A change written without the control plane's announcement (``chatscale seed``, or a
    pub/sub message lost to a reconnect) only bumps the version: the gateway's housekeeping
    notices and recomputes every session."""
    from storage import ChannelOverwrite

    guild = await guild_id(stack)
    dave = await stack.client("dave", gateway=0)
    general = stack.channels["general"]
    await stack.store.put_overwrite(
        ChannelOverwrite(guild, general, "member", stack.users["dave"], 0, int(P.VIEW_CHANNEL))
    )
    gw = stack.gateways[0]
    await gw.redis.incr(gw.keys.metadata_version())
    await gw.control.check()
    assert (await dave.next_event("CHANNEL_DELETE"))["d"]["id"] == str(general)
