"""``chatscale bench ingest``: the highest message rate sustained with ack p99 < 100 ms.

The issue's figure: "ingest: max msg/s sustained with p99 < 100 ms (1,000 clients in 4-member
channels), and server CPU per inbound message". For each target rate, a fresh embedded topology
(1 gateway, 1 worker, presence, Valkey, SQLite history with the hot cache: the defaults) with
the rate limits raised, seeded with ``clients`` users in guilds of ``group`` members, one
channel each. Every client is a light connection (``loadtest/lightclient.py``) and a sender.

Load: open loop. Message ``j`` is due at ``t0 + j / rate`` and goes out on client
``j % clients``'s connection (each client sends on a fixed period of ``clients / rate``),
whatever number of earlier messages still await their ack, so a server that falls behind
shows as queueing in the latencies instead of slowing the sender down. Each SEND_MESSAGE
carries the nonce ``i<j>`` and the content ``B<j> ...``: the MESSAGE_ACK (it echoes the nonce)
and every member's MESSAGE_CREATE (the content) say which message it is. Latencies count
from the time the message was due, not when it went out (as ``bench chat``: a generator held
up does not hide the delay); how late the generator itself sent is reported as ``send_lag``.

Measured over the window ``[warmup, warmup + duration)`` after ``t0`` (the warm-up's messages
are sent, acked and checked for loss, but not timed): acks received per second in the window
(achieved msg/s), ack and delivery latency percentiles of the messages due in the window (a
message still unacked after the drain counts with the latency it had reached then), server
CPU seconds per acked message (every server process, and per role), Valkey commands per acked
message (``INFO commandstats`` before and after, ``INFO`` itself excluded). After sending
stops, the bench waits (at most ``drain_s``) for every ack and every member's copy; a message
acked but missing at some member then is lost. A send the gateway refuses (an ERROR or
MESSAGE_REJECTED carrying its nonce, e.g. UNAVAILABLE when the gateway cannot queue it) is
counted by code, not retried: it is neither acked nor unacked, and the achieved rate misses it.

A run sustains its rate when achieved >= 95 % of the target and ack p99 < 100 ms; a rate is
sustained when the median of its runs is. Rates alternate within each of ``repeat`` rounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import statistics
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psutil

from chatscale.discovery import TopologyError
from chatscale.redisconn import connect
from chatscale.wire import Op
from guilds import community
from loadtest import floor
from loadtest.latency import LatencyRecorder
from loadtest.lightclient import Receiver, cpu_seconds, open_receivers, seeded_topology

#: The limits a bench must not hit: it measures the pipeline, not the rate limits.
ENV = {
    "CHATSCALE_EVENTS_PER_WINDOW": "1000000",
    "CHATSCALE_USER_MESSAGES_PER_WINDOW": "1000000",
    "CHATSCALE_MAX_CONNECTIONS_PER_IP": "0",
    "CHATSCALE_HEARTBEAT_INTERVAL_MS": "60000",  # no heartbeats needed during a run
}
SUSTAIN_FRACTION = 0.95  # achieved / target
SUSTAIN_P99_MS = 100.0  # ack p99 below this
CONTENT_CHARS = 64  # "B<j> " padded: a short chat message
ROLES = ("gateway", "worker", "presence", "valkey", "floor")

_CONTENT_INDEX = re.compile(rb'"content":"B(\d+)')
_NONCE_INDEX = re.compile(rb'"nonce":"i(\d+)"')
_CODE = re.compile(rb'"code":"([A-Z_]+)"')


# ---- pure parts ---------------------------------------------------------------------------


def parse_rates(text: str) -> list[float]:
    """``"250,500,1000"`` -> ``[250.0, 500.0, 1000.0]``; ValueError (one line) otherwise."""
    rates = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            rate = float(part)
        except ValueError:
            raise ValueError(
                f"--rate: {part!r} is not a number (a comma list of msg/s, e.g. 250,500,1000)"
            ) from None
        if not math.isfinite(rate) or rate <= 0:
            raise ValueError(f"--rate: {part!r} must be a positive number of msg/s")
        rates.append(rate)
    if len(set(rates)) != len(rates):
        raise ValueError(f"--rate: {text!r} names a rate twice")
    return rates


def check(
    *, rates: list[float], clients: int, group: int, duration: float, warmup: float, repeat: int
) -> None:
    """ValueError (one line) for a load the bench cannot run."""
    if clients < 1:
        raise ValueError(f"--clients must be at least 1, not {clients}")
    if not 1 <= group <= clients:
        raise ValueError(f"--group must be between 1 and --clients ({clients}), not {group}")
    if not (math.isfinite(duration) and duration > 0):
        raise ValueError(f"--duration must be positive seconds, not {duration:g}")
    if not (math.isfinite(warmup) and warmup >= 0):
        raise ValueError(f"--warmup must be zero or positive seconds, not {warmup:g}")
    if repeat < 1:
        raise ValueError(f"--repeat must be at least 1, not {repeat}")
    for rate in rates:
        lo, hi = window_indices(rate, warmup, duration)
        if hi <= lo:
            raise ValueError(f"--rate {rate:g} sends no message in {duration:g} s: raise either")


def window_indices(rate: float, warmup: float, duration: float) -> tuple[int, int]:
    """Messages ``j`` due in ``[warmup, warmup + duration)``: ``range(*window_indices(...))``;
    the run sends ``range(0, hi)``."""

    def first_at_or_after(t: float) -> int:
        return max(0, math.ceil(t * rate - 1e-9))

    return first_at_or_after(warmup), first_at_or_after(warmup + duration)


def sustains(rate: float, achieved: float | None, ack_p99_ms: float | None) -> bool:
    """The verdict: achieved >= 95 % of the target and ack p99 < 100 ms."""
    if achieved is None or ack_p99_ms is None:
        return False
    return achieved >= SUSTAIN_FRACTION * rate and ack_p99_ms < SUSTAIN_P99_MS


def median_of(values: Iterable[float | None]) -> dict[str, Any]:
    """``{"median": ..., "runs": [...]}``; the median of the runs that have a value (None if
    none has)."""
    runs = list(values)
    present = [v for v in runs if v is not None]
    return {"median": statistics.median(present) if present else None, "runs": runs}


#: The per-run figures summarised across rounds (median + every run).
SUMMARY_KEYS = (
    "achieved_msg_per_s",
    "ack_p50_ms",
    "ack_p99_ms",
    "ack_max_ms",
    "delivery_p50_ms",
    "delivery_p99_ms",
    "lost",
    "unacked",
    "refused",
    "cpu_ms_per_msg",
    "valkey_commands_per_msg",
    "send_lag_p99_ms",
)


def summarize(rate: float, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One rate's runs: median and values of each figure, per-role CPU, the verdict."""
    summary = {key: median_of(r.get(key) for r in runs) for key in SUMMARY_KEYS}
    roles = sorted({role for r in runs for role in r.get("cpu_ms_per_msg_by_role", {})})
    summary["cpu_ms_per_msg_by_role"] = {
        role: median_of(r.get("cpu_ms_per_msg_by_role", {}).get(role) for r in runs)
        for role in roles
    }
    achieved = summary["achieved_msg_per_s"]["median"]
    p99 = summary["ack_p99_ms"]["median"]
    return {"rate": rate, "sustained": sustains(rate, achieved, p99), "summary": summary}


