"""What the voice experiments share: one round of speakers and listeners through a real
topology with the voice relay (``loadtest/voice.py`` drives them)."""

from __future__ import annotations

from typing import Any

from lab import harness
from loadtest.voice import run_voice, seed_voice
from voice.sim import Impairment


async def voice_round(
    trial: harness.Trial, *, impairment: Impairment, transport: str, adapt: bool
) -> dict[str, Any]:
    """Seed ``speakers + listeners`` members into a voice channel of a fresh topology (with
    its relay on ``transport``) and let them talk for ``duration_s``; ``run_voice``'s report."""
    p = trial.params
    env = {"CHATSCALE_VOICE_TRANSPORT": transport}
    async with trial.topology(env=env, extras=frozenset({"voice"})) as topo:
        seeded = await seed_voice(topo.settings, p["speakers"] + p["listeners"])
        return await run_voice(
            topo.settings,
            topo.urls,
            seeded,
            speakers=p["speakers"],
            listeners=p["listeners"],
            impairment=impairment,
            transport=transport,
            adapt=adapt,
            duration_s=p["duration_s"],
            seed=trial.round + 1,
        )
