import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatscale import snowflake, tokens


def test_token_round_trip():
    tok = tokens.mint(42, secret="s", ttl_s=60, now=1000)
    assert tokens.verify(tok, secret="s", now=1059) == 42


@pytest.mark.parametrize(
    ("token", "now", "reason"),
    [
        ("no-dot-at-all", 1000, "malformed"),
        ("a.b.c", 1000, "malformed"),
        (tokens.mint(42, secret="other", ttl_s=60, now=1000), 1000, "bad signature"),
        (tokens.mint(42, secret="s", ttl_s=60, now=1000), 1060, "expired"),
        (
            tokens.mint(42, secret="s", ttl_s=60, now=1000).split(".")[0] + ".",
            1000,
            "bad signature",
        ),
    ],
    ids=["malformed", "three-parts", "wrong-key", "expired", "unsigned"],
)
def test_bad_tokens_are_refused(token, now, reason):
    with pytest.raises(tokens.TokenError) as exc:
        tokens.verify(token, secret="s", now=now)
    assert exc.value.reason == reason


def _signed(claims: object, secret: str = "s") -> str:
    body = tokens._b64(json.dumps(claims).encode())
    return f"{body}.{tokens._sign(secret, body)}"


@pytest.mark.parametrize(
    "token",
    [
        "abc.\u00e9t\u00e9",  # non-ASCII signature: compare_digest raised TypeError
        "\u00e9t\u00e9.abc",
        "\ud800.abc",  # a lone surrogate cannot even be encoded
        tokens.mint(1 << 64, secret="s", ttl_s=60, now=1000),  # overflowed SQLite
        tokens.mint(1 << 63, secret="s", ttl_s=60, now=1000),
        tokens.mint(0, secret="s", ttl_s=60, now=1000),
        _signed({"u": 42.0, "exp": 2000}),
        _signed({"u": True, "exp": 2000}),
        _signed({"u": "\u0664\u0662", "exp": 2000}),  # Arabic-Indic digits: int() takes them
        _signed({"u": " 42", "exp": 2000}),
        _signed({"u": "42", "exp": "2000"}),
        _signed({"u": "42", "exp": True}),
        _signed({"u": "42", "exp": 2000.5}),
        _signed([1, 2]),
        _signed("42"),
    ],
    ids=[
        "non-ascii-signature",
        "non-ascii-body",
        "surrogate",
        "user-2^64",
        "user-2^63",
        "user-0",
        "float-user",
        "bool-user",
        "non-ascii-digit-user",
        "spaced-user",
        "string-exp",
        "bool-exp",
        "float-exp",
        "array-claims",
        "string-claims",
    ],
)
def test_odd_tokens_are_malformed_not_a_crash(token):
    with pytest.raises(tokens.TokenError) as exc:
        tokens.verify(token, secret="s", now=1000)
    assert exc.value.reason == "malformed"


def _verify_or_token_error(token: str) -> None:
    try:
        user_id = tokens.verify(token, secret="s", now=1000)
    except tokens.TokenError:
        return
    assert type(user_id) is int and 0 < user_id <= tokens.MAX_USER_ID


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=80))
def test_fuzz_any_text_is_a_user_id_or_a_token_error(text):
    _verify_or_token_error(text)
    _verify_or_token_error(text + "." + text)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=80))
def test_fuzz_any_signed_body_is_a_user_id_or_a_token_error(raw):
    # The signature is right, so verify reaches the claims: anything the secret's holder
    # could have signed (garbage, non-UTF-8, any JSON) must still be a clean answer.
    body = tokens._b64(raw)
    _verify_or_token_error(f"{body}.{tokens._sign('s', body)}")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=25),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        json_values,
        st.fixed_dictionaries({"u": json_values, "exp": json_values}),
        st.fixed_dictionaries(
            {"u": st.integers(min_value=-2, max_value=1 << 70).map(str), "exp": st.integers()}
        ),
    )
)
def test_fuzz_any_signed_claims_are_a_user_id_or_a_token_error(claims):
    _verify_or_token_error(_signed(claims))


def test_tampered_token_is_refused():
    body, sig = tokens.mint(42, secret="s", ttl_s=60, now=1000).split(".")
    forged = tokens._b64(b'{"u": "1", "exp": 99999999}')
    with pytest.raises(tokens.TokenError, match="bad signature"):
        tokens.verify(f"{forged}.{sig}", secret="s", now=1000)


def test_snowflakes_are_monotonic_even_when_the_clock_steps_back():
    times = iter([1_700_000_000_000, 1_700_000_000_000, 1_699_999_999_000, 1_700_000_000_001])
    gen = snowflake.SnowflakeGenerator(3, clock_ms=lambda: next(times))
    ids = [gen.next() for _ in range(4)]
    assert ids == sorted(ids) and len(set(ids)) == 4
    assert snowflake.timestamp_ms(ids[0]) == 1_700_000_000_000


def test_snowflake_sequence_overflow_borrows_next_millisecond():
    gen = snowflake.SnowflakeGenerator(1, clock_ms=lambda: 1_700_000_000_000)
    ids = [gen.next() for _ in range(snowflake.MAX_SEQ + 2)]
    assert len(set(ids)) == len(ids) and ids == sorted(ids)
    assert snowflake.timestamp_ms(ids[-1]) == 1_700_000_000_001


def test_bucket_is_a_fixed_span_of_snowflake_time():
    span = 10 * 24 * 3600 * 1000
    a = snowflake.from_timestamp_ms(1_700_000_000_000)
    b = snowflake.from_timestamp_ms(1_700_000_000_000 + span)
    assert snowflake.bucket(b, span) == snowflake.bucket(a, span) + 1
