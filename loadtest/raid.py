"""``chatscale loadtest spam-raid``: spam-bot accounts created, joined and spamming among the
normal members of a seeded community, against a topology with ``SPAM_DETECT`` on.

The run (one event loop, no generator processes: a raid is tens of clients, not thousands):

- the community's online members connect and chat at its rate (``sim.messages``, seeded);
  every one of them counts the messages delivered to it;
- every ``bot_every_s`` a **bot** account is created (a fresh snowflake: its age is its id),
  joins the guild through the control plane (a join the detector counts), connects and sends
  ``bot_rate`` messages a second: the same few promotions with mentions, round the channels;
- ``newcomers`` **normal accounts** are created the same way during the run but chat like a
  person (varied words, one message every ``1/newcomer_rate`` s): young accounts are the only
  ones the detector scores, so they are where a false positive can happen;
- after ``duration`` the run waits until every bot is acted on or ``act_within_s`` (300 s) past
  its creation, then a short drain, then reads the detector's action log
  (``keys.spam_actions()``).

The report: time from account creation (the snowflake) to the action (the log's ``acted_ms``,
written after the control plane's strong path returned) p50/p99/max, bots acted on within 5
minutes, bot messages acknowledged and delivered to normal members before the action, and
every action taken against an account that is not a bot (false positives), counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from chatscale import snowflake, tokens
from chatscale.client import ChatClient, GatewayError
from chatscale.config import Settings
from chatscale.keys import Keys
from chatscale.redisconn import connect
from guilds.controlplane import ControlPlane
from loadtest import communities
from storage import User, open_store

ACT_WITHIN_S = 300.0  # the goal: every bot acted on within 5 minutes of its creation
SPAM = (
    "free nitro here claim now",
    "cheap accounts dm me",
    "join my server for giveaways",
)
RAID_NODE = 1000  # snowflake node of the accounts this scenario creates (the community's differ)


@dataclass
class RaidConfig:
    community: str = "study-group"
    duration: float = 40.0  # seconds of normal chat; bots are created within it
    bots: int = 6
    bot_every_s: float = 5.0  # a new bot account every this many seconds
    bot_rate: float = 1.0  # messages/s per bot
    bot_mentions: int = 3  # mentions per bot message
    bot_rotate: bool = False  # bots mention different members each message (evades duplicates)
    newcomers: int = 4  # normal accounts created during the run
    newcomer_rate: float = 0.2  # messages/s per newcomer (12 a minute: an eager new member)
    chat_rate: float | None = None  # normal chat messages/s (default: the community's)
    online: int | None = None
    seed: int | None = None
    act_within_s: float = ACT_WITHIN_S
    drain_s: float = 3.0
    out: Path | None = None
    storage_url: str = "sqlite:///.chatscale/loadtest/chatscale.db"
    gateways: int = 2
    workers: int = 2
    command: str = ""


@dataclass
class Account:
    kind: str  # bot | newcomer
    user_id: int
    username: str
    created_ms: int
    sent: int = 0
    acked: int = 0
    rejected: int = 0
    closed_ms: int | None = None
    close_code: int | None = None
    errors: list[str] = field(default_factory=list)


def percentile(values: list[float], p: float) -> float | None:
    """Nearest rank: the smallest value with at least ``p`` % of the values at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def bot_text(k: int, n: int, victims: list[int], mentions: int, *, rotate: bool = False) -> str:
    """Bot ``k``'s ``n``-th message: one of a few promotions with ``mentions`` mentions — the
    same members every time (a copy-paste raid), or ``rotate``: the next members each message
    (every text differs until the rotation comes round, which hides the duplicates)."""
    first = k * mentions + (n * mentions if rotate else 0)
    who = " ".join(f"<@{victims[(first + i) % len(victims)]}>" for i in range(mentions))
    return f"{SPAM[(k + n) % len(SPAM)]} {who}".strip()


def newcomer_text(rng: random.Random) -> str:
    return " ".join(rng.choice(communities.WORDS) for _ in range(rng.randint(3, 14)))


