"""How every tool finds the running topology: one place, one rule.

``chatscale run`` writes ``<workdir>/run.json`` (Redis URL, storage URL, key prefix, gateway
URLs, its own pid) and keeps the token secret of that data directory next to it in
``<workdir>/token-secret`` (mode 0600, created once, so tokens stay valid across restarts of the
same directory). The tools (``token``, ``trace``, ``seed``, ``bench``, ``loadtest``, ``top``, the
admin commands) and the services started by hand (``gateway``, ``worker``, ``presence``) read
their settings through :func:`settings_for_tools`:

- a setting given in the environment (``REDIS_URL``, ``CHATSCALE_STORAGE_URL``, ...) wins;
- the rest comes from ``run.json`` — unless the environment names a different Redis, in which
  case ``run.json`` describes another topology and is ignored;
- a ``run.json`` whose supervisor is gone or whose Redis does not answer is *stale* (left by a
  Ctrl-C'd or killed run): tools that need the topology stop with one line saying so.

Errors are :class:`TopologyError`, whose message is the one line the CLI prints. This module
imports no CLI and no service package, so anything may use it.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from chatscale.config import OLD_DEFAULT_TOKEN_SECRET, Settings

WORKDIR = Path(".chatscale")
STATE_FILE = "run.json"
SECRET_FILE = "token-secret"
MIN_SECRET_CHARS = 32


class TopologyError(Exception):
    """An expected, explainable failure to find or use a topology; ``str()`` is one line."""


# ---- the token secret ----------------------------------------------------------------------


def weak_secret_reason(secret: str) -> str | None:
    """Why ``secret`` must not sign tokens anywhere reachable, or None if it is acceptable."""
    if not secret:
        return "CHATSCALE_TOKEN_SECRET is empty"
    if secret == OLD_DEFAULT_TOKEN_SECRET:
        return "CHATSCALE_TOKEN_SECRET is the old public default"
    if len(secret) < MIN_SECRET_CHARS:
        return f"CHATSCALE_TOKEN_SECRET is shorter than {MIN_SECRET_CHARS} characters"
    return None


def secret_path(workdir: Path = WORKDIR) -> Path:
    return Path(workdir) / SECRET_FILE


def read_secret(workdir: Path = WORKDIR) -> str | None:
    path = secret_path(workdir)
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def ensure_secret(workdir: Path = WORKDIR) -> str:
    """The data directory's token secret, created (random, mode 0600) the first time."""
    existing = read_secret(workdir)
    if existing is not None:
        return existing
    path = secret_path(workdir)
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    try:
        # O_EXCL: two runs racing on one directory agree on the first writer's secret.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_secret(workdir) or value
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value


# ---- run.json ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunState:
    """What ``chatscale run`` wrote about itself."""

    workdir: Path
    redis_url: str
    storage_url: str
    key_prefix: str
    gateways: list[str] = field(default_factory=list)
    pid: int | None = None


def read_state(workdir: Path = WORKDIR) -> RunState | None:
    path = Path(workdir) / STATE_FILE
    try:
        data = json.loads(path.read_text())
        return RunState(
            workdir=Path(workdir),
            redis_url=data["redis_url"],
            storage_url=data["storage_url"],
            key_prefix=data["key_prefix"],
            gateways=list(data.get("gateways", [])),
            pid=data.get("pid"),
        )
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise TopologyError(
            f"{path} is unreadable ({exc}); delete it and start `chatscale run`"
        ) from exc


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process holds the pid: alive, not ours to judge
    return True


def _redis_answers(url: str, timeout_s: float = 2.0) -> bool:
    import redis

    from chatscale.redisconn import connect_sync

    client = connect_sync(url, timeout_s=timeout_s, retry_on_timeout=False)
    try:
        return bool(client.ping())
    except (redis.exceptions.RedisError, OSError):
        return False
    finally:
        client.close()


def stale_reason(state: RunState) -> str | None:
    """Why ``state`` no longer describes a running topology, or None if it does."""
    if state.pid is not None and not _pid_alive(int(state.pid)):
        return f"its `chatscale run` (pid {state.pid}) has exited"
    if not _redis_answers(state.redis_url):
        return f"its Redis at {state.redis_url} does not answer"
    return None


# ---- settings for tools ------------------------------------------------------------------------


def settings_for_tools(
    workdir: Path = WORKDIR, *, need_live: bool = True, settings: Settings | None = None
) -> Settings:
    """Settings of the topology this directory's tools should talk to (rules in the module doc).

    need_live: refuse (TopologyError) when the settings come from a stale ``run.json``; tools
    that only read the store of the data directory (``token``, ``explain-permissions``) pass
    False.
    """
    settings = settings if settings is not None else Settings()
    explicit = settings.model_fields_set
    state = read_state(workdir)
    update: dict[str, object] = {}
    if state is not None and (settings.redis_url in (None, state.redis_url)):
        for name in ("redis_url", "storage_url", "key_prefix"):
            if name not in explicit or getattr(settings, name) is None:
                update[name] = getattr(state, name)
        if need_live and "redis_url" in update:
            reason = stale_reason(state)
            if reason is not None:
                raise TopologyError(
                    f"{Path(workdir) / STATE_FILE} is stale: {reason}; start `chatscale run` "
                    "again (or set REDIS_URL to use another topology)"
                )
    if "token_secret" not in explicit:
        secret = read_secret(workdir)
        if secret is not None:
            update["token_secret"] = secret
    return settings.model_copy(update=update) if update else settings


def gateways(workdir: Path = WORKDIR) -> list[str]:
    """The gateway URLs ``chatscale run`` in this directory announced (empty if none)."""
    state = read_state(workdir)
    return state.gateways if state is not None else []


def require_existing_store(settings: Settings) -> None:
    """Refuse to open a SQLite file that does not exist: a tool run in the wrong directory
    would otherwise create an empty database and report success against it."""
    url = settings.storage_url
    if not url.startswith("sqlite:"):
        return
    path = url.removeprefix("sqlite://")
    path = path[1:] if path.startswith("/") and not path.startswith("//") else path
    if path.startswith("//"):
        path = path[1:]
    if path == ":memory:" or Path(path).exists():
        return
    raise TopologyError(
        f"no database at {path}: run this where `chatscale run` ran (its .chatscale/run.json "
        "says where the data is), or set CHATSCALE_STORAGE_URL (create one with "
        "`chatscale migrate` or `chatscale seed`)"
    )
