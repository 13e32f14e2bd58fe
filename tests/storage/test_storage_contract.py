"""One contract suite for every storage backend.

The same tests run against the embedded SQLite backend and against a real Cassandra 5.0 node
(the ``backend`` fixture), which is what makes SQLite a verified stand-in.
"""

from __future__ import annotations

import pytest

from chatscale import snowflake
from storage import Ban, Channel, ChannelOverwrite, Guild, GuildRole, StoredMessage, User

SPAN = 3_600_000  # one-hour buckets so a test spans many of them cheaply
T0 = 1_760_000_000_000


def mid(ms_offset: int, seq: int = 0) -> int:
    return snowflake.from_timestamp_ms(T0 + ms_offset) | seq


def msg(channel: int, message_id: int) -> StoredMessage:
    return StoredMessage(channel, message_id, 7, f'{{"id":"{message_id}"}}')


async def test_insert_and_page_newest_first(backend):
    channel = mid(0, 1)
    ids = [mid(i * 1000) for i in range(1, 11)]
    for i in ids:
        await backend.insert(msg(channel, i))
    page = await backend.page(channel, before=None, limit=4)
    assert [m.message_id for m in page] == sorted(ids, reverse=True)[:4]
    assert page[0] == msg(channel, ids[-1])


async def test_paging_walks_buckets_backwards_across_empty_ones_to_the_first(backend):
    channel = mid(0, 2)  # created at T0: its first bucket
    # messages in buckets 0, 1, 4 and 9 (hours), with empty buckets between
    ids = sorted(mid(h * SPAN + k * 1000) for h in (0, 1, 4, 9) for k in range(1, 4))
    await backend.insert_many([msg(channel, i) for i in ids])
    for limit in (1, 2, 5, 100):
        seen, before = [], None
        while True:
            page = await backend.page(channel, before=before, limit=limit)
            if not page:
                break
            seen += [m.message_id for m in page]
            before = page[-1].message_id
        assert seen == sorted(ids, reverse=True), limit


async def test_page_before_an_id_is_strict_and_empty_channel_is_empty(backend):
    channel = mid(0, 3)
    ids = [mid(i * 500) for i in range(1, 6)]
    await backend.insert_many([msg(channel, i) for i in ids])
    page = await backend.page(channel, before=ids[2], limit=10)
    assert [m.message_id for m in page] == [ids[1], ids[0]]
    assert await backend.page(mid(0, 4), before=None, limit=10) == []
    assert await backend.page(channel, before=ids[0], limit=10) == []


async def test_page_after_walks_buckets_forwards_with_no_gap_or_duplicate(backend):
    channel = mid(0, 8)
    ids = sorted(mid(h * SPAN + k * 1000) for h in (0, 2, 3, 7) for k in range(1, 4))
    await backend.insert_many([msg(channel, i) for i in ids])
    for limit in (1, 2, 5, 100):
        seen, after = [], 0
        while True:
            page = await backend.page_after(channel, after=after, limit=limit)
            if not page:
                break
            assert len(page) <= limit
            seen += [m.message_id for m in page]
            after = page[-1].message_id
        assert seen == ids, limit
    # strictly newer; from the middle of a bucket; past the newest is empty
    assert [m.message_id for m in await backend.page_after(channel, after=ids[4], limit=2)] == [
        ids[5],
        ids[6],
    ]
    assert await backend.page_after(channel, after=ids[-1], limit=10) == []
    assert await backend.page_after(mid(0, 9), after=0, limit=10) == []


async def test_buckets_are_listed_read_whole_and_deleted_for_the_cold_tier(backend):
    channel = mid(0, 13)
    ids = sorted(mid(h * SPAN + k * 1000) for h in (0, 2, 5) for k in range(1, 4))
    await backend.insert_many([msg(channel, i) for i in ids])
    first = snowflake.bucket(ids[0], SPAN)
    assert await backend.channel_buckets(channel) == [first, first + 2, first + 5]
    assert channel in await backend.history_channels()
    assert await backend.bucket_messages(channel, first + 2) == [msg(channel, i) for i in ids[3:6]]
    await backend.delete_bucket(channel, first + 2)
    assert await backend.channel_buckets(channel) == [first, first + 5]
    assert await backend.bucket_messages(channel, first + 2) == []
    seen = [m.message_id for m in await backend.page(channel, before=None, limit=100)]
    assert seen == sorted(ids[:3] + ids[6:], reverse=True)


