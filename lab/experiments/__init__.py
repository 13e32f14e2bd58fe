"""Every experiment of the lab, in the order of the interview tour.

Adding one: write ``lab/experiments/NAME.py`` defining ``EXPERIMENT`` (``lab.experiment``),
add its module name here, and add a tiny run of it to ``tests/lab/``.
"""

from __future__ import annotations

import importlib

from lab.experiment import Experiment

MODULES = [
    "polling",
    "log_split",
    "serialize",
    "inbox_fanout",
    "backpressure",
    "ordering",
    "history_mode",
    "hot_cache",
    "shard_by_user",
    "bans",
    "slowmode",
    "presence_coalesce",
    "typing_throttle",
    "multi_device",
    "thundering_herd",
    "lazy_guilds",
    "capacity",
    "topk_sketch",
    "suggest_bias",
    "voice_transport",
    "voice_bitrate",
    "moderation",
    "moderation_down",
    "scroll_jump_search",
    "cold_tier",
    "index_at_write",
]


def all_experiments() -> list[Experiment]:
    return [importlib.import_module(f"lab.experiments.{m}").EXPERIMENT for m in MODULES]


def by_name(name: str) -> Experiment:
    for exp in all_experiments():
        if exp.name == name:
            return exp
    raise LookupError(name)
