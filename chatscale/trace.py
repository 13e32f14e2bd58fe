"""Hop-by-hop timing of one message.

A traced message carries a list of ``(hop, wall-clock ns)`` stamps in its stream envelopes
(never in the stored payload, so tracing does not change what is persisted). Every service runs
on the same host in the embedded topology, so wall clocks agree; across machines the deltas are
only as good as clock sync, which the timeline says.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

HOPS = (
    "gateway_receive",
    "gateway_publish",
    "worker_read",
    "worker_checks",
    "hot_write",
    "history_write",
    "fanout",
    "gateway_deliver",
    "client_receive",
)


def stamp(trace: list[tuple[str, int]] | None, hop: str) -> None:
    if trace is not None:
        trace.append((hop, time.time_ns()))


def format_timeline(trace: list[tuple[str, int]]) -> str:
    """A table of hops with the time since the first hop and since the previous one."""
    if not trace:
        return "(no trace)"
    start = trace[0][1]
    prev = start
    lines = [f"{'hop':<18}{'t (ms)':>10}{'delta (ms)':>12}"]
    for hop, ns in trace:
        lines.append(f"{hop:<18}{(ns - start) / 1e6:>10.3f}{(ns - prev) / 1e6:>12.3f}")
        prev = ns
    lines.append(f"{'total':<18}{(trace[-1][1] - start) / 1e6:>10.3f}")
    return "\n".join(lines)


# ---- the `chatscale trace` and `chatscale bench chat` clients: patient with rate limits --------


class ToolError(Exception):
    """An expected failure of a tool talking to a running topology; its message is one line
    that says what to do (the command prints it, never a traceback)."""


async def identify(url: str, token: str, *, timeout: float = 10.0, heartbeat: bool = True) -> Any:
    """IDENTIFY and wait for READY; a close before READY (refused token, IDENTIFY rate limit)
    or a gateway that cannot be reached raises ToolError saying which, at once."""
    from websockets.exceptions import InvalidHandshake, InvalidURI

    from chatscale.client import ChatClient
    from chatscale.closecodes import CATALOGUE, Close
    from chatscale.wire import Op

    try:
        client = await ChatClient.open(url, heartbeat=heartbeat)
    except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
        raise ToolError(f"cannot reach the gateway at {url}: {exc or type(exc).__name__}") from None
    await client.send_op(Op.IDENTIFY, {"token": token, "device": "desktop"})
    ready = asyncio.ensure_future(client.next_event("READY", timeout=timeout))
    closed = asyncio.ensure_future(client.closed.wait())
    await asyncio.wait({ready, closed}, return_when=asyncio.FIRST_COMPLETED)
    closed.cancel()
    if ready.done() and not ready.cancelled() and ready.exception() is None:
        d = ready.result()["d"]
        client.ready, client.session_id = d, d["session_id"]
        client.resume_url = d.get("resume_gateway_url", url)
        return client
    ready.cancel()
    await asyncio.gather(ready, closed, return_exceptions=True)
    code = client.close_code
    await client.close()
    if code is None:
        raise ToolError(f"no READY from {url} within {timeout:g}s")
    known = code in Close._value2member_map_
    meaning = CATALOGUE[Close(code)].meaning if known and Close(code) in CATALOGUE else ""
    hint = {
        Close.RATE_LIMITED: " Wait a minute (IDENTIFY is limited per user), or use other "
        "users (--from/--to).",
        Close.AUTHENTICATION_FAILED: " Is this the topology whose users you named (run.json, "
        "CHATSCALE_REDIS_URL, CHATSCALE_STORAGE_URL)?",
    }.get(code, "")  # type: ignore[call-overload]
    raise ToolError(f"{url} closed the connection with {code} before READY: {meaning}{hint}")


async def send_patiently(
    client: Any,
    channel_id: int | str,
    content: str,
    *,
    nonce: str,
    deadline: float,
    trace: bool = False,
    on_wait: Callable[[float], None] | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> dict[str, Any]:
    """SEND_MESSAGE, and on a RATE_LIMITED or UNAVAILABLE answer wait its ``retry_after`` and
    send again with the same nonce (the gateway acknowledges a repeated nonce once), until
    ``deadline`` (monotonic). Other errors, and waiting past the deadline, raise ToolError."""
    from chatscale.client import GatewayError

    while True:
        try:
            return await client.send_message(
                channel_id,
                content,
                nonce=nonce,
                trace=trace,
                timeout=max(0.1, deadline - time.monotonic()),
            )
        except GatewayError as exc:
            code, wait = exc.d.get("code"), exc.d.get("retry_after")
            if code not in ("RATE_LIMITED", "UNAVAILABLE") or wait is None:
                raise ToolError(f"the gateway refused the message: {exc}") from None
            if time.monotonic() + float(wait) > deadline:
                raise ToolError(
                    f"{code}: the gateway asks to wait {float(wait):.1f}s more than the time left"
                ) from None
            if on_wait is not None:
                on_wait(float(wait))
            await sleep(float(wait))
        except TimeoutError:
            raise ToolError("no MESSAGE_ACK before the deadline") from None
        except ConnectionError as exc:
            raise ToolError(f"the connection closed while sending: {exc}") from None
