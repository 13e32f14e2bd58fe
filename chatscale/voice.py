"""What the gateway (signaling) and the voice relay (media) share: the voice grant and token.

Picture. Two planes. The **control plane** is the gateway: it checks VOICE_STATE_UPDATE
(a visible voice channel, CONNECT), writes a *grant* to Redis and hands the joiner a short-lived
*voice token* in VOICE_SERVER_UPDATE. The **media plane** is the relay (``voice/``): a client
shows it the token over UDP (or TCP), the relay checks the token's signature *and* that the
grant it names is still the current one, and from then on forwards its packets.

The grant (``Keys.voice_grant(guild)``, a hash ``user_id -> JSON``) is the single source of
truth for who may send: ``{"c": channel, "s": gateway session id, "n": grant nonce,
"speak": 0|1}``. A new join writes a new nonce, so a token of an earlier join is dead even
before it expires; leaving deletes the field. Every change to a grant is also announced on
``Keys.voice_events()`` and the announcer waits for each live relay's ack
(``Keys.voice_acks``): "the ban returned" therefore implies "no relay forwards them".

The voice token is the user token's format (``chatscale/tokens.py``) with more claims, signed
with a key derived from the token secret for this one purpose, so a user token is never a
voice token nor the reverse: ``base64url(json{u, g, c, s, n, exp}) . base64url(hmac_sha256)``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass

import orjson

#: The purpose label mixed into the HMAC key (domain separation from user tokens).
_PURPOSE = b"chatscale voice token v1"


class VoiceTokenError(Exception):
    """The voice token cannot be trusted; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class VoiceClaims:
    user_id: int
    guild_id: int
    channel_id: int
    session_id: str  # the gateway session that joined: it leaves voice when that session dies
    nonce: str  # names one grant; a later join (or a leave) kills this token
    exp: int = 0


@dataclass(frozen=True, slots=True)
class Grant:
    """One member's right to be in one voice channel of a guild (what Redis holds)."""

    channel_id: int
    session_id: str
    nonce: str
    speak: bool

    def to_json(self) -> bytes:
        return orjson.dumps(
            {"c": self.channel_id, "s": self.session_id, "n": self.nonce, "speak": int(self.speak)}
        )

    @classmethod
    def from_json(cls, raw: bytes | str | None) -> Grant | None:
        if not raw:
            return None
        try:
            d = orjson.loads(raw)
            return cls(int(d["c"]), str(d["s"]), str(d["n"]), bool(d["speak"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None

    def admits(self, claims: VoiceClaims) -> bool:
        return (self.channel_id, self.session_id, self.nonce) == (
            claims.channel_id,
            claims.session_id,
            claims.nonce,
        )


def _key(secret: str) -> bytes:
    return hmac.new(secret.encode(), _PURPOSE, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _sign(secret: str, body: str) -> str:
    return _b64(hmac.new(_key(secret), body.encode(), hashlib.sha256).digest())


def mint(claims: VoiceClaims, *, secret: str, ttl_s: float, now: float) -> str:
    body = _b64(
        json.dumps(
            {
                "u": str(claims.user_id),
                "g": str(claims.guild_id),
                "c": str(claims.channel_id),
                "s": claims.session_id,
                "n": claims.nonce,
                "exp": int(now + ttl_s),
            }
        ).encode()
    )
    return f"{body}.{_sign(secret, body)}"


def verify(token: str, *, secret: str, now: float) -> VoiceClaims:
    """The claims, or VoiceTokenError (malformed, bad signature, expired) — never anything else."""
    if not isinstance(token, str) or not token.isascii() or token.count(".") != 1:
        raise VoiceTokenError("malformed")
    body, sig = token.split(".")
    if not hmac.compare_digest(sig.encode(), _sign(secret, body).encode()):
        raise VoiceTokenError("bad signature")
    try:
        d = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        claims = VoiceClaims(
            int(d["u"]), int(d["g"]), int(d["c"]), str(d["s"]), str(d["n"]), d["exp"]
        )
    except (ValueError, KeyError, TypeError, RecursionError, binascii.Error) as exc:
        raise VoiceTokenError("malformed") from exc
    if type(claims.exp) is not int:
        raise VoiceTokenError("malformed")
    if claims.exp <= now:
        raise VoiceTokenError("expired")
    return claims


@dataclass(frozen=True, slots=True)
class VoiceEvent:
    """A grant change announced to relays: ``revoke`` (end the user's relay session in the
    guild) or ``speak`` (``speak`` is the new right). ``reply``: the list relays RPUSH to."""

    kind: str
    guild_id: int
    user_id: int
    speak: bool = False
    reply: str = ""

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "k": self.kind,
                "g": self.guild_id,
                "u": self.user_id,
                "sp": self.speak,
                "r": self.reply,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> VoiceEvent:
        try:
            d = orjson.loads(raw)
            return cls(str(d["k"]), int(d["g"]), int(d["u"]), bool(d["sp"]), str(d["r"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a voice event: {exc}") from exc


async def live_relays(redis, keys) -> dict[str, dict]:  # noqa: ANN001 - redis.asyncio client, Keys
    """relay id -> its registration ({udp: [host, port], tcp: [host, port]}), live ones only."""
    registered = {
        k.decode(): orjson.loads(v) for k, v in (await redis.hgetall(keys.voice_relays())).items()
    }
    if not registered:
        return {}
    ids = sorted(registered)
    async with redis.pipeline(transaction=False) as pipe:
        for relay_id in ids:
            pipe.exists(keys.voice_relay_alive(relay_id))
        alive = await pipe.execute()
    return {r: registered[r] for r, up in zip(ids, alive, strict=True) if up}


async def announce(redis, waiter, keys, event: VoiceEvent, *, timeout_s: float) -> tuple[str, ...]:  # noqa: ANN001
    """Publish a grant change and wait until every live relay applied it (at most
    ``timeout_s``). A relay that does not ack in time is fenced: its liveness key is deleted
    and it drops every session before it registers again. Returns the fenced relay ids.
    ``waiter``: a client whose socket timeout exceeds ``timeout_s`` (it BLPOPs)."""
    import secrets
    import time

    live = await live_relays(redis, keys)
    if not live:
        return ()
    reply = keys.voice_acks(secrets.token_hex(8))
    event = VoiceEvent(event.kind, event.guild_id, event.user_id, event.speak, reply)
    await redis.publish(keys.voice_events(), event.to_json())
    acked: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while not acked >= live.keys():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        got = await waiter.blpop([reply], timeout=max(0.01, remaining))
        if got is None:
            break
        acked.add(got[1].decode())
    await redis.delete(reply)
    fenced = tuple(r for r in live if r not in acked)
    for relay_id in fenced:
        await redis.delete(keys.voice_relay_alive(relay_id))
    return fenced