def highest_sustained(per_rate: list[dict[str, Any]]) -> float | None:
    held = [r["rate"] for r in per_rate if r["sustained"]]
    return max(held) if held else None


# ---- one run ------------------------------------------------------------------------------


def spec(clients: int, group: int) -> community.Community:
    """``clients`` users; guild ``g`` holds clients ``g*group .. g*group+group-1`` (the last
    guild the rest), one channel each."""
    names = [f"ingest-{i:05d}" for i in range(clients)]
    guilds = []
    for g, start in enumerate(range(0, clients, group)):
        members = names[start : start + group]
        guilds.append(
            community.GuildSpec(
                name=f"ingest-{g:05d}", owner=members[0], channels=["bench"], members=members
            )
        )
    return community.Community(name="ingest-bench", guilds=guilds)


class _Snapshot:
    def __init__(
        self, at: float, cpu: dict[str, float], me: float, commands: dict[str, int] | None
    ):
        self.at, self.cpu, self.me, self.commands = at, cpu, me, commands


async def _snapshot(
    clock: Callable[[], float], procs: dict[str, psutil.Process], valkey: Any
) -> _Snapshot:
    try:
        cpu = cpu_seconds(procs)
    except psutil.Error as exc:
        raise TopologyError(f"a server process went away mid-run: {exc}") from None
    at = clock()
    t = psutil.Process().cpu_times()
    commands = None  # no Valkey behind the system measured (the floor)
    if valkey is not None:
        stats = await valkey.info("commandstats")
        commands = {
            k.removeprefix("cmdstat_"): int(v["calls"])
            for k, v in stats.items()
            if k.startswith("cmdstat_") and k != "cmdstat_info"
        }
    return _Snapshot(at, cpu, t.user + t.system, commands)


