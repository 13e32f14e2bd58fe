"""Presence rules with an injected clock: devices, expiry, visibility, coalescing, typing."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from presence.coalesce import Coalescer, TypingThrottle
from presence.simulate import simulate_guild
from presence.state import (
    Heartbeat,
    Offline,
    Online,
    PresenceState,
    SetStatus,
    SetUserStatus,
    StatusChange,
    VoiceChange,
    VoiceUpdate,
    aggregate_status,
    event_from_dict,
    event_to_dict,
    visible_status,
)

T = 60.0  # heartbeat timeout used throughout
U, V = 1, 2  # users
G = 100  # a guild


def roundtrip(state: PresenceState, **kw: float) -> PresenceState:
    return PresenceState.from_dict(json.loads(json.dumps(state.to_dict())), **kw)


def status_changes(changes: list) -> list[StatusChange]:
    return [c for c in changes if isinstance(c, StatusChange)]


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ([], "offline"),
        (["online", "idle"], "online"),
        (["idle", "idle"], "idle"),
        (["dnd", "online"], "dnd"),
        (["idle", "dnd"], "dnd"),
        (["invisible", "online", "dnd"], "invisible"),
    ],
)
def test_aggregate_precedence(statuses: list[str], expected: str) -> None:
    assert aggregate_status(statuses) == expected


@pytest.mark.parametrize(
    ("aggregate", "seen"),
    [
        ("online", "online"),
        ("idle", "idle"),
        ("dnd", "dnd"),
        ("invisible", "offline"),
        ("offline", "offline"),
    ],
)
def test_visible_status_hides_invisible(aggregate: str, seen: str) -> None:
    assert visible_status(aggregate) == seen


def test_phone_drops_desktop_stays_online() -> None:
    state = PresenceState(timeout=T)
    state.online("d", U, "desktop", "online", 0.0)
    state.online("m", U, "mobile", "online", 1.0)
    assert state.client_status(U) == {"desktop": "online", "mobile": "online"}
    # The phone goes silent; the desktop keeps heartbeating.
    for t in range(10, 130, 10):
        assert state.heartbeat("d", float(t))
    changes = state.expire(125.0)
    assert changes == [
        StatusChange(
            U, "online", "online", {"desktop": "online"}, {"desktop": "online", "mobile": "online"}
        )
    ]
    assert state.status(U) == "online"


def test_last_device_offline_only_after_timeout() -> None:
    state = PresenceState(timeout=T)
    state.online("d", U, "desktop", "online", 0.0)
    state.online("m", U, "mobile", "idle", 0.0)
    assert state.heartbeat("d", 30.0)
    assert state.expire(60.0) == []  # exactly at the limit: still alive
    assert len(state.expire(60.5)) == 1  # the phone (last seen 0.0) is gone
    assert state.status(U) == "online"
    assert state.expire(90.0) == []  # desktop last seen 30.0: not before 90.0 + epsilon
    assert state.status(U) == "online"
    assert state.next_expiry() == 90.0
    assert state.expire(90.001) == [StatusChange(U, "online", "offline", {}, {"desktop": "online"})]
    assert state.status(U) == "offline"
    assert state.heartbeat("d", 91.0) is False  # the gateway must re-announce, not resurrect


def test_explicit_offline_is_immediate_and_idempotent() -> None:
    state = PresenceState(timeout=T)
    state.online("d", U, "desktop", "online", 0.0)
    assert state.offline("d", 1.0) == [
        StatusChange(U, "online", "offline", {}, {"desktop": "online"})
    ]
    assert state.offline("d", 1.0) == []  # a redelivered stream entry changes nothing
    assert state.expire(1000.0) == []


def test_sessions_sharing_a_device_kind() -> None:
    state = PresenceState(timeout=T)
    state.online("d1", U, "desktop", "online", 0.0)
    state.online("d2", U, "desktop", "idle", 0.0)
    assert state.client_status(U) == {"desktop": "online"}
    assert status_changes(state.offline("d1", 1.0)) == [
        StatusChange(U, "online", "idle", {"desktop": "idle"}, {"desktop": "online"})
    ]


def test_heartbeats_and_repeats_emit_nothing() -> None:
    state = PresenceState(timeout=T)
    state.online("d", U, "desktop", "online", 0.0)
    assert state.apply_batch([Heartbeat("d"), Online("d", U, "desktop", "online")], 5.0) == []
    assert state.heartbeat("nope", 5.0) is False


def test_a_live_session_expired_by_a_short_timeout_is_revived_by_its_next_heartbeat() -> None:
    """The gateway still holds the session but stalled past the timeout: the device went
    offline, and the gateway's next heartbeat (which says whose session it is) brings it back
    with the status it had — not offline for good."""
    state = PresenceState(timeout=T)
    state.online("d", U, "desktop", "online", 0.0)
    state.apply_batch([SetStatus("d", "dnd")], 1.0)
    gone = status_changes(state.expire(T + 2.0))
    assert [(c.user_id, c.new_visible) for c in gone] == [(U, "offline")]
    assert state.apply_batch([Heartbeat("d")], T + 3.0) == []  # bare: says nothing of who
    back = status_changes(state.apply_batch([Heartbeat("d", U, "mobile", "dnd")], T + 4.0))
    assert [(c.new_visible, c.client_status) for c in back] == [("dnd", {"mobile": "dnd"})]
    assert state.apply_batch([Heartbeat("d", U, "mobile", "dnd")], T + 5.0) == []  # known now
    assert event_from_dict(event_to_dict(Heartbeat("d", U, "web", "idle"))) == Heartbeat(
        "d", U, "web", "idle"
    )


def test_flap_within_one_batch_is_netted() -> None:
    state = PresenceState(timeout=T)
    state.online("d", U, "desktop", "online", 0.0)
    batch = [SetStatus("d", "idle"), SetStatus("d", "online"), Heartbeat("d")]
    assert state.apply_batch(batch, 1.0) == []
    assert status_changes(state.apply_batch([SetStatus("d", "idle")], 2.0))[0].new_visible == "idle"


def test_dnd_beats_online_and_online_beats_idle() -> None:
    state = PresenceState(timeout=T)
    state.online("d", U, "desktop", "idle", 0.0)
    state.online("m", U, "mobile", "online", 0.0)
    assert state.status(U) == "online"
    state.set_status("d", "dnd", 1.0)
    assert state.status(U) == "dnd"
    assert state.client_status(U) == {"desktop": "dnd", "mobile": "online"}


def test_invisible_looks_offline_to_others_but_not_to_self() -> None:
    state = PresenceState(timeout=T)
    state.online("d", U, "desktop", "online", 0.0)
    state.online("m", U, "mobile", "online", 0.0)
    changes = state.set_user_status(U, "invisible", 1.0)
    assert changes == [
        StatusChange(U, "online", "offline", {}, {"desktop": "online", "mobile": "online"})
    ]
    assert state.status(U) == "invisible"
    assert state.view(U, viewer_id=V) == {"status": "offline", "client_status": {}}
    assert state.view(U, viewer_id=U) == {
        "status": "invisible",
        "client_status": {"desktop": "invisible", "mobile": "invisible"},
    }
    # A new session that still says "online" must not leak the user.
    assert state.online("w", U, "web", "online", 2.0) == []
    assert state.view(U, viewer_id=V)["status"] == "offline"
    # Leaving while invisible is not news to anyone.
    assert state.apply_batch([Offline("d"), Offline("m"), Offline("w")], 3.0) == []


def test_bad_input_is_rejected_before_anything_applies() -> None:
    state = PresenceState(timeout=T)
    with pytest.raises(ValueError, match="device"):
        state.online("x", U, "fridge", "online", 0.0)
    with pytest.raises(ValueError, match="status"):
        state.apply_batch([Online("a", U, "web", "online"), SetStatus("a", "offline")], 0.0)
    assert state.status(U) == "offline"  # the valid first event did not half-apply
    with pytest.raises(ValueError, match="unknown presence event"):
        event_from_dict({"type": "teleport"})


def test_events_roundtrip_through_json() -> None:
    events = [
        Online("s", U, "mobile", "dnd"),
        Heartbeat("s"),
        SetStatus("s", "idle"),
        SetUserStatus(U, "online"),
        VoiceUpdate("s", G, 7),
        VoiceUpdate("s", G, None),
        Offline("s"),
    ]
    wire = json.loads(json.dumps([event_to_dict(e) for e in events]))
    assert [event_from_dict(d) for d in wire] == events


def test_voice_join_move_leave_and_session_death() -> None:
    state = PresenceState(timeout=T)
    state.online("d", U, "desktop", "online", 0.0)
    state.online("m", U, "mobile", "online", 0.0)
    assert state.voice("d", G, 7, 1.0) == [VoiceChange(U, G, None, 7)]
    assert state.voice("d", G, 8, 2.0) == [VoiceChange(U, G, 7, 8)]
    # Joining elsewhere from the phone moves the user: one voice channel at a time.
    assert state.voice("m", 200, 9, 3.0) == [
        VoiceChange(U, G, 8, None),
        VoiceChange(U, 200, None, 9),
    ]
    assert state.voice("m", G, None, 4.0) == []  # not in voice in that guild
    assert state.voice_channel(U) == (200, 9)
    # The session in voice dies: the user leaves voice, stays online on the desktop.
    assert state.offline("m", 5.0) == [
        StatusChange(
            U, "online", "online", {"desktop": "online"}, {"desktop": "online", "mobile": "online"}
        ),
        VoiceChange(U, 200, 9, None),
    ]


def test_state_survives_restart_and_keeps_expiring() -> None:
    state = PresenceState(timeout=T)
    state.online("d", U, "desktop", "dnd", 0.0)
    state.online("m", U, "mobile", "online", 0.0)
    state.online("v", V, "web", "invisible", 0.0)
    state.voice("d", G, 7, 0.0)
    state.heartbeat("d", 50.0)
    restored = roundtrip(state)
    assert restored.to_dict() == state.to_dict()
    assert restored.view(U) == state.view(U) and restored.view(V, V) == state.view(V, V)
    assert restored.voice_channel(U) == (G, 7)
    assert restored.expire(60.0) == []
    assert [c.user_id for c in restored.expire(60.1)] == [U]  # only the phone's device list
    assert restored.status(U) == "dnd"
    assert restored.expire(110.1) == [
        StatusChange(U, "dnd", "offline", {}, {"desktop": "dnd"}),
        VoiceChange(U, G, 7, None),
    ]
    assert restored.status(V) == "offline"


def test_restart_grace_prevents_an_offline_storm() -> None:
    state = PresenceState(timeout=T)
    for i in range(50):
        state.online(f"s{i}", i, "desktop", "online", 0.0)
    # Presence was down for 5 minutes: nobody could heartbeat it.
    restored = roundtrip(state, now=300.0, grace=10.0)
    assert restored.expire(305.0) == []
    restored.heartbeat("s0", 306.0)
    assert len(restored.expire(310.1)) == 49
    assert restored.status(0) == "online"


# -- coalescer ---------------------------------------------------------------------------


def only_guild(user_id: int) -> list[int]:
    return [G]


def test_flapping_across_ticks_coalesces_to_nothing() -> None:
    state, co = PresenceState(timeout=T), Coalescer(interval=1.0)
    co.submit(state.online("d", U, "desktop", "online", 0.0), only_guild)
    assert [u.presences[0].new_visible for u in co.flush(0.0)] == ["online"]
    co.submit(state.set_status("d", "idle", 0.1), only_guild)
    co.submit(state.set_status("d", "online", 0.2), only_guild)
    assert co.flush(1.0) == []
    assert co.stats.net_zero == 1 and co.next_flush_at() is None


def test_net_change_gives_exactly_one_update_per_window() -> None:
    state, co = PresenceState(timeout=T), Coalescer(interval=1.0)
    state.online("d", U, "desktop", "online", 0.0)
    state.online("e", V, "desktop", "online", 0.0)
    co.submit(state.set_status("d", "idle", 0.1), only_guild)
    co.submit(state.set_status("d", "online", 0.2), only_guild)
    co.submit(state.set_status("d", "dnd", 0.3), only_guild)
    (update,) = co.flush(0.3)
    assert update.presences == (
        StatusChange(U, "online", "dnd", {"desktop": "dnd"}, {"desktop": "online"}),
    )
    co.submit(state.set_status("e", "idle", 0.4), only_guild)
    co.submit(state.voice("e", G, 5, 0.5), only_guild)
    assert co.flush(1.2) == []  # window still open since 0.3
    assert co.next_flush_at() == pytest.approx(1.3)
    (update,) = co.flush(1.3)
    assert [p.user_id for p in update.presences] == [V]
    assert update.voice == (VoiceChange(V, G, None, 5),)
    assert update.to_dict()["voice"] == [{"user_id": V, "channel_id": 5}]


def test_large_guild_lists_every_change_for_its_watchers_and_counts_offline() -> None:
    state = PresenceState(timeout=T)
    co = Coalescer(
        interval=1.0,
        large_guild_threshold=1000,
        member_count=lambda g: 5000,
        online_count=lambda g: 1234,
    )
    for i in range(4):
        state.online(f"s{i}", i, "desktop", "online", 0.0)
    co.submit(state.offline("s0", 1.0) + state.offline("s1", 1.0), only_guild)
    co.submit(state.set_status("s2", "idle", 1.0), only_guild)
    co.submit(state.online("s9", 9, "mobile", "online", 1.0), only_guild)
    (update,) = co.flush(1.0)
    assert update.large and update.member_count == 5000 and update.online_count == 1234
    # lazy: gateways pass each user only to its watchers, who must also see who went offline
    assert sorted(p.user_id for p in update.presences) == [0, 1, 2, 9]
    assert update.went_offline == 2 and update.online_delta == -1
    small = Coalescer(member_count=lambda g: 10)
    small.submit(state.offline("s2", 2.0), only_guild)
    (update,) = small.flush(2.0)
    assert not update.large and update.presences[0].new_visible == "offline"


def test_large_guilds_can_get_a_longer_window() -> None:
    sizes = {1: 50_000, 2: 20}
    co = Coalescer(interval=1.0, large_interval=5.0, member_count=sizes.__getitem__)
    change = StatusChange(U, "offline", "online", {"web": "online"})
    back = StatusChange(U, "online", "idle", {"web": "idle"}, {"web": "online"})
    co.submit([change], lambda u: [1, 2])
    assert {u.guild_id for u in co.flush(0.0)} == {1, 2}
    co.submit([back], lambda u: [1, 2])
    assert [u.guild_id for u in co.flush(1.0)] == [2]
    assert [u.guild_id for u in co.flush(5.0)] == [1]


def test_raw_mode_passes_every_change_through() -> None:
    state = PresenceState(timeout=T)
    co = Coalescer(enabled=False, recipients=lambda g: 10)
    state.online("d", U, "desktop", "online", 0.0)
    out = co.submit(state.set_status("d", "idle", 1.0), lambda u: [1, 2])
    out += co.submit(state.set_status("d", "online", 1.1), lambda u: [1, 2])
    assert [(u.guild_id, u.presences[0].new_visible) for u in out] == [
        (1, "idle"),
        (2, "idle"),
        (1, "online"),
        (2, "online"),
    ]
    assert co.flush(5.0) == []
    assert (co.stats.changes_in, co.stats.updates_out, co.stats.deliveries_out) == (4, 4, 40)
    assert co.stats.amplification == 10.0


def test_coalescer_pending_window_survives_restart() -> None:
    co = Coalescer(interval=1.0)
    co.submit([StatusChange(U, "offline", "online", {"web": "online"})], only_guild)
    co.flush(0.0)
    co.submit([StatusChange(U, "online", "idle", {"web": "idle"}, {"web": "online"})], only_guild)
    co.submit([VoiceChange(U, G, None, 3)], only_guild)
    restored = Coalescer.from_dict(json.loads(json.dumps(co.to_dict())), interval=1.0)
    assert restored.flush(0.5) == []
    assert restored.flush(1.0) == co.flush(1.0)


# -- typing ------------------------------------------------------------------------------


def test_typing_throttle() -> None:
    typing = TypingThrottle(window=10.0, ttl=10.0)
    assert typing.typing(U, 5, 0.0)
    assert not typing.typing(U, 5, 3.0)
    assert not typing.typing(U, 5, 9.9)
    assert typing.typing(U, 6, 1.0)  # another channel is independent
    assert typing.typing(V, 5, 2.0)  # so is another user
    assert typing.typing_in(5, 9.0) == [U, V]
    assert typing.typing_in(5, 10.0) == [V]  # U's indicator has lapsed
    assert typing.typing(U, 5, 10.0)
    typing.stop(U, 5)  # message sent: the next keystroke shows at once
    assert typing.typing(U, 5, 11.0)
    assert (typing.received, typing.emitted) == (7, 5)
    assert typing.expire(20.0) == 2 and typing.expire(30.0) == 1
    assert typing.typing_in(5, 30.0) == []


# -- simulated large guild: raw vs coalesced ----------------------------------------------


def test_simulated_guild_raw_vs_coalesced() -> None:
    """~3000 members online in a 5000-member guild, 60 s of churn in 100 ms gateway ticks."""
    result = simulate_guild(members=5000, online=3000, seconds=60, tick_s=0.1)
    r, c = result["raw"], result["coalesced"]
    print(
        f"\nsimulated guild: {result['events']} events -> {r.changes_in} visible changes; "
        f"raw {r.updates_out} updates / {r.deliveries_out} deliveries (x{r.amplification:.0f}); "
        f"coalesced {c.updates_out} updates / {c.deliveries_out} deliveries "
        f"(x{c.amplification:.0f}), {c.net_zero} flaps netted; saving {r.deliveries_out / c.deliveries_out:.1f}x"
    )
    assert c.raw_deliveries == r.deliveries_out  # both sides measured the same input
    assert c.updates_out <= 60  # at most one per guild per 1 s window
    assert c.deliveries_out * 10 < r.deliveries_out
    assert all(u.large for u in result["updates"])  # lazy: offline listed too, for watchers
    assert any(p.new_visible == "offline" for u in result["updates"] for p in u.presences)


# -- property: the aggregate is always a plain recomputation from the live sessions -------

SIDS = [f"s{i}" for i in range(6)]
SETTABLE = ["online", "idle", "dnd", "invisible"]
ops = st.one_of(
    st.tuples(
        st.just("online"),
        st.sampled_from(SIDS),
        st.integers(0, 2),
        st.sampled_from(["desktop", "mobile", "web"]),
        st.sampled_from(SETTABLE),
    ),
    st.tuples(st.just("heartbeat"), st.sampled_from(SIDS)),
    st.tuples(st.just("set_status"), st.sampled_from(SIDS), st.sampled_from(SETTABLE)),
    st.tuples(st.just("set_user"), st.integers(0, 2), st.sampled_from(SETTABLE)),
    st.tuples(st.just("offline"), st.sampled_from(SIDS)),
    st.tuples(st.just("advance"), st.floats(0, 40, allow_nan=False)),
    st.tuples(st.just("expire")),
    st.tuples(st.just("restart")),
)
RANK = {"invisible": 0, "dnd": 1, "online": 2, "idle": 3}


def reference(statuses: list[str]) -> str:
    return min(statuses, key=RANK.__getitem__) if statuses else "offline"


@settings(max_examples=300, deadline=None)
@given(st.lists(ops, max_size=60))
def test_aggregate_matches_recomputation(program: list[tuple]) -> None:
    state, now = PresenceState(timeout=30.0), 0.0
    model: dict[str, list] = {}  # sid -> [user, device, status, last_seen]
    seen = {u: ("offline", {}) for u in range(3)}  # what others last heard, from changes only
    for op, *args in program:
        changes: list = []
        if op == "online":
            sid, user, device, status = args
            model[sid] = [user, device, status, now]
            changes = state.online(sid, user, device, status, now)
        elif op == "heartbeat":
            assert state.heartbeat(args[0], now) == (args[0] in model)
            if args[0] in model:
                model[args[0]][3] = now
        elif op == "set_status":
            if args[0] in model:
                model[args[0]][2:] = [args[1], now]
            changes = state.set_status(args[0], args[1], now)
        elif op == "set_user":
            for rec in model.values():
                rec[2] = args[1] if rec[0] == args[0] else rec[2]
            changes = state.set_user_status(args[0], args[1], now)
        elif op == "offline":
            model.pop(args[0], None)
            changes = state.offline(args[0], now)
        elif op == "advance":
            now += args[0]
        elif op == "expire":
            model = {s: r for s, r in model.items() if not now - r[3] > 30.0}
            changes = state.expire(now)
        else:
            state = roundtrip(state)
        for c in status_changes(changes):
            assert seen[c.user_id] == (c.old_visible, c.old_client_status)
            assert (c.old_visible, c.old_client_status) != (c.new_visible, c.client_status)
            seen[c.user_id] = (c.new_visible, c.client_status)
        for user in range(3):
            mine = [r for r in model.values() if r[0] == user]
            expected = reference([r[2] for r in mine])
            devices = {
                d: reference([r[2] for r in mine if r[1] == d]) for d in {r[1] for r in mine}
            }
            assert state.status(user) == expected
            assert state.client_status(user) == devices
            shown = ("offline", {}) if expected in ("offline", "invisible") else (expected, devices)
            assert seen[user] == shown
