"""TwiML, byte for byte as twilio-python's VoiceResponse writes it (protocols.md §1.1)."""

from __future__ import annotations

import pytest
from twilio.twiml.voice_response import VoiceResponse

from media.twilio.twiml import connect_stream, redirect, say_and_hangup


def test_connect_stream_matches_the_sdk_exactly() -> None:
    expected = (
        '<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream '
        'statusCallback="https://example.com/stream-status" url="wss://example.com/media">'
        '<Parameter name="tenant" value="acme" />'
        '<Parameter name="from_number" value="+15551230000" />'
        "</Stream></Connect></Response>"
    )
    twiml = connect_stream(
        "wss://example.com/media",
        {"tenant": "acme", "from_number": "+15551230000"},
        status_callback="https://example.com/stream-status",
    )
    assert twiml == expected


def test_connect_stream_without_parameters_self_closes() -> None:
    assert connect_stream("wss://x.test/ws", {}) == (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<Response><Connect><Stream url="wss://x.test/ws" /></Connect></Response>'
    )


def test_values_are_xml_escaped() -> None:
    twiml = connect_stream("wss://x.test/a&b", {"k": 'a"b<c>&d\ne\tf\rg é'})
    assert '<Stream url="wss://x.test/a&amp;b">' in twiml
    assert 'value="a&quot;b&lt;c&gt;&amp;d&#10;e&#09;f&#13;g é"' in twiml


def test_url_with_query_string_is_rejected() -> None:
    with pytest.raises(ValueError, match="query string"):
        connect_stream("wss://x.test/ws?token=1", {})


def test_parameter_length_limit() -> None:
    connect_stream("wss://x.test/ws", {"ab": "x" * 497})  # 499: under the limit
    with pytest.raises(ValueError, match="500"):
        connect_stream("wss://x.test/ws", {"ab": "x" * 498})


def test_characters_xml_cannot_carry_are_rejected() -> None:
    with pytest.raises(ValueError):
        connect_stream("wss://x.test/ws", {"k": "a\x00b"})
    with pytest.raises(ValueError):
        say_and_hangup("bell\x07")


def test_say_and_hangup() -> None:
    assert say_and_hangup("This number is not in service. Goodbye.") == (
        '<?xml version="1.0" encoding="UTF-8"?><Response>'
        "<Say>This number is not in service. Goodbye.</Say><Hangup /></Response>"
    )


def test_say_text_is_escaped() -> None:
    assert '<Say>Tom &amp; Jerry &lt;3 "it\'s"</Say>' in say_and_hangup('Tom & Jerry <3 "it\'s"')


def test_redirect_matches_the_sdk_exactly() -> None:
    url = "https://voice.example.com/twilio/voice?ava_redirects=1&x=<2>"
    sdk = VoiceResponse()
    sdk.redirect(url, method="POST")
    assert redirect(url) == str(sdk)
