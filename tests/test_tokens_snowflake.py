import pytest

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
