"""``chatscale bench compare --peer centrifugo``: the generated config, the light client's
counting on frames as Centrifugo 6.9.1 sends them (served by a small in-process WebSocket
server, no binary needed), the ratios, the one-line refusal without the binary, and one tiny
run against the real binary, skipped when it has not been built (CI has no Go toolchain).

The recorded frames are Centrifugo's JSON protocol: replies and pushes one JSON object a line,
several lines packed into one WebSocket frame when they were queued together; ``{}`` a ping.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import orjson
import pytest
from websockets.asyncio.server import ServerConnection, serve

from chatscale import cli
from chatscale.discovery import TopologyError
from loadtest import centrifugo, compare
from loadtest.centrifugo import CentrifugoReceiver, config, is_ping, publish_command
from loadtest.lightclient import open_receiver

CLIENT_INFO = b'"info":{"user":"","client":"941b394c-4a19-4317-81c8-a5a2f52a04e7"}'
CONNECTED = (
    b'{"id":1,"connect":{"client":"57ea6536-cf9f-4c01-bdbf-f02343f3b80c",'
    b'"version":"6.9.1 OSS","ping":60,"pong":true}}\n{"id":2,"subscribe":{}}'
)


def push(n: int) -> bytes:
    data = orjson.dumps({"content": "Bxxxx", "nonce": f"b{n}"})
    return b'{"push":{"channel":"bench","pub":{"data":' + data + b"," + CLIENT_INFO + b"}}}"


def test_the_config_is_centrifugo_v6s_with_the_redis_engine_and_anonymous_clients():
    conf = config(41234, "redis://127.0.0.1:6390/0")
    assert json.loads(json.dumps(conf)) == conf  # written as JSON
    assert conf["http_server"] == {"address": "127.0.0.1", "port": "41234"}
    assert conf["engine"] == {"type": "redis", "redis": {"address": ["redis://127.0.0.1:6390/0"]}}
    assert conf["client"]["allow_anonymous_connect_without_token"] is True
    assert "insecure" not in conf["client"]  # permissions granted by name, not switched off
    channel = conf["channel"]["without_namespace"]
    assert channel["allow_subscribe_for_anonymous"] and channel["allow_subscribe_for_client"]
    assert channel["allow_publish_for_subscriber"] and channel["allow_publish_for_anonymous"]
    assert "history_size" not in channel and "presence" not in channel
    assert conf["usage_stats"] == {"disabled": True}


def test_a_publish_carries_the_bench_content_after_the_handshakes_ids():
    assert publish_command("Bxx", 0) == {
        "id": 3,
        "publish": {"channel": "bench", "data": {"content": "Bxx", "nonce": "b0"}},
    }
    assert publish_command("Bxx", 7)["id"] == 10
    assert centrifugo.MARK in orjson.dumps(publish_command("Bxx", 0))


def test_a_ping_is_a_frame_or_a_line_holding_only_braces():
    assert is_ping(b"{}")
    assert is_ping(b"{}\n" + push(1))
    assert is_ping(push(1) + b"\n{}")
    assert not is_ping(b'{"id":3,"publish":{}}')
    assert not is_ping(CONNECTED)
    assert not is_ping(push(1) + b'\n{"id":3,"publish":{}}')


async def test_publications_and_acks_are_counted_per_line_and_pings_answered():
    frames = [
        push(0),  # one publication
        push(1) + b'\n{"id":3,"publish":{}}',  # a publication and the sender's ack
        b"\n".join([push(2), push(3), push(4)]),  # three queued together
        b'{"id":4,"publish":{}}\n{"id":5,"publish":{}}',  # two acks
        b"{}",  # a ping
        push(5) + b"\n{}",  # a publication and a ping
    ]
    got: dict[str, list] = {"handshake": [], "pongs": []}
    both_pongs = asyncio.Event()

    async def server(ws: ServerConnection) -> None:
        got["handshake"].append(await ws.recv(decode=False))
        await ws.send(CONNECTED, text=True)
        await ws.recv()  # the test's go-ahead, once the client is ready
        for frame in frames:
            await ws.send(frame, text=True)
        for _ in range(2):
            got["pongs"].append(await ws.recv(decode=False))
        both_pongs.set()
        await ws.wait_closed()

    messages: list[bytes] = []
    acks: list[bytes] = []
    async with serve(server, "127.0.0.1", 0) as srv:
        port = srv.sockets[0].getsockname()[1]
        url = f"ws://127.0.0.1:{port}/connection/websocket"
        rcv = await open_receiver(url, "-", messages.append, CentrifugoReceiver)
        assert isinstance(rcv, CentrifugoReceiver)
        rcv.on_ack = acks.append
        try:
            rcv.send({"go": True})
            await asyncio.wait_for(both_pongs.wait(), 10)
        finally:
            rcv.close()
    assert got["handshake"] == [centrifugo.HANDSHAKE]
    assert got["pongs"] == [b"{}", b"{}"]
    assert len(messages) == 6  # publications, not frames
    assert rcv.publication_frames == 4
    assert len(acks) == 3


async def test_a_refused_subscribe_fails_the_start_with_centrifugos_reply():
    async def server(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send(
            b'{"id":1,"connect":{"client":"c","version":"6.9.1 OSS","ping":60,"pong":true}}\n'
            b'{"id":2,"error":{"code":103,"message":"permission denied"}}',
            text=True,
        )
        await ws.wait_closed()

    async with serve(server, "127.0.0.1", 0) as srv:
        port = srv.sockets[0].getsockname()[1]
        with pytest.raises(TopologyError, match="centrifugo refused.*permission denied"):
            await open_receiver(f"ws://127.0.0.1:{port}/", "-", print, CentrifugoReceiver)


def test_the_ratios_are_chatscales_medians_over_centrifugos():
    def m(cpu: float, rate: float) -> dict:
        return {
            "server_us_per_delivery": {"median": cpu, "runs": [cpu]},
            "gateway_us_per_delivery": {"median": cpu, "runs": [cpu]},
            "deliveries_per_s": {"median": rate, "runs": [rate]},
            "client_busy": {"median": 0.5, "runs": [0.5]},
        }

    summary = {"chatscale": m(12.0, 40_000), "floor": m(10.0, 45_000), "centrifugo": m(6.0, 80_000)}
    summary["centrifugo"]["deliveries_per_frame"] = {"median": 2.0, "runs": [2.0]}
    ratios = compare.ratio_to_peer(summary, "centrifugo")
    assert ratios == {"chatscale": {"deliveries_per_s": 0.5, "server": 2.0}}
    text = compare.render(
        {
            "subscribers": 1000,
            "messages": 200,
            "content_chars": 100,
            "window": 16,
            "repeat": 1,
            "summary": summary,
            "ratio_to_floor": {"chatscale": {"server": 1.2, "gateway": 1.2}},
            "ratio_to_centrifugo": ratios,
        }
    )
    assert "chatscale / centrifugo: 0.50x deliveries/s, 2.00x server CPU per delivery" in text
    assert "deliveries per frame 2.00 (2.00)" in text


def test_without_the_binary_the_peer_is_refused_in_one_line_naming_the_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.setattr(centrifugo, "DEFAULT_BINARY", tmp_path / "centrifugo")
    assert cli.main(["bench", "compare", "--peer", "centrifugo"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "go install" in err and "github.com/centrifugal/centrifugo/v6@v6.9.1" in err


@pytest.mark.slow  # a Valkey and a Centrifugo started and stopped, 100 deliveries
@pytest.mark.skipif(
    centrifugo.missing_binary(centrifugo.DEFAULT_BINARY) is not None,
    reason=f"Centrifugo not built (optional peer): {centrifugo.BUILD_COMMAND}",
)
async def test_a_tiny_run_against_the_real_centrifugo_delivers_every_publication(
    tmp_path: Path,
):
    out = await compare.run_centrifugo(
        tmp_path, 20, binary=centrifugo.DEFAULT_BINARY, messages=5, window=4, content_chars=100
    )
    assert out["deliveries"] == 100  # 20 subscribers x 5, the sender one of them
    assert out["deliveries_per_frame"] >= 1.0
    assert out["server_cpu_s"] == out["cpu_s:centrifugo"] + out["cpu_s:valkey"]
    assert out["gateway_cpu_s"] == out["cpu_s:centrifugo"]
