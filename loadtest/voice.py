"""The ``voice`` load: N speakers and M listeners in one voice channel, through the real
gateway signaling and the real relay, with the network impaired in-process at each sender.

Every participant identifies on a gateway, sends VOICE_STATE_UPDATE, connects to the relay
with the token of VOICE_SERVER_UPDATE (UDP, or TCP with ``CHATSCALE_VOICE_TRANSPORT=tcp``) and
then: a speaker produces one packet every 20 ms (``voice/sim.py``'s ``ImpairedLink`` decides
whether and when it leaves this process: loss, bursts, jitter, a bottleneck; on TCP a loss is a
retransmission ``rto_ms`` later, holding everything after it); every participant plays every
other speaker's stream through its own ``JitterBuffer`` and sends a receiver report each
second; with ``adapt`` a speaker's ``Aimd`` follows the worst report of the second.

The payload carries the capture time (this process's loop clock, shared by every simulated
client), so mouth-to-ear latency is exact: capture -> playout, network and buffer included.
"""

from __future__ import annotations

import asyncio
import random
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from chatscale import tokens
from chatscale.client import ChatClient
from chatscale.config import Settings
from chatscale.wire import Op
from guilds import community
from voice import packet
from voice.client import VoiceConnection
from voice.sim import (
    PACKET_MS,
    TS_PER_PACKET,
    Aimd,
    ImpairedLink,
    Impairment,
    JitterBuffer,
    percentile,
    unwrap,
)

_CAPTURE = struct.Struct(">dI")  # capture time (ms, loop clock), speaker index


@dataclass
class Seeded:
    guild_id: int
    channel_id: int
    user_ids: list[int]


async def seed_voice(settings: Settings, members: int, *, name: str = "voice-load") -> Seeded:
    """A guild of ``members`` users with a text channel and a voice channel ``stage`` open to
    all (@everyone holds CONNECT and SPEAK by default)."""
    names = [f"{name}-{i:04d}" for i in range(members)]
    stage = community.ChannelSpec(name="stage", kind="voice")
    spec = community.Community(
        name=name,
        guilds=[
            community.GuildSpec(name=name, owner=names[0], channels=["text", stage], members=names)
        ],
    )
    await community.apply_to(spec, settings)
    users, guilds, channels, _ = spec.plan()
    voice_channel = next(c.id for c in channels if c.kind == "voice")
    return Seeded(guilds[0].id, voice_channel, [u.id for u in users])


@dataclass
class Participant:
    index: int
    chat: ChatClient
    conn: VoiceConnection
    speaker: bool
    link: ImpairedLink | None = None
    aimd: Aimd | None = None
    buffers: dict[int, JitterBuffer] = field(default_factory=dict)  # ssrc -> its stream
    last_index: dict[int, int] = field(default_factory=dict)
    interval: dict[int, tuple[int, int]] = field(default_factory=dict)  # ssrc -> (played, hi)
    worst: float = 0.0  # worst report this second (a speaker's)
    worst_delay: float | None = None  # highest playout delay reported this second
    sent: int = 0
    bytes_sent: int = 0
    in_flight: int = 0  # packets the simulated link has not delivered yet
    flushed: asyncio.Event = field(default_factory=asyncio.Event)  # in_flight reached 0
    markers: set[int] = field(default_factory=set)  # speakers (ssrc) whose end marker arrived
    heard_all: asyncio.Event = field(default_factory=asyncio.Event)
    expect_markers: int = 0


async def _voice_server(chat: ChatClient, guild: int, channel: int) -> dict:
    """Join voice; VOICE_SERVER_UPDATE's ``d``. A topology's relay may register a moment after
    its gateways: ERROR VOICE_UNAVAILABLE is answered as a client would, by asking again after
    its ``retry_after`` (30 s in all at most)."""
    join = {"guild_id": str(guild), "channel_id": str(channel)}
    deadline = time.monotonic() + 30
    await chat.send_op(Op.VOICE_STATE_UPDATE, join)
    while True:
        msg = await chat.next_event(timeout=max(0.1, deadline - time.monotonic()))
        if msg.get("t") == "VOICE_SERVER_UPDATE":
            return msg["d"]
        error = msg["d"] if msg.get("op") == Op.ERROR else None
        if error and error.get("code") == "VOICE_UNAVAILABLE":
            wait = min(float(error.get("retry_after") or 1.0), deadline - time.monotonic())
            if wait <= 0:
                raise TimeoutError("no voice relay registered within 30 s")
            await asyncio.sleep(wait)
            await chat.send_op(Op.VOICE_STATE_UPDATE, join)


async def _join(
    settings: Settings, url: str, user_id: int, guild: int, channel: int
) -> tuple[ChatClient, VoiceConnection]:
    token = tokens.mint(user_id, secret=settings.token_secret, ttl_s=3600, now=time.time())
    chat = await ChatClient.identify(url, token)
    try:
        server = await _voice_server(chat, guild, channel)
        conn = await VoiceConnection.open(
            server["endpoint"], server["token"], transport=server["transport"]
        )
    except BaseException:
        await chat.close()
        raise
    return chat, conn


