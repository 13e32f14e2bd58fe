"""Labelled chat for the moderation model, generated from a seed (pure, no I/O).

No data set is shipped: ``generate(n, seed)`` writes the same messages for the same seed on every
machine, so the model trained from it (``workers/textmodel.py``) is reproducible and anyone can
read what it learned from. Ham is study-group chat (questions, answers, links to docs, the odd
"free" or "giveaway" in an innocent sentence); spam is what raids post (fake nitro, crypto,
invite floods, "DM me") with the obfuscations spammers use (l33t, spacing, casing, padding). A
fraction ``noise`` of labels is flipped, as in real moderator labels, so a perfect score is not
reachable and precision/recall mean something.
"""

from __future__ import annotations

import random

TOPICS = [
    "consistent hashing",
    "the fan-out",
    "kafka partitions",
    "redis streams",
    "cassandra",
    "rate limiting",
    "the heartbeat",
    "sharding",
    "leader election",
    "backpressure",
    "the hot cache",
    "snowflake ids",
    "presence",
    "websockets",
    "the load balancer",
    "quorum reads",
    "the outbox pattern",
    "idempotency keys",
    "bloom filters",
    "the write path",
]
TOOLS = ["valkey", "postgres", "sqlite", "grafana", "pytest", "asyncio", "docker", "nginx"]
NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"]
HAM = [
    "anyone tried {tool} for {topic}?",
    "I think {topic} is the hard part of this question",
    "{name} your answer on {topic} was great, thanks",
    "how would you size {topic} for 10M users?",
    "docs for {tool} are here https://docs.example.org/{tool}",
    "mock interview at 6pm, who wants to do {topic}?",
    "lol yes, {topic} again",
    "free tonight if anyone wants to pair on {topic}",
    "the giveaway question in yesterday's mock was about {topic}",
    "I wrote up my notes on {topic}, will share after lunch",
    "is {tool} fine for {topic} or is that overkill",
    "+1 to what {name} said",
    "can someone explain why {topic} needs a log?",
    "my {tool} benchmark says p99 is 4 ms, seems low?",
    "good luck with the onsite {name}!",
    "thanks, that link about {topic} helped",
    "won a free book at the meetup, it covers {topic}",
    "click through the diagram, {topic} is on page 3",
]
SPAM = [
    "free nitro for everyone click {link}",
    "FREE DISCORD NITRO giveaway claim now {link}",
    "earn $500 a day with crypto, dm me",
    "join my server {invite} free giveaways",
    "{invite} {invite} best server join now",
    "buy cheap followers and accounts {link}",
    "steam gift card giveaway, claim at {link}",
    "hot singles in your area {link}",
    "double your bitcoin in 24h guaranteed {link}",
    "@everyone airdrop live now {link}",
    "i made $3000 this week from home, ask me how",
    "get verified fast, send your token to {name}bot",
    "limited offer!!! nitro free {link}",
    "invest in {coin} now before it moons {link}",
]
COINS = ["shibx", "moonrock", "dogecash", "safemars"]
LEET = str.maketrans({"e": "3", "a": "4", "i": "1", "o": "0", "s": "5"})


def _link(rng: random.Random) -> str:
    host = rng.choice(["nitro-gift", "steamcommunlty", "free-nltro", "claim-drop", "bit-x2"])
    return f"https://{host}.{rng.choice(['ru', 'xyz', 'top', 'gift'])}/{rng.randrange(10**6)}"


def _fill(template: str, rng: random.Random) -> str:
    return template.format(
        tool=rng.choice(TOOLS),
        topic=rng.choice(TOPICS),
        name=rng.choice(NAMES),
        link=_link(rng),
        invite=f"discord.gg/{rng.randrange(36**6):x}",
        coin=rng.choice(COINS),
    )


def _obfuscate(text: str, rng: random.Random) -> str:
    r = rng.random()
    if r < 0.2:
        return text.translate(LEET)
    if r < 0.35:
        return " ".join(text)[: 2 * len(text)]
    if r < 0.5:
        return "".join(c.upper() if rng.random() < 0.5 else c for c in text)
    if r < 0.6:
        return text + " " + _fill(rng.choice(HAM), rng)  # spam hidden behind chat
    return text


def generate(n: int, *, seed: int = 19, spam_share: float = 0.3, noise: float = 0.02):
    """``n`` (text, is_spam) pairs, the same for the same arguments."""
    rng = random.Random(seed)
    out: list[tuple[str, bool]] = []
    for _ in range(n):
        spam = rng.random() < spam_share
        text = _fill(rng.choice(SPAM if spam else HAM), rng)
        if spam:
            text = _obfuscate(text, rng)
        label = (not spam) if rng.random() < noise else spam
        out.append((text, label))
    return out


def spam_message(rng: random.Random) -> str:
    """One raid message (the spam-raid scenario's bots post these)."""
    return _obfuscate(_fill(rng.choice(SPAM), rng), rng)


def ham_message(rng: random.Random) -> str:
    """One study-group message (the normal users of the spam-raid scenario)."""
    return _fill(rng.choice(HAM), rng)
