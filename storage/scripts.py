"""The Lua scripts that write one message's state in Redis, shared by whoever processes it.

``HOT_ADD`` accepts messages into the hot cache if the metadata version they were authorized
under still holds (``lua/hot_add.lua``); ``FANOUT`` writes one delivery entry per live gateway
at most once per message id (``lua/fanout.lua``). The worker pipeline runs them (the default,
``CHATSCALE_PROCESSING=log``), and so does a gateway that processes messages itself
(``processing=inline``, the lab's other arm): gateway and workers sit on one layer and may not
import each other, so the scripts live here, below both.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

HOT_ADD = resources.files("storage").joinpath("lua/hot_add.lua").read_text()
FANOUT = resources.files("storage").joinpath("lua/fanout.lua").read_text()
#: How long a message's fanned-out marker lives: a redelivery within it skips fan-out.
FANOUT_MARKER_TTL_S = 24 * 3600


def routed_fanout(
    keys: Any,
    *,
    marker: str,
    lease: str,
    guild_id: int,
    entry: bytes | str,
    maxlen: int,
    fenced: bool,
    consumer: str,
) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of ``FANOUT`` (one node): the script reads the guild's route set itself,
    so the fan-out costs no SMEMBERS round trip before it and sees the routes as they are when
    it runs."""
    return (
        [marker, lease, keys.route(guild_id)],
        [
            entry,
            maxlen,
            FANOUT_MARKER_TTL_S,
            "1" if fenced else "0",
            consumer,
            *keys.gateway_key_parts(),
        ],
    )


# ---- Redis Cluster: the same work split into per-slot steps (chatscale/redisconn.py) ---------
#
# On a cluster one script may only touch keys of one hash slot (chatscale/keys.py has the
# tags). ``HOT_ADD`` touches the metadata version and every channel of a batch, ``FANOUT`` the
# message marker, the shard lease and every gateway: both are split, and what each split keeps:
#
# * Acceptance: the version is compared with a GET (``version_holds``), then each channel's
#   members are written by ``HOT_ADD_CHANNEL`` (atomic per channel: add + trim). The check is
#   the acceptance point. A control-plane change committed between the check and the write
#   does not stop a message already checked — it was authorized under rules current at a
#   moment after it was read from its shard. A message sent after the change committed is
#   read, and so checked, after it, and authorized again under the new rules: "nothing sent
#   after a ban is accepted" holds as on one node; only the instant of acceptance is a round
#   trip earlier than the write.
# * Fan-out: ``FANOUT_GATEWAY`` per (message, gateway) keeps marker + XADD atomic in the
#   gateway's slot, so every gateway gets a message exactly once across redeliveries, and per
#   channel in order (one shard's batches run in order; a cluster pipeline sends one node's
#   commands in the order queued). The shard-lease fence is a GET one step before the writes
#   (the lease is on the shard's slot): a worker stalled longer than the lease TTL exactly
#   between that GET and its writes could write a batch the next owner also reaches — the
#   per-gateway markers still make each delivery happen once, but the stall may reorder it
#   after the new owner's later messages. On one node both stay the single atomic scripts.
#
# The cluster path sends EVAL (script text) rather than EVALSHA: a replica promoted by a
# failover has an empty script cache, and EVAL needs no reload round (Valkey caches the
# compiled script by its hash either way).

HOT_ADD_CHANNEL = resources.files("storage").joinpath("lua/hot_add_channel.lua").read_text()
FANOUT_GATEWAY = resources.files("storage").joinpath("lua/fanout_gateway.lua").read_text()


async def version_holds(redis: Any, version_key: str, version: bytes | None) -> bool:
    """The cluster acceptance check: is the metadata version still ``version``?"""
    return (await redis.get(version_key) or b"") == (version or b"")


def queue_hot_add_channel(pipe: Any, key: str, members: list[bytes], keep: int) -> None:
    """Queue one channel's hot-cache write (``HOT_ADD_CHANNEL``) on a (cluster) pipeline."""
    pipe.eval(HOT_ADD_CHANNEL, 1, key, keep, *members)


def queue_fanout_gateway(
    pipe: Any, marker: str, alive: str, stream: str, entry: bytes | str, maxlen: int
) -> None:
    """Queue one (message, gateway) delivery (``FANOUT_GATEWAY``) on a (cluster) pipeline."""
    pipe.eval(FANOUT_GATEWAY, 3, marker, alive, stream, entry, maxlen, FANOUT_MARKER_TTL_S)