async def run_voice(
    settings: Settings,
    urls: list[str],
    seeded: Seeded,
    *,
    speakers: int,
    listeners: int,
    impairment: Impairment,
    transport: str,
    adapt: bool,
    duration_s: float,
    seed: int = 1,
    start_kbps: float = 64.0,
) -> dict[str, Any]:
    """Run the load and return its counters (see ``summarize``)."""
    n = speakers + listeners
    if n > len(seeded.user_ids):
        raise ValueError(f"{n} participants but only {len(seeded.user_ids)} members")
    loop = asyncio.get_running_loop()
    people: list[Participant] = []
    try:
        for i in range(n):
            chat, conn = await _join(
                settings,
                urls[i % len(urls)],
                seeded.user_ids[i],
                seeded.guild_id,
                seeded.channel_id,
            )
            p = Participant(i, chat, conn, speaker=i < speakers)
            if p.speaker:
                p.link = ImpairedLink(
                    impairment, transport=transport, rng=random.Random(seed * 1000 + i)
                )
                p.aimd = Aimd(kbps=start_kbps)
            people.append(p)
        t0 = loop.time() * 1000
        stop_ms = t0 + duration_s * 1000
        tasks = [asyncio.create_task(_receive(p, t0)) for p in people]
        tasks += [asyncio.create_task(_report(p, t0, stop_ms, adapt)) for p in people]
        for p in people:
            p.expect_markers = speakers - (1 if p.speaker else 0)
            if not p.expect_markers:
                p.heard_all.set()
        await asyncio.gather(*(_speak(p, t0, stop_ms) for p in people if p.speaker))
        # Everything the links still hold is delivered, then an end marker per speaker (not
        # impaired: it only says "nothing more comes"); every listener waits for them all.
        try:
            async with asyncio.timeout(30):
                for p in people:
                    await p.heard_all.wait()
        except TimeoutError:
            pass  # a marker lost on a loaded machine: the run ends; missing packets count as lost
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return summarize(
            people, duration_s, transport=transport, adapt=adapt, impairment=impairment
        )
    finally:
        for p in people:
            await p.conn.close()
            await p.chat.close()


async def _speak(p: Participant, t0: float, stop_ms: float) -> None:
    """One packet every 20 ms on an absolute schedule (no drift); each leaves this process when
    its simulated link delivers it (``call_at``), or never."""
    assert p.link is not None and p.aimd is not None
    loop = asyncio.get_running_loop()
    seq = 0
    while True:
        capture = t0 + seq * PACKET_MS
        if capture >= stop_ms:
            break
        delay = capture / 1000 - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        size = p.aimd.payload_bytes()
        payload = _CAPTURE.pack(capture, p.index).ljust(size, b"\0")
        at = p.link.send(capture, packet.HEADER + size)
        p.sent += 1
        p.bytes_sent += packet.HEADER + size
        if at is not None:
            p.in_flight += 1
            p.flushed.clear()
            ts = (seq * TS_PER_PACKET) & 0xFFFFFFFF
            loop.call_at(at / 1000, _deliver, p, seq & 0xFFFF, ts, payload)
        seq += 1
    if p.in_flight:
        await p.flushed.wait()
    p.conn.send_media(seq & 0xFFFF, 0, _CAPTURE.pack(-1.0, p.index))  # the end marker


def _deliver(p: Participant, seq: int, ts: int, payload: bytes) -> None:
    p.conn.send_media(seq, ts, payload)
    p.in_flight -= 1
    if not p.in_flight:
        p.flushed.set()


async def _receive(p: Participant, t0: float) -> None:
    while True:
        arrival, data = await p.conn.received.get()
        if data[0] == packet.REPORT:
            r = packet.parse_report(data)
            if r is not None:
                p.worst = max(p.worst, (r.loss_permille + r.late_permille) / 1000)
                p.worst_delay = max(p.worst_delay or 0.0, float(r.delay_ms))
            continue
        media = packet.parse_media(data)
        if media is None or len(media.payload) < _CAPTURE.size:
            continue
        capture, _speaker = _CAPTURE.unpack_from(media.payload)
        if capture < 0:  # a speaker's end marker
            p.markers.add(media.ssrc)
            if len(p.markers) >= p.expect_markers:
                p.heard_all.set()
            continue
        index = unwrap(p.last_index.get(media.ssrc), media.seq)
        p.last_index[media.ssrc] = max(index, p.last_index.get(media.ssrc, index))
        jb = p.buffers.setdefault(media.ssrc, JitterBuffer())
        jb.arrive(index, capture, arrival * 1000)


