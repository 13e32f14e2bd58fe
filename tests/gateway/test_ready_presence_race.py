"""A member who comes online while another is identifying is never missing from the latter's
view: guild-wide deliveries (presence) that reach a session between its attach and its READY
are held and dispatched right after READY, in order (``LocalFanout.release``); READY's
presences are read after the attach, so snapshot + held updates cover everything."""

from __future__ import annotations

import orjson

from chatscale.config import Settings
from chatscale.keys import Keys
from chatscale.redisconn import connect
from chatscale.wire import Delivery, Intent
from gateway.fanout import EARLY_LIMIT, LocalFanout
from gateway.session import Session
from tests.recording import RecordingSends

GUILD = 10


class Host(RecordingSends):
    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.keys = Keys(settings.key_prefix)
        self.redis = connect(settings)
        self.id = "gw-race"
        self.sessions: dict[str, Session] = {}


def presence(user: int, status: str) -> Delivery:
    d = {"guild_id": str(GUILD), "presences": [{"user_id": str(user), "status": status}]}
    return Delivery(t="PRESENCE_UPDATE", guild_id=GUILD, payload=orjson.dumps(d).decode())


async def test_updates_between_attach_and_ready_are_dispatched_after_ready(settings: Settings):
    host = Host(settings)
    fanout = LocalFanout(host)  # type: ignore[arg-type]
    ready_one = Session(1, "desktop", 64, session_id="ready")
    ready_one.guilds, ready_one.seq = {GUILD}, 3
    await fanout.attach(ready_one, "client-ready")  # type: ignore[arg-type]
    joining = Session(2, "desktop", 64, session_id="joining")
    joining.guilds = {GUILD}
    await fanout.attach(joining, "client-joining")  # type: ignore[arg-type]
    try:
        fanout.deliver(presence(7, "online"))  # while "joining" identifies
        fanout.deliver(presence(7, "idle"))
        assert [c for c, _ in host.sent] == ["client-ready", "client-ready"]  # not yet
        joining.dispatch("READY", "{}", replay=False)  # the gateway sends READY, then releases
        assert fanout.release(joining) == 2
        mine = [orjson.loads(t) for c, t in host.sent if c == "client-joining"]
        assert [m["d"]["presences"][0]["status"] for m in mine] == ["online", "idle"]  # in order
        assert [m["s"] for m in mine] == [2, 3]  # after READY's 1
        fanout.deliver(presence(7, "online"))  # from now on, directly
        assert sum(c == "client-joining" for c, _ in host.sent) == 3
        assert fanout.release(joining) == 0  # released once
    finally:
        await fanout.detach(ready_one)
        await fanout.detach(joining)
        await host.redis.aclose()


async def test_held_updates_are_bounded_and_follow_intents(settings: Settings):
    host = Host(settings)
    fanout = LocalFanout(host)  # type: ignore[arg-type]
    quiet = Session(3, "desktop", 64, session_id="quiet", intents=int(Intent.GUILD_MESSAGES))
    quiet.guilds = {GUILD}
    busy = Session(4, "desktop", 64, session_id="busy")
    busy.guilds = {GUILD}
    await fanout.attach(quiet, "q")  # type: ignore[arg-type]
    await fanout.attach(busy, "b")  # type: ignore[arg-type]
    try:
        for i in range(EARLY_LIMIT + 5):
            fanout.deliver(presence(i, "online"))
        assert len(fanout.early[busy]) == EARLY_LIMIT  # the oldest were dropped
        for s in (quiet, busy):
            s.dispatch("READY", "{}", replay=False)
        assert fanout.release(quiet) == 0  # no GUILD_PRESENCES intent: nothing
        assert fanout.release(busy) == EARLY_LIMIT
    finally:
        await fanout.detach(quiet)
        await fanout.detach(busy)
        await host.redis.aclose()
