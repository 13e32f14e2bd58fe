"""How a client waits before it connects again: jittered exponential backoff, and ``retry_after``.

Shared by ``chatscale.client`` and the load generator. Without jitter every client refused at
the same moment comes back at the same moment — the herd again, a retry later
(``CHATSCALE_RECONNECT_JITTER=false`` shows it). A server's ``retry_after`` (ERROR
``GATEWAY_BUSY`` / ``RATE_LIMITED`` before a 4017 / 4008 close) is a floor: the client waits at
least that long, plus up to half of it again when jitter is on, so the refused spread out over
the window the gateway asked for instead of landing on its last instant.
"""

from __future__ import annotations

import random
from collections.abc import Callable

BASE_S = 0.25
CAP_S = 5.0


def delay(
    attempt: int,
    retry_after: float | None = None,
    *,
    jitter: bool = True,
    base: float = BASE_S,
    cap: float = CAP_S,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before attempt ``attempt + 1`` (``attempt`` >= 1 failed so far).

    With ``retry_after``: at least it (× 1–1.5 with jitter). Otherwise ``base`` doubling per
    attempt up to ``cap`` (× 0.5–1.5 with jitter).
    """
    if retry_after is not None and retry_after > 0:
        return retry_after * (1.0 + 0.5 * rand()) if jitter else retry_after
    wait = min(cap, base * 2 ** max(0, attempt - 1))
    return wait * (0.5 + rand()) if jitter else wait
