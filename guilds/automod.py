"""AutoMod-style rules per guild: what a message's text alone says about it (pure, no I/O).

A guild's ``Rules`` are kept as JSON in Redis (``keys.automod_rules``), set through the control
plane (``ControlPlane.set_automod``, so every worker reads the new rules before it accepts a
message against them) and read by the worker's moderation stage (``workers/moderation.py``).
Modelled on Discord's AutoMod trigger types (keyword, spam, keyword preset, mention spam) and
actions (block message, send alert message, timeout), in our own words and shapes:

- **keywords / regexes**: a word from ``keywords`` (case-insensitive, whole word, ``*`` at
  either end for prefix/suffix matching) or a match of one of ``regexes`` blocks the message;
  ``alert_keywords`` only alert.
- **mention spam**: more than ``max_mentions`` distinct user mentions (``<@id>``) or any
  ``@everyone``/``@here`` from a member without the right (counted as ``max_mentions``)
  ends in ``mention_action`` (block, or timeout for ``timeout_s``).
- **repeated content**: the same text from the same author more than ``max_repeats`` times in
  the caller's window (the caller counts; this module only compares) blocks it.
- **invite / link spam**: an invite link (``discord.gg/...``, ``/invite/...``) when
  ``block_invites``, or more than ``max_links`` links in one message, blocks it.
- **model**: the trained classifier's spam probability (``workers/moderation.py``) blocks at
  ``model_block`` and alerts at ``model_alert``.

The strictest verdict wins: allow < alert < block < timeout.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any, Literal

import orjson

Action = Literal["allow", "alert", "block", "timeout"]
SEVERITY: dict[str, int] = {"allow": 0, "alert": 1, "block": 2, "timeout": 3}

MAX_KEYWORDS = 1000  # Discord's ceiling per keyword rule
MAX_REGEXES = 10
MAX_REGEX_LEN = 260

_MENTION = re.compile(r"<@!?(\d{1,20})>")
_EVERYONE = re.compile(r"@(everyone|here)\b")
_LINK = re.compile(r"https?://\S+", re.IGNORECASE)
_INVITE = re.compile(
    r"(discord\.gg/|discord(app)?\.com/invite/|chatscale\.invite/)\S+", re.IGNORECASE
)


class RulesError(ValueError):
    """A rule set that cannot be used (a bad regex, too many keywords, a wrong type)."""


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Action = "allow"
    reason: str = ""
    score: float = 0.0  # the model's spam probability, when the model ran

    def __lt__(self, other: Verdict) -> bool:
        return SEVERITY[self.action] < SEVERITY[other.action]


ALLOW = Verdict()


def strictest(*verdicts: Verdict) -> Verdict:
    """The most severe verdict (the first of equals); the highest model score is kept."""
    best = ALLOW
    for v in verdicts:
        if SEVERITY[v.action] > SEVERITY[best.action]:
            best = v
    score = max((v.score for v in verdicts), default=0.0)
    return best if best.score == score else Verdict(best.action, best.reason, score)


@dataclass(frozen=True)
class Rules:
    keywords: tuple[str, ...] = ()
    regexes: tuple[str, ...] = ()
    alert_keywords: tuple[str, ...] = ()
    max_mentions: int = 5  # 0: no mention rule
    mention_action: Literal["block", "timeout"] = "block"
    max_repeats: int = 3  # 0: no repeat rule
    block_invites: bool = True
    max_links: int = 3  # 0: no link rule
    model_block: float = 0.9  # 1.0 or more: the model never blocks
    model_alert: float = 0.6
    alert_channel_id: int = 0  # where AUTOMOD_ALERT goes; 0: no alert is sent
    timeout_s: int = 60
    exempt_users: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        if len(self.keywords) + len(self.alert_keywords) > MAX_KEYWORDS:
            raise RulesError(f"at most {MAX_KEYWORDS} keywords")
        if len(self.regexes) > MAX_REGEXES:
            raise RulesError(f"at most {MAX_REGEXES} regexes")
        for pattern in self.regexes:
            if len(pattern) > MAX_REGEX_LEN:
                raise RulesError(f"a regex is at most {MAX_REGEX_LEN} characters")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise RulesError(f"bad regex {pattern!r}: {exc}") from exc
        if self.mention_action not in ("block", "timeout"):
            raise RulesError("mention_action is block or timeout")
        if not 1 <= self.timeout_s <= 28 * 24 * 3600:
            raise RulesError("timeout_s is 1 s .. 28 days")

    @cached_property
    def _block(self) -> re.Pattern[str] | None:
        return _compile(self.keywords, self.regexes)

    @cached_property
    def _alert(self) -> re.Pattern[str] | None:
        return _compile(self.alert_keywords, ())

    def to_json(self) -> str:
        return orjson.dumps(asdict(self)).decode()

    @classmethod
    def from_json(cls, raw: bytes | str | None) -> Rules:
        if not raw:
            return DEFAULT_RULES
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise RulesError(f"rules are not JSON: {exc}") from exc
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any) -> Rules:
        if not isinstance(data, dict):
            raise RulesError("rules are a JSON object")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise RulesError(f"unknown rule fields: {', '.join(sorted(unknown))}")
        try:
            return cls(
                **{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}  # type: ignore[arg-type]
            )
        except TypeError as exc:
            raise RulesError(str(exc)) from exc


#: A guild that never set rules: mention spam, repeats, invites and link floods are checked.
DEFAULT_RULES = Rules()


def _compile(keywords: tuple[str, ...], regexes: tuple[str, ...]) -> re.Pattern[str] | None:
    parts = []
    for word in keywords:
        core = re.escape(word.strip("*").lower())
        if not core:
            continue
        head = "" if word.startswith("*") else r"\b"
        tail = "" if word.endswith("*") else r"\b"
        parts.append(f"{head}{core}{tail}")
    parts += [f"(?:{r})" for r in regexes]
    return re.compile("|".join(parts), re.IGNORECASE) if parts else None


def content_of(payload: str) -> str:
    """The text of a MESSAGE_CREATE payload (empty if it has none)."""
    try:
        d = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return ""
    content = d.get("content") if isinstance(d, dict) else None
    return content if isinstance(content, str) else ""


def mentions(content: str) -> int:
    """Distinct user mentions, plus one for each @everyone/@here."""
    return len(set(_MENTION.findall(content))) + len(_EVERYONE.findall(content))


def evaluate(
    rules: Rules, content: str, *, author_id: int = 0, repeats: int = 0, model_score: float = 0.0
) -> Verdict:
    """The rules' verdict on one message. ``repeats``: how many times the author sent this
    exact text before in the caller's window; ``model_score``: the classifier's probability."""
    if author_id and author_id in rules.exempt_users:
        return ALLOW
    found: list[Verdict] = []
    if rules.max_mentions and (n := mentions(content)) > rules.max_mentions:
        found.append(Verdict(rules.mention_action, f"mention spam ({n} mentions)"))
    if rules._block is not None and (m := rules._block.search(content)):
        found.append(Verdict("block", f"keyword {m.group(0)!r}"))
    if rules.block_invites and _INVITE.search(content):
        found.append(Verdict("block", "invite link"))
    if rules.max_links and (n := len(_LINK.findall(content))) > rules.max_links:
        found.append(Verdict("block", f"link spam ({n} links)"))
    if rules.max_repeats and repeats >= rules.max_repeats:
        found.append(Verdict("block", f"repeated content ({repeats + 1} times)"))
    if model_score >= rules.model_block:
        found.append(Verdict("block", f"model {model_score:.2f}", model_score))
    elif model_score >= rules.model_alert:
        found.append(Verdict("alert", f"model {model_score:.2f}", model_score))
    if rules._alert is not None and (m := rules._alert.search(content)):
        found.append(Verdict("alert", f"alert keyword {m.group(0)!r}"))
    if not found:
        return Verdict(score=model_score)
    verdict = strictest(*found)
    return Verdict(verdict.action, verdict.reason, model_score)
