"""HMAC-signed user tokens: ``base64url(json{u, exp}) . base64url(hmac_sha256)``.

Written with the standard library (hmac, hashlib) rather than a JWT package: the format has one
algorithm and two claims, so there is no header to negotiate and no ``alg: none`` to refuse.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re

MAX_USER_ID = (1 << 63) - 1  # a snowflake; larger ids would overflow the stores' 64-bit columns
_DIGITS = re.compile(r"[0-9]{1,19}")


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
    """Return the user id (1 <= id < 2^63), or raise TokenError — never anything else.

    Any string may arrive here (``tests/chatscale/test_tokens_snowflake.py`` fuzzes it): non-ASCII text
    would make ``compare_digest`` raise TypeError, and a signed id of 2^64 would overflow
    SQLite later, so both are refused as malformed here.
    """
    if not isinstance(token, str) or not token.isascii() or token.count(".") != 1:
        raise TokenError("malformed")
    body, sig = token.split(".")
    if not hmac.compare_digest(sig.encode(), _sign(secret, body).encode()):
        raise TokenError("bad signature")
    try:
        claims = json.loads(_unb64(body))
        u, exp = claims["u"], claims["exp"]
    except (ValueError, KeyError, TypeError, RecursionError, binascii.Error) as exc:
        raise TokenError("malformed") from exc
    # mint() writes u as a string of digits and exp as an integer; accept nothing looser.
    if not isinstance(u, str) or not _DIGITS.fullmatch(u) or not 0 < int(u) <= MAX_USER_ID:
        raise TokenError("malformed")
    if type(exp) is not int:
        raise TokenError("malformed")
    if exp <= now:
        raise TokenError("expired")
    return int(u)


def is_operator(token: str) -> bool:
    """Whether a token that ``verify`` already accepted carries the operator claim."""
    try:
        return json.loads(_unb64(token.split(".")[0])).get("op") == 1
    except (ValueError, AttributeError):
        return False
