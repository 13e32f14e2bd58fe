"""DISCOVER (op 24): the server directory answered on the gateway (docs/discovery.md).

One request, one DISCOVERY dispatch back to the requesting session (``replay=False``: an
answer, not an event). Values the directory refuses are ERROR ``BAD_DISCOVER_REQUEST``; Redis or
the store not answering is ERROR ``UNAVAILABLE`` with ``retry_after``. Only public guilds are
named in any answer, so a private guild's name never leaves through discovery.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chatscale.redisconn import TRANSIENT
from chatscale.wire import Discover, dumps
from guilds.directory import Directory, DirectoryError, suggest_for
from storage import StorageUnavailable

if TYPE_CHECKING:
    from gateway.host import Client

Gateway = Any  # gateway.server.Gateway (which imports this module: no import back)

BAD_REQUEST = "BAD_DISCOVER_REQUEST"


def directory_of(gw: Gateway) -> Directory:
    directory = getattr(gw, "_directory", None)
    if directory is None:
        directory = Directory(
            gw.redis,
            gw.keys,
            window_minutes=gw.settings.discovery_window_minutes,
            sketch_lg_k=gw.settings.discovery_sketch_lg_k,
            wall_clock=gw.wall_clock,
        )
        gw._directory = directory  # type: ignore[attr-defined]
    return directory


async def answer(gw: Gateway, client: Client, request: Discover) -> None:
    session = client.session
    assert session is not None
    directory = directory_of(gw)
    try:
        if request.kind == "list":
            found = [
                e.to_dict()
                for e in await directory.list_public(offset=request.offset, limit=request.limit)
            ]
        elif request.kind == "search":
            found = [
                e.to_dict() for e in await directory.search(request.query, limit=request.limit)
            ]
        elif request.kind == "top":
            top = directory.top_approx if request.approx else directory.top_exact
            rows = await top(request.limit, public_only=True)
            names = await directory.names(g for g, _ in rows)
            found = [{"id": str(g), "name": names.get(g, ""), "messages": n} for g, n in rows]
        else:
            pairs = await suggest_for(
                gw.store,
                directory,
                session.user_id,
                alpha=gw.settings.discovery_suggest_alpha,
                k=request.limit,
            )
            found = [{**e.to_dict(), "score": round(s, 4)} for e, s in pairs]
    except DirectoryError as exc:
        gw.send_error(client, BAD_REQUEST, str(exc), nonce=request.nonce)
        return
    except (*TRANSIENT, StorageUnavailable):
        gw.send_error(
            client,
            "UNAVAILABLE",
            "the directory is unavailable",
            nonce=request.nonce,
            retry_after=1.0,
        )
        return
    d = dumps({"kind": request.kind, "nonce": request.nonce, "guilds": found})
    gw.send(client, session.dispatch("DISCOVERY", d, replay=False))
