"""Multi-device presence: the phone drops, the desktop stays (claim 6).

One user is online on a desktop and a phone; another member watches their presence. The lab
cuts the phone's connection without a close (the TCP connection just ends, as when a phone
loses its network; the gateway keeps the session for RESUME and stops reporting heartbeats for
it), keeps the desktop up for ``hold_s``, then cuts the desktop too. The presence service
computes the user's status from every device's heartbeats: a device is gone when none came for
``CHATSCALE_PRESENCE_TIMEOUT_S``, and the user is offline only when no device is left.

Arms: a ``short`` timeout and a ``long`` one (the knob: how fast a vanished device is noticed
vs how late a heartbeat may be before a live device is wrongly dropped; gateways report
heartbeats every third of the timeout). Measured from the other member's screen: seconds until
the phone's drop shows (``client_status`` loses ``mobile``), wrong "offline" observations of
the aggregate while the desktop was up (must be 0), and seconds until the user shows offline
after the desktop also dropped.

There is no knob that turns aggregation off, so the naive model is *derived*, not run: a
"last-writer flag" (the user's status is whatever the latest device event said) replayed over
the same observed events — a device leaving sets it offline even though another device is up.
Its wrong offlines are reported as separately labelled metrics.

A phone that goes silent without its TCP connection ending is noticed later: the gateway keeps
reporting it until its own heartbeat deadline (``CHATSCALE_HEARTBEAT_INTERVAL_MS`` x 1.5) closes
it, and only then does this timeout start.

Charts ("status over time", as the other member saw it): 2 = online, 1 = idle, 0 = offline,
per device (phone, desktop), the aggregate, and the derived last-writer flag; time 0 is when
both devices were first seen.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from lab import harness
from lab.experiment import Arm, Experiment, Measurement, Metric, Outcome, fmt
from lab.presence_util import (
    STATUS_ENCODING,
    STATUS_LEVEL,
    CountingClient,
    connect_counting,
    cut,
)

SERIES = {
    "phone": "status over time: phone (mobile), as another member saw it",
    "desktop": "status over time: desktop, as another member saw it",
    "aggregate": "status over time: the user (aggregate), as another member saw it",
    "flag": "status over time: last-writer flag (derived from the same events)",
}


def _level(status: str | None) -> float:
    return STATUS_LEVEL.get(status or "offline", 2.0)


async def measure(trial: harness.Trial) -> Measurement:
    p = trial.params
    env: dict[str, str] = {}
    notes: list[str] = []
    timeout = float(trial.arm.settings["CHATSCALE_PRESENCE_TIMEOUT_S"])
    if p.get("timeouts"):  # tiny: the same two arms, scaled down to stay short
        timeout = p["timeouts"][trial.arm.name]
        env["CHATSCALE_PRESENCE_TIMEOUT_S"] = str(timeout)
        notes.append(
            f"this size scales the timeout down to {timeout:g} s "
            f"(CHATSCALE_PRESENCE_TIMEOUT_S) to stay short"
        )
    if p.get("tick_ms"):
        env["CHATSCALE_PRESENCE_TICK_MS"] = str(p["tick_ms"])
        notes.append(f"this size runs presence ticks of {p['tick_ms']} ms")
    bound = 3 * timeout + 15  # generous: detection is timeout + a heartbeat period + a tick
    async with trial.topology(env=env) as topo:
        seeded = await harness.seed(topo.settings, harness.lab_community(2 + p["background"]))
        user_id, watcher_id, *background = seeded.user_ids
        others = await connect_counting(topo.settings, topo.urls, [watcher_id, *background])
        watcher = others[0]
        seen: list[tuple[float, str, dict[str, str]]] = []  # (at, status, client_status)

        def watch(t: str, d: dict[str, Any], at: float) -> None:
            for pres in d.get("presences", ()):
                if int(pres["user_id"]) == user_id:
                    seen.append((at, pres["status"], dict(pres["client_status"])))

        watcher.on_dispatch = watch
        token = harness.token(topo.settings, user_id)
        url = topo.urls[0]
        desktop = await CountingClient.identify(url, token, device="desktop")
        phone = await CountingClient.identify(url, token, device="mobile")
        cpu = harness.Cpu(topo).start()
        started = time.monotonic()
        try:
            await watcher.until(
                lambda: bool(seen) and set(seen[-1][2]) == {"desktop", "mobile"},
                bound,
                "the other member seeing both devices",
            )
            t0 = seen[-1][0]
            cut_phone = time.monotonic()
            await cut(phone)
            await watcher.until(
                lambda: seen[-1][0] > cut_phone and "mobile" not in seen[-1][2],
                bound,
                "the phone's drop to show",
            )
            phone_seen = seen[-1][0]
            await asyncio.sleep(p["hold_s"])  # the desktop alone: any 'offline' now is wrong
            cut_desktop = time.monotonic()
            already_offline = seen[-1][1] == "offline"  # a live desktop wrongly expired
            await cut(desktop)
            offline_after: float | None = None
            if not already_offline:
                await watcher.until(
                    lambda: seen[-1][0] > cut_desktop and seen[-1][1] == "offline",
                    bound,
                    "the user to show offline",
                )
                offline_after = seen[-1][0] - cut_desktop
            else:
                notes.append(
                    "the user already showed offline while the desktop was up, so the time to "
                    "offline after the desktop dropped could not be measured"
                )
            offline_seen = seen[-1][0]
            presence_cpu = sum(v for k, v in cpu.stop().items() if k == "presence")
            elapsed = time.monotonic() - started
        finally:
            await harness.close_all([*others, desktop, phone])
    wrong = sum(1 for at, status, _ in seen if at < cut_desktop and status == "offline")
    flag = last_writer(seen)
    flag_wrong = [(at, until) for at, until, ok in flag if not ok]
    series = timeline(seen, flag, t0, offline_seen)
    notes.append(
        f"the phone was cut at {cut_phone - t0:.2f} s and the desktop at {cut_desktop - t0:.2f} s "
        "(chart time)"
    )
    return Measurement(
        {
            "phone_drop_seen_s": phone_seen - cut_phone,
            "wrong_offline": float(wrong),
            "offline_after_last_s": offline_after,  # type: ignore[dict-item]
            "flag_wrong_offline": float(len(flag_wrong)),
            "flag_wrong_offline_s": sum(until - at for at, until in flag_wrong),
            "presence_cpu_per_s": presence_cpu / elapsed,
            "timeout_s": timeout,
        },
        series=series,
        notes=notes,
    )


def last_writer(
    seen: list[tuple[float, str, dict[str, str]]],
) -> list[tuple[float, float, bool]]:
    """Replay the observed events as a naive last-writer flag: a device that appears or changes
    sets the flag to its status; a device that leaves sets it to offline. Returns, for each
    observation, (at, until the next one, whether the flag agreed with the aggregate about
    being offline or not)."""
    out: list[tuple[float, float, bool]] = []
    devices: dict[str, str] = {}
    flag = "offline"
    for i, (at, status, client_status) in enumerate(seen):
        left = devices.keys() - client_status.keys()
        changed = {d: s for d, s in client_status.items() if devices.get(d) != s}
        if changed:
            flag = next(iter(changed.values()))
        elif left or status == "offline":
            flag = "offline"
        devices = dict(client_status)
        until = seen[i + 1][0] if i + 1 < len(seen) else at
        out.append((at, until, (flag == "offline") == (status == "offline")))
    return out


def timeline(
    seen: list[tuple[float, str, dict[str, str]]],
    flag: list[tuple[float, float, bool]],
    t0: float,
    end: float,
) -> dict[str, list[tuple[float, float]]]:
    """Step series from the observations: at each observation where a line changes, a point
    with the old level and one with the new, so straight segments draw steps; the last level
    is held to just after the end."""
    lines: dict[str, list[tuple[float, float]]] = {k: [] for k in SERIES}

    def step(key: str, x: float, y: float) -> None:
        points = lines[key]
        if points and points[-1][1] != y:
            points.append((x, points[-1][1]))
        points.append((x, y))

    for (at, status, cs), (_, _, ok) in zip(seen, flag, strict=True):
        x = round(at - t0, 3)
        step("phone", x, _level(cs.get("mobile")))
        step("desktop", x, _level(cs.get("desktop")))
        step("aggregate", x, _level(status))
        agg_off = status == "offline"
        flag_off = agg_off if ok else not agg_off
        step("flag", x, 0.0 if flag_off else _level(status))
    for points in lines.values():
        if points:
            points.append((round(end - t0 + 0.5, 3), points[-1][1]))
    return {SERIES[k]: v for k, v in lines.items()}


def conclude(o: Outcome) -> str:
    wrong = [o.median(a, "wrong_offline") for a in ("short", "long")]
    flag = [o.median(a, "flag_wrong_offline") for a in ("short", "long")]
    flag_s = o.median("long", "flag_wrong_offline_s")
    if any(w is None for w in wrong):
        return "One of the arms produced no numbers, so nothing can be concluded."
    if all(w == 0 for w in wrong):
        first = (
            "Presence computed from every device's heartbeats kept the user online while the "
            "desktop was up: the other member saw 0 wrong 'offline' in both arms, and saw the "
            "phone leave the user's devices instead"
        )
    else:
        first = (
            f"The aggregate showed the user offline while the desktop was up "
            f"({fmt(wrong[0])} time(s) with the short timeout, {fmt(wrong[1])} with the long "
            "one): a timeout too close to the gateways' heartbeat reports drops live devices"
        )
    if flag[1]:
        first += (
            f". A last-writer flag replayed over the same events (derived, not run) would have "
            f"shown them offline {fmt(flag[1])} time(s), for {fmt(flag_s, 's')} with the long "
            "timeout — the guide's point"
        )
    speed = o.verdict("phone_drop_seen_s", "short", "long")
    drop = o.compare("phone_drop_seen_s", "short", "long")
    off = o.compare("offline_after_last_s", "short", "long")
    if speed == "holds":
        second = (
            f". The timeout sets how fast a vanished device is noticed — {drop}; {off}. The "
            "price of a short one is heartbeat traffic (gateways report every third of it) and "
            "false offlines when reports run late"
        )
    elif speed == "reversed":
        second = f". Unexpectedly, the long timeout noticed the drop sooner ({drop}; {off})"
    else:
        second = f". The two timeouts noticed the drop about equally fast ({drop}; {off})"
    return first + second + "; " + o.compare("presence_cpu_per_s", "short", "long") + "."


EXPERIMENT = Experiment(
    name="multi-device",
    title="Multi-device presence: the phone drops, the desktop stays",
    claim=(
        "Presence is computed from several devices' heartbeats (phone drops, desktop stays "
        "online), not a flag set by the last message."
    ),
    claim_ids=(6,),
    hop="presence",
    knob="CHATSCALE_PRESENCE_TIMEOUT_S (gateways report heartbeats every third of it)",
    arms=(
        Arm(
            "short",
            "a vanished device goes offline after 2 s without heartbeats",
            settings={"CHATSCALE_PRESENCE_TIMEOUT_S": "2"},
        ),
        Arm(
            "long",
            "a vanished device goes offline after 8 s without heartbeats",
            settings={"CHATSCALE_PRESENCE_TIMEOUT_S": "8"},
        ),
    ),
    metrics=(
        Metric("phone_drop_seen_s", "phone's drop seen by another member after", "s"),
        Metric(
            "wrong_offline", "wrong 'offline' of the aggregate while the desktop was up", "count"
        ),
        Metric("offline_after_last_s", "user offline after the desktop dropped", "s"),
        Metric("flag_wrong_offline", "last-writer flag (derived): wrong 'offline'", "count"),
        Metric("flag_wrong_offline_s", "last-writer flag (derived): wrongly offline for", "s"),
        Metric("presence_cpu_per_s", "presence service CPU per second", "s/s"),
        Metric("timeout_s", "presence timeout used", "s", better="none"),
    ),
    sizes={
        "tiny": {
            "background": 2,
            "hold_s": 0.3,
            "timeouts": {"short": 0.6, "long": 1.2},
            "tick_ms": 100,
        },
        "quick": {"background": 50, "hold_s": 2.0},
        "full": {"background": 200, "hold_s": 5.0},
    },
    quick_seconds=35,
    measure=measure,
    conclude=conclude,
    series_unit={title: STATUS_ENCODING for title in SERIES.values()},
)
