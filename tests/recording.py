"""A stand-in for the gateway's two sends, as ``LocalFanout`` uses them: records each frame."""

from __future__ import annotations

from gateway.session import Session
from gateway.wsframe import DispatchBytes


class RecordingSends:
    """``send`` and ``send_dispatches`` that record ``(client, frame text)`` in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[object, str]] = []

    def send(self, client: object, text: str) -> None:
        self.sent.append((client, text))

    def send_dispatches(
        self, dispatch: DispatchBytes, sessions: list[Session], attached: dict[Session, object]
    ) -> None:
        for session in sessions:
            seq = session.number(dispatch.t, dispatch.d_json, dispatch.trace_json)
            client = attached.get(session)
            if client is not None:
                text = dispatch.text(seq)
                assert dispatch.frame(seq).endswith(text.encode())  # what the gateway writes
                self.sent.append((client, text))
