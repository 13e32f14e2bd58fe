"""The voice load driver end to end on the in-process stack and relay: every stream is
accounted for (played + lost + late = sent), over UDP and the TCP arm."""

from __future__ import annotations

import pytest

from loadtest.voice import Seeded, run_voice
from tests.conftest import Stack
from voice.sim import Impairment


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_every_packet_is_played_lost_or_late(stack: Stack, relay, plane, transport: str):
    [guild] = await stack.store.find_guilds("interview-prep")
    lounge = (await plane.create_channel(guild.id, "lounge", kind="voice")).created.id
    users = [stack.users[n] for n in ("alice", "bob", "carol")]
    settings = stack.settings.model_copy(update={"voice_transport": transport})
    for gw in stack.gateways:
        gw.settings = settings  # VOICE_SERVER_UPDATE names this arm
    r = await run_voice(
        settings,
        [gw.url for gw in stack.gateways],
        Seeded(guild.id, lounge, users),
        speakers=1,
        listeners=2,
        impairment=Impairment(loss=0.1, jitter_ms=10),
        transport=transport,
        adapt=True,
        duration_s=1.2,
    )
    assert r["streams"] == 2 and r["sent"] == 2 * 60  # 60 packets of 20 ms to each listener
    assert r["played"] + r["lost"] + r["late"] == r["sent"]
    if transport == "udp":
        assert r["lost"] > 0  # 10 % loss: ~12 expected, seeded: fixed
    else:
        assert r["lost"] == 0  # TCP retransmits: late, never lost
    assert r["bitrate_timeline"], "the speaker adapted its bitrate from receiver reports"
