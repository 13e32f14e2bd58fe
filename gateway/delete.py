"""DELETE_MESSAGE (op 26) at the gateway: check, then queue the deletion on the channel's shard.

The gateway answers refusals at once (ERROR ``UNKNOWN_CHANNEL``, ``UNKNOWN_MESSAGE``,
``MISSING_PERMISSIONS``, ``MESSAGE_ARCHIVED``, ``UNAVAILABLE``) and otherwise appends an
``IngestDelete`` to the ingest stream of the channel's shard and replies MESSAGE_DELETE_ACK — the stream its messages are on,
so a deletion is applied after the message it deletes and survives a worker crash the way a
message does (acked only once applied). The worker re-checks and applies it
(``workers/pipeline.py`` ``_deletes``): hot cache and history rows removed, a deletion entry
fed to the stored stream (the indexer drops the document), MESSAGE_DELETE fanned out once.

Who may delete: the author, or a member with MANAGE_MESSAGES in the channel (the session's
current permissions here; the worker checks again under the metadata then current).
A message whose bucket is archived (the cold tier's objects are immutable) is refused with
``MESSAGE_ARCHIVED`` — even while the hot cache still holds it — rather than hidden by a
tombstone list every cold read would consult. A deletion racing the archiver on that very
bucket (checked here, archived before a worker applies it) leaves the archived copy.
"""

from __future__ import annotations

from typing import Any

from chatscale import snowflake
from chatscale.redisconn import TRANSIENT
from chatscale.wire import DeleteMessage, IngestDelete, dumps, encode_entry
from guilds.permissions import Permission
from storage import StorageUnavailable
from storage.hot import stored_author


async def delete_message(gw: Any, client: Any, request: DeleteMessage) -> None:
    session = client.session
    assert session is not None
    nonce = request.nonce
    guild_id = session.channels.get(request.channel_id)
    if guild_id is None:
        gw.send_error(client, "UNKNOWN_CHANNEL", "no such channel visible to you", nonce=nonce)
        return
    if gw.inline is not None:  # processing=inline runs no workers to apply it
        gw.send_error(client, "UNAVAILABLE", "deletion needs the worker pipeline", nonce=nonce)
        return
    try:
        archive = getattr(gw.history_source, "archive", None)  # TieredHistory: a cold tier
        if archive is not None:  # its bucket archived (even if the hot cache still has it)?
            bucket = snowflake.bucket(request.message_id, gw.settings.bucket_span_ms)
            if bucket in await archive.buckets(request.channel_id):
                gw.send_error(
                    client,
                    "MESSAGE_ARCHIVED",
                    "the message is in the cold archive and cannot be deleted",
                    nonce=nonce,
                )
                return
        author = await stored_author(gw.hot, gw.store, request.channel_id, request.message_id)
        if author is None:
            gw.send_error(
                client, "UNKNOWN_MESSAGE", "no such message (deleted already?)", nonce=nonce
            )
            return
        perms = session.perms.get(request.channel_id, 0)
        if author != session.user_id and not perms & Permission.MANAGE_MESSAGES:
            gw.send_error(
                client,
                "MISSING_PERMISSIONS",
                "only the author or MANAGE_MESSAGES may delete this message",
                nonce=nonce,
            )
            return
        envelope = IngestDelete(
            id=request.message_id,
            channel_id=request.channel_id,
            guild_id=guild_id,
            author_id=author,
            deleter_id=session.user_id,
            gateway_id=gw.id,
            session_id=session.session_id,
        )
        shard = request.channel_id % gw.settings.ingest_shards
        await gw.redis.xadd(gw.keys.ingest(shard), encode_entry(envelope))
    except (*TRANSIENT, StorageUnavailable):
        gw.send_error(
            client, "UNAVAILABLE", "could not delete; retry", nonce=nonce, retry_after=1.0
        )
        return
    ack = dumps(
        {"id": str(request.message_id), "channel_id": str(request.channel_id), "nonce": nonce}
    )  # queued durably: MESSAGE_DELETE follows (a reply, not an event: not kept for RESUME)
    gw.send(client, session.dispatch("MESSAGE_DELETE_ACK", ack, replay=False))
