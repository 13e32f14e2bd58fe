"""The bare-websockets floor for ``chatscale bench compare``: the least a Python server can do.

A tiny chat server with nothing behind it: HELLO, IDENTIFY answered with READY (the token is not
checked), HEARTBEAT answered, and every SEND_MESSAGE acknowledged and then sent to every
identified connection as one MESSAGE_CREATE frame built once, with ``websockets.broadcast()``
(one write per connection). No log, no storage, no permissions, no sequence numbers, no replay
buffer: what chatscale's fan-out is compared against. Run as its own process so its CPU can be
read the same way as chatscale's::

    python -m loadtest.floor PORT_FILE [GROUPS_FILE]

binds 127.0.0.1 on a free port and writes the port to PORT_FILE once it listens. With
GROUPS_FILE (JSON: IDENTIFY token -> channel id) a message goes only to the connections whose
token names its channel, the sender included: ``chatscale bench ingest --peer floor``'s
4-member channels. ``running`` starts it for a benchmark.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import psutil
from websockets import broadcast
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from chatscale.wire import Op


class Floor:
    def __init__(self, groups: dict[str, str] | None = None) -> None:
        self.ready: set[ServerConnection] = set()
        self.ids = itertools.count(1)
        self.groups = groups  # token -> channel id; None: everyone gets every message
        self.members: dict[str, set[ServerConnection]] = {}  # channel id -> connections

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
                    if self.groups is not None:
                        channel = self.groups.get(str((frame.get("d") or {}).get("token")))
                        self.members.setdefault(str(channel), set()).add(ws)
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
                    targets = (
                        self.ready
                        if self.groups is None
                        else self.members.get(str(d["channel_id"]), set())
                    )
                    broadcast(targets, orjson.dumps(message).decode())
        except ConnectionClosed:
            pass
        finally:
            self.ready.discard(ws)
            for members in self.members.values():
                members.discard(ws)


async def main(port_file: Path, groups_file: Path | None = None) -> None:
    # read once, at start
    groups = orjson.loads(groups_file.read_bytes()) if groups_file else None  # noqa: ASYNC240
    floor = Floor(groups)
    async with serve(
        floor.handle, "127.0.0.1", 0, compression=None, max_queue=None, ping_interval=None
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        port_file.write_text(str(port))  # noqa: ASYNC240  (a few bytes, once, at start)
        await asyncio.Future()


@contextlib.asynccontextmanager
async def running(
    workdir: Path, groups: dict[str, str] | None = None
) -> AsyncIterator[tuple[str, psutil.Process]]:
    """The floor as its own process (its URL and process, for its CPU), stopped at the end."""
    port_file = workdir / "floor.port"
    port_file.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "loadtest.floor", str(port_file)]
    if groups is not None:
        groups_file = workdir / "floor-groups.json"
        groups_file.write_bytes(orjson.dumps(groups))
        argv.append(str(groups_file))
    proc = subprocess.Popen(argv, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        for _ in range(200):
            if port_file.exists() and port_file.read_text():
                break
            if proc.poll() is not None:
                raise RuntimeError("the floor server exited")
            await asyncio.sleep(0.05)
        else:
            raise TimeoutError("the floor server did not listen within 10 s")
        yield f"ws://127.0.0.1:{port_file.read_text()}/", psutil.Process(proc.pid)
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        if proc.poll() is None:
            proc.kill()


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        print("usage: python -m loadtest.floor PORT_FILE [GROUPS_FILE]", file=sys.stderr)
        sys.exit(2)
    asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else None))