def _role(process_name: str) -> str:
    return process_name.split("-")[0]  # gateway-0 -> gateway, presence-1 -> presence


async def run_once(
    workdir: Path,
    *,
    rate: float,
    clients: int,
    group: int,
    duration: float,
    warmup: float,
    drain_s: float = 10.0,
) -> dict[str, Any]:
    """One fresh topology, one target rate: the run's figures (see the module docstring)."""
    async with seeded_topology(workdir, spec(clients, group), env=ENV, start_timeout_s=120) as (
        topo,
        minted,
        channels,
    ):
        valkey = connect(topo.settings)
        try:
            await valkey.ping()
            url = topo.urls[0]
            return await _drive(
                [(url, minted[f"ingest-{c:05d}"]) for c in range(clients)],
                [channels[c // group].id for c in range(clients)],
                topo.processes(),
                valkey,
                _Load(rate=rate, clients=clients, group=group, warmup=warmup, duration=duration),
                drain_s=drain_s,
            )
        finally:
            await valkey.aclose()


async def run_floor_once(
    workdir: Path,
    *,
    rate: float,
    clients: int,
    group: int,
    duration: float,
    warmup: float,
    drain_s: float = 10.0,
) -> dict[str, Any]:
    """The same load against the bare-websockets floor (``loadtest/floor.py``) in its grouped
    mode: each message acknowledged and sent to the members of its channel, nothing else (no
    Redis, no storage, no permissions)."""
    tokens = [f"floor-{c}" for c in range(clients)]
    channel_of = [1 + c // group for c in range(clients)]
    groups = {t: str(ch) for t, ch in zip(tokens, channel_of, strict=True)}
    async with floor.running(workdir, groups) as (url, proc):
        return await _drive(
            [(url, t) for t in tokens],
            channel_of,
            {"floor": proc},
            None,
            _Load(rate=rate, clients=clients, group=group, warmup=warmup, duration=duration),
            drain_s=drain_s,
        )


async def _drive(
    pairs: list[tuple[str, str]],
    channel_of: list[int],
    procs: dict[str, psutil.Process],
    valkey: Any,
    load: _Load,
    *,
    drain_s: float,
) -> dict[str, Any]:
    conns: list[Receiver] = []
    try:
        try:
            conns = await open_receivers(pairs, load.on_message)
        except (OSError, TimeoutError) as exc:
            raise TopologyError(f"could not connect {len(pairs)} clients: {exc!r}") from None
        for conn in conns:
            conn.on_ack = load.on_ack
            conn.on_other = load.on_other
        return await load.run(conns, channel_of, procs, valkey, drain_s=drain_s)
    finally:
        for conn in conns:
            conn.close()


class _Load:
    """The open-loop sender, the ack/delivery bookkeeping and the window's readings."""

    def __init__(
        self, *, rate: float, clients: int, group: int, warmup: float, duration: float
    ) -> None:
        self.rate, self.clients, self.group = rate, clients, group
        self.warmup, self.duration = warmup, duration
        self.lo, self.total = window_indices(rate, warmup, duration)
        n = self.total
        # members of the sender's guild: every one gets a copy, the sender included
        sizes = [min(group, clients - (c // group) * group) for c in range(clients)]
        self.expected = [sizes[j % clients] for j in range(n)]
        self.sent_at = [0.0] * n
        self.ack_at = [0.0] * n  # 0.0: not acked
        self.refused = [False] * n
        self.delivered = [0] * n
        self.acked = self.refusals = self.unsent = self.duplicated = 0
        self.deliveries = 0  # copies received, each message counted up to its members
        self.deliveries_owed = 0  # copies owed for the acked messages
        self.first_refusal: str | None = None
        self.refused_by_code: dict[str, int] = {}
        self.ack_latency = LatencyRecorder()
        self.delivery_latency = LatencyRecorder()
        self.sending = True
        self.done = asyncio.Event()
        self.clock = asyncio.get_running_loop().time
        self.t0 = 0.0

    def due(self, j: int) -> float:
        return self.t0 + j / self.rate

    def _check_done(self) -> None:
        if (
            not self.sending
            and self.acked + self.refusals + self.unsent >= self.total
            and self.deliveries >= self.deliveries_owed
        ):
            self.done.set()

    def on_message(self, raw: bytes) -> None:
        m = _CONTENT_INDEX.search(raw)
        if m is None:
            return
        j = int(m.group(1))
        if j >= self.total:
            return
        now = self.clock()
        n = self.delivered[j] = self.delivered[j] + 1
        if n > self.expected[j]:
            self.duplicated += 1
            return
        self.deliveries += 1
        if j >= self.lo:
            self.delivery_latency.record(now - self.due(j))
        self._check_done()

    def on_ack(self, raw: bytes) -> None:
        m = _NONCE_INDEX.search(raw)
        if m is None:
            return
        j = int(m.group(1))
        if j >= self.total or self.ack_at[j]:
            return
        now = self.clock()
        self.ack_at[j] = now
        self.acked += 1
        self.deliveries_owed += self.expected[j]
        if j >= self.lo:
            self.ack_latency.record(now - self.due(j))
        self._check_done()

    def on_other(self, raw: bytes) -> None:
        if b'"op":23' not in raw and b'"MESSAGE_REJECTED"' not in raw:
            return
        m = _NONCE_INDEX.search(raw)
        if m is None:
            return
        j = int(m.group(1))
        if j < self.total and not self.refused[j]:
            self.refused[j] = True
            self.refusals += 1
            code = _CODE.search(raw)
            key = code.group(1).decode() if code else "?"
            self.refused_by_code[key] = self.refused_by_code.get(key, 0) + 1
            if self.first_refusal is None:
                self.first_refusal = raw[:300].decode(errors="replace")
            self._check_done()

    async def _send_all(self, conns: list[Receiver], channel_of: list[int]) -> None:
        body = " " * CONTENT_CHARS
        j = 0
        while j < self.total:
            due = min(self.total, int((self.clock() - self.t0) * self.rate) + 1)
            batch_end = min(due, j + 256)  # far behind: yield to the receipts now and then
            while j < batch_end:
                c = j % self.clients
                conn = conns[c]
                if conn.open:
                    head = f"B{j} "
                    d = {
                        "channel_id": str(channel_of[c]),
                        "content": head + body[len(head) :],
                        "nonce": f"i{j}",
                    }
                    self.sent_at[j] = self.clock()
                    conn.send({"op": int(Op.SEND_MESSAGE), "d": d})
                else:
                    self.unsent += 1
                j += 1
            if j < self.total:
                await asyncio.sleep(max(0.0, self.due(j) - self.clock()))

    async def _window(
        self, procs: dict[str, psutil.Process], valkey: Any
    ) -> tuple[_Snapshot, _Snapshot]:
        await asyncio.sleep(max(0.0, self.t0 + self.warmup - self.clock()))
        before = await _snapshot(self.clock, procs, valkey)
        await asyncio.sleep(max(0.0, self.t0 + self.warmup + self.duration - self.clock()))
        after = await _snapshot(self.clock, procs, valkey)
        return before, after

    async def run(
        self,
        conns: list[Receiver],
        channel_of: list[int],
        procs: dict[str, psutil.Process],
        valkey: Any,
        *,
        drain_s: float,
    ) -> dict[str, Any]:
        self.t0 = self.clock() + 0.05
        window = asyncio.create_task(self._window(procs, valkey))
        try:
            await self._send_all(conns, channel_of)
        except BaseException:
            window.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await window
            raise
        before, after = await window
        self.sending = False
        self._check_done()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.done.wait(), drain_s)
        return self._figures(before, after, closed=sum(not c.open for c in conns))

    def _figures(self, before: _Snapshot, after: _Snapshot, *, closed: int) -> dict[str, Any]:
        end = self.clock()
        span = after.at - before.at
        in_window = sum(1 for t in self.ack_at if t and before.at <= t < after.at)
        unacked = [
            j
            for j in range(self.total)
            if not self.ack_at[j] and not self.refused[j] and self.sent_at[j]
        ]
        for j in unacked:  # still waiting: at least this late (the drain's end)
            if j >= self.lo:
                self.ack_latency.record(end - self.due(j))
        lost = sum(
            1 for j in range(self.total) if self.ack_at[j] and self.delivered[j] < self.expected[j]
        )
        lags = LatencyRecorder()
        for j in range(self.lo, self.total):
            if self.sent_at[j]:
                lags.record(self.sent_at[j] - self.due(j))

        def per_msg(seconds: float) -> float | None:
            return seconds * 1000 / in_window if in_window else None

        spent = {name: after.cpu[name] - before.cpu[name] for name in before.cpu}
        by_role: dict[str, float] = {}
        for name, s in spent.items():
            by_role[_role(name)] = by_role.get(_role(name), 0.0) + s
        calls = {
            cmd: (after.commands or {}).get(cmd, 0) - (before.commands or {}).get(cmd, 0)
            for cmd in after.commands or {}
        }
        calls = {cmd: n for cmd, n in calls.items() if n > 0}
        has_valkey = after.commands is not None
        has_acks = self.ack_latency.count > 0
        has_copies = self.delivery_latency.count > 0
        out: dict[str, Any] = {
            "rate": self.rate,
            "clients": self.clients,
            "group": self.group,
            "warmup_s": self.warmup,
            "duration_s": self.duration,
            "window_s": round(span, 3),
            "sent": self.total - self.unsent,
            "timed_messages": self.total - self.lo,
            "acked_in_window": in_window,
            "achieved_msg_per_s": in_window / span if span > 0 else None,
            "ack_p50_ms": self.ack_latency.percentile_ms(50) if has_acks else None,
            "ack_p99_ms": self.ack_latency.percentile_ms(99) if has_acks else None,
            "ack_max_ms": self.ack_latency.max_ms() if has_acks else None,
            "delivery_p50_ms": self.delivery_latency.percentile_ms(50) if has_copies else None,
            "delivery_p99_ms": self.delivery_latency.percentile_ms(99) if has_copies else None,
            "delivery_max_ms": self.delivery_latency.max_ms() if has_copies else None,
            "send_lag_p99_ms": lags.percentile_ms(99),
            "send_lag_max_ms": lags.max_ms(),
            "acked": self.acked,
            "unacked": len(unacked),
            "refused": self.refusals,
            "refused_by_code": dict(sorted(self.refused_by_code.items())),
            "unsent": self.unsent,
            "lost": lost,
            "duplicated": self.duplicated,
            "connections_closed": closed,
            "server_cores": sum(spent.values()) / span if span > 0 else None,
            "cpu_ms_per_msg": per_msg(sum(spent.values())),
            "cpu_ms_per_msg_by_role": {role: per_msg(s) for role, s in sorted(by_role.items())},
            "valkey_commands_per_msg": (sum(calls.values()) / in_window)
            if in_window and has_valkey
            else None,
            "valkey_commands": {
                cmd: round(n / in_window, 2)
                for cmd, n in sorted(calls.items(), key=lambda kv: -kv[1])
                if in_window
            },
            "generator_cpu_percent": (after.me - before.me) / span * 100 if span > 0 else None,
            "first_refusal": self.first_refusal,
        }
        out = {key: _rounded(value) for key, value in out.items()}
        out["sustained"] = sustains(self.rate, out["achieved_msg_per_s"], out["ack_p99_ms"])
        return out


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


# ---- the command --------------------------------------------------------------------------


async def ingest(
    *,
    rates: list[float],
    clients: int = 1000,
    group: int = 4,
    duration: float = 10.0,
    warmup: float = 2.0,
    repeat: int = 1,
    drain_s: float = 10.0,
    peer: str | None = None,
    say: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Every rate on a fresh topology, ``repeat`` alternating rounds; per rate the runs, the
    medians and the verdict, and the highest sustained rate. ``peer="floor"``: each run is
    followed by the same load against the bare-websockets floor, summarised the same way,
    with the ratio of server CPU per message."""
    check(
        rates=rates, clients=clients, group=group, duration=duration, warmup=warmup, repeat=repeat
    )
    systems = {"chatscale": run_once, **({"floor": run_floor_once} if peer == "floor" else {})}
    runs = {name: {rate: [] for rate in rates} for name in systems}
    with tempfile.TemporaryDirectory(prefix="chatscale-ingest-") as tmp:
        for r in range(repeat):
            for i, rate in enumerate(rates):
                for name, run in systems.items():
                    workdir = Path(tmp) / f"{r}-{i}-{name}"
                    workdir.mkdir()
                    out = await run(
                        workdir,
                        rate=rate,
                        clients=clients,
                        group=group,
                        duration=duration,
                        warmup=warmup,
                        drain_s=drain_s,
                    )
                    runs[name][rate].append(out)
                    label = "" if peer is None else f"{name} "
                    say(f"  round {r + 1}/{repeat} {label}" + progress_line(out))
    per_rate = [{**summarize(rate, rs), "runs": rs} for rate, rs in runs["chatscale"].items()]
    peers = {}
    if "floor" in runs:
        floor_rates = [{**summarize(rate, rs), "runs": rs} for rate, rs in runs["floor"].items()]
        peers["floor"] = {
            "rates": floor_rates,
            "highest_sustained_msg_per_s": highest_sustained(floor_rates),
            "cpu_ratio": {  # chatscale / floor, server CPU per message, ratio of the medians
                str(a["rate"]): _ratio(
                    a["summary"]["cpu_ms_per_msg"]["median"],
                    b["summary"]["cpu_ms_per_msg"]["median"],
                )
                for a, b in zip(per_rate, floor_rates, strict=True)
            },
        }
    return {
        "clients": clients,
        "group": group,
        "guilds": math.ceil(clients / group),
        "duration_s": duration,
        "warmup_s": warmup,
        "repeat": repeat,
        "sustain_rule": {"achieved_fraction": SUSTAIN_FRACTION, "ack_p99_ms_below": SUSTAIN_P99_MS},
        "rates": per_rate,
        "highest_sustained_msg_per_s": highest_sustained(per_rate),
        "peers": peers,
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def _num(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _codes(by_code: dict[str, int]) -> str:
    return " (" + ", ".join(f"{n:,} {code}" for code, n in by_code.items()) + ")" if by_code else ""


def progress_line(out: dict[str, Any]) -> str:
    roles = out["cpu_ms_per_msg_by_role"]
    return (
        f"rate {out['rate']:g} msg/s: achieved {_num(out['achieved_msg_per_s'], 1)} msg/s, "
        f"ack p99 {_num(out['ack_p99_ms'], 1)} ms, delivery p99 "
        f"{_num(out['delivery_p99_ms'], 1)} ms, {out['lost']} lost, {out['unacked']} unacked, "
        f"{out['refused']} refused{_codes(out['refused_by_code'])}; "
        f"server CPU {_num(out['cpu_ms_per_msg'], 2)} ms/msg ("
        + ", ".join(f"{role} {_num(roles.get(role), 2)}" for role in ROLES if role in roles)
        + f"), {_num(out['valkey_commands_per_msg'], 1)} Valkey commands/msg: "
        + ("sustained" if out["sustained"] else "not sustained")
    )


def _summed_codes(runs: list[dict[str, Any]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for run in runs:
        for code, n in run.get("refused_by_code", {}).items():
            total[code] = total.get(code, 0) + n
    return dict(sorted(total.items()))


def _fmt(m: dict[str, Any], digits: int) -> str:
    text = _num(m["median"], digits)
    if len(m["runs"]) > 1:
        text += " (" + ", ".join(_num(v, digits) for v in m["runs"]) + ")"
    return text


def _rate_lines(r: dict[str, Any], who: str = "") -> list[str]:
    s = r["summary"]
    verdict = "sustained" if r["sustained"] else "NOT sustained"
    roles = ", ".join(
        f"{role} {_fmt(s['cpu_ms_per_msg_by_role'][role], 2)}"
        for role in ROLES
        if role in s["cpu_ms_per_msg_by_role"]
    )
    lines = [
        f"  {who}{r['rate']:g} msg/s: {verdict}",
        f"    achieved            {_fmt(s['achieved_msg_per_s'], 1)} msg/s",
        f"    ack latency         p50 {_fmt(s['ack_p50_ms'], 1)} ms, p99 "
        f"{_fmt(s['ack_p99_ms'], 1)} ms, max {_fmt(s['ack_max_ms'], 1)} ms",
        f"    delivery latency    p50 {_fmt(s['delivery_p50_ms'], 1)} ms, p99 "
        f"{_fmt(s['delivery_p99_ms'], 1)} ms",
        f"    lost / unacked      {_fmt(s['lost'], 0)} / {_fmt(s['unacked'], 0)}",
        f"    refused             {_fmt(s['refused'], 0)}"
        + _codes(_summed_codes(r["runs"]))
        + (" in all runs" if len(r["runs"]) > 1 and s["refused"]["median"] else ""),
        f"    server CPU          {_fmt(s['cpu_ms_per_msg'], 2)} ms per message ({roles})",
    ]
    if s["valkey_commands_per_msg"]["median"] is not None:
        lines.append(f"    Valkey commands     {_fmt(s['valkey_commands_per_msg'], 1)} per message")
    lines.append(f"    generator lag p99   {_fmt(s['send_lag_p99_ms'], 1)} ms")
    return lines


def _highest(best: float | None, who: str = "") -> str:
    rule = f"achieved >= {SUSTAIN_FRACTION:.0%} of the target and ack p99 < {SUSTAIN_P99_MS:g} ms"
    if best is None:
        return f"{who}no rate sustained ({rule})"
    return f"{who}highest sustained rate: {best:g} msg/s ({rule})"


def render(result: dict[str, Any]) -> str:
    repeat = result["repeat"]
    floor_peer = result.get("peers", {}).get("floor")
    lines = [
        f"bench ingest: {result['clients']:,} clients in {result['guilds']:,} guilds of "
        f"{result['group']} (one channel each, every member sends), open loop, "
        f"{result['duration_s']:g} s measured after {result['warmup_s']:g} s of warm-up; a fresh "
        "topology per run (1 gateway, 1 worker, presence, Valkey, SQLite)"
        + ("; then the bare-websockets floor under the same load" if floor_peer else "")
        + (f"; median of {repeat} alternating runs (every run in brackets)" if repeat > 1 else ""),
    ]
    who = "chatscale " if floor_peer else ""
    for r in result["rates"]:
        lines += _rate_lines(r, who)
    lines.append(_highest(result["highest_sustained_msg_per_s"], who))
    if floor_peer:
        for r in floor_peer["rates"]:
            lines += _rate_lines(r, "floor ")
        lines.append(_highest(floor_peer["highest_sustained_msg_per_s"], "floor "))
        lines += [
            f"  chatscale / floor at {rate} msg/s: "
            + ("-" if ratio is None else f"{ratio:.2f}x")
            + " server CPU per message"
            for rate, ratio in floor_peer["cpu_ratio"].items()
        ]
    return "\n".join(lines)