async def _report(p: Participant, t0: float, stop_ms: float, adapt: bool) -> None:
    """Every second: a receiver report per stream heard; a speaker applies the worst one."""
    loop = asyncio.get_running_loop()
    k = 1
    while True:
        await asyncio.sleep(max(0.0, (t0 + k * 1000) / 1000 - loop.time()))
        k += 1
        for ssrc, jb in p.buffers.items():
            hi = p.last_index.get(ssrc, 0)
            played0, hi0 = p.interval.get(ssrc, (0, -1))
            expected = hi - hi0
            if expected <= 0:
                continue
            bad = max(0.0, 1 - (jb.played - played0) / expected)
            p.interval[ssrc] = (jb.played, hi)
            p.conn.report(packet.Report(ssrc, int(bad * 1000), 0, int(jb.delay_ms)))
        if p.speaker and adapt and p.aimd is not None:
            p.aimd.on_report(loop.time() * 1000 - t0, p.worst, p.worst_delay)
        p.worst, p.worst_delay = 0.0, None


def summarize(
    people: list[Participant],
    duration_s: float,
    *,
    transport: str,
    adapt: bool,
    impairment: Impairment,
) -> dict[str, Any]:
    """Totals over every (listener, speaker) stream: shares of the packets sent to it."""
    sent_by_ssrc: dict[int, int] = {p.conn.ssrc: p.sent for p in people if p.speaker}
    totals = {"sent": 0, "played": 0, "lost": 0, "late": 0, "concealed": 0, "stall_ms": 0.0}
    m2e: list[float] = []
    streams = 0
    for p in people:
        for ssrc, sent in sent_by_ssrc.items():
            if ssrc == p.conn.ssrc:
                continue
            jb = p.buffers.get(ssrc) or JitterBuffer()
            for k, v in jb.finish(sent).items():
                if k in totals:
                    totals[k] += v
            m2e += jb.mouth_to_ear
            streams += 1
    sent = max(1, totals["sent"])
    speaker0 = next((p for p in people if p.speaker), None)
    kbps = [k for _, k in speaker0.aimd.timeline] if speaker0 and speaker0.aimd else []
    return {
        "transport": transport,
        "adapt": adapt,
        "impairment": impairment.__dict__,
        "speakers": sum(p.speaker for p in people),
        "listeners": sum(not p.speaker for p in people),
        "streams": streams,
        "duration_s": duration_s,
        **{k: totals[k] for k in ("sent", "played", "lost", "late", "concealed")},
        "late_share": totals["late"] / sent,
        "lost_share": totals["lost"] / sent,
        "concealed_share": totals["concealed"] / sent,
        "played_share": totals["played"] / sent,
        "stall_ms_per_min": totals["stall_ms"] / max(1, streams) / (duration_s / 60),
        "mouth_to_ear_p50_ms": percentile(m2e, 0.5),
        "mouth_to_ear_p99_ms": percentile(m2e, 0.99),
        "bitrate_kbps_mean": sum(kbps) / len(kbps)
        if kbps
        else (speaker0.aimd.kbps if speaker0 and speaker0.aimd else None),
        "bitrate_timeline": speaker0.aimd.timeline if speaker0 and speaker0.aimd else [],
        "sender_kbps": sum(p.bytes_sent for p in people)
        * 8
        / 1000
        / duration_s
        / max(1, sum(p.speaker for p in people)),
    }


async def cmd_voice(args: Any) -> int:
    """``chatscale loadtest voice``: an embedded topology (or ``--gateway`` URLs with a relay
    running next to them), a guild with a voice channel, the run, its summary as JSON."""
    import json
    import shutil
    import sys
    import tempfile
    from pathlib import Path

    from chatscale.commandline import UsageError
    from chatscale.discovery import settings_for_tools
    from loadtest.topology import Embedded

    try:
        imp = Impairment(
            loss=args.loss, jitter_ms=args.jitter, burst=args.burst, bandwidth_kbps=args.bandwidth
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.speakers < 1 or args.listeners < 0:
        raise UsageError("at least one speaker, and no negative listeners")
    duration = args.duration or 20.0
    members = args.speakers + args.listeners
    topo = None
    if args.gateway:
        settings = settings_for_tools(need_live=True)
        urls = list(args.gateway)
        transport = settings.voice_transport
    else:
        workdir = Path(tempfile.mkdtemp(prefix="chatscale-voice-"))
        env = {"CHATSCALE_VOICE_TRANSPORT": args.transport}
        topo = Embedded(
            workdir,
            storage_url=f"sqlite:///{workdir}/h.db",
            gateways=1,
            workers=1,
            env=env,
            extras=frozenset({"voice"}),
        )
        await topo.start(say=lambda text: print(text, file=sys.stderr))
        settings, urls, transport = topo.settings, topo.urls, args.transport
    try:
        seeded = await seed_voice(settings, members)
        result = await run_voice(
            settings,
            urls,
            seeded,
            speakers=args.speakers,
            listeners=args.listeners,
            impairment=imp,
            transport=transport,
            adapt=args.adapt,
            duration_s=duration,
            seed=args.seed or 1,
        )
    finally:
        if topo is not None:
            await topo.stop()
            shutil.rmtree(workdir, ignore_errors=True)  # a throwaway topology
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "report.json").write_text(text)
    print(text)
    return 0