def summarize(
    accounts: list[Account],
    actions: list[dict[str, Any]],
    delivered: dict[int, dict[int, float]],
    *,
    act_within_s: float,
    normal_ids: set[int],
) -> dict[str, Any]:
    """Pure: the report's figures from what the run recorded.

    ``actions``: the detector's log entries (user, action, score, created_ms, acted_ms);
    ``delivered``: author id -> {message id: first receive ms at a normal member}."""
    first: dict[int, dict[str, Any]] = {}
    for a in sorted(actions, key=lambda a: a["acted_ms"]):
        first.setdefault(a["user"], a)
    bots = [a for a in accounts if a.kind == "bot"]
    per_bot = []
    for b in bots:
        act = first.get(b.user_id)
        acted_ms = act["acted_ms"] if act else None
        got = delivered.get(b.user_id, {})
        per_bot.append(
            {
                "user_id": str(b.user_id),
                "acted": act is not None,
                "action": act["action"] if act else None,
                "score": act["score"] if act else None,
                "to_action_s": round((acted_ms - b.created_ms) / 1000, 3) if act else None,
                "sent": b.sent,
                "acked": b.acked,
                "rejected": b.rejected,
                "delivered": len(got),
                "delivered_after_action": (
                    sum(1 for t in got.values() if t > acted_ms) if acted_ms else 0
                ),
                "close_code": b.close_code,
            }
        )
    times = [p["to_action_s"] for p in per_bot if p["to_action_s"] is not None]
    within = sum(1 for t in times if t <= act_within_s)
    bot_ids = {b.user_id for b in bots}
    false_pos = [
        {"user_id": str(u), "kind": "newcomer" if u not in normal_ids else "member", **_brief(a)}
        for u, a in first.items()
        if u not in bot_ids
    ]
    newcomers = [a for a in accounts if a.kind == "newcomer"]
    return {
        "bots": {
            "created": len(bots),
            "acted": len(times),
            "acted_within_5min": within,
            "to_action_s": {
                "p50": percentile(times, 50),
                "p99": percentile(times, 99),
                "max": max(times) if times else None,
            },
            "messages_sent": sum(b.sent for b in bots),
            "messages_acked": sum(b.acked for b in bots),
            "messages_delivered_before_action": sum(
                p["delivered"] - p["delivered_after_action"] for p in per_bot
            ),
            "messages_delivered_after_action": sum(p["delivered_after_action"] for p in per_bot),
            "per_bot": per_bot,
        },
        "normal": {
            "members_online": len(normal_ids),
            "newcomers": len(newcomers),
            "newcomer_messages_sent": sum(n.sent for n in newcomers),
            "newcomer_messages_delivered": sum(
                len(delivered.get(n.user_id, {})) for n in newcomers
            ),
            "member_messages_delivered": sum(len(delivered.get(u, {})) for u in normal_ids),
        },
        "false_positives": {"count": len(false_pos), "accounts": false_pos},
        "verdict": {
            "every_bot_acted_within_5min": bool(bots) and within == len(bots),
            "no_false_positive": not false_pos,
        },
    }


def _brief(a: dict[str, Any]) -> dict[str, Any]:
    return {k: a[k] for k in ("action", "score", "created_ms", "acted_ms")}


async def read_actions(redis: Any, keys: Keys, since_ms: int) -> list[dict[str, Any]]:
    """The detector's action log from ``since_ms`` on (its stream ids are ms timestamps)."""
    out = []
    for _, e in await redis.xrange(keys.spam_actions(), min=f"{since_ms}-0"):
        out.append(
            {
                "user": int(e[b"user"]),
                "action": e[b"action"].decode(),
                "score": float(e[b"score"]),
                "created_ms": int(e[b"created_ms"]),
                "acted_ms": int(e[b"acted_ms"]),
            }
        )
    return out


