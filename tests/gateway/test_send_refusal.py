"""A send for a channel the session lost while the send was in flight is UNKNOWN_CHANNEL.

``Gateway._publish`` checks visibility, then awaits its nonce claim; a ban can land in that
await and take the channel (and its permission bits) away. ``send_refusal`` must then answer
as for any channel the session cannot see — UNKNOWN_CHANNEL — not MISSING_PERMISSIONS, which
would tell a banned user the channel still exists for them.
"""

from __future__ import annotations

from guilds.controlplane import ControlPlane
from tests.conftest import Stack


async def test_a_channel_lost_to_a_ban_is_refused_as_unknown(stack: Stack, plane: ControlPlane):
    bob = await stack.client("bob", gateway=1)
    gw = stack.gateways[1]
    session = gw.sessions[bob.session_id]
    general = stack.channels["general"]
    assert await gw.control.send_refusal(session, general, count=False) is None  # may send

    [guild] = await stack.store.find_guilds("interview-prep")
    receipt = await plane.ban(guild.id, stack.users["bob"], "spam")
    assert "gw-1" in receipt.confirmed  # the session's view was updated before ban() returned
    assert general not in session.channels

    for count in (False, True):  # a retry, and a new message (rate limits are not reached)
        refusal = await gw.control.send_refusal(session, general, count=count)
        assert refusal is not None and refusal.code == "UNKNOWN_CHANNEL", refusal
