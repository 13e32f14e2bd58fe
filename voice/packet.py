"""The relay's binary packets, pure encode/decode (docs/protocol.md, "Voice: the media plane").

Every packet is one UDP datagram; on the TCP arm each is preceded by its length (2 bytes, big
endian). The first byte says what it is:

    0x80-0xBF  MEDIA   an RTP header (RFC 3550 section 5.1, no CSRC, no extension), 12 bytes:
                       byte 0 = 0x80 (version 2), byte 1 = payload type (111, as Discord's
                       Opus), sequence u16, timestamp u32 (48 kHz), SSRC u32; then the payload.
                       The relay overwrites the SSRC with the one it gave the sender (a
                       client cannot speak as someone else) and never reads the payload.
    0x01       AUTH    client -> relay: the voice token (ASCII, at most 1024 bytes).
    0x02       READY   relay -> client: SSRC u32, speak u8 (0: the relay will not forward you).
    0x03       ENDED   relay -> client: reason u8 (ENDED_*): the relay session is over.
    0x04       KEEP    client -> relay: keepalive (a listener that never speaks sends it).
    0x05       REPORT  receiver report, client -> relay -> the sender of ``ssrc``: ssrc u32,
                       loss permille u16, late permille u16, playout delay ms u16 (bitrate
                       adaptation: loss says the path overflows, a growing delay that it queues).
    0x06       SPEAK   relay -> client: speak u8, the sender's right to be forwarded changed.

Everything is big endian. Unknown or short packets are dropped and counted, never answered.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MEDIA_VERSION = 0x80
PAYLOAD_TYPE = 111
AUTH, READY, ENDED, KEEP, REPORT, SPEAK = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
MAX_TOKEN = 1024
MAX_PACKET = 1400  # below a typical path MTU: one datagram, no IP fragmentation

ENDED_REVOKED = 1  # left, switched, banned, lost CONNECT (the grant is gone)
ENDED_BAD_TOKEN = 2  # malformed, forged or expired token
ENDED_NO_GRANT = 3  # a valid token whose grant was replaced or removed
ENDED_IDLE = 4  # nothing received for voice_idle_timeout_s
ENDED_RELAY = 5  # the relay stops or was fenced: connect again after VOICE_STATE_UPDATE

_RTP = struct.Struct(">BBHII")
_READY = struct.Struct(">BIB")
_REPORT = struct.Struct(">BIHHH")
HEADER = _RTP.size


@dataclass(frozen=True, slots=True)
class Media:
    seq: int
    timestamp: int
    ssrc: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Report:
    ssrc: int  # whose stream this report is about
    loss_permille: int
    late_permille: int
    delay_ms: int  # the receiver's playout delay


def media(seq: int, timestamp: int, ssrc: int, payload: bytes) -> bytes:
    return (
        _RTP.pack(MEDIA_VERSION, PAYLOAD_TYPE, seq & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc) + payload
    )


def parse_media(data: bytes) -> Media | None:
    if len(data) < HEADER or data[0] & 0xC0 != MEDIA_VERSION:
        return None
    _, _, seq, ts, ssrc = _RTP.unpack_from(data)
    return Media(seq, ts, ssrc, data[HEADER:])


def with_ssrc(data: bytes, ssrc: int) -> bytes:
    """The same media packet with the SSRC field replaced."""
    return data[:8] + ssrc.to_bytes(4, "big") + data[HEADER:]


def auth(token: str) -> bytes:
    return bytes([AUTH]) + token.encode()


def ready(ssrc: int, speak: bool) -> bytes:
    return _READY.pack(READY, ssrc, int(speak))


def parse_ready(data: bytes) -> tuple[int, bool] | None:
    if len(data) != _READY.size or data[0] != READY:
        return None
    _, ssrc, speak = _READY.unpack(data)
    return ssrc, bool(speak)


def ended(reason: int) -> bytes:
    return bytes([ENDED, reason])


def speak(allowed: bool) -> bytes:
    return bytes([SPEAK, int(allowed)])


def keepalive() -> bytes:
    return bytes([KEEP])


def report(r: Report) -> bytes:
    return _REPORT.pack(
        REPORT,
        r.ssrc,
        min(r.loss_permille, 1000),
        min(r.late_permille, 1000),
        min(r.delay_ms, 65535),
    )


def parse_report(data: bytes) -> Report | None:
    if len(data) != _REPORT.size or data[0] != REPORT:
        return None
    _, ssrc, loss, late, delay = _REPORT.unpack(data)
    return Report(ssrc, loss, late, delay)


def seq_behind(newest: int, seq: int) -> int:
    """How many packets ``seq`` is behind ``newest`` in 16-bit sequence space (negative: ahead)."""
    d = (newest - seq) & 0xFFFF
    return d - 0x10000 if d >= 0x8000 else d


def frame(data: bytes) -> bytes:
    """The TCP arm's framing: 2-byte length, then the packet."""
    return len(data).to_bytes(2, "big") + data
