"""The worker's moderation stage: score a batch before the hot write, act on the verdicts.

Where it runs: ``Pipeline.process`` calls ``screen`` on the decoded batch before authorization
and the hot-cache write (the acceptance point), and ``after`` once the batch is fanned out.
``CHATSCALE_MODERATION_MODE=off`` (the default) builds no stage at all: the pipeline is as it
was, to the instruction.

One batch, one call: the guilds' rules are read with one MGET, the classifier scores the whole
batch at once (``Classifier.score``), within ``MODERATION_BUDGET_MS``. Then, per mode:

- ``shadow``: verdicts are counted (``chatscale_moderation_verdicts_total{mode="shadow"}``) and
  logged; every message goes on as if the stage were not there;
- ``enforce``: ``block`` -> the message leaves the batch and its author alone gets
  MESSAGE_REJECTED ``AUTOMOD_BLOCKED``; ``timeout`` -> the same, and the author is timed out
  in the guild through the control plane (``ControlPlane.timeout_member``, in the background so
  the batch does not wait for gateways to confirm); ``alert`` -> delivered, and once fanned out
  an ``AUTOMOD_ALERT`` goes to the guild's ``alert_channel_id`` (only members who may see that
  channel get it).

The classifier failing (an exception) or overrunning its budget: ``MODERATION_FAIL=open``
passes the batch unscored, ``closed`` rejects it with ``AUTOMOD_UNAVAILABLE`` (enforce only:
shadow never blocks). A classifier that computes synchronously (the model) cannot be stopped
half way: its verdicts are dropped if it overran, so the budget bounds what is *decided* late,
and the latency metric shows what it cost.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import redis.asyncio as aioredis

from chatscale.config import Settings
from chatscale.keys import Keys
from chatscale.wire import Delivery, IngestMessage, dumps, encode_entry
from guilds.automod import ALLOW, Rules, RulesError, Verdict, content_of, evaluate, mentions
from workers import metrics as worker_metrics

log = logging.getLogger("chatscale.moderation")

BLOCKED = "AUTOMOD_BLOCKED"
UNAVAILABLE = "AUTOMOD_UNAVAILABLE"
REPEAT_WINDOW_S = 60.0  # the repeated-content rule counts the author's same text within this
REPEAT_MEMORY = 50_000  # (author, text) pairs remembered per worker, oldest forgotten first


@dataclass(slots=True)
class Item:
    """One message as the classifier sees it."""

    message: IngestMessage
    content: str
    rules: Rules
    repeats: int = 0


class Classifier(Protocol):
    """Scores a whole batch; returns one verdict per item, in order. May raise (a failure)."""

    name: str

    async def score(self, items: list[Item]) -> list[Verdict]: ...


class RulesClassifier:
    """The guild's AutoMod rules, optionally with the trained model's probability."""

    def __init__(self, *, model: bool = False, delay_ms: float = 0.0, down: bool = False) -> None:
        self.name = "rules+model" if model else "rules"
        self._model = None
        if model:
            from workers.textmodel import TextModel

            self._model = TextModel()
        self.delay_s = delay_ms / 1000
        self.down = down

    def warm(self) -> None:
        if self._model is not None:
            self._model.train()

    async def score(self, items: list[Item]) -> list[Verdict]:
        if self.down:
            raise ConnectionError("classifier down (MODERATION_DOWN)")
        if self.delay_s:
            await asyncio.sleep(self.delay_s)  # a slow classifier (MODERATION_DELAY_MS)
        probs = (
            self._model.scores([i.content for i in items])
            if self._model is not None
            else [0.0] * len(items)
        )
        return [
            evaluate(
                i.rules,
                i.content,
                author_id=i.message.author_id,
                repeats=i.repeats,
                model_score=p,
            )
            for i, p in zip(items, probs, strict=True)
        ]


def build_classifier(settings: Settings) -> RulesClassifier:
    kind = settings.moderation_classifier
    return RulesClassifier(
        model=kind != "rules",
        delay_ms=settings.moderation_delay_ms,
        down=settings.moderation_down,
    )


@dataclass
class Screened:
    passed: list[IngestMessage]
    blocked: list[tuple[IngestMessage, str]]
    verdicts: dict[int, Verdict]  # message id -> verdict, for ``after``
    seen: list[IngestMessage] = field(default_factory=list)  # the whole batch (the detector)


class Moderation:
    """The stage (see the module docstring). ``timeouts`` is called for each timeout verdict
    with (guild id, user id, seconds) and is expected to return quickly (it schedules)."""

    def __init__(
        self,
        settings: Settings,
        *,
        redis: aioredis.Redis,
        keys: Keys,
        classifier: Classifier | None = None,
        timeouts: Callable[[int, int, int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.keys = keys
        self.classifier = classifier or build_classifier(settings)
        self.enforce = settings.moderation_mode == "enforce"
        self.budget_s = settings.moderation_budget_ms / 1000
        self.timeouts = timeouts
        self.clock = clock
        self._rules: dict[bytes, Rules] = {}
        self._seen: dict[tuple[int, bytes], deque[float]] = {}
        self.failures = 0
        self.counts: dict[str, int] = {}

    async def screen(self, messages: list[IngestMessage]) -> Screened:
        if not messages:
            return Screened([], [], {})
        started = time.perf_counter()
        items = await self._items(messages)
        try:
            verdicts = await asyncio.wait_for(self.classifier.score(items), self.budget_s)
            if time.perf_counter() - started > self.budget_s:
                raise TimeoutError("classifier overran its budget")
        except Exception as exc:  # noqa: BLE001 - any failure of the classifier is a fail mode
            self.failures += 1
            kind = "timeout" if isinstance(exc, TimeoutError) else "error"
            worker_metrics.moderation_failed(kind, self.settings.moderation_fail)
            log.warning("moderation %s (%s): failing %s", kind, exc, self.settings.moderation_fail)
            worker_metrics.moderation_cost(time.perf_counter() - started, len(messages))
            if self.enforce and self.settings.moderation_fail == "closed":
                return Screened([], [(m, UNAVAILABLE) for m in messages], {})
            return Screened(list(messages), [], {})
        worker_metrics.moderation_cost(time.perf_counter() - started, len(messages))
        mode = self.settings.moderation_mode
        passed: list[IngestMessage] = []
        blocked: list[tuple[IngestMessage, str]] = []
        acted: dict[int, Verdict] = {}
        for item, v in zip(items, verdicts, strict=True):
            m = item.message
            self.counts[v.action] = self.counts.get(v.action, 0) + 1
            worker_metrics.moderation_verdict(mode, v.action)
            if v.action != "allow":
                log.info("moderation %s: %s message %s by %s (%s)", mode, v.action, m.id,
                         m.author_id, v.reason)  # fmt: skip
            if not self.enforce or v.action in ("allow", "alert"):
                passed.append(m)
                if self.enforce and v.action == "alert":
                    acted[m.id] = v
                continue
            blocked.append((m, BLOCKED))
            if v.action == "timeout" and self.timeouts is not None:
                self.timeouts(m.guild_id, m.author_id, item.rules.timeout_s)
        return Screened(passed, blocked, acted)

    async def _items(self, messages: list[IngestMessage]) -> list[Item]:
        guilds = sorted({m.guild_id for m in messages})
        raw = await self.redis.mget([self.keys.automod_rules(g) for g in guilds])
        rules: dict[int, Rules] = {}
        for guild_id, value in zip(guilds, raw, strict=True):
            value = value or b""
            if value not in self._rules:
                try:
                    self._rules[value] = Rules.from_json(value)
                except RulesError as exc:  # set_automod validates; a hand-written key may not
                    log.error("guild %s has unusable automod rules (%s); defaults", guild_id, exc)
                    self._rules[value] = Rules()
            rules[guild_id] = self._rules[value]
        now = self.clock()
        items = []
        for m in messages:
            content = content_of(m.payload)
            items.append(Item(m, content, rules[m.guild_id], self._repeats(m, content, now)))
        return items

    def _repeats(self, m: IngestMessage, content: str, now: float) -> int:
        """How often this author sent this text in the last REPEAT_WINDOW_S (this worker's
        view: a flood spread over channels on other workers' shards is counted per worker)."""
        key = (m.author_id, hashlib.blake2b(content.encode(), digest_size=8).digest())
        times = self._seen.pop(key, None) or deque()
        while times and now - times[0] > REPEAT_WINDOW_S:
            times.popleft()
        count = len(times)
        times.append(now)
        self._seen[key] = times  # re-inserted: the dict's order is least recently used first
        if len(self._seen) > REPEAT_MEMORY:
            del self._seen[next(iter(self._seen))]
        return count

    async def after(self, accepted: list[IngestMessage], screened: Screened) -> None:
        """Alerts for accepted messages with an ``alert`` verdict: one AUTOMOD_ALERT per message
        to every gateway routing the guild, for the sessions that may see the alert channel."""
        alerts = [m for m in accepted if m.id in screened.verdicts]
        if not alerts:
            return
        rules = await self._items(alerts)
        async with self.redis.pipeline(transaction=False) as pipe:
            for item in rules:
                m = item.message
                channel = item.rules.alert_channel_id
                if not channel:
                    continue
                v = screened.verdicts[m.id]
                notice = Delivery(
                    t="AUTOMOD_ALERT",
                    guild_id=m.guild_id,
                    channel_id=channel,
                    payload=dumps(
                        {
                            "guild_id": str(m.guild_id),
                            "channel_id": str(channel),
                            "message_id": str(m.id),
                            "message_channel_id": str(m.channel_id),
                            "user_id": str(m.author_id),
                            "reason": v.reason,
                            "score": round(v.score, 3),
                            "content": item.content[:200],
                            "mentions": mentions(item.content),
                        }
                    ),
                )
                for gw in await self.redis.smembers(self.keys.route(m.guild_id)):
                    pipe.xadd(
                        self.keys.deliver(gw.decode()),
                        encode_entry(notice),
                        maxlen=self.settings.delivery_maxlen,
                        approximate=True,
                    )
            await pipe.execute()


__all__ = ["ALLOW", "BLOCKED", "UNAVAILABLE", "Classifier", "Item", "Moderation", "Screened"]