class Raid:
    """One run against gateways whose workers detect spam (the caller starts them)."""

    def __init__(self, cfg: RaidConfig, settings: Settings, urls: list[str], say=print) -> None:  # noqa: ANN001
        self.cfg = cfg
        self.settings = settings
        self.urls = urls
        self.say = say
        self.keys = Keys(settings.key_prefix)
        self.delivered: dict[int, dict[int, float]] = {}
        self.accounts: list[Account] = []
        self.clients: list[ChatClient] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.ids = snowflake.SnowflakeGenerator(RAID_NODE)

    def _token(self, user_id: int) -> str:
        ttl = self.cfg.duration + self.cfg.act_within_s + 3600
        return tokens.mint(user_id, secret=self.settings.token_secret, ttl_s=ttl, now=time.time())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _watch(self, client: ChatClient) -> None:
        """Count what reaches a normal member: author -> message id -> first receive ms."""
        while not client.closed.is_set() or not client.events.empty():
            try:
                msg = await client.next_event("MESSAGE_CREATE", timeout=3600)
            except TimeoutError:
                continue
            d = msg["d"]
            seen = self.delivered.setdefault(int(d["author"]["id"]), {})
            seen.setdefault(int(d["id"]), time.time() * 1000)

    async def _connect(self, user_id: int, device: str = "desktop") -> ChatClient:
        url = self.urls[len(self.clients) % len(self.urls)]
        client = await ChatClient.identify(url, self._token(user_id), device=device)
        self.clients.append(client)
        return client

    async def _send(self, client: ChatClient, account: Account | None, channel: int, text: str):  # noqa: ANN202
        """One message; False once the connection is gone (the account was acted on)."""
        if account is not None:
            account.sent += 1
        try:
            await client.send_message(channel, text, timeout=20)
        except asyncio.CancelledError:
            if not client.closed.is_set():
                raise
            return False
        except (ConnectionError, TimeoutError, GatewayError) as exc:
            if account is not None and not client.closed.is_set():
                account.errors.append(str(exc))
            return not client.closed.is_set()
        if account is not None:
            account.acked += 1
        return True

    async def _create(self, plane: ControlPlane, guild_id: int, kind: str, n: int) -> Account:
        user_id = self.ids.next()
        name = f"{kind}-{user_id}"
        await plane.store.put_user(User(user_id, name))
        await plane.add_member(guild_id, user_id)
        acc = Account(kind, user_id, name, snowflake.timestamp_ms(user_id))
        self.accounts.append(acc)
        return acc

    async def _bot(
        self, plane: ControlPlane, guild_id: int, k: int, channels: list[int], victims: list[int]
    ) -> None:
        acc = await self._create(plane, guild_id, "bot", k)
        client = await self._connect(acc.user_id)
        self._spawn(self._rejections(client, acc))
        gap = 1 / self.cfg.bot_rate
        deadline = acc.created_ms / 1000 + self.cfg.act_within_s
        n = 0
        while not client.closed.is_set() and time.time() < deadline:
            started = time.monotonic()
            text = bot_text(k, n, victims, self.cfg.bot_mentions, rotate=self.cfg.bot_rotate)
            if not await self._send(client, acc, channels[n % len(channels)], text):
                break
            n += 1
            await asyncio.sleep(max(0.0, gap - (time.monotonic() - started)))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(client.closed.wait(), max(0.0, deadline - time.time()))
        acc.closed_ms = int(time.time() * 1000) if client.closed.is_set() else None
        acc.close_code = client.close_code

    async def _rejections(self, client: ChatClient, acc: Account) -> None:
        while not client.closed.is_set():
            try:
                await client.next_event("MESSAGE_REJECTED", timeout=3600)
            except TimeoutError:
                continue
            acc.rejected += 1

    async def _newcomer(
        self, plane: ControlPlane, guild_id: int, k: int, channels: list[int], until: float
    ) -> None:
        acc = await self._create(plane, guild_id, "newcomer", k)
        client = await self._connect(acc.user_id, device=("desktop", "mobile")[k % 2])
        self._spawn(self._watch(client))
        rng = random.Random((self.cfg.seed or 0) * 31 + k)
        while time.time() < until and not client.closed.is_set():
            await asyncio.sleep(rng.uniform(0.5, 1.5) / self.cfg.newcomer_rate)
            if time.time() >= until:
                break
            await self._send(
                client, acc, channels[rng.randrange(len(channels))], newcomer_text(rng)
            )

    async def run(self, sim: communities.SimCommunity, load: dict[str, Any]) -> dict[str, Any]:
        cfg = self.cfg
        spec = sim.spec
        seed = spec.seed if cfg.seed is None else cfg.seed
        user_ids, channels, guild_id = load["user_ids"], load["channel_ids"], load["guild_id"]
        online = [m.index for m in sim.online]
        rate = cfg.chat_rate if cfg.chat_rate is not None else spec.chat.messages_per_minute / 60
        sends = sim.messages(start=0.0, seconds=cfg.duration, per_second=rate, seed=seed + 1)
        store = await open_store(
            self.settings.storage_url, bucket_span_ms=self.settings.bucket_span_ms
        )
        plane = ControlPlane(self.settings, store=store)
        redis = connect(self.settings)
        started_ms = int(time.time() * 1000)
        try:
            members: dict[int, ChatClient] = {}
            for i in online:
                members[i] = await self._connect(user_ids[i], device=sim.members[i].device)
                self._spawn(self._watch(members[i]))
            self.say(f"raid        {len(members)} members online; {cfg.bots} bots every "
                     f"{cfg.bot_every_s:g}s at {cfg.bot_rate:g} msg/s, {cfg.newcomers} newcomers")  # fmt: skip
            t0 = time.monotonic()
            until = time.time() + cfg.duration
            victims = [user_ids[i] for i in online]
            people: list[asyncio.Task[Any]] = []
            bots: list[asyncio.Task[Any]] = []
            events = sorted(
                [(k * cfg.bot_every_s, "bot", k) for k in range(cfg.bots)]
                + [
                    ((k + 0.5) * cfg.duration / max(1, cfg.newcomers) / 2, "new", k)
                    for k in range(cfg.newcomers)
                ]  # fmt: skip
            )
            timeline = sorted([(m.at, "msg", m) for m in sends] + events, key=lambda e: e[0])
            for at, what, item in timeline:
                await asyncio.sleep(max(0.0, at - (time.monotonic() - t0)))
                if what == "msg":
                    client = members[item.sender]
                    self._spawn(self._send(client, None, channels[item.channel], item.content))
                elif what == "bot":
                    bots.append(asyncio.create_task(self._bot(plane, guild_id, item, channels, victims)))  # fmt: skip
                else:
                    people.append(asyncio.create_task(self._newcomer(plane, guild_id, item, channels, until)))  # fmt: skip
            await asyncio.sleep(max(0.0, cfg.duration - (time.monotonic() - t0)))
            self.say("raid        chat over; waiting for every bot to be acted on (or 5 min) ...")
            await asyncio.gather(*bots, *people)
            await asyncio.sleep(cfg.drain_s)
            actions = await read_actions(redis, self.keys, started_ms)
        finally:
            for c in self.clients:
                with contextlib.suppress(Exception):
                    await c.close()
            for t in list(self.tasks):
                t.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            await redis.aclose()
            await plane.close()
            await store.close()
        result = summarize(
            self.accounts,
            actions,
            self.delivered,
            act_within_s=cfg.act_within_s,
            normal_ids={user_ids[i] for i in online},
        )
        result["config"] = {
            k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()
        }
        result["community"] = spec.name
        result["wall_s"] = round(time.time() - started_ms / 1000, 1)
        result["errors"] = [e for a in self.accounts for e in a.errors][:20]
        return result


