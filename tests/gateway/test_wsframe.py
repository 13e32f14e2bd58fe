"""The fan-out's own frame bytes are the frames websockets would have built, byte for byte."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from chatscale.wire import dispatch_frame
from gateway.wsframe import DispatchBytes, text_frame_header


def _library_frame(text: str) -> bytes:
    return Frame(Opcode.TEXT, text.encode()).serialize(mask=False)


def _parse(data: bytes) -> Frame:
    reader = StreamReader()
    reader.feed_data(data)
    parser = Frame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as done:
        return done.value
    raise AssertionError("the frame was not complete")


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_the_header_is_the_library_s_at_every_length_boundary(length: int) -> None:
    text = "x" * length
    assert text_frame_header(length) + text.encode() == _library_frame(text)


@pytest.mark.parametrize("trace", ["", '[["gateway_in",1.5]]'])
@pytest.mark.parametrize("size", [10, 200, 70_000])
@pytest.mark.parametrize("seq", [1, 9, 10, 99_999, 12_345_678_901])
def test_a_dispatch_frame_is_dispatch_frame_s_text_framed(trace: str, size: int, seq: int) -> None:
    payload = '{"id":"1","content":"' + "é" * size + '"}'  # multi-byte UTF-8: bytes, not chars
    dispatch = DispatchBytes("MESSAGE_CREATE", payload, trace)
    text = dispatch_frame("MESSAGE_CREATE", seq, payload, trace)
    assert dispatch.text(seq) == text
    assert dispatch.frame(seq) == _library_frame(text)
    frame = _parse(dispatch.frame(seq))
    assert (frame.opcode, frame.fin, frame.data.decode()) == (Opcode.TEXT, True, text)
