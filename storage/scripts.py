"""The Lua scripts that write one message's state in Redis, shared by whoever processes it.

``HOT_ADD`` accepts messages into the hot cache if the metadata version they were authorized
under still holds (``lua/hot_add.lua``); ``FANOUT`` writes one delivery entry per live gateway
at most once per message id (``lua/fanout.lua``). The worker pipeline runs them (the default,
``CHATSCALE_PROCESSING=log``), and so does a gateway that processes messages itself
(``processing=inline``, the lab's other arm): gateway and workers sit on one layer and may not
import each other, so the scripts live here, below both.
"""

from __future__ import annotations

from importlib import resources

HOT_ADD = resources.files("storage").joinpath("lua/hot_add.lua").read_text()
FANOUT = resources.files("storage").joinpath("lua/fanout.lua").read_text()
#: How long a message's fanned-out marker lives: a redelivery within it skips fan-out.
FANOUT_MARKER_TTL_S = 24 * 3600
