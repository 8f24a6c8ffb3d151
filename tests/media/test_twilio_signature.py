"""X-Twilio-Signature: every test vector of protocols.md §1.2, and the URL rebuilding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from media.twilio.signature import compute_signature, public_url, validate_signature

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "twilio"

WEBHOOK_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+14158675309",
    "Digits": "1234",
    "From": "+14158675309",
    "To": "+18005551212",
}
STATUS_PARAMS: dict[str, str] = json.loads((FIXTURES / "status_callback.json").read_text())

VECTORS = [
    (
        "12345",
        "https://mycompany.com/myapp.php?foo=1&bar=2",
        WEBHOOK_PARAMS,
        "RSOYDt4T1cUTdK1PDd93/VVr8B8=",
    ),
    ("12345", "wss://example.com/media", {}, "7PR3qMkpDyEJtMrVOY/LDyNq8J8="),
    ("12345", "wss://example.com/media?x=1", {}, "jvi4tNWGSugE1I/tKDdSh5YzsOw="),
    (
        "test_auth_token",
        "https://example.com/twilio/status",
        STATUS_PARAMS,
        "HXiBjQshxgCeyTtSz1KQMKM8bvU=",
    ),
]


@pytest.mark.parametrize(("token", "url", "params", "expected"), VECTORS)
def test_vectors_compute(token: str, url: str, params: dict[str, str], expected: str) -> None:
    assert compute_signature(token, url, params) == expected


@pytest.mark.parametrize(("token", "url", "params", "expected"), VECTORS)
def test_vectors_validate(token: str, url: str, params: dict[str, str], expected: str) -> None:
    assert validate_signature(token, url, params, expected)
    assert not validate_signature(token, url, params, expected[:-2] + "A=")
    assert not validate_signature("wrong", url, params, expected)
    assert not validate_signature(token, url + "x", params, expected)


def test_status_callback_params_are_the_protocols_body() -> None:
    assert len(STATUS_PARAMS) == 11 and STATUS_PARAMS["CallStatus"] == "completed"


def test_a_changed_param_fails() -> None:
    params = dict(WEBHOOK_PARAMS, Digits="1235")
    url, signature = VECTORS[0][1], VECTORS[0][3]
    assert not validate_signature("12345", url, params, signature)


def test_param_order_does_not_matter() -> None:
    reordered = dict(reversed(list(WEBHOOK_PARAMS.items())))
    assert compute_signature("12345", VECTORS[0][1], reordered) == VECTORS[0][3]


def test_wss_signature_validates_with_the_default_port_in_the_request_url() -> None:
    # Twilio signed wss://example.com/media; a server that sees :443 must still accept it.
    assert validate_signature("12345", "wss://example.com:443/media", {}, VECTORS[1][3])


def test_port_variants_follow_twilio_python() -> None:
    with_80 = compute_signature("12345", "wss://example.com:80/media", {})
    with_443 = compute_signature("12345", "https://example.com:443/x", {})
    # No port in the request: the default port added is 80 for wss (twilio-python's rule) ...
    assert validate_signature("12345", "wss://example.com/media", {}, with_80)
    # ... and 443 for https.
    assert validate_signature("12345", "https://example.com/x", {}, with_443)
    # Any explicit port is stripped before comparing.
    plain = compute_signature("12345", "https://example.com/x", {})
    assert validate_signature("12345", "https://example.com:8443/x", {}, plain)


def test_repeated_params_sign_each_distinct_value_sorted() -> None:
    url = "https://example.com/hook"
    expected = compute_signature("t", url + "Ab" + "Ac" + "Bz", {})
    assert compute_signature("t", url, {"A": ["c", "b", "c"], "B": "z"}) == expected
    assert validate_signature("t", url, {"B": ("z",), "A": ("b", "c")}, expected)


def test_bad_port_or_signature_is_false_not_an_error() -> None:
    assert not validate_signature("12345", "wss://example.com:notaport/media", {}, "x")
    assert not validate_signature("12345", "wss://example.com/media", {}, "")
    assert not validate_signature("12345", "wss://example.com/media", {}, "é")


# --- public_url ------------------------------------------------------------------------------


def test_public_url_direct() -> None:
    assert public_url("https", "ava.example.com", "/twilio/voice") == (
        "https://ava.example.com/twilio/voice"
    )
    assert public_url("http", "127.0.0.1:8000", "twilio/voice") == (
        "http://127.0.0.1:8000/twilio/voice"
    )


@pytest.mark.parametrize(
    ("scheme", "proto", "websocket", "expected"),
    [
        ("http", "https", True, "wss"),
        ("http", "http", True, "ws"),
        ("http", "https", False, "https"),
        ("ws", None, True, "ws"),
        ("wss", None, True, "wss"),
        ("https", None, True, "wss"),
        ("ws", None, False, "http"),
        ("http", "HTTPS", True, "wss"),
    ],
)
def test_public_url_scheme(scheme: str, proto: str | None, websocket: bool, expected: str) -> None:
    url = public_url(scheme, "h", "/p", forwarded_proto=proto, websocket=websocket)
    assert url == f"{expected}://h/p"


def test_public_url_behind_a_tls_terminating_proxy() -> None:
    url = public_url(
        "http",
        "10.0.0.5:8000",
        "/media",
        forwarded_proto="https",
        forwarded_host="example.com",
        websocket=True,
    )
    assert url == "wss://example.com/media"
    assert validate_signature("12345", url, {}, VECTORS[1][3])


def test_public_url_takes_the_first_of_a_proxy_chain() -> None:
    url = public_url(
        "http", "internal", "/m", forwarded_proto="https, http", forwarded_host="a.com, b.internal"
    )
    assert url == "https://a.com/m"
