"""Console sessions: sealed so the browser cannot read or change them, opened only by the same
secret, refused once expired; CSRF tokens compared exactly."""

import base64

import pytest

from services.console.session import SessionCodec

SECRET = b"a secret of more than sixteen bytes"


def test_a_sealed_session_opens_with_its_secret_only() -> None:
    codec = SessionCodec(SECRET, lifetime_seconds=60)
    session = codec.new("gk_key", now=1000.0)
    value = codec.seal(session)
    assert "gk_key" not in value
    assert b"gk_key" not in base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    assert codec.open(value, now=1030.0) == session
    assert SessionCodec(b"another secret of sixteen bytes", lifetime_seconds=60).open(value) is None


def test_expired_tampered_and_malformed_values_are_no_session() -> None:
    codec = SessionCodec(SECRET, lifetime_seconds=60)
    value = codec.seal(codec.new("gk_key", now=1000.0))
    assert codec.open(value, now=1060.0) is None  # expired
    flipped = value[:-3] + ("A" if value[-3] != "A" else "B") + value[-2:]
    assert codec.open(flipped, now=1001.0) is None
    for junk in ("", "not base64 !", "AQ", "x" * 5000, None):
        assert codec.open(junk) is None


def test_csrf_tokens_differ_per_session_and_match_exactly() -> None:
    codec = SessionCodec(SECRET, lifetime_seconds=60)
    one, two = codec.new("k"), codec.new("k")
    assert one.csrf_token != two.csrf_token
    assert one.csrf_matches(one.csrf_token)
    assert not one.csrf_matches(two.csrf_token)
    assert not one.csrf_matches(None)
    assert not one.csrf_matches("")


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        SessionCodec(b"short", lifetime_seconds=60)
