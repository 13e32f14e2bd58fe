"""What crosses a socket or a stream: gateway ops, client payloads and stream envelopes.

Client frames are ``{"op": int, "d": ...}``; server dispatches are
``{"op": 0, "t": NAME, "s": seq, "d": ...}``. ``docs/protocol.md`` is the prose version of this
module. Payload shapes are pydantic models so a wrong shape is one ``ValidationError`` and one
close code (4006), never an exception deep inside the gateway.

Stream envelopes are JSON in a single field ``e`` of a Redis stream entry. The message payload
``d`` is built once, at the gateway, and never re-serialized: the hot cache, history and every
delivery carry the same bytes, which is what makes a redelivery indistinguishable from the
original.
"""

from __future__ import annotations

import re
from enum import IntEnum, IntFlag
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    TypeAdapter,
    model_validator,
)


class Op(IntEnum):
    DISPATCH = 0  # server -> client, carries t, s
    HEARTBEAT = 1  # both ways
    IDENTIFY = 2  # client
    PRESENCE_UPDATE = 3  # client
    VOICE_STATE_UPDATE = 4  # client
    RESUME = 6  # client
    REQUEST_GUILD_MEMBERS = 8  # client: members (and presences) of a guild, in chunks
    RECONNECT = 7  # server: reconnect and resume
    INVALID_SESSION = 9  # server: d=true resumable later, false re-identify
    HELLO = 10  # server, first frame
    HEARTBEAT_ACK = 11  # server
    GUILD_SUBSCRIPTIONS = 14  # client: whose presence to receive in a large guild
    SEND_MESSAGE = 20  # client
    REQUEST_HISTORY = 21  # client
    TYPING = 22  # client
    ERROR = 23  # server: a request failed, connection stays open
    DISCOVER = 24  # client: server directory query; answered by a DISCOVERY dispatch
    SEARCH = 25  # client: answered by a SEARCH_RESULTS dispatch
    DELETE_MESSAGE = 26  # client: delete a message; viewers get a MESSAGE_DELETE dispatch


_ASCII_DIGITS = re.compile(r"[0-9]{1,19}")
MAX_NONCE_CHARS = 25  # as Discord; a nonce is echoed to its sender (ACK, ERROR, REJECTED)


def _snowflake(value: Any) -> Any:
    """An id as a string of ASCII digits becomes an int; anything else is left to strict int.

    ``str.isdigit`` / ``int()`` would accept "١٢" (Arabic-Indic digits), " 12" and "1_2";
    strict int refuses floats and booleans.
    """
    if isinstance(value, str):
        if not _ASCII_DIGITS.fullmatch(value):
            raise ValueError("an id is a string of ASCII digits (or an integer)")
        return int(value)
    return value


Snowflake = Annotated[int, BeforeValidator(_snowflake), Field(strict=True, ge=0, lt=1 << 63)]
Device = Literal["desktop", "mobile", "web"]
#: A client's correlation token: a string of at most 25 characters (code points) or an
#: integer, never a boolean or a float. Echoed as given, so "1" and 1 are different nonces.
Nonce = (
    Annotated[str, Field(max_length=MAX_NONCE_CHARS)]
    | Annotated[StrictInt, Field(ge=-(1 << 63), lt=1 << 63)]
    | None
)
#: HEARTBEAT's ``d``: the last sequence number seen, or null before any dispatch.
HEARTBEAT_D: TypeAdapter[int | None] = TypeAdapter(
    Annotated[StrictInt, Field(ge=0)] | None  # type: ignore[arg-type]
)
#: A client frame has exactly these keys; unknown keys close with 4006 like inside ``d``.
FRAME_KEYS = frozenset({"op", "d"})


class _Strict(BaseModel):
    # strict: no coercion ("5" -> 5 only for ids, by _snowflake; never 5.0 -> 5 or true -> 1).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Intent(IntFlag):
    """Which event groups a session subscribes to (IDENTIFY ``intents``), numbered as Discord's
    gateway intents. A session without an intent gets none of its dispatches; replies to its own
    requests (MESSAGE_ACK, MESSAGE_REJECTED, HISTORY, ERROR) and changes to what it may see
    (GUILD_*, CHANNEL_*) always arrive."""

    GUILD_PRESENCES = 1 << 8  # PRESENCE_UPDATE
    GUILD_MESSAGES = 1 << 9  # MESSAGE_CREATE
    GUILD_MESSAGE_TYPING = 1 << 11  # TYPING_START