async def test_reinserting_the_same_message_is_idempotent(backend):
    channel = mid(0, 5)
    m = msg(channel, mid(1000))
    await backend.insert(m)
    await backend.insert(m)
    await backend.insert_many([m, m])
    assert await backend.page(channel, before=None, limit=10) == [m]


async def test_deleting_messages_is_idempotent_and_keeps_paging_whole(backend):
    channel, other = mid(0, 14), mid(0, 15)
    ids = [mid(i * SPAN // 2) for i in range(1, 7)]  # three buckets
    await backend.insert_many([msg(channel, i) for i in ids] + [msg(other, ids[1])])
    gone = [(channel, ids[1]), (channel, ids[2]), (channel, ids[2]), (channel, mid(99))]
    await backend.delete_messages(gone)
    await backend.delete_messages(gone)  # again, and an id that never existed: no-ops
    kept = [i for i in ids if i not in (ids[1], ids[2])]
    assert [m.message_id for m in await backend.page(channel, before=None, limit=10)] == kept[::-1]
    assert [m.message_id for m in await backend.page_after(channel, after=0, limit=10)] == kept
    assert [m.message_id for m in await backend.page(other, before=None, limit=10)] == [ids[1]]


async def test_channels_do_not_mix(backend):
    a, b = mid(0, 6), mid(0, 7)
    await backend.insert(msg(a, mid(1000)))
    await backend.insert(msg(b, mid(2000)))
    assert [m.channel_id for m in await backend.page(a, before=None, limit=10)] == [a]


async def test_metadata_reads_after_writes(backend):
    await backend.put_user(User(101, "ada"))
    await backend.put_user(User(102, "grace"))
    await backend.put_guild(Guild(mid(0, 10), "compilers", 101))
    g = mid(0, 10)
    await backend.put_channel(Channel(mid(0, 11), g, "general", "text", 0))
    await backend.put_channel(Channel(mid(0, 12), g, "random", "text", 1))
    await backend.add_member(g, 101)
    await backend.add_member(g, 102)
    await backend.add_member(g, 102)  # no-op
    assert await backend.get_user(101) == User(101, "ada")
    assert await backend.find_user("grace") == User(102, "grace")
    assert await backend.find_user("nobody") is None
    assert await backend.get_guild(g) == Guild(g, "compilers", 101)
    assert await backend.get_channel(mid(0, 11)) == Channel(mid(0, 11), g, "general", "text", 0)
    assert [c.name for c in await backend.guild_channels(g)] == ["general", "random"]
    assert await backend.guild_members(g) == [101, 102]
    assert await backend.guild_member_users(g) == [User(101, "ada"), User(102, "grace")]
    assert [x.id for x in await backend.user_guilds(102)] == [g]
    assert await backend.is_member(g, 102)


async def test_usernames_are_unique(backend):
    await backend.put_user(User(201, "linus"))
    await backend.put_user(User(201, "linus"))  # the same user again is fine
    with pytest.raises(ValueError, match="taken"):
        await backend.put_user(User(202, "linus"))
    assert await backend.find_user("linus") == User(201, "linus")


async def test_membership_removal_is_visible_immediately(backend):
    g = mid(0, 20)
    await backend.put_guild(Guild(g, "g", 1))
    await backend.add_member(g, 5)
    assert await backend.is_member(g, 5)
    await backend.remove_member(g, 5)
    assert not await backend.is_member(g, 5)
    assert await backend.user_guilds(5) == []
    assert await backend.get_guild(mid(0, 21)) is None
    assert await backend.get_channel(mid(0, 22)) is None


async def test_roles_are_upserted_per_guild_and_listed_by_position(backend):
    g, other = mid(0, 30), mid(0, 31)
    await backend.put_role(GuildRole(g, g, "@everyone", 1024 | 2048, 0))
    await backend.put_role(GuildRole(mid(0, 32), g, "mods", 8192, 2))
    await backend.put_role(GuildRole(mid(0, 33), g, "helpers", 64, 1))
    await backend.put_role(GuildRole(mid(0, 34), other, "elsewhere", 1, 1))
    await backend.put_role(GuildRole(mid(0, 32), g, "moderators", 8192 | 16, 3))  # replaces
    roles = await backend.guild_roles(g)
    assert roles == [
        GuildRole(g, g, "@everyone", 1024 | 2048, 0),
        GuildRole(mid(0, 33), g, "helpers", 64, 1),
        GuildRole(mid(0, 32), g, "moderators", 8192 | 16, 3),
    ]
    assert await backend.guild_roles(mid(0, 35)) == []


async def test_member_roles_add_remove_and_go_with_the_membership(backend):
    g, user = mid(0, 40), 41
    await backend.add_member(g, user)
    await backend.add_member_role(g, user, 401)
    await backend.add_member_role(g, user, 402)
    await backend.add_member_role(g, user, 402)  # no-op
    assert await backend.member_roles(g, user) == frozenset({401, 402})
    await backend.remove_member_role(g, user, 401)
    await backend.remove_member_role(g, user, 999)  # absent: no-op
    assert await backend.member_roles(g, user) == frozenset({402})
    assert await backend.member_roles(g, 42) == frozenset()
    await backend.remove_member(g, user)
    assert await backend.member_roles(g, user) == frozenset()  # a rejoin starts with no roles
    await backend.add_member(g, user)
    assert await backend.member_roles(g, user) == frozenset()


async def test_overwrites_upsert_delete_and_list_per_guild(backend):
    g, c1, c2 = mid(0, 50), mid(0, 51), mid(0, 52)
    ows = [
        ChannelOverwrite(g, c1, "role", g, 0, 1024),
        ChannelOverwrite(g, c1, "role", 501, 1024, 0),
        ChannelOverwrite(g, c1, "member", 77, 0, 2048),
        ChannelOverwrite(g, c2, "role", g, 0, 2048),
    ]
    for ow in ows:
        await backend.put_overwrite(ow)
    await backend.put_overwrite(ChannelOverwrite(mid(0, 53), mid(0, 54), "role", 1, 1, 0))
    assert sorted(await backend.guild_overwrites(g), key=str) == sorted(ows, key=str)
    await backend.put_overwrite(ChannelOverwrite(g, c1, "member", 77, 2048, 0))  # replaces
    await backend.delete_overwrite(g, c2, "role", g)
    await backend.delete_overwrite(g, c2, "role", g)  # absent: no-op
    got = {(o.channel_id, o.kind, o.target_id): o for o in await backend.guild_overwrites(g)}
    assert set(got) == {(c1, "role", g), (c1, "role", 501), (c1, "member", 77)}
    assert (got[(c1, "member", 77)].allow, got[(c1, "member", 77)].deny) == (2048, 0)
    # a role and a member may share an id without clashing
    await backend.put_overwrite(ChannelOverwrite(g, c1, "member", 501, 0, 1))
    assert len(await backend.guild_overwrites(g)) == 4


async def test_bans_are_independent_of_membership_and_visible_at_once(backend):
    g = mid(0, 60)
    await backend.add_member(g, 61)
    await backend.put_ban(Ban(g, 61, "spam"))
    assert await backend.is_banned(g, 61)
    assert await backend.is_member(g, 61)  # put_ban does not remove: the control plane does
    assert not await backend.is_banned(g, 62)
    assert not await backend.is_banned(mid(0, 63), 61)
    await backend.put_ban(Ban(g, 62))
    assert await backend.guild_bans(g) == [Ban(g, 61, "spam"), Ban(g, 62, "")]
    await backend.delete_ban(g, 61)
    await backend.delete_ban(g, 61)  # absent: no-op
    assert not await backend.is_banned(g, 61)
    assert await backend.guild_bans(g) == [Ban(g, 62, "")]


async def test_guilds_are_found_by_name_and_channels_keep_slowmode(backend):
    a, b = mid(0, 70), mid(0, 71)
    await backend.put_guild(Guild(a, "book-club", 1))
    await backend.put_guild(Guild(b, "book-club", 2))
    await backend.put_guild(Guild(mid(0, 72), "other", 1))
    assert await backend.find_guilds("book-club") == [
        Guild(a, "book-club", 1),
        Guild(b, "book-club", 2),
    ]
    assert await backend.find_guilds("nope") == []
    await backend.put_channel(Channel(mid(0, 73), a, "slow", "text", 0, slowmode_s=30))
    assert (await backend.get_channel(mid(0, 73))).slowmode_s == 30
    assert [c.slowmode_s for c in await backend.guild_channels(a)] == [30]


@pytest.fixture(
    params=["sqlite", pytest.param("cassandra", marks=[pytest.mark.cassandra, pytest.mark.slow])]
)
async def backend(request, tmp_path):
    from storage import open_store

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/contract.db"
    else:
        url = request.getfixturevalue("cassandra_url")
    store = await open_store(url, bucket_span_ms=SPAN)
    yield store
    await store.close()
