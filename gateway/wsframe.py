"""A fan-out dispatch's WebSocket frame, built from bytes shared by every recipient.

A delivery reaches each local session as the same dispatch but for the session's sequence
number (``chatscale.wire.dispatch_frame``). ``DispatchBytes`` encodes what the recipients share
once — the JSON before and after the number (``chatscale.wire.dispatch_parts``) — and ``frame(seq)`` joins it around one session's
number behind an RFC 6455 header: a final, unmasked text frame (section 5.2; a server never
masks). That is one ``bytes`` join per recipient, where websockets' ``send_text`` encodes the
text and builds a ``Frame`` object and a ``BytesIO`` for it.

Only for connections without extensions (no permessage-deflate, ``compression`` off, the
default): the gateway checks that before it writes these bytes itself
(``Gateway.send_dispatches``), and uses the library's path otherwise. Pure: no I/O.
"""

from __future__ import annotations

from chatscale.wire import dispatch_frame, dispatch_parts

_FIN_TEXT = 0x81  # FIN bit + opcode 1 (text)


def text_frame_header(length: int) -> bytes:
    """The header of a final, unmasked text frame carrying ``length`` payload bytes."""
    if length < 126:
        return bytes((_FIN_TEXT, length))
    if length < 65536:
        return bytes((_FIN_TEXT, 126)) + length.to_bytes(2, "big")
    return bytes((_FIN_TEXT, 127)) + length.to_bytes(8, "big")


class DispatchBytes:
    """One delivery's dispatch, encoded once; ``frame(seq)``/``text(seq)`` per recipient.

    ``text(seq)`` is exactly ``dispatch_frame(t, seq, d_json, trace_json)``; ``frame(seq)`` is
    that text, UTF-8 encoded, as one WebSocket text frame."""

    __slots__ = ("t", "d_json", "trace_json", "_head", "_tail", "_headers")

    def __init__(self, t: str, d_json: str, trace_json: str = "") -> None:
        self.t, self.d_json, self.trace_json = t, d_json, trace_json
        head, tail = dispatch_parts(t, d_json, trace_json)
        self._head, self._tail = head.encode(), tail.encode()
        self._headers: dict[int, bytes] = {}  # digits of the sequence number -> frame header

    def text(self, seq: int) -> str:
        return dispatch_frame(self.t, seq, self.d_json, self.trace_json)

    def frame(self, seq: int) -> bytes:
        number = b"%d" % seq
        header = self._headers.get(len(number))
        if header is None:  # once per number of digits: recipients' sequences are alike
            length = len(self._head) + len(number) + len(self._tail)
            header = self._headers[len(number)] = text_frame_header(length)
        return b"".join((header, self._head, number, self._tail))
