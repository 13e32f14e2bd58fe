"""Every Redis key name, in one place.

Keys share one prefix so tests can run side by side on one server without flushing it. In a
Redis Cluster the ``{...}`` hash tags keep what one Lua script or MULTI touches on one slot:
a channel's hot cache is tagged by channel, a guild's route set by guild.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

INGEST_GROUP = "workers"
PRESENCE_GROUP = "presence"


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "cs"

    def ingest(self, shard: int) -> str:
        """Client events of the channels that hash to ``shard`` (consumer group INGEST_GROUP)."""
        return f"{self.prefix}:ingest:{shard}"

    def ingest_all(self, shards: int) -> list[str]:
        return [self.ingest(i) for i in range(shards)]

    def stored(self) -> str:
        """Stream of messages after their history write (and deletions), capped at
        ``stored_stream_maxlen``: what the search indexer reads, never the gateway's path."""
        return f"{self.prefix}:stored"

    def dead_letter(self) -> str:
        """Entries that failed ``max_deliveries`` times, with the reason, for a human to read."""
        return f"{self.prefix}:dead"

    def deliver(self, gateway_id: str) -> str:
        """One gateway's delivery stream: what its local sessions should see."""
        return f"{self.prefix}:deliver:{gateway_id}"

    def gateways(self) -> str:
        """Hash gateway_id -> JSON {url, pid, started}; liveness is the ``gateway_alive`` key."""
        return f"{self.prefix}:gateways"

    def gateway_alive(self, gateway_id: str) -> str:
        return f"{self.prefix}:gw:{gateway_id}:alive"

    def route(self, guild_id: int) -> str:
        """Set of gateway ids holding at least one session of a member of the guild."""
        return f"{self.prefix}:route:{{g{guild_id}}}"

    def hot(self, channel_id: int) -> str:
        """Sorted set (all scores 0, members ``<20-digit id>|<payload>``): last N messages."""
        return f"{self.prefix}:hot:{{c{channel_id}}}"

    def inbox(self, user_id: int) -> str:
        """One user's inbox stream (only with ``fanout_mode=inbox``): a pointer to every message
        of their guilds, online or not, capped at ``inbox_maxlen``. Tagged by user."""
        return f"{self.prefix}:inbox:{{u{user_id}}}"

    def inboxed(self, message_id: int) -> str:
        """Marker of a message whose inbox entries were written (a redelivery skips them)."""
        return f"{self.prefix}:inboxed:{message_id}"

    def fanned_out(self, message_id: int) -> str:
        """Marker set in the same MULTI as the fan-out, so a redelivery never fans out twice."""
        return f"{self.prefix}:fanned:{message_id}"

    def lease(self, shard: int) -> str:
        """Owner (consumer name) of an ingest shard, with a TTL the owner renews."""
        return f"{self.prefix}:lease:{shard}"

    def workers(self) -> str:
        """Sorted set consumer -> last heartbeat (ms): who is alive, for fair shard shares."""
        return f"{self.prefix}:workers"

    def node_ids(self) -> str:
        """Counter handing each gateway a snowflake node id."""
        return f"{self.prefix}:nodeid"

    def presence_in(self) -> str:
        """Stream of presence/typing batches, one entry per gateway per tick (group PRESENCE_GROUP)."""
        return f"{self.prefix}:presence:in"

    def presence_state(self) -> str:
        """JSON snapshot of the presence service's state, so it survives its own restart."""
        return f"{self.prefix}:presence:state"

    def presence_users(self) -> str:
        """Hash user_id -> visible presence JSON (only users others see as not offline)."""
        return f"{self.prefix}:presence:users"

    def presence_stats(self) -> str:
        """JSON counters of the presence service: changes in, updates and deliveries out."""
        return f"{self.prefix}:presence:stats"

    def worker_health(self, consumer: str) -> str:
        return f"{self.prefix}:worker:{consumer}:health"

    def metrics_endpoint(self, name: str) -> str:
        """JSON {role, name, url, pid} of one process's /metrics, with a TTL it renews
        (``chatscale top`` finds the endpoints by scanning ``metrics_endpoint("*")``)."""
        return f"{self.prefix}:metrics:{name}"

    def metadata_version(self) -> str:
        """Bumped on every membership/permission change; caches compare it before trusting."""
        return f"{self.prefix}:meta:version"

    def metadata_events(self) -> str:
        """Pub/sub channel announcing metadata changes to gateways and workers."""
        return f"{self.prefix}:meta:events"

    def control_acks(self, change_id: str) -> str:
        """List of gateway ids that applied one control-plane change (the caller BLPOPs it)."""
        return f"{self.prefix}:meta:acks:{change_id}"

    # Rate limits: sorted sets of recent event times (a sliding-window log). Tagged by user so
    # that one message's user and slowmode windows share a Redis Cluster slot (one Lua call).

    def rate_messages(self, user_id: int) -> str:
        """Send times of a user's recent messages, any channel (per-user message rate)."""
        return f"{self.prefix}:rl:{{u{user_id}}}:msg"

    def rate_slowmode(self, user_id: int, channel_id: int) -> str:
        """Send time of a user's last message in a slowmode channel."""
        return f"{self.prefix}:rl:{{u{user_id}}}:slow:{channel_id}"

    def rate_identify(self, user_id: int) -> str:
        """Times of a user's recent IDENTIFYs."""
        return f"{self.prefix}:rl:{{u{user_id}}}:identify"

    def send_nonce(self, user_id: int, channel_id: int, nonce: str | int, content: str) -> str:
        """Message id a user's SEND_MESSAGE got in a channel for one nonce and content, SET NX
        with a TTL of ``nonce_ttl_s``: a retry from any session on any gateway reuses the id,
        so it stores and delivers one message. Nonce (typed: 1 is not "1") and content are
        hashed, so the key has a fixed length whatever the client sends."""
        raw = f"{type(nonce).__name__}:{nonce}\n{content}".encode()
        digest = hashlib.blake2b(raw, digest_size=16).hexdigest()
        return f"{self.prefix}:nonce:{{u{user_id}}}:{channel_id}:{digest}"
