"""IDENTIFY admission and degrade mode: how one gateway absorbs a thundering herd (pure logic).

Picture. A streamer goes live and thousands of viewers IDENTIFY within seconds. Each IDENTIFY
costs the gateway metadata reads, a presence snapshot, route writes and a READY frame; run them
all at once and the event loop stalls, heartbeats and deliveries of the sessions already
connected are late, and Redis calls time out. Two mechanisms keep the loop responsive:

- **Admission** (``Admission``): at most ``concurrency`` IDENTIFYs are worked on at once
  (Discord's ``max_concurrency``); up to ``queue`` more wait in FIFO order for a slot, at most
  ``max_wait_s`` each (a predicted wait of ``HOPELESS`` times that is refused at once). Beyond
  that the gateway refuses with ERROR ``GATEWAY_BUSY`` carrying ``retry_after`` and closes with
  4017: the client comes back later instead of holding a socket and a timer in a queue that
  cannot serve it in time. ``retry_after`` is an appointment: the time the queue ahead needs at
  the measured IDENTIFY duration (an exponentially weighted mean), plus one slot for every
  client refused before it, within [``min_retry_s``, ``max_retry_s``]; so the refused herd comes
  back spread at the pace the gateway serves (clients add jitter on top).
- **Degrade mode** (``Degrade``): when event-loop lag or the age of the delivery being
  dispatched passes a threshold, the gateway sheds PRESENCE_UPDATE and TYPING_START dispatches
  (counted, never messages) until both stay under half their threshold for ``hold_s``.

The gateway (``gateway/server.py``) holds the asyncio futures; here are only counts, clocks and
decisions, so the unit tests drive them with an injected clock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

#: An IDENTIFY is refused at once only when its predicted wait is this many times the queue's
#: bound (``max_wait_s``); up to that it queues, and the bound itself is enforced on the wait
#: (``StormGuard.admit``). The prediction is pessimistic in a herd's first seconds: the first
#: IDENTIFYs share the loop with a thousand WebSocket handshakes and are slow, so refusing at
#: the bound turned away clients the gateway then served within seconds, with 20-30 s
#: appointments (docs/benchmarks.md, issue 14).
HOPELESS = 2.0

#: Event types a degraded gateway stops dispatching (never MESSAGE_CREATE or anything else).
SHEDDABLE = frozenset({"PRESENCE_UPDATE", "TYPING_START"})


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with one IDENTIFY: ``run`` now, ``queue`` (wait for a slot) or ``refuse``."""

    kind: str  # "run" | "queue" | "refuse"
    retry_after: float = 0.0


