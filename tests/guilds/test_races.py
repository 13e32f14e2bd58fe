"""Races around the strong path, made deterministic and hammered.

A ban is the one promise that is strongly consistent (docs/permissions.md): once the banned
user's session got GUILD_DELETE, nothing of the guild may reach it. The gateway keeps a
session's view current from two places — ``GatewayControl.apply`` (one announced change) and
``GatewayControl.resync_all`` (housekeeping, after the version moved without an announcement
being applied yet) — and both load from the store with awaits in between. These tests hold a
resync in the middle of its loads, land a ban there (applied and confirmed by every gateway),
then let the resync finish, at every point of the resync in turn, many times.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chatscale.wire import Delivery, dumps
from guilds.controlplane import ControlPlane
from tests.conftest import Stack, settled


def of_guild(frame: dict[str, Any], guild: int) -> bool:
    d = frame.get("d")
    return isinstance(d, dict) and str(guild) in (d.get("guild_id"), d.get("id"))


async def test_a_resync_that_loaded_before_a_ban_never_brings_the_guild_back(
    stack: Stack, plane: ControlPlane
):
    """Every user on gateway 1 is loaded by the resync; the ban lands after the k-th load, for
    every k, 5 rounds each. After GUILD_DELETE bob must get nothing of the guild — neither a
    message (the worker path) nor a presence update (the guild-wide path) — and the gateway
    must not hold him in the guild."""
    [guild_row] = await stack.store.find_guilds("interview-prep")
    guild = guild_row.id
    gw = stack.gateways[1]
    control = gw.control
    bob_id = stack.users["bob"]
    general = stack.channels["general"]
    bob = await stack.client("bob", gateway=1)
    others = [await stack.client(name, gateway=1) for name in ("alice", "carol", "dave")]
    alice = others[0]
    load = control.load_views
    users_on_gw = len({s.user_id for s in gw.sessions.values()})
    round_no = 0

    for ban_after in range(users_on_gw + 1):
        for _ in range(5):
            round_no += 1
            loads = 0

            async def load_then_ban(user_id: int, _after: int = ban_after) -> Any:
                nonlocal loads
                if loads == _after:  # the ban lands here, applied and confirmed everywhere
                    receipt = await plane.ban(guild, bob_id, "race")
                    assert receipt.fenced == ()
                loads += 1
                return await load(user_id)

            control.load_views = load_then_ban  # type: ignore[method-assign]
            try:
                await control.resync_all()
                if loads <= ban_after:  # the ban point was after the last load
                    await plane.ban(guild, bob_id, "race")
            finally:
                control.load_views = load  # type: ignore[method-assign]

            # a message and a presence update of the guild, both after the ban
            await alice.send_message(general, f"after ban {round_no}")
            await stack.drain()
            presence = Delivery(
                t="PRESENCE_UPDATE",
                guild_id=guild,
                payload=dumps({"guild_id": str(guild), "presences": [], "round": round_no}),
            )
            gw.fanout.deliver(presence)
            for other in others[1:]:  # they got both: the deliveries did happen
                got = [f.get("t") for f in await settled(other)]
                while "MESSAGE_CREATE" not in got:
                    got.append((await other.next_event("MESSAGE_CREATE"))["t"])
            frames = await settled(bob)
            names = [f.get("t") for f in frames]
            assert "GUILD_DELETE" in names, f"round {round_no}: {names}"
            after = [f for f in frames[names.index("GUILD_DELETE") + 1 :] if of_guild(f, guild)]
            assert after == [], f"round {round_no} (ban after load {ban_after}): {after}"
            session = gw.sessions[bob.session_id]
            assert guild not in session.guilds and general not in session.channels
            assert session not in gw.fanout.by_guild.get(guild, set())

            # back in, for the next round
            await plane.unban(guild, bob_id)
            await plane.add_member(guild, bob_id)
            await bob.next_event("GUILD_CREATE")


async def test_an_apply_that_loaded_before_a_resync_does_not_undo_it(
    stack: Stack, plane: ControlPlane, monkeypatch: pytest.MonkeyPatch
):
    """The other direction. A change of bob's own permissions (a member overwrite: the
    gateway recomputes his sessions whatever guilds they hold) is being applied; its load of
    bob's roles is held. Meanwhile bob is banned without an announcement reaching gateway 1 (pub/sub is
    at-most-once) and housekeeping's resync applies the ban (GUILD_DELETE). The held apply
    then resumes with roles read before the ban: it must not hand bob the guild back."""
    import gateway.control as control_module
    from storage import Ban

    [guild_row] = await stack.store.find_guilds("interview-prep")
    guild = guild_row.id
    gw = stack.gateways[1]
    bob_id = stack.users["bob"]
    general = stack.channels["general"]
    bob = await stack.client("bob", gateway=1)
    dave = await stack.client("dave", gateway=1)
    held, release = asyncio.Event(), asyncio.Event()
    real_load_member = control_module.load_member

    async def held_load_member(store: Any, guild_id: int, user_id: int) -> Any:
        roles = await real_load_member(store, guild_id, user_id)
        if user_id == bob_id and not held.is_set():
            held.set()
            await asyncio.wait_for(release.wait(), 10)  # the test releases it below
        return roles

    monkeypatch.setattr(control_module, "load_member", held_load_member)
    from guilds.permissions import Permission

    overwrite = asyncio.create_task(
        plane.set_overwrite(
            general, "member", bob_id, allow=Permission.ADD_REACTIONS, deny=Permission(0)
        )
    )
    await asyncio.wait_for(held.wait(), 10)  # gateway 1 is inside apply(), bob's roles read
    # the ban, stored and versioned; its announcement never reaches the gateways
    await stack.store.put_ban(Ban(guild, bob_id, "race"))
    await stack.store.remove_member(guild, bob_id)
    await gw.redis.incr(gw.keys.metadata_version())
    await gw.control.resync_all()
    release.set()
    receipt = await asyncio.wait_for(overwrite, 10)
    assert receipt.fenced == ()
    await stack.gateways[0].control.resync_all()  # the other gateway catches up too

    dave_id = str(stack.users["dave"])
    await dave.send_message(general, "after the ban")
    await stack.drain()
    assert (await bob.next_event("GUILD_DELETE"))["d"]["id"] == str(guild)
    frames = await settled(bob)
    assert [f for f in frames if of_guild(f, guild)] == []
    assert guild not in gw.sessions[bob.session_id].guilds
    got = await dave.next_event("MESSAGE_CREATE")
    assert got["d"]["author"]["id"] == dave_id


async def test_a_presence_update_during_identify_does_not_come_before_ready(stack: Stack):
    """Between the routing of a new session (``fanout.attach``) and READY the gateway awaits
    the settle check; a guild-wide delivery arriving then must not be the session's first
    dispatch (READY is s=1, and the gateway tells identifying sessions by seq 0), nor be lost:
    it is held and dispatched right after READY (``fanout.release``)."""
    [guild_row] = await stack.store.find_guilds("interview-prep")
    gw = stack.gateways[1]
    settle = gw.control.settle
    delivered = []

    async def presence_then_settle(session: Any, views: Any, version: int) -> Any:
        update = dumps({"guild_id": str(guild_row.id), "presences": []})
        delivered.append(
            gw.fanout.deliver(Delivery(t="PRESENCE_UPDATE", guild_id=guild_row.id, payload=update))
        )
        return await settle(session, views, version)

    gw.control.settle = presence_then_settle  # type: ignore[method-assign]
    bob = await stack.client("bob", gateway=1)
    assert delivered == [0]  # not sent while bob was identifying
    assert bob.ready["session_id"]  # READY came first (s=1: ChatClient.identify waits for it)
    assert [(f.get("t"), f.get("s")) for f in await settled(bob)] == [("PRESENCE_UPDATE", 2)]