async def run(cfg: RaidConfig, *, topology: Any = None, say=print) -> dict[str, Any]:  # noqa: ANN001
    """Start a topology with ``SPAM_DETECT`` on (unless one is given), load the community, raid."""
    from loadtest.engine import load_community
    from loadtest.topology import Embedded

    sim = communities.load(cfg.community, online=cfg.online)
    own = topology is None
    if own:
        workdir = (cfg.out or Path(".chatscale/loadtest")) / "topology"
        topology = Embedded(
            workdir,
            storage_url=cfg.storage_url,
            gateways=cfg.gateways,
            workers=cfg.workers,
            env={"CHATSCALE_SPAM_DETECT": "true"},
        )
    await topology.start(say=say)
    try:
        load = await load_community(sim, topology.settings, say=say)
        return await Raid(cfg, topology.settings, topology.urls, say=say).run(sim, load)
    finally:
        if own:
            await topology.stop()


def text(r: dict[str, Any]) -> str:
    b, n, fp = r["bots"], r["normal"], r["false_positives"]
    t = b["to_action_s"]

    def s(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}s"

    lines = [
        f"spam-raid on {r['community']} ({r['wall_s']}s)",
        f"  bots created             {b['created']}",
        f"  bots acted on            {b['acted']} ({b['acted_within_5min']} within 5 min)",
        f"  creation -> action       p50 {s(t['p50'])}  p99 {s(t['p99'])}  max {s(t['max'])}",
        f"  bot messages             sent {b['messages_sent']}, acked {b['messages_acked']}, "
        f"delivered before the action {b['messages_delivered_before_action']} "
        f"(after: {b['messages_delivered_after_action']})",
        f"  normal members online    {n['members_online']}, newcomers {n['newcomers']} "
        f"(sent {n['newcomer_messages_sent']}, delivered {n['newcomer_messages_delivered']})",
        f"  false positives          {fp['count']}",
    ]
    v = r["verdict"]
    lines.append(
        "  verdict                  "
        + ("clean" if all(v.values()) else ", ".join(k for k, ok in v.items() if not ok))
    )
    return "\n".join(lines)


def write(r: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.json"
    path.write_text(json.dumps(r, indent=2))
    return path
