"""Every Redis key name, in one place.

Keys share one prefix so tests can run side by side on one server without flushing it. In a
Redis Cluster (``redis+cluster://`` URLs, chatscale/redisconn.py) only the part of a key between
the first ``{`` and ``}`` — its hash tag — picks the slot, so keys with one tag are on one node
and one Lua script or MULTI may touch them together. Every script, MULTI and multi-key command
touches keys of one tag; where work spans tags it is split into per-slot steps (the comment at
each split says what stays atomic). Key families and their tags:

================================  ==================  ==========================================
family                            tag                 why (what shares the slot)
================================  ==================  ==========================================
ingest(shard), lease(shard)       ``{s<shard>}``      a shard's stream and its lease; shards spread
deliver(gw), gateway_alive(gw),   ``{gw:<id>}``       a gateway's delivery stream, its liveness key
fanned_to(gw, message)                                and the cluster fan-out marker: one script
route(guild), voice_grant(guild)  ``{g<guild>}``      per guild (one key each, spread by guild)
hot(channel)                      ``{c<channel>}``    a channel's hot cache (MULTI/script per channel)
inbox, rate_*, send_nonce,        ``{u<user>}``       one user's windows, checked in one script
features, feature_window
presence_in/_state/_users/_stats  ``{presence}``      the presence service's save is one MULTI
presence_*_of(p), p > 0           ``{p<p>}``          one presence partition's stream, snapshot,
                                                      counters and online counts (its save's
                                                      MULTI; the users view is written before it)
directory, directory_names        ``{dir}``           name index and flags change in one MULTI
activity(minute),                 ``{act}``           ZUNIONSTORE of a window's minutes + scratch
activity_scratch
everything else                   none (the key)      single-key commands only: stored, dead,
                                                      gateways, workers, nodeid, metadata version
                                                      and events, acks, fanned_out, inboxed,
                                                      timeouts, automod, quarantined, spam,
                                                      sketches, metrics, voice relays/events
================================  ==================  ==========================================

Keys added later: say their tag here (a new row) when they must share a slot with another key.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

INGEST_GROUP = "workers"
PRESENCE_GROUP = "presence"


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "cs"

    def ingest(self, shard: int) -> str:
        """Client events of the channels that hash to ``shard`` (consumer group INGEST_GROUP)."""
        return f"{self.prefix}:ingest:{{s{shard}}}"

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
        return f"{self.prefix}:deliver:{{gw:{gateway_id}}}"

    def gateways(self) -> str:
        """Hash gateway_id -> JSON {url, pid, started}; liveness is the ``gateway_alive`` key."""
        return f"{self.prefix}:gateways"

    def gateway_alive(self, gateway_id: str) -> str:
        return f"{self.prefix}:gw:{{gw:{gateway_id}}}:alive"

    def gateway_key_parts(self) -> tuple[str, str, str, str]:
        """``gateway_alive`` and ``deliver`` as the text before and after the gateway id, for a
        script that builds them from the ids it reads (``storage/lua/fanout.lua``)."""
        return _gateway_key_parts(self.prefix)

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
        return f"{self.prefix}:lease:{{s{shard}}}"

    def workers(self) -> str:
        """Sorted set consumer -> last heartbeat (ms): who is alive, for fair shard shares."""
        return f"{self.prefix}:workers"

    def node_ids(self) -> str:
        """Counter handing each gateway a snowflake node id."""
        return f"{self.prefix}:nodeid"

    def presence_in(self) -> str:
        """Stream of presence/typing batches, one entry per gateway per tick (group PRESENCE_GROUP)."""
        return f"{self.prefix}:{{presence}}:in"

    def presence_state(self) -> str:
        """JSON snapshot of the presence service's state, so it survives its own restart."""
        return f"{self.prefix}:{{presence}}:state"

    def presence_users(self) -> str:
        """Hash user_id -> visible presence JSON (only users others see as not offline)."""
        return f"{self.prefix}:{{presence}}:users"

    def presence_stats(self) -> str:
        """JSON counters of the presence service: changes in, updates and deliveries out."""
        return f"{self.prefix}:{{presence}}:stats"

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

    # Trust & safety (docs/safety.md). Account features are tagged by user, like rate limits.

    def automod_rules(self, guild_id: int) -> str:
        """JSON of a guild's AutoMod rules (``guilds.automod.Rules``); absent: no rules."""
        return f"{self.prefix}:automod:{guild_id}"

    def timeouts(self, guild_id: int) -> str:
        """Hash user_id -> ms until which the member may not send in the guild (a timeout)."""
        return f"{self.prefix}:timeouts:{guild_id}"

    def quarantined(self) -> str:
        """Set of quarantined account ids: refused at IDENTIFY and by the worker."""
        return f"{self.prefix}:quarantined"

    def features(self, user_id: int) -> str:
        """Hash of an account's streaming counters (messages, duplicates, mentions, joins)."""
        return f"{self.prefix}:feat:{{u{user_id}}}"

    def feature_window(self, user_id: int, what: str) -> str:
        """Sorted set of one sliding window of an account: ``msgs`` (message id by ms),
        ``chans`` (channel by last ms), ``digests`` (content digest by last ms), ``joins``."""
        return f"{self.prefix}:feat:{{u{user_id}}}:{what}"

    def spam_actions(self) -> str:
        """Stream of the spam detector's actions (user, score, features, ms): the raid report."""
        return f"{self.prefix}:spam:actions"

    # Discovery (guilds/directory.py): derived indexes the control plane and workers keep.

    def directory(self) -> str:
        """Hash guild_id -> JSON {name, public}: every guild the directory knows, public or not
        (the public flag lives here, not in the metadata store; docs/discovery.md)."""
        return f"{self.prefix}:{{dir}}:guilds"

    def directory_names(self) -> str:
        """Sorted set, all scores 0, members ``<casefolded name>\\x00<guild id>`` of public
        guilds only: name-prefix autocomplete with ZRANGEBYLEX."""
        return f"{self.prefix}:{{dir}}:names"

    def activity(self, minute: int) -> str:
        """Sorted set guild_id -> accepted messages in one wall-clock minute (epoch minutes),
        ZINCRBY'd by workers; expires after the top-K window has passed it."""
        return f"{self.prefix}:{{act}}:{minute}"

    def activity_sketch(self, minute: int, consumer: str) -> str:
        """One worker's serialized frequent-items sketch of one minute's guild activity."""
        return f"{self.prefix}:act:sk:{minute}:{consumer}"

    def activity_scratch(self, token: str) -> str:
        """Temporary ZUNIONSTORE target of one top-K query, deleted in the same MULTI."""
        return f"{self.prefix}:{{act}}:tmp:{token}"

    # Voice (chatscale/voice.py): grants are the single source of truth of who may send.

    def voice_grant(self, guild_id: int) -> str:
        """Hash user_id -> JSON grant {c, s, n, speak}: who may be in which voice channel of
        the guild. Written by gateways (signaling), read by relays (media)."""
        return f"{self.prefix}:voice:grant:{{g{guild_id}}}"

    def voice_relays(self) -> str:
        """Hash relay_id -> JSON {udp, tcp, pid}; liveness is the ``voice_relay_alive`` key."""
        return f"{self.prefix}:voice:relays"

    def voice_relay_alive(self, relay_id: str) -> str:
        return f"{self.prefix}:voice:relay:{relay_id}:alive"

    def voice_events(self) -> str:
        """Pub/sub channel of grant changes (revoke, speak) every relay applies and acks."""
        return f"{self.prefix}:voice:events"

    def voice_acks(self, event_id: str) -> str:
        """List of relay ids that applied one voice event (the announcer BLPOPs it)."""
        return f"{self.prefix}:voice:acks:{event_id}"

    # Message deletion (DELETE_MESSAGE, op 26): hash-tagged by channel like the channel's keys.

    def delete_fanned_out(self, channel_id: int, message_id: int) -> str:
        """Marker (SET NX with a TTL, in the fan-out script) that MESSAGE_DELETE of this message
        was fanned out: a redelivered or repeated deletion dispatches it once."""
        return f"{self.prefix}:delfan:{{c{channel_id}}}:{message_id}"

    # Presence partitions (``presence_partitions``): each user's sessions are aggregated by one
    # partition, chosen by ``presence_partition``; partition 0 keeps the single-service names
    # above, so one partition is exactly the service as it was. Tagged per partition, so in a
    # Redis Cluster the partitions' streams and snapshots spread over slots.

    def presence_in_of(self, partition: int) -> str:
        """Input stream of one presence partition (partition 0: ``presence_in``)."""
        return (
            self.presence_in() if partition == 0 else f"{self.prefix}:presence:in:{{p{partition}}}"
        )

    def presence_in_all(self, partitions: int) -> list[str]:
        return [self.presence_in_of(p) for p in range(partitions)]

    def presence_state_of(self, partition: int) -> str:
        """State snapshot of one presence partition (partition 0: ``presence_state``)."""
        if partition == 0:
            return self.presence_state()
        return f"{self.prefix}:presence:state:{{p{partition}}}"

    def presence_stats_of(self, partition: int) -> str:
        """Counters of one presence partition (partition 0: ``presence_stats``)."""
        if partition == 0:
            return self.presence_stats()
        return f"{self.prefix}:presence:stats:{{p{partition}}}"

    def presence_online_of(self, partition: int) -> str:
        """Hash guild_id -> users of that guild online in one partition (only written with
        several partitions: a guild's online total is the sum over partitions). In the slot of
        the partition's snapshot, so the two are saved in one MULTI."""
        if partition == 0:
            return f"{self.prefix}:{{presence}}:online"
        return f"{self.prefix}:presence:online:{{p{partition}}}"

    def presence_lease(self, partition: int) -> str:
        """Owner (a presence process) of one partition, with a TTL the owner renews."""
        return f"{self.prefix}:presence:lease:{partition}"

    def presence_roster(self) -> str:
        """Sorted set presence process -> last heartbeat (ms), for fair partition shares."""
        return f"{self.prefix}:presence:roster"

    # Redis Cluster (chatscale/redisconn.py): keys only the per-slot variants of scripts use.

    def fanned_to(self, gateway_id: str, message_id: int) -> str:
        """Marker of a message written to one gateway's delivery stream, on a cluster: the
        fan-out is one script per gateway there (``storage/lua/fanout_gateway.lua``), so the
        at-most-once marker lives in the gateway's slot. TTL ``FANOUT_MARKER_TTL_S``."""
        return f"{self.prefix}:fanned:{{gw:{gateway_id}}}:{message_id}"

    def delete_fanned_to(self, gateway_id: str, message_id: int) -> str:
        """``delete_fanned_out`` on a cluster: MESSAGE_DELETE of a message written to one
        gateway's stream (one script per gateway, the marker in the gateway's slot)."""
        return f"{self.prefix}:delfan:{{gw:{gateway_id}}}:{message_id}"


def presence_partition(user_id: int, partitions: int) -> int:
    """The presence partition that aggregates ``user_id``'s sessions (stable, uniform: snowflake
    ids are not, their low bits are a per-node sequence, so the id is hashed first)."""
    if partitions <= 1:
        return 0
    digest = hashlib.blake2b(user_id.to_bytes(8, "big", signed=True), digest_size=8).digest()
    return int.from_bytes(digest, "big") % partitions


@functools.cache
def _gateway_key_parts(prefix: str) -> tuple[str, str, str, str]:
    """``Keys.gateway_key_parts``, built once per prefix (it is on every fan-out's path)."""
    keys = Keys(prefix)
    alive = keys.gateway_alive("\0").split("\0")
    deliver = keys.deliver("\0").split("\0")
    return alive[0], alive[1], deliver[0], deliver[1]
