"""Cancelling background tasks on Python 3.11, where a task can lose a cancellation.

A task suspended in ``asyncio.wait_for`` (redis-py's calls are) can swallow a ``cancel()`` on
CPython 3.11 (gh-86296): ``task.cancel(); await gather(task)`` then waits forever.
``cancel_and_wait`` cancels again every ``RECANCEL_EVERY_S`` until the tasks end or a bound
passes, and names where any task left behind is suspended. Every stop path that cancels
tasks doing Redis calls uses it (the gateway, the load tester's samplers).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("chatscale.cancel")

RECANCEL_EVERY_S = 0.1  # how often a background task that has not ended is cancelled again


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], timeout_s: float, owner: str) -> None:
    """Cancel ``tasks`` and wait (at most ``timeout_s``) until they end, cancelling again every
    ``RECANCEL_EVERY_S``: a task may lose one cancellation (see ``Gateway.stop``), and a task
    in a Redis call ends at the next cancellation. Logs a lost cancellation as a warning and
    every task still running at the deadline as an error, with where it is suspended."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    pending = {t for t in tasks if not t.done()}
    rounds = 0
    while pending:
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        for task in pending:
            task.cancel()
        rounds += 1
        _, pending = await asyncio.wait(pending, timeout=min(RECANCEL_EVERY_S, remaining))
    if rounds > 1 and not pending:
        log.warning("%s: a background task ignored a cancellation; cancelled it again", owner)
    for task in pending:
        log.error(
            "%s: abandoning background task %s after %.1f s; it is suspended at %s",
            owner,
            task.get_coro(),
            timeout_s,
            suspended_at(task),
        )


def suspended_at(task: asyncio.Task[Any]) -> str:
    """The last frames of a task's await chain, as file:line function."""
    coro: Any = task.get_coro()
    frames = []
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            path = "/".join(frame.f_code.co_filename.rsplit("/", 2)[-2:])
            frames.append(f"{path}:{frame.f_lineno} {frame.f_code.co_name}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return " -> ".join(frames[-4:]) or "?"