class Admission:
    """Bounded IDENTIFY concurrency with a bounded FIFO queue (no I/O, no asyncio).

    ``offer(ticket)`` decides; a queued ticket is handed a slot by ``finish`` of a running one
    (its return value), or leaves the queue with ``withdraw`` (its connection closed).
    """

    def __init__(
        self,
        concurrency: int,
        queue: int,
        *,
        clock: Callable[[], float],
        initial_cost_s: float = 0.05,
        min_retry_s: float = 1.0,
        max_retry_s: float = 30.0,
        max_wait_s: float | None = None,
    ) -> None:
        if concurrency < 1 or queue < 0:
            raise ValueError("concurrency must be >= 1 and queue >= 0")
        self.concurrency = concurrency
        self.queue_size = queue
        self.clock = clock
        self.cost_s = initial_cost_s  # EWMA of one IDENTIFY's duration
        self.min_retry_s = min_retry_s
        self.max_retry_s = max_retry_s
        self.max_wait_s = max_wait_s  # queue only if the predicted wait is within this
        self.running = 0
        self.waiting: deque[object] = deque()
        self.admitted = 0
        self.queued = 0
        self.refused = 0
        self._booked_until = 0.0  # clock time of the last refused client's appointment

    def predicted_wait(self) -> float:
        """Seconds until the IDENTIFYs ahead of a newcomer would have drained."""
        return (self.running + len(self.waiting)) / self.concurrency * self.cost_s

    def retry_after(self) -> float:
        """``predicted_wait`` within [``min_retry_s``, ``max_retry_s``]."""
        drain = self.predicted_wait()
        return round(min(self.max_retry_s, max(self.min_retry_s, drain)), 3)

    def _appointment(self) -> float:
        """``retry_after`` for the next refused IDENTIFY: a slot of its own after the queue has
        drained and after every earlier refused client's slot (one ``cost_s / concurrency``
        apart), so the refused come back spread at the pace the gateway serves them instead of
        together as a second herd. Within [``min_retry_s``, ``max_retry_s``]."""
        now = self.clock()
        start = max(now + self.predicted_wait(), self._booked_until)
        self._booked_until = start + self.cost_s / self.concurrency
        return round(min(self.max_retry_s, max(self.min_retry_s, start - now)), 3)

    def offer(self, ticket: object) -> Verdict:
        if self.running < self.concurrency and not self.waiting:
            self.running += 1
            self.admitted += 1
            return Verdict("run")
        if len(self.waiting) < self.queue_size and (
            self.max_wait_s is None or self.predicted_wait() <= HOPELESS * self.max_wait_s
        ):
            self.waiting.append(ticket)
            self.queued += 1
            return Verdict("queue")
        self.refused += 1
        return Verdict("refuse", self._appointment())

    def finish(self, started: float | None, *, served: bool = True) -> object | None:
        """A running IDENTIFY ended (READY, refusal or failure): record its duration if it was
        ``served`` (READY; not a Redis timeout or a run out of budget, whose seconds say
        nothing of what serving one costs and would stretch every appointment after it; and
        not ``started`` None: a slot passed on by a ticket that was gone) and hand the slot to
        the oldest waiting ticket, which is returned (None: the slot is free)."""
        if started is not None and served:
            took = max(0.0, self.clock() - started)
            self.cost_s = 0.8 * self.cost_s + 0.2 * took
        if self.waiting:
            self.admitted += 1
            return self.waiting.popleft()  # the slot passes on: ``running`` is unchanged
        self.running = max(0, self.running - 1)
        return None

    def withdraw(self, ticket: object) -> bool:
        """A queued ticket gave up (its connection closed); True if it was still waiting."""
        try:
            self.waiting.remove(ticket)
        except ValueError:
            return False
        return True


class Degrade:
    """Shed presence and typing while the gateway is behind, with hysteresis (no I/O).

    ``observe_lag`` (event-loop lag, seconds) and ``observe_age`` (age of the delivery being
    dispatched, seconds) feed it; a threshold of 0 turns that trigger off. It enters degrade
    mode as soon as one passes its threshold and leaves it once both stayed under half their
    thresholds for ``hold_s``.
    """

    def __init__(
        self,
        *,
        lag_s: float,
        age_s: float,
        hold_s: float,
        clock: Callable[[], float],
        enabled: bool = True,
    ) -> None:
        self.lag_s = lag_s
        self.age_s = age_s
        self.hold_s = hold_s
        self.clock = clock
        self.enabled = enabled
        self.active = False
        self.episodes = 0  # times it entered degrade mode
        self.shed: dict[str, int] = {}  # event type -> dispatches not sent
        self._calm_since: float | None = None
        self._lag = 0.0
        self._age = 0.0

    def observe_lag(self, lag: float) -> None:
        self._lag = lag
        self._update()

    def observe_age(self, age: float) -> None:
        self._age = age
        self._update()

    def _over(self, value: float, threshold: float, share: float) -> bool:
        return threshold > 0 and value > threshold * share

    def _update(self) -> None:
        if not self.enabled:
            return
        now = self.clock()
        hot = self._over(self._lag, self.lag_s, 1.0) or self._over(self._age, self.age_s, 1.0)
        warm = self._over(self._lag, self.lag_s, 0.5) or self._over(self._age, self.age_s, 0.5)
        if hot:
            if not self.active:
                self.episodes += 1
            self.active = True
            self._calm_since = None
        elif self.active:
            if warm:
                self._calm_since = None
            elif self._calm_since is None:
                self._calm_since = now
            elif now - self._calm_since >= self.hold_s:
                self.active = False
                self._calm_since = None

    def sheds(self, t: str, recipients: int = 1) -> bool:
        """True if a dispatch of type ``t`` is to be dropped now (and count it)."""
        if not self.active or t not in SHEDDABLE:
            return False
        self.shed[t] = self.shed.get(t, 0) + recipients
        return True
