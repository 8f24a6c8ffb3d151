"""Stream and web tokens: signed claims with an expiry, refused cleanly whatever arrives."""

from __future__ import annotations

import pytest

from control.stream_token import InvalidToken, issue_token, verify_token

KEY = b"k" * 32


def test_a_token_round_trips_and_never_outlives_its_ttl() -> None:
    token = issue_token(KEY, {"call_id": "call_1"}, now=1000.5, ttl=2)
    assert verify_token(KEY, token, now=1002.0)["call_id"] == "call_1"
    with pytest.raises(InvalidToken, match="expired"):
        verify_token(KEY, token, now=1002.6)  # 2.1 s after issue: past the 2 s asked for


@pytest.mark.parametrize("token", ["a.\u00be", "\u00e9.sig", "a.\ud800", "", ".", "abc"])
def test_garbage_is_an_invalid_token_not_a_crash(token: str) -> None:
    # Found by the API fuzz test: compare_digest raised TypeError on non-ASCII (a 500).
    with pytest.raises(InvalidToken):
        verify_token(KEY, token, now=0)


def test_a_token_signed_with_another_key_is_refused() -> None:
    token = issue_token(b"x" * 32, {"call_id": "call_1"}, now=0, ttl=60)
    with pytest.raises(InvalidToken, match="signature"):
        verify_token(KEY, token, now=1)
