"""HMAC-signed user tokens: ``base64url(json{u, exp}) . base64url(hmac_sha256)``.

Written with the standard library (hmac, hashlib) rather than a JWT package: the format has one
algorithm and two claims, so there is no header to negotiate and no ``alg: none`` to refuse.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json


class TokenError(Exception):
    """The token cannot be trusted; ``reason`` says why (malformed, signature, expired)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: str, body: str) -> str:
    return _b64(hmac.new(secret.encode(), body.encode(), hashlib.sha256).digest())


def mint(user_id: int, *, secret: str, ttl_s: float, now: float, operator: bool = False) -> str:
    """``operator`` adds the ``op`` claim: operator capabilities such as message tracing.

    Only whoever holds the secret can mint it (``chatscale trace`` does, for its own sender).
    """
    claims: dict[str, object] = {"u": str(user_id), "exp": int(now + ttl_s)}
    if operator:
        claims["op"] = 1
    body = _b64(json.dumps(claims).encode())
    return f"{body}.{_sign(secret, body)}"


def verify(token: str, *, secret: str, now: float) -> int:
    """Return the user id, or raise TokenError."""
    if not isinstance(token, str) or token.count(".") != 1:
        raise TokenError("malformed")
    body, sig = token.split(".")
    if not hmac.compare_digest(sig, _sign(secret, body)):
        raise TokenError("bad signature")
    try:
        claims = json.loads(_unb64(body))
        user_id, exp = int(claims["u"]), int(claims["exp"])
    except (ValueError, KeyError, TypeError) as exc:
        raise TokenError("malformed") from exc
    if exp <= now:
        raise TokenError("expired")
    return user_id


def is_operator(token: str) -> bool:
    """Whether a token that ``verify`` already accepted carries the operator claim."""
    try:
        return json.loads(_unb64(token.split(".")[0])).get("op") == 1
    except (ValueError, AttributeError):
        return False