#: IDENTIFY without ``intents``: every event, as before intents existed.
ALL_INTENTS = int(Intent.GUILD_PRESENCES | Intent.GUILD_MESSAGES | Intent.GUILD_MESSAGE_TYPING)
#: The intent a fanned-out dispatch needs; a dispatch type not listed here needs none.
#: (plain ints: ``int & IntFlag`` would run IntFlag's Python-level ``__rand__`` per recipient)
INTENT_OF: dict[str, int] = {
    "PRESENCE_UPDATE": int(Intent.GUILD_PRESENCES),
    "MESSAGE_CREATE": int(Intent.GUILD_MESSAGES),
    "TYPING_START": int(Intent.GUILD_MESSAGE_TYPING),
}


class Identify(_Strict):
    token: str = Field(max_length=512)
    device: Device = "desktop"  # optional: a client that omits it is a desktop (documented)
    # optional bitfield of ``Intent``; omitted = every event. Unknown bits are accepted and
    # ignored (Discord has more intents than this gateway sends events for).
    intents: int | None = Field(default=None, ge=0, lt=1 << 31)


class Resume(_Strict):
    token: str = Field(max_length=512)
    session_id: str = Field(max_length=64)
    seq: int = Field(ge=0, lt=1 << 63)


class SendMessage(_Strict):
    channel_id: Snowflake
    content: str = Field(min_length=1)
    nonce: Nonce = None
    trace: bool = False


class RequestHistory(_Strict):
    channel_id: Snowflake
    before: Snowflake | None = None
    limit: int = Field(default=50, ge=1, le=100)
    nonce: Nonce = None
    # Jump (Discord's paging): at most one of before/after/around; see storage/paging.py.
    after: Snowflake | None = None
    around: Snowflake | None = None

    @model_validator(mode="after")
    def _one_anchor(self) -> RequestHistory:
        if sum(x is not None for x in (self.before, self.after, self.around)) > 1:
            raise ValueError("at most one of before, after and around")
        return self


class Typing(_Strict):
    channel_id: Snowflake


class PresenceUpdate(_Strict):
    status: Literal["online", "idle", "dnd", "invisible"]


class VoiceStateUpdate(_Strict):
    guild_id: Snowflake
    channel_id: Snowflake | None = None


def dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def frame(op: Op, d: Any = None) -> str:
    return dumps({"op": int(op), "d": d})


def dispatch_parts(t: str, d_json: str, trace_json: str = "") -> tuple[str, str]:
    """A dispatch's text before and after its sequence number: every recipient of one
    delivery shares both (``gateway/wsframe.py`` encodes them once per delivery).

    ``trace_json``, when given, adds the hop timeline of a traced message as key ``trace``.
    """
    if trace_json:
        return f'{{"op":0,"t":"{t}","s":', f',"d":{d_json},"trace":{trace_json}}}'
    return f'{{"op":0,"t":"{t}","s":', f',"d":{d_json}}}'


def dispatch_frame(t: str, seq: int, d_json: str, trace_json: str = "") -> str:
    """A dispatch built around an already-serialized payload (serialized once per gateway)."""
    head, tail = dispatch_parts(t, d_json, trace_json)
    return f"{head}{seq}{tail}"


# ---- stream envelopes -------------------------------------------------------------------


class Author(BaseModel):
    id: str
    username: str


