"""The bare-websockets floor for ``chatscale bench compare``: the least a Python server can do.

A tiny chat server with nothing behind it: HELLO, IDENTIFY answered with READY (the token is not
checked), HEARTBEAT answered, and every SEND_MESSAGE acknowledged and then sent to every
identified connection as one MESSAGE_CREATE frame built once, with ``websockets.broadcast()``
(one write per connection). No log, no storage, no permissions, no sequence numbers, no replay
buffer: what chatscale's fan-out is compared against. Run as its own process so its CPU can be
read the same way as chatscale's::

    python -m loadtest.floor PORT_FILE

binds 127.0.0.1 on a free port and writes the port to PORT_FILE once it listens.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
from pathlib import Path

import orjson
from websockets import broadcast
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from chatscale.wire import Op


class Floor:
    def __init__(self) -> None:
        self.ready: set[ServerConnection] = set()
        self.ids = itertools.count(1)

    async def handle(self, ws: ServerConnection) -> None:
        hello = {"op": int(Op.HELLO), "d": {"heartbeat_interval": 60000}}
        broadcast([ws], orjson.dumps(hello).decode())
        try:
            async for raw in ws:
                frame = orjson.loads(raw)
                op = frame.get("op")
                if op == Op.IDENTIFY:
                    ready = {"op": 0, "t": "READY", "s": 1, "d": {"session_id": "floor"}}
                    broadcast([ws], orjson.dumps(ready).decode())
                    self.ready.add(ws)
                elif op == Op.HEARTBEAT:
                    broadcast([ws], orjson.dumps({"op": int(Op.HEARTBEAT_ACK)}).decode())
                elif op == Op.SEND_MESSAGE:
                    d = frame["d"]
                    mid = str(next(self.ids))
                    ack = {"op": 0, "t": "MESSAGE_ACK", "d": {"id": mid, "nonce": d["nonce"]}}
                    broadcast([ws], orjson.dumps(ack).decode())
                    message = {
                        "op": 0,
                        "t": "MESSAGE_CREATE",
                        "d": {
                            "id": mid,
                            "channel_id": d["channel_id"],
                            "author": {"id": "1", "username": "floor"},
                            "content": d["content"],
                        },
                    }
                    broadcast(self.ready, orjson.dumps(message).decode())
        except ConnectionClosed:
            pass
        finally:
            self.ready.discard(ws)


async def main(port_file: Path) -> None:
    floor = Floor()
    async with serve(
        floor.handle, "127.0.0.1", 0, compression=None, max_queue=None, ping_interval=None
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        port_file.write_text(str(port))  # noqa: ASYNC240  (a few bytes, once, at start)
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
