"""Lazy guilds: a large guild's READY has counts only, members come in chunks on request (op 8),
and a session hears the presence of the members it watches (op 14) and nobody else's.

Pure parts first (the watcher index, splitting an update, member selection, chunking), then
real in-process gateways, a real Valkey and SQLite (the ``stack`` fixture) with the demo
community and ``large_guild_threshold = 3``: interview-prep (4 members) is lazy,
ml-reading-group (3 members) is not.
"""

from __future__ import annotations

import orjson
import pytest

from chatscale.client import GatewayError
from chatscale.config import Settings
from chatscale.wire import MAX_MEMBER_IDS, GuildSubscriptions, Op
from gateway.lazy import Directory, Watchers, chunk_payloads, chunked, split_presence
from presence.service import PresenceService
from storage import User
from tests.conftest import Stack, presence_tick, settled


class S:  # a stand-in session: the pure parts only hash it
    def __init__(self, name: str) -> None:
        self.name = name


def test_watchers_replace_forget_and_stay_bounded():
    w, a, b = Watchers(), S("a"), S("b")
    assert w.watch(a, 1, [10, 11]) == 2
    w.watch(b, 1, [11])
    assert w.watchers(1, 11) == {a, b} and w.watchers(1, 10) == {a}
    w.watch(a, 1, [12])  # replaces, not adds
    assert w.watchers(1, 10) == set() and w.watchers(1, 11) == {b} and w.watching(a, 1) == {12}
    w.forget(b)
    assert w.watchers(1, 11) == set() and w.entries() == 1
    w.watch(a, 1, [])
    assert w.entries() == 0 and w._by_guild == {} and w._of == {}  # nothing left behind
    with pytest.raises(ValueError):  # a subscription names at most MAX_MEMBER_IDS users
        GuildSubscriptions.model_validate({"guild_id": "1", "user_ids": list(range(101))})
    assert MAX_MEMBER_IDS == 100


def test_split_presence_gives_each_watcher_only_its_users_and_the_counts():
    a, b = S("a"), S("b")
    index = {"7": {a}, "8": {a, b}}
    payload = orjson.dumps(
        {
            "guild_id": "1",
            "presences": [
                {"user_id": u, "status": "online", "client_status": {"web": "online"}}
                for u in ("7", "8", "9")
            ],
            "large": True,
            "went_offline": 0,
            "online_delta": 3,
            "online_count": 40,
            "member_count": 5000,
        }
    ).decode()
    out = {
        s.name: orjson.loads(d)
        for s, d in split_presence(payload, lambda u: index.get(str(u), set())).items()
    }
    assert [p["user_id"] for p in out["a"]["presences"]] == ["7", "8"]
    assert [p["user_id"] for p in out["b"]["presences"]] == ["8"]
    assert out["b"]["online_count"] == 40 and out["b"]["large"] is True
    assert out["b"]["guild_id"] == "1"
    assert split_presence(payload, lambda u: set()) == {}  # nobody watches: nobody gets it


def test_directory_prefix_search_lookup_and_chunks():
    users = [User(i, n) for i, n in enumerate(["Zed", "ada", "Adam", "bob", "adele"], start=1)]
    d = Directory.of(users)
    assert [u.username for u in d.select("AD", 10)] == ["ada", "Adam", "adele"]
    assert [u.username for u in d.select("ad", 2)] == ["ada", "Adam"]
    assert len(d.select("", 100)) == 5 and d.select("q", 5) == []
    found, missing = d.lookup([4, 99, 4, 1])
    assert [u.id for u in found] == [4, 1] and missing == [99]
    assert chunked([], 3) == [[]] and chunked([1, 2, 3, 4], 3) == [[1, 2, 3], [4]]
    chunks = [
        orjson.loads(c)
        for c in chunk_payloads(
            9, found, size=1, not_found=missing, presences={4: {"status": "idle"}}, nonce="n"
        )
    ]
    assert [(c["chunk_index"], c["chunk_count"]) for c in chunks] == [(0, 2), (1, 2)]
    assert chunks[0]["not_found"] == ["99"] and chunks[1]["not_found"] == []
    assert chunks[0]["presences"] == [{"user_id": "4", "status": "idle"}]
    assert chunks[1]["presences"] == [] and {c["nonce"] for c in chunks} == {"n"}


