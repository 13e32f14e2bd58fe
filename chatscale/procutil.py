"""Child processes that never outlive their parent.

``die_with_parent`` asks Linux (``prctl(PR_SET_PDEATHSIG)``) to signal a child when the thread
that started it exits — even when the parent is SIGKILLed or dies of a broken pipe, when no
``finally`` runs. It fires when the *thread* that forked exits, so it is only used from the
main thread (a worker thread ending would otherwise kill healthy children). Elsewhere it is a
no-op and the usual shutdown paths apply.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import signal
import sys
import threading
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` for ``subprocess.Popen``, or None where it cannot work."""
    if (
        not sys.platform.startswith("linux")
        or threading.current_thread() is not threading.main_thread()
    ):
        return None
    try:
        prctl = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)

    return preexec
