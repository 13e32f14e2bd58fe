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
    worker_linger_ms: float = Field(
        default=5.0,
        ge=0,
        description="After a read that found entries but no full batch, the worker waits this "
        "long before reading again, so the next batch gathers more messages: fewer Redis round "
        "trips per message, at up to this much more latency (0: read again at once). A message "
        "arriving while the worker is idle is read at once whatever the value.",
    )
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
        description="Above this many members a guild is lazy: READY carries counts, not "
        "presences; members come on request (op 8) and a session gets presence only of the "
        "members it watches (op 14), so an arrival costs O(watchers), not O(online). A huge "
        "value turns lazy guilds off (every online member hears every change).",
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
    redis_max_connections: int = Field(
        default=256,
        ge=1,
        description="Connections one process may hold to Redis (one Valkey; a cluster client "
        "keeps its own per-node pools). A call beyond them waits up to REDIS_TIMEOUT_S for one "
        "to come back instead of failing at once: under a herd of IDENTIFYs the library's "
        "100-connection default was the cause of 'metadata store unavailable' refusals.",
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

    redis_autopipeline: bool = Field(
        default=True,
        description="A gateway's per-message Redis commands (the nonce claim, the rate-limit "
        "script, the XADD that queues a message) issued during one event-loop turn go to Redis "
        "as one pipeline (chatscale/autopipe.py): one send() and one reply read for many "
        "connections' messages instead of one each. Same replies and errors per command, no "
        "atomicity added; false: one round trip per command, for the comparison.",
    )

    # --- the dashboard -----------------------------------------------------------------------
    dashboard_admin_token: str = Field(
        default="",
        description="The admin token the dashboard's actions (faults, knobs, traces, the chat) "
        "require in X-Admin-Token; empty: a random one per start, printed in the banner (`chatscale "
        "run`) or the log (`chatscale dashboard`, the compose service). At least 16 characters.",
    )

    # --- the process ---------------------------------------------------------------------------
    event_loop: Literal["uvloop", "asyncio"] = Field(
        default="asyncio",
        description="The event loop every chatscale process runs on. uvloop (libuv, in C) makes "
        "each socket write and timer cheaper; asyncio is the standard library's pure-Python "
        "loop, easier to step through in a debugger (docs/benchmarks.md has both, measured).",
    )

    gc_young_threshold: int = Field(
        default=50_000,
        ge=0,
        description="Python's cycle collector in every chatscale process: allocations between "
        "young-generation collections (Python's own default is 700), and the heap of the "
        "process's start (modules, classes) is frozen (gc.freeze) so no collection walks it "
        "again. Fewer collections, so fewer objects promoted and rarer full ones: a gateway with "
        "1,000 clients at 2,000 msg/s otherwise stops 50-175 ms for a full collection every "
        "~5 s, its acks' p99 latency (docs/benchmarks.md). Cyclic garbage lives a little longer. "
        "0: Python's defaults, nothing frozen.",
    )

    # --- trust & safety (docs/safety.md; each keeps today's behaviour by default) -------------
    moderation_mode: Literal["off", "shadow", "enforce"] = Field(
        default="off",
        description="The worker's moderation stage, before the hot write. off (the default): "
        "not run, no cost. shadow: every message is scored and the verdict counted and logged, "
        "never acted on (measure a classifier on live traffic without risk). enforce: block "
        "(the author gets MESSAGE_REJECTED AUTOMOD_BLOCKED, nobody else sees it), alert "
        "(delivered, plus AUTOMOD_ALERT to the guild's alert channel), timeout (blocked and the "
        "author timed out through the control plane). Enforce adds the classifier's time to "
        "every message's latency; shadow adds it too (it runs inline) but never changes a result.",
    )
    moderation_classifier: Literal["rules", "model", "rules+model"] = Field(
        default="rules",
        description="What the moderation stage runs: rules (the guild's AutoMod rules: keywords, "
        "regexes, mention, repeat and invite/link spam; microseconds per message), model (the "
        "trained text classifier, trained at the worker's start from generated chat; tens of "
        "microseconds per message batched, a second of training at start), or both (the "
        "strictest verdict wins).",
    )
    moderation_budget_ms: float = Field(
        default=50.0,
        gt=0,
        description="Time budget of one batch's scoring. Past it the classifier's verdicts are "
        "dropped and MODERATION_FAIL decides: a small budget bounds the latency moderation can "
        "add, at the price of more fail-open/closed decisions under load.",
    )
    moderation_fail: Literal["open", "closed"] = Field(
        default="open",
        description="When the classifier times out or fails: open delivers the batch unscored "
        "(chat stays up, spam gets through while it is down); closed blocks it with "
        "MESSAGE_REJECTED AUTOMOD_UNAVAILABLE (nothing unscored gets through, chat stops).",
    )
    moderation_delay_ms: float = Field(
        default=0.0,
        ge=0,
        description="Fault injection for the lab: every scoring call first sleeps this long (a "
        "slow classifier, a remote model server). 0 = off.",
    )
    moderation_down: bool = Field(
        default=False,
        description="Fault injection for the lab: every scoring call raises (the classifier is "
        "down), so MODERATION_FAIL decides every batch.",
    )
    spam_detect: bool = Field(
        default=False,
        description="The worker keeps per-account streaming features in Redis for every message "
        "(one pipeline per batch) and scores accounts younger than SPAM_WINDOW_S; above "
        "SPAM_THRESHOLD it quarantines them through the control plane. Off: no feature writes.",
    )
    spam_window_s: int = Field(
        default=300,
        ge=10,
        description="Accounts younger than this (from their snowflake) are scored; features are "
        "kept twice as long. Longer catches slower bots, and scores more accounts.",
    )
    spam_threshold: float = Field(
        default=0.7,
        gt=0,
        le=1,
        description="Score (0..1) at which the detector acts. Lower acts sooner on bots and "
        "risks new, eager real users (the spam-raid report counts both).",
    )
    spam_action: Literal["quarantine", "ban", "log"] = Field(
        default="quarantine",
        description="What the detector does above the threshold: quarantine (the account is "
        "banned from its guilds and its sessions end, one strong control-plane call), ban (only "
        "from the guild it spammed), log (count only, for a dry run).",
    )

    # --- discovery (docs/discovery.md) ---------------------------------------------------------
    discovery_window_minutes: int = Field(
        default=10,
        ge=1,
        le=60,
        description="Top-K active servers counts the last N wall-clock minutes (per-minute "
        "buckets merged at query time). Longer: steadier ranking, slower to notice a server "
        "that just got busy, and N keys merged per query.",
    )
    discovery_activity: bool = Field(
        default=True,
        description="Workers count accepted messages per guild per minute in Redis (one "
        "ZINCRBY per guild per batch, pipelined) for top-K. false: no counting, no cost, and "
        "`discover top` shows nothing.",
    )
    discovery_sketch_lg_k: int = Field(
        default=10,
        ge=3,
        le=20,
        description="log2 of the map size of the workers' frequent-items sketch of guild "
        "activity (datasketches' frequent_strings_sketch): 10 = 1,024 counters. Larger: a "
        "smaller error bound (3.5 / 2^k of the window's messages, per guild), more memory per "
        "worker per minute; exact once 2^k * 0.75 exceeds the number of active guilds.",
    )
    discovery_sketch_flush_s: float = Field(
        default=1.0,
        ge=0.05,
        le=60,
        description="How often a worker writes its current minute's serialized sketch to Redis "
        "(for `discover top --approx`). Shorter: fresher approximate top-K, more writes.",
    )
    discovery_suggest_alpha: float = Field(
        default=0.5,
        ge=0,
        le=2,
        description="Popularity-bias correction of server suggestions: a candidate's score is "
        "divided by its member count to this power (0: none, raw co-membership, favours the "
        "biggest servers; higher: favours niche servers, less accurate past a point).",
    )

    # --- the thundering herd (issue 14): admission, degrade mode, catching up ------------------
    storm_mitigations: Literal["on", "off"] = Field(
        default="on",
        description="One switch for the herd mitigations of gateways and load-test clients: "
        "IDENTIFY admission (IDENTIFY_CONCURRENCY, IDENTIFY_QUEUE, 4017 with retry_after), "
        "transient IDENTIFY timeouts answered 4017 instead of 4000, degrade mode (DEGRADE_*), "
        "the liveness key renewed off the event loop, and clients honouring retry_after. off: "
        "today's gateway, to show the herd (the lab's thundering-herd unmitigated arm).",
    )
    identify_concurrency: int = Field(
        default=128,
        ge=1,
        description="IDENTIFYs one gateway works on at once (Discord's max_concurrency). An "
        "IDENTIFY mostly waits on Redis and the store, so more in flight serve a herd faster, "
        "until they take the event-loop time that heartbeats and deliveries of connected "
        "sessions need (32 here served a 3,000-viewer herd 4x slower: docs/benchmarks.md).",
    )
    identify_queue: int = Field(
        default=4096,
        ge=0,
        description="IDENTIFYs waiting for a slot, beyond IDENTIFY_CONCURRENCY, as long as the "
        "predicted wait is within twice IDENTIFY_QUEUE_WAIT_S; beyond either the gateway answers "
        "ERROR GATEWAY_BUSY with retry_after and closes 4017 (the client comes back later "
        "instead of holding a socket and a timer). Longer: fewer refusals, longer waits "
        "before READY; a queued IDENTIFY costs a socket and a future, no work.",
    )
    identify_queue_wait_s: float = Field(
        default=20.0,
        gt=0,
        description="How long an IDENTIFY may wait in the queue (predicted at admission from "
        "the measured IDENTIFY time, and enforced): beyond it, 4017 with retry_after. Kept "
        "under the heartbeat timeout (a queued connection's heartbeats are read after READY). The "
        "prediction runs high during a herd (IDENTIFYs are slow while it arrives, fast once "
        "it has), so a bound near the work budget refused clients the gateway would have "
        "served within seconds, and sent them away for up to 30 s.",
    )
    identify_budget_s: float = Field(
        default=10.0,
        gt=0,
        description="Time one admitted IDENTIFY may take (metadata, presences, routes) before "
        "it is answered 4017 with retry_after instead of holding its slot; bounds the work "
        "per IDENTIFY under load.",
    )
    degrade_lag_ms: float = Field(
        default=250.0,
        ge=0,
        description="Event-loop lag (a 100 ms timer's lateness) above which a gateway degrades: "
        "it sheds PRESENCE_UPDATE and TYPING_START dispatches (counted, never messages) until "
        "the lag stays under half of it for DEGRADE_HOLD_S. Lower sheds sooner; 0 turns "
        "the lag trigger off.",
    )
    degrade_backlog_ms: float = Field(
        default=2000.0,
        ge=0,
        description="Age of the delivery-stream entry being dispatched (now minus the time in "
        "its stream id) above which a gateway degrades, as DEGRADE_LAG_MS; 0 turns this "
        "trigger off. Needs gateway and Valkey clocks in step.",
    )
    degrade_hold_s: float = Field(
        default=2.0,
        ge=0,
        description="How long both triggers must stay under half their threshold before a "
        "degraded gateway sends presence and typing again (hysteresis: no flapping).",
    )
    degrade_min_sessions: int = Field(
        default=200,
        ge=0,
        description="A gateway with fewer sessions never degrades: shedding presence for a "
        "handful of sessions saves nothing (the cost it cuts grows with the sessions).",
    )
    reconnect_jitter: bool = Field(
        default=True,
        description="Clients (chatscale.client, the load generator) spread their reconnects: "
        "backoff delays x 0.5-1.5, a server's retry_after x 1-1.5 (chatscale/backoff.py). "
        "false: exact delays, so clients refused together come back together (the herd).",
    )

    # --- voice (issue 18) ---------------------------------------------------------------------
    voice_host: str = Field(
        default="127.0.0.1",
        description="Address the voice relay binds (UDP and TCP; 0.0.0.0 in containers).",
    )
    voice_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="The voice relay's UDP port (its TCP arm listens on the same number); 0 "
        "picks a free one. The relay registers the address it got in Redis and gateways hand "
        "it out in VOICE_SERVER_UPDATE.",
    )
    voice_public_host: str = Field(
        default="",
        description="Host clients are told to reach the relay at (empty: voice_host). Set it "
        "when the relay binds 0.0.0.0 behind a published port.",
    )
    voice_transport: Literal["udp", "tcp"] = Field(
        default="udp",
        description="Which arm of the relay VOICE_SERVER_UPDATE points clients at. udp: a lost "
        "or late packet costs that packet only; tcp: nothing is lost, but one lost segment "
        "holds every later packet until it is retransmitted (head-of-line blocking), so audio "
        "arrives late instead (`chatscale lab run voice-transport`).",
    )
    voice_token_ttl_s: float = Field(
        default=60.0,
        gt=0,
        description="Lifetime of a voice token (VOICE_SERVER_UPDATE). Short: a leaked token is "
        "worthless soon; too short and a slow client cannot connect before it expires. A "
        "token also dies at once when its grant is replaced (a new join) or removed.",
    )
    voice_max_behind: int = Field(
        default=25,
        ge=1,
        description="The relay drops a packet whose sequence number is more than this many "
        "packets (20 ms each) behind the newest one it forwarded for the same sender: it would "
        "miss its playout time anyway. Smaller saves bandwidth on reordered bursts; larger "
        "forwards more of what a deep jitter buffer could still play.",
    )
    voice_ack_timeout_s: float = Field(
        default=2.0,
        gt=0,
        description="How long a gateway waits for every relay to apply a revocation (leave, "
        "ban, lost CONNECT or SPEAK) before fencing the relay that did not answer; a ban "
        "call returns only after this, so it bounds the ban's extra latency.",
    )
    voice_idle_timeout_s: float = Field(
        default=15.0,
        gt=0,
        description="A relay session that sends nothing (no media, no keepalive) this long is "
        "ended. Shorter frees relay state sooner after a client vanished; too short ends "
        "listeners that only send a keepalive every few seconds.",
    )
    member_chunk_size: int = Field(
        default=100,
        ge=1,
        le=1000,
        description="Members per GUILD_MEMBERS_CHUNK answering REQUEST_GUILD_MEMBERS (op 8; "
        "Discord: 1000). Smaller chunks are more frames but each reaches the client sooner and "
        "no single frame is large; the answer's size is bounded by the request's limit.",
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
    search_indexing: Literal["async", "write"] = Field(
        default="async",
        description="Where a message enters the search index (with search_url). async: the "
        "indexer process reads the stored-message stream (message latency pays nothing, a search "
        "finds a message once the indexer caught up). write: the worker indexes each batch after "
        "its history write and before its fan-out (message latency pays the index commit; a "
        "search after delivery finds it). The `index-at-write` lab experiment measures both.",
    )

    presence_partitions: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Presence partitions: each user's devices are aggregated by one of them "
        "(a hash of the user id), each with its own input stream and state, held by one presence "
        "process at a time through a lease; several `chatscale presence` processes share them and "
        "a survivor takes over a dead one's partitions after presence_lease_ms. More: presence "
        "scales with processes, but a guild's coalesced update comes from every partition (up to "
        "this many per tick instead of one). Every process must be started with the same value.",
    )
    presence_lease_ms: int = Field(
        default=5000,
        ge=500,
        description="Lifetime of a presence process's lease on a partition; a dead process's "
        "partitions move to a survivor after this long (at once when the supervisor evicts it).",
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