# ---- real gateways ---------------------------------------------------------------------------


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"large_guild_threshold": 3, "member_chunk_size": 3})


async def guild_ids(stack: Stack) -> tuple[int, int]:
    [big] = await stack.store.find_guilds("interview-prep")
    [small] = await stack.store.find_guilds("ml-reading-group")
    return big.id, small.id


async def test_large_guild_ready_has_no_member_list_and_members_come_in_chunks(
    stack: Stack, presence: PresenceService
):
    big, small = await guild_ids(stack)
    alice = await stack.client("alice", gateway=0)
    await presence_tick(stack, presence)  # alice is online in the presence hash
    presences = alice.ready["presences"]
    assert presences[str(big)] == {"large": True, "member_count": 4}
    assert "presences" in presences[str(small)]  # a small guild: as before
    assert all("members" not in g for g in alice.ready["guilds"])
    chunks = await alice.request_members(big, query="", presences=True)
    assert [(c["chunk_index"], c["chunk_count"]) for c in chunks] == [(0, 2), (1, 2)]
    names = [m["user"]["username"] for c in chunks for m in c["members"]]
    assert names == ["alice", "bob", "carol", "dave"]  # by username
    assert [p["user_id"] for c in chunks for p in c["presences"]] == [str(stack.users["alice"])]
    [one] = await alice.request_members(
        big, user_ids=[stack.users["bob"], stack.users["erin"], 12345]
    )
    assert [m["user"]["id"] for m in one["members"]] == [str(stack.users["bob"])]
    assert one["not_found"] == [str(stack.users["erin"]), "12345"]  # erin is not a member
    assert one["chunk_count"] == 1
    [none] = await alice.request_members(big, query="zz")
    assert none["members"] == [] and none["chunk_count"] == 1


async def test_a_non_member_gets_unknown_guild_and_the_connection_stays(stack: Stack):
    big, _ = await guild_ids(stack)
    frank = await stack.client("frank", gateway=1)  # ml-reading-group only
    with pytest.raises(GatewayError) as refused:
        await frank.request_members(big, query="")
    assert refused.value.d["code"] == "UNKNOWN_GUILD"
    await frank.subscribe(big, [stack.users["alice"]])
    [error] = [f for f in await settled(frank) if f.get("op") == Op.ERROR]
    assert error["d"]["code"] == "UNKNOWN_GUILD"
    assert not frank.closed.is_set()


async def test_large_guild_presence_only_of_watched_members_small_guild_unchanged(
    stack: Stack, presence: PresenceService
):
    big, small = await guild_ids(stack)
    alice = await stack.client("alice", gateway=0)
    await alice.subscribe(big, [stack.users["bob"]])
    await alice.request_members(big, user_ids=[stack.users["bob"]])  # the subscription is in
    await presence_tick(stack, presence, advance=2.0)  # alice's own arrival goes out
    for name in ("bob", "carol", "frank"):  # carol: big only; frank: small only
        await stack.client(name, gateway=1)
    await presence_tick(stack, presence, advance=2.0)
    await presence_tick(stack, presence, advance=2.0)
    seen: dict[str, set[str]] = {str(big): set(), str(small): set()}
    for f in await settled(alice):
        if f.get("t") == "PRESENCE_UPDATE":
            seen[f["d"]["guild_id"]] |= {p["user_id"] for p in f["d"]["presences"]}
    assert seen[str(big)] == {str(stack.users["bob"])}  # not carol: not watched
    assert str(stack.users["frank"]) in seen[str(small)]  # small guild: everyone, unasked