class IngestMessage(BaseModel):
    """A client message on an ingest stream, after the gateway fixed its id and payload."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["message"] = "message"
    id: int
    channel_id: int
    guild_id: int
    author_id: int
    gateway_id: str
    session_id: str
    nonce: str | int | None = None  # for the sender's MESSAGE_REJECTED only; not in payload
    payload: str  # the MESSAGE_CREATE ``d`` as JSON text, fixed at the gateway
    trace: list[tuple[str, int]] | None = None  # (hop, wall-clock ns) when tracing is on


class Delivery(BaseModel):
    """One entry of a gateway's delivery stream, written once per gateway, not per user.

    ``session_id`` set: only that session gets it (replies such as MESSAGE_REJECTED).
    Otherwise every local session in ``guild_id`` that may see ``channel_id`` gets it, or every
    session of the guild when ``channel_id`` is 0 (presence updates).
    """

    t: str
    guild_id: int = 0
    channel_id: int = 0
    session_id: str = ""
    payload: str
    trace: list[tuple[str, int]] | None = None


def encode_entry(model: BaseModel) -> dict[str, bytes]:
    return {"e": orjson.dumps(model.model_dump(exclude_none=True))}


def message_payload(
    *,
    message_id: int,
    channel_id: int,
    guild_id: int,
    author: Author,
    content: str,
    timestamp_ms: int,
) -> str:
    """The MESSAGE_CREATE ``d`` that is stored (hot cache, history) and fanned out.

    No ``nonce``: it is the sender's correlation token and goes back to the sender alone, in
    MESSAGE_ACK. In the payload it would be kept in history and copied to every recipient.
    """
    return dumps(
        {
            "id": str(message_id),
            "channel_id": str(channel_id),
            "guild_id": str(guild_id),
            "author": author.model_dump(),
            "content": content,
            "timestamp": timestamp_ms,
        }
    )


# ---- discovery (docs/discovery.md) ---------------------------------------------------------


class Discover(_Strict):
    """DISCOVER ``d``: ``kind`` list (public guilds, name order, from ``offset``), search (public
    guilds whose name starts with ``query``), top (most messages in the last
    ``discovery_window_minutes``; ``approx`` from the sketches), suggest (guilds for you).
    The shape is checked here (4006 if wrong); the values by the directory (ERROR
    ``BAD_DISCOVER_REQUEST``: an empty prefix, a limit out of 1..50)."""

    kind: Literal["list", "search", "top", "suggest"]
    query: str = Field(default="", max_length=200)
    limit: int = 10
    offset: int = 0
    approx: bool = False
    nonce: Nonce = None


# ---- lazy guilds: members on request, presence of watched members only (gateway/lazy.py) ----

#: user ids one REQUEST_GUILD_MEMBERS may name (as Discord), and one GUILD_SUBSCRIPTIONS may
#: watch per guild: what one session can cost a gateway's watcher index is bounded by it.
MAX_MEMBER_IDS = 100
#: members one query-prefix REQUEST_GUILD_MEMBERS may return (an answer is at most this many,
#: in chunks of ``member_chunk_size``)
MAX_MEMBER_LIMIT = 1000


class RequestGuildMembers(_Strict):
    """Op 8: either ``query`` (a username prefix, "" = any; with ``limit``) or ``user_ids``."""

    guild_id: Snowflake
    query: str | None = Field(default=None, max_length=32)
    limit: int = Field(default=100, ge=1, le=MAX_MEMBER_LIMIT)
    user_ids: list[Snowflake] | None = Field(default=None, max_length=MAX_MEMBER_IDS)
    presences: bool = False
    nonce: Nonce = None

    @model_validator(mode="after")
    def _query_or_ids(self) -> RequestGuildMembers:
        if (self.query is None) == (self.user_ids is None):
            raise ValueError("give exactly one of query and user_ids")
        return self


class GuildSubscriptions(_Strict):
    """Op 14: watch these members' presence in a large guild (replaces the previous list for
    the guild; ``[]`` stops watching)."""

    guild_id: Snowflake
    user_ids: list[Snowflake] = Field(max_length=MAX_MEMBER_IDS)


# ---- search (issue 20) --------------------------------------------------------------------


class Search(_Strict):
    """SEARCH (op 25): messages the requester may read now, newest first; page on with
    ``before`` = the last id returned. ``content`` words must all appear (the last as a prefix)."""

    content: str = Field(default="", max_length=256)
    author_id: Snowflake | None = None
    channel_id: Snowflake | None = None
    guild_id: Snowflake | None = None
    before: Snowflake | None = None
    after: Snowflake | None = None
    limit: int = Field(default=25, ge=1, le=50)
    nonce: Nonce = None

    @model_validator(mode="after")
    def _something_to_find(self) -> Search:
        if not self.content.strip() and self.author_id is None:
            raise ValueError("a search needs content or author_id")
        return self


class StoredEntry(BaseModel):
    """One entry of the stored-message stream (``Keys.stored``): a message after its history
    write, or a deletion. Written by workers, read by the search indexer."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["message", "delete"] = "message"
    id: int
    channel_id: int
    guild_id: int = 0
    author_id: int = 0
    payload: str = ""


# ---- message deletion (DELETE_MESSAGE, op 26) ---------------------------------------------


class DeleteMessage(_Strict):
    """DELETE_MESSAGE (op 26): delete ``message_id`` of ``channel_id``. Allowed to its author
    and to members with MANAGE_MESSAGES in the channel; every viewer (the requester too) then
    gets MESSAGE_DELETE ``{"id", "channel_id", "guild_id"}``."""

    channel_id: Snowflake
    message_id: Snowflake
    nonce: Nonce = None


class IngestDelete(BaseModel):
    """A deletion on an ingest stream (the channel's shard, so it is ordered after the message
    it deletes): the gateway checked it, the worker applies it."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["delete"] = "delete"
    id: int  # the message deleted
    channel_id: int
    guild_id: int
    author_id: int  # the message's author, as the gateway found it
    deleter_id: int
    gateway_id: str
    session_id: str


INTENT_OF["MESSAGE_DELETE"] = int(Intent.GUILD_MESSAGES)  # as Discord: the messages intent
