"""All configuration in one place, read from the environment.

Every knob a user can turn lives here, with the trade-off it shows in its description.
Variables are ``CHATSCALE_<FIELD>`` (for example ``CHATSCALE_INGEST_SHARDS=8``); the Redis URL
is also read from plain ``REDIS_URL`` because that is what people already export. The same
names are used by the embedded supervisor and by ``docker-compose.yml``; a test keeps them in
step with this class.
"""

from __future__ import annotations

from functools import cached_property
from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_STORAGE_URL = "sqlite:///.chatscale/chatscale.db"
# The public default of earlier versions: anyone could forge tokens with it. Gateways refuse it.
OLD_DEFAULT_TOKEN_SECRET = "chatscale-dev-secret"


class Settings(BaseSettings):
    """Runtime settings shared by every service."""

    model_config = SettingsConfigDict(
        env_prefix="CHATSCALE_", extra="ignore", frozen=True, populate_by_name=True
    )

    # --- wiring -------------------------------------------------------------------------
    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("CHATSCALE_REDIS_URL", "REDIS_URL"),
        description="Redis/Valkey URL. Unset: `chatscale run` starts an embedded Valkey.",
    )
    storage_url: str = Field(
        default=DEFAULT_STORAGE_URL,
        description="History + metadata backend: sqlite:///path or cassandra://host:port/keyspace.",
    )
    key_prefix: str = Field(
        default="cs", description="Prefix of every Redis key (tests make it unique)."
    )
    token_secret: str = Field(
        default="",
        description="HMAC key for user tokens; no usable default. `chatscale run` generates one "
        "per data directory (.chatscale/token-secret, mode 0600) and the tools read it there; "
        "elsewhere set at least 32 random characters (a gateway refuses a weak one).",
    )
    token_ttl_s: int = Field(default=7 * 24 * 3600, description="Lifetime of minted tokens.")
    metrics_port: int = Field(
        default=0,
        description="Port of this process's Prometheus /metrics endpoint; 0 turns it off, -1 "
        "picks a free port (registered in Redis, where `chatscale top` finds it). "
        "`chatscale run` gives its children this port and the next ones, or -1 when unset "
        "(docs/metrics.md).",
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        description="Address the metrics endpoint binds (0.0.0.0 in containers).",
    )
    valkey_appendfsync: Literal["always", "everysec"] = Field(
        default="everysec",
        description="fsync policy of the Valkey that `chatscale run` starts (compose passes it to "
        "its valkey too). everysec: an OS crash or power loss loses up to ~1 s of writes, "
        "including messages already acknowledged. always: every reply waits for its fsync, so "
        "nothing a client was told is lost; the cost is in README, 'Guarantees'.",
    )
    metrics_max_requests: int = Field(
        default=4,
        ge=1,
        description="/metrics requests served at once (a thread each); more get 503 at once, so "
        "idle or slow connections cannot pile up threads.",
    )
    metrics_request_timeout_s: float = Field(
        default=5.0,
        gt=0,
        description="A /metrics connection that sends or reads nothing for this long is closed.",
    )

    # --- gateway ------------------------------------------------------------------------
    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(
        default=0, description="0 picks a free port; the bound port is printed."
    )
    gateway_public_url: str | None = Field(
        default=None,
        description="URL clients should RESUME against (defaults to the bound address).",
    )
    heartbeat_interval_ms: int = Field(
        default=20_000,
        description="Sent in HELLO. Shorter detects dead clients sooner but costs more frames.",
    )
    heartbeat_grace: float = Field(
        default=1.5, description="A session times out after interval x grace without a heartbeat."
    )
    max_frame_bytes: int = Field(default=16 * 1024, description="Larger frames close with 1009.")
    max_content_chars: int = 2000
    events_per_window: int = Field(
        default=120,
        description="Gateway events a connection may send per window (Discord: 120/60 s).",
    )
    event_window_s: float = 60.0
    compression: bool = Field(
        default=False,
        description="permessage-deflate. Off: ~3-4x less CPU per frame and ~13 vs 45 KiB per idle "
        "connection; on: less bandwidth.",
    )
    client_buffer_bytes: int = Field(
        default=1 << 20,
        description="Bytes queued to one client before it is closed as a slow consumer (4010).",
    )
    replay_buffer: int = Field(
        default=2048,
        description="Dispatches kept per session for RESUME; older gaps need re-IDENTIFY.",
    )
    resume_timeout_s: float = Field(
        default=120.0, description="How long a dropped session stays resumable on its gateway."
    )
    nonce_ttl_s: int = Field(
        default=300,
        ge=1,
        description="How long a SEND_MESSAGE nonce keeps its message id: a retry with the same "
        "nonce and content in that time, from any session or gateway (after a reconnect), is "
        "the same message. Costs one small Redis key per message sent with a nonce.",
    )
    replay_buffer_bytes: int = Field(
        default=512 * 1024,
        description="Bytes of dispatch payload kept per session for RESUME (with replay_buffer, "
        "whichever is hit first). Request answers (HISTORY) are never kept. Bounds a gateway's "
        "memory per session; a longer outage needs re-IDENTIFY.",
    )
    close_timeout_s: float = Field(
        default=5.0,
        description="How long a closing connection may take to finish the close handshake before "
        "the gateway aborts its TCP connection. Bounds what one silent client can hold; also how "
        "long a stopping gateway waits for its background tasks before it logs and abandons them.",
    )
    identify_timeout_s: float = Field(
        default=20.0,
        description="A connection that has not IDENTIFYed (or RESUMEd) this long after HELLO is "
        "closed with 4013, heartbeats or not.",
    )
    max_connections: int = Field(
        default=50_000,
        description="Connections one gateway accepts; more are closed with 4014. Also capped at "
        "the process's open-file limit minus a reserve for Redis, storage and logs.",
    )
    max_connections_per_ip: int = Field(
        default=2048,
        description="Connections one gateway accepts from one address; more are closed with "
        "4015. 0 turns it off. Raise it for load tests that connect from one host.",
    )
    log_repeat_limit: int = Field(
        default=10,
        description="Identical log lines (same logger, level and message) printed per window; "
        "the rest are counted and the count is printed with the next one.",
    )
    log_repeat_window_s: float = 60.0

    # --- workers ------------------------------------------------------------------------
    ingest_shards: int = Field(
        default=4,
        description="Ingest streams; a channel always maps to one shard, so its order is kept "
        "when each shard is consumed in order.",
    )
    worker_batch: int = Field(default=128, description="Entries read per XREADGROUP call.")
    worker_block_ms: int = Field(default=1000, description="How long XREADGROUP blocks when idle.")
    reclaim_idle_ms: int = Field(
        default=15_000, description="An entry pending this long on a silent worker is reclaimed."
    )
    max_deliveries: int = Field(
        default=5,
        description="Deliveries after which an entry that keeps failing is dead-lettered.",
    )
    hot_size: int = Field(
        default=50,
        ge=0,
        description="Messages per channel kept in the Redis hot cache. 0 turns the hot cache "
        "off: workers write none and every page (opening a channel included) is read from "
        "history storage.",
    )
    delivery_maxlen: int = Field(
        default=100_000, description="Approximate cap of each gateway's delivery stream."
    )
    history_mode: Literal["sync", "defer"] = Field(
        default="sync",
        description="sync: history write before fan-out (durable first). defer: fan out first, "
        "write history after (lower latency; the entry stays unacked until stored).",
    )
    dead_letter_maxlen: int = Field(
        default=10_000,
        description="Approximate cap of the dead-letter stream (MAXLEN ~): the oldest go first, "
        "so a flood of bad entries cannot grow Redis without bound. Its length is exported as "
        "chatscale_stream_length and shown by `chatscale top`.",
    )

    # --- presence -----------------------------------------------------------------------
    presence_timeout_s: float = Field(
        default=60.0, description="A device with no heartbeat for this long is offline."
    )
    presence_tick_ms: int = Field(
        default=1000,
        description="Gateways send one presence batch per tick and the service flushes per "
        "tick (one update per guild per tick when coalescing).",
    )
    presence_coalesce: bool = Field(
        default=True,
        description="Coalesce status changes per guild per tick. Off: raw broadcast of every change "
        "(compare the amplification counters).",
    )
    large_guild_threshold: int = Field(
        default=1000,
        description="Above this many members a guild gets online members and counts only.",
    )
    typing_window_s: float = Field(
        default=10.0,
        description="At most one TYPING_START per user and channel per window; 0 turns the "
        "throttle off (every typing event is forwarded).",
    )

    # --- communities: rate limits and the control plane ---------------------------------
    user_messages_per_window: int = Field(
        default=5,
        description="Messages one user may send per window, all channels and connections "
        "together (Discord: about 5 per 5 s). Raise it for benchmarks.",
    )
    user_message_window_s: float = 5.0
    identifies_per_window: int = Field(
        default=10,
        description="IDENTIFYs one user may make per window; more close with 4008 and say when "
        "to retry. Stops reconnect loops from hammering the metadata store.",
    )
    identify_window_s: float = 60.0
    control_timeout_s: float = Field(
        default=5.0,
        description="How long a control-plane change (ban, role, overwrite) waits for every live "
        "gateway to confirm it; a gateway that does not is fenced from deliveries.",
    )

    # --- storage ------------------------------------------------------------------------
    bucket_span_ms: int = Field(
        default=10 * 24 * 3600 * 1000,
        description="Span of snowflake time per history partition (Discord used ~10 days).",
    )

    # --- redis client -------------------------------------------------------------------
    redis_timeout_s: float = Field(
        default=5.0, description="Socket timeout on every Redis call; never the library default."
    )
    redis_retries: int = Field(
        default=1,
        description="Retries per Redis call (redis-py's default of 10 turns a pause into stalls).",
    )

    # --- safety -------------------------------------------------------------------------
    insecure_dev: bool = Field(
        default=False,
        description="Let a gateway start with a weak token secret (empty, the old public "
        "default, under 32 characters). Only for throwaway local experiments.",
    )
    fanout_serialize: Literal["once", "per_recipient"] = Field(
        default="once",
        description="How a gateway builds each recipient's dispatch frame. once (today): the "
        "payload JSON from the delivery stream is spliced as is into every session's envelope "
        "(only the sequence number differs); per_recipient: the payload is parsed once and the "
        "whole frame re-encoded for every recipient session (the naive design; same bytes on "
        "the wire, more gateway CPU per delivery). A lab arm (chatscale lab run serialize).",
    )
    slow_client: Literal["close", "unbounded"] = Field(
        default="close",
        description="What a gateway does with a client whose send buffer passes "
        "client_buffer_bytes. close (today): close it with 4010 SLOW_CONSUMER (resumable), so "
        "memory per client stays bounded; unbounded: keep queueing frames for it without limit "
        "(gateway memory grows with every frame the client does not read). A lab arm "
        "(chatscale lab run backpressure); never for production.",
    )

    # --- permissions: strong or eventual (the `bans` lab experiment) ----------------------
    permission_mode: Literal["strong", "cached"] = Field(
        default="strong",
        description="strong: a ban or permission change is in force when the control-plane "
        "call returns (every gateway confirmed, no worker accepts against it). cached: the call "
        "returns once the store is written; gateways and workers keep their permission views "
        "up to PERMISSION_CACHE_TTL_S before reloading, so a banned member keeps reading and "
        "posting until then. Give every process and the control plane the same mode.",
    )
    permission_cache_ttl_s: float = Field(
        default=5.0,
        gt=0,
        description="With PERMISSION_MODE=cached: how old a gateway's or worker's permission "
        "view may get before it is reloaded (the window a ban is not yet in force).",
    )

    # --- processing: where the work of a message happens (the lab's knobs) ---------------
    processing: Literal["log", "inline"] = Field(
        default="log",
        description="log: the gateway XADDs a SEND_MESSAGE to the ingest stream and acks; "
        "workers authorize, store and fan out (connections and processing scale apart). "
        "inline: the gateway itself authorizes, writes the hot cache and history and fans out "
        "before MESSAGE_ACK (no log, workers idle): the design the guide warns against.",
    )
    ordering: Literal["shard", "parallel"] = Field(
        default="shard",
        description="How workers consume the ingest shards (`chatscale worker --ordering` "
        "overrides it). shard: one worker per shard at a time (a lease), per-channel order; "
        "parallel: every worker reads every shard, more throughput, a channel's messages may "
        "be delivered out of order.",
    )
    history_delay_ms: int = Field(
        default=0,
        ge=0,
        description="Fault injection (the lab's slow store): every history write of a message "
        "batch waits this long before it is sent to storage, as a remote store that answers "
        "slowly. 0 (the default) = off.",
    )

    # --- trade-off lab knobs (each keeps today's behaviour by default) -------------------
    fanout_mode: Literal["gateway", "inbox"] = Field(
        default="gateway",
        description="gateway: the worker writes one delivery entry per gateway holding members "
        "of the guild (offline members cost nothing; they read history when they open the "
        "channel). inbox: it also appends a pointer (channel id, message id) to a per-user "
        "inbox stream of EVERY member, online or not — the naive per-user fan-out on write, "
        "kept only to measure its cost (`chatscale lab run inbox-fanout`); nothing reads the "
        "inboxes, online members are still delivered through their gateways.",
    )
    inbox_maxlen: int = Field(
        default=1000,
        ge=1,
        description="Approximate cap (MAXLEN ~) of each per-user inbox stream when "
        "fanout_mode=inbox: the newest entries are kept.",
    )

    client_writes: Literal["coalesced", "per_frame"] = Field(
        default="per_frame",
        description="How a gateway writes frames to a client's socket. coalesced: frames queued "
        "for one client during one event-loop turn (a delivery-stream read of many entries, "
        "acks and deliveries together) go out in one write, so a burst costs one send() per "
        "connection, not one per frame; same bytes, same order, same client_buffer_bytes limit "
        "(queued-but-unwritten bytes count). per_frame (the default): one write per frame as "
        "each is queued; coalescing bought no CPU beyond run-to-run noise here "
        "(docs/benchmarks.md), so it is not the default.",
    )

    # --- the dashboard -----------------------------------------------------------------------
    dashboard_admin_token: str = Field(
        default="",
        description="The admin token the dashboard's actions (faults, knobs, traces, the chat) "
        "require in X-Admin-Token; empty: a random one per start, printed in the banner (`chatscale "
        "run`) or the log (`chatscale dashboard`, the compose service). At least 16 characters.",
    )

    # --- history tiers and search (issue 20) -------------------------------------------------
    cold_url: str = Field(
        default="",
        description="Cold archive object store: file:///path (a local directory, the embedded "
        "backend) or s3://bucket/prefix?endpoint=http://host:port (any S3-compatible server). "
        "Empty: no cold tier, every message stays in the history store. Set, history pages also "
        "list the channel's cold buckets (one directory listing or S3 LIST per page that may "
        "reach them) and `chatscale archive` moves old buckets there.",
    )
    archive_after_s: float = Field(
        default=30 * 24 * 3600.0,
        gt=0,
        description="Age after which a bucket of history moves to the cold tier (its whole span "
        "must be older). Shorter: a smaller, cheaper history store, but more pages read compressed "
        "objects (a cold page costs an object read and decompression, docs/storage.md).",
    )
    archive_interval_s: float = Field(
        default=3600.0,
        gt=0,
        description="How often the archiver (in `chatscale run` and compose) looks for buckets to "
        "compact. Buckets age by days, so hourly is plenty; shorter only costs listing reads.",
    )
    search_url: str = Field(
        default="",
        description="Search index: sqlite:///path (SQLite FTS5, kept apart from history storage). "
        "Empty: no SEARCH (ERROR UNAVAILABLE) and workers feed no stored-message stream; "
        "`chatscale run` sets one next to its data.",
    )
    stored_stream_maxlen: int = Field(
        default=200_000,
        ge=1000,
        description="Cap (approximate) of the stored-message stream the indexer reads (workers "
        "append each message after its history write, when search_url is set). Larger: an "
        "indexer can be down longer without missing messages, at ~0.5 KB of Redis memory each.",
    )
    search_batch: int = Field(
        default=500,
        ge=1,
        le=10_000,
        description="Entries the indexer reads and commits per transaction. Larger: more messages "
        "per second indexed, but each commit (and so search freshness) waits for a bigger batch "
        "only when a backlog exists; a quiet stream is indexed entry by entry as it arrives.",
    )

    @cached_property
    def heartbeat_timeout_s(self) -> float:
        return self.heartbeat_interval_ms / 1000 * self.heartbeat_grace


def env_names() -> set[str]:
    """Every environment variable the settings read (for compose checks and docs)."""
    names = {"REDIS_URL"}
    for name, field in Settings.model_fields.items():
        names.add(f"CHATSCALE_{name.upper()}")
        del field
    return names
