"""The voice token, the packet layout and the relay's forwarding rules, without sockets."""

from __future__ import annotations

import pytest

from chatscale import tokens, voice
from voice import packet
from voice.router import RelaySession, Router

SECRET = "s" * 32
CLAIMS = voice.VoiceClaims(7, 100, 200, "sess", "nonce1")


def test_a_voice_token_round_trips_and_refuses_tampering_expiry_and_user_tokens():
    token = voice.mint(CLAIMS, secret=SECRET, ttl_s=60, now=1000)
    got = voice.verify(token, secret=SECRET, now=1059)
    assert (got.user_id, got.guild_id, got.channel_id, got.session_id, got.nonce) == (
        7,
        100,
        200,
        "sess",
        "nonce1",
    )
    with pytest.raises(voice.VoiceTokenError, match="expired"):
        voice.verify(token, secret=SECRET, now=1060)
    body, sig = token.split(".")
    with pytest.raises(voice.VoiceTokenError, match="signature"):
        voice.verify(body + "x." + sig, secret=SECRET, now=1000)
    with pytest.raises(voice.VoiceTokenError, match="signature"):
        voice.verify(token, secret="t" * 32, now=1000)
    user_token = tokens.mint(7, secret=SECRET, ttl_s=60, now=1000)  # same secret, other purpose
    with pytest.raises(voice.VoiceTokenError):
        voice.verify(user_token, secret=SECRET, now=1000)
    for junk in ("", "a.b.c", "é.x", "abc"):
        with pytest.raises(voice.VoiceTokenError):
            voice.verify(junk, secret=SECRET, now=1000)


def test_a_grant_admits_only_the_join_its_token_names():
    grant = voice.Grant(200, "sess", "nonce1", speak=True)
    assert voice.Grant.from_json(grant.to_json()) == grant
    assert grant.admits(CLAIMS)
    assert not voice.Grant(200, "sess", "nonce2", True).admits(CLAIMS)  # a later join
    assert not voice.Grant(201, "sess", "nonce1", True).admits(CLAIMS)
    assert voice.Grant.from_json(b"{") is None and voice.Grant.from_json(None) is None


def test_the_media_header_is_rtp_shaped():
    data = packet.media(65535, 960, 0xDEADBEEF, b"opus")
    assert len(data) == packet.HEADER + 4
    assert data[0] == 0x80 and data[1] == packet.PAYLOAD_TYPE  # version 2, payload type 111
    assert data[2:4] == b"\xff\xff" and data[4:8] == (960).to_bytes(4, "big")
    m = packet.parse_media(packet.with_ssrc(data, 5))
    assert (m.seq, m.timestamp, m.ssrc, m.payload) == (65535, 960, 5, b"opus")
    assert packet.parse_media(b"\x80\x6f") is None  # short
    assert packet.seq_behind(2, 65534) == 4  # 65534 is 4 behind 2 across the wrap
    assert packet.seq_behind(65534, 2) == -4  # 2 is 4 ahead of 65534
    assert packet.seq_behind(100, 70) == 30
    r = packet.Report(9, 20, 5, 31)
    assert packet.parse_report(packet.report(r)) == r


def _session(peer: str, user: int, channel: int = 200, speak: bool = True) -> RelaySession:
    return RelaySession(peer, user, 100, channel, f"s{user}", "n", 0, speak, 0.0)


def test_the_router_forwards_to_the_channel_but_not_the_sender_nor_silenced_or_stale():
    router = Router(max_behind=10)
    for peer, user, channel, speak in (
        ("a", 1, 200, True),
        ("b", 2, 200, True),
        ("m", 3, 200, False),
        ("x", 4, 201, True),
    ):
        [(to, ready)] = router.admit(_session(peer, user, channel, speak))
        assert to == peer and packet.parse_ready(ready)[1] is speak
    ssrc_a = router.sessions["a"].ssrc
    sends = router.receive("a", packet.media(50, 0, 999, b"p"), 1.0)
    assert sorted(p for p, _ in sends) == ["b", "m"]  # not the sender, not channel 201
    assert all(packet.parse_media(d).ssrc == ssrc_a for _, d in sends)  # no spoofed SSRC
    assert router.receive("m", packet.media(1, 0, 0, b"p"), 1.0) == []  # no SPEAK
    assert router.counters.dropped_not_speaking == 1
    assert router.receive("a", packet.media(39, 0, 0, b"p"), 1.0) == []  # 11 behind 50
    assert router.counters.dropped_too_old == 1
    assert len(router.receive("a", packet.media(45, 0, 0, b"p"), 1.0)) == 2  # late but usable
    assert router.receive("nobody", packet.media(1, 0, 0, b"p"), 1.0) == []
    # a report about a's stream goes to a alone
    assert router.receive("b", packet.report(packet.Report(ssrc_a, 1, 2, 3)), 1.0)[0][0] == "a"
    # SPEAK granted again, a session replaced by the same member's new one, a revoke
    assert router.set_speak(100, 3, True) == [("m", packet.speak(True))]
    assert router.admit(_session("a2", 1))[0] == ("a", packet.ended(packet.ENDED_REVOKED))
    assert router.end_member(100, 2, packet.ENDED_REVOKED) == [("b", packet.ended(1))]
    assert sorted(router.by_channel[200]) == ["a2", "m"]
    router.receive("a2", packet.keepalive(), 10.0)  # a keepalive keeps a listener in
    assert sorted(s.peer for s in router.idle(now=20.0, timeout=15.0)) == ["m", "x"]
