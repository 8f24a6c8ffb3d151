"""Property-based tests of the Twilio Media Streams parser (messages.py) and stream (protocol.py).

The contract under test: every message we encode parses back to itself (both directions);
anything else fed to a parser either parses or raises `ProtocolError`, never another
exception; numbers follow Twilio's wire format (strings of ASCII digits, JSON integers also
accepted, both in the same range); media payloads are exactly what strict base64 decodes to.
"""

from __future__ import annotations

import base64
import binascii
import json
import string
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from media.transport import AudioReceived
from media.twilio.messages import (
    DTMF_DIGITS,
    Connected,
    Dtmf,
    InboundMessage,
    Mark,
    Media,
    OutboundMessage,
    OutClear,
    OutMark,
    OutMedia,
    ProtocolError,
    Start,
    Stop,
    Unknown,
    encode_inbound,
    encode_outbound,
    parse_inbound,
    parse_outbound,
)
from media.twilio.protocol import EXPECTED_FORMAT, TwilioStream

# Bounded examples and no per-example deadline, so the file runs in seconds on a loaded 2-core
# box; no example database (a failure prints its reproducing example; nothing left in the tree).
PROPS = settings(
    max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)

KNOWN_EVENTS = {"connected", "start", "media", "dtmf", "mark", "stop"}
# Twilio's counters are strings of ASCII digits; the parser bounds them to 18 digits.
MAX_COUNTER = 10**18 - 1
SID = "MZ00000000000000000000000000000001"

texts = st.text(max_size=24)
counters = st.integers(min_value=0, max_value=MAX_COUNTER)
payloads = st.binary(max_size=400)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)


def _start(draw: st.DrawFn) -> Start:
    return Start(
        draw(counters),
        draw(texts),
        draw(texts),
        draw(texts),
        tuple(draw(st.lists(texts, max_size=3))),
        draw(st.dictionaries(texts, texts, max_size=4)),
        draw(texts),
        draw(counters),
        draw(counters),
    )


@st.composite
def inbound_messages(draw: st.DrawFn) -> InboundMessage:
    kind = draw(st.sampled_from(["connected", "start", "media", "dtmf", "mark", "stop", "?"]))
    if kind == "connected":
        return Connected(draw(texts), draw(texts))
    if kind == "start":
        return _start(draw)
    if kind == "media":
        return Media(
            draw(counters), draw(texts), draw(texts), draw(counters), draw(counters), draw(payloads)
        )
    if kind == "dtmf":
        return Dtmf(
            draw(counters), draw(texts), draw(texts), draw(st.sampled_from(sorted(DTMF_DIGITS)))
        )
    if kind == "mark":
        return Mark(draw(counters), draw(texts), draw(texts))
    if kind == "stop":
        return Stop(draw(counters), draw(texts), draw(texts), draw(texts))
    # Unknown is what the parser makes of a future event: a name it does not know and the
    # rest of the object, which never contains "event" itself.
    event = draw(texts.filter(lambda e: e not in KNOWN_EVENTS))
    data = draw(st.dictionaries(texts.filter(lambda k: k != "event"), json_values, max_size=5))
    return Unknown(event, data)


outbound_messages: st.SearchStrategy[OutboundMessage] = st.one_of(
    st.builds(OutMedia, texts, payloads),
    st.builds(OutMark, texts, texts),
    st.builds(OutClear, texts),
)


# --- round trips -----------------------------------------------------------------------------


@PROPS
@given(inbound_messages())
def test_inbound_message_round_trips(msg: InboundMessage) -> None:
    text = encode_inbound(msg)
    assert parse_inbound(text) == msg
    # and the text is stable: re-encoding what was parsed gives the same bytes on the wire
    assert encode_inbound(parse_inbound(text)) == text


@PROPS
@given(outbound_messages)
def test_outbound_message_round_trips(msg: OutboundMessage) -> None:
    text = encode_outbound(msg)
    assert parse_outbound(text) == msg
    assert encode_outbound(parse_outbound(text)) == text


@st.composite
def twilio_media_wire(draw: st.DrawFn) -> dict[str, Any]:
    """A media frame as Twilio writes it: its key order, every number a string."""
    return {
        "event": "media",
        "sequenceNumber": str(draw(counters)),
        "media": {
            "track": draw(st.sampled_from(["inbound", "outbound"])),
            "chunk": str(draw(counters)),
            "timestamp": str(draw(counters)),
            "payload": base64.b64encode(draw(payloads)).decode("ascii"),
        },
        "streamSid": draw(texts),
    }


@PROPS
@given(twilio_media_wire())
def test_twilio_wire_text_round_trips_through_objects(obj: dict[str, Any]) -> None:
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    assert encode_inbound(parse_inbound(text)) == text


# --- arbitrary input: parse or ProtocolError, nothing else -----------------------------------


def parses_or_protocol_error(text: str) -> None:
    for parse in (parse_inbound, parse_outbound):
        try:
            parse(text)
        except ProtocolError as exc:
            assert exc.reason and str(exc) == exc.reason


@PROPS
@given(st.text(max_size=300))
def test_arbitrary_text_parses_or_is_a_protocol_error(text: str) -> None:
    parses_or_protocol_error(text)


@PROPS
@given(st.binary(max_size=300), st.sampled_from(["latin-1", "surrogateescape", "replace"]))
def test_arbitrary_bytes_parse_or_are_a_protocol_error(data: bytes, decoding: str) -> None:
    # A text frame reaches the parser as str; any bytes, decoded however, must not crash it.
    text = data.decode("latin-1") if decoding == "latin-1" else data.decode("utf-8", decoding)
    parses_or_protocol_error(text)


@PROPS
@given(json_values)
def test_arbitrary_json_parses_or_is_a_protocol_error(value: Any) -> None:
    parses_or_protocol_error(json.dumps(value))


@st.composite
def mangled_messages(draw: st.DrawFn) -> str:
    """A real message with one field (at any depth) replaced by an arbitrary JSON value,
    deleted, or the whole thing given a known event name: close enough to pass the first
    checks, so the field-level ones are exercised."""
    obj = json.loads(encode_inbound(draw(inbound_messages())))
    if draw(st.booleans()):
        obj["event"] = draw(st.sampled_from(sorted(KNOWN_EVENTS)))
    target = obj
    while True:
        nested = [k for k, v in target.items() if isinstance(v, dict)]
        if not nested or draw(st.booleans()):
            break
        target = target[draw(st.sampled_from(nested))]
    if target:
        key = draw(st.sampled_from(sorted(target)))
        if draw(st.booleans()):
            del target[key]
        else:
            target[key] = draw(json_values)
    return json.dumps(obj)


@PROPS
@given(mangled_messages())
def test_mangled_messages_parse_or_are_a_protocol_error(text: str) -> None:
    parses_or_protocol_error(text)


@PROPS
@given(st.sampled_from(["sequenceNumber", "extra"]), st.integers(4301, 20000))
@example("sequenceNumber", 4301)
def test_huge_json_numbers_are_a_protocol_error(key: str, digits: int) -> None:
    # CPython refuses int() of over 4300 digits with a plain ValueError, raised from inside
    # json.loads; a 5 KB number is well under the message size limit.
    text = f'{{"event":"mark","streamSid":"MZ1","mark":{{"name":"m"}},"{key}":{"7" * digits}}}'
    with pytest.raises(ProtocolError, match="malformed JSON"):
        parse_inbound(text)


@PROPS
@given(st.integers(1, 3000), st.sampled_from(["[", '{"a":']))
def test_deep_nesting_anywhere_is_a_protocol_error_or_parses(depth: int, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    inner = opener * depth + ("1" if opener != "[" else "") + closer * depth
    for field in ('"sequenceNumber"', '"mark"', '"other"'):
        text = f'{{"event":"mark","streamSid":"MZ1",{field}:{inner}}}'
        parses_or_protocol_error(text)


# --- numbers: Twilio's strings, JSON integers, one range -------------------------------------


def media_with(field: str, value: Any) -> str:
    obj = json.loads(encode_inbound(Media(2, SID, "inbound", 1, 0, b"\xff")))
    if field == "sequenceNumber":
        obj[field] = value
    else:
        obj["media"][field] = value
    return json.dumps(obj)


def parsed_number(field: str, text: str) -> int:
    msg = parse_inbound(text)
    assert isinstance(msg, Media)
    return {"sequenceNumber": msg.sequence_number, "chunk": msg.chunk}.get(field, msg.timestamp)


numeric_fields = st.sampled_from(["sequenceNumber", "chunk", "timestamp"])


@PROPS
@given(numeric_fields, counters)
def test_counter_as_string_or_integer_parses_to_the_same_value(field: str, n: int) -> None:
    assert parsed_number(field, media_with(field, str(n))) == n
    assert parsed_number(field, media_with(field, n)) == n


@PROPS
@given(
    numeric_fields,
    st.integers(min_value=MAX_COUNTER + 1, max_value=10**60)
    | st.integers(min_value=-(10**60), max_value=-1),
)
def test_counter_out_of_range_is_rejected_in_both_spellings(field: str, n: int) -> None:
    for value in (n, str(n)):
        try:
            parse_inbound(media_with(field, value))
        except ProtocolError as exc:
            assert field in exc.reason
        else:
            raise AssertionError(f"{field}={value!r} accepted")


@PROPS
@given(numeric_fields, st.text(max_size=22))
@example("sequenceNumber", "٢")  # a Unicode digit: str.isdigit() says yes, Twilio never sends it
@example("chunk", " 1")
@example("timestamp", "1\n")
@example("timestamp", "+1")
def test_counter_string_is_accepted_exactly_when_it_is_ascii_digits(field: str, s: str) -> None:
    ascii_digits = 1 <= len(s) <= 18 and all(c in string.digits for c in s)
    try:
        value = parsed_number(field, media_with(field, s))
    except ProtocolError as exc:
        assert not ascii_digits, exc.reason
    else:
        assert ascii_digits and value == int(s)


@PROPS
@given(
    numeric_fields, st.booleans() | st.floats() | st.none() | st.lists(st.integers(), max_size=2)
)
def test_counter_of_another_json_type_is_rejected(field: str, value: Any) -> None:
    try:
        parse_inbound(media_with(field, value))
    except ProtocolError as exc:
        assert field in exc.reason
    else:
        raise AssertionError(f"{field}={value!r} accepted")


# --- media payloads: strict base64 -----------------------------------------------------------


def media_payload(payload: Any) -> str:
    obj = json.loads(encode_inbound(Media(2, SID, "inbound", 1, 0, b"")))
    obj["media"]["payload"] = payload
    return json.dumps(obj)


def outbound_payload(payload: Any) -> str:
    return json.dumps({"event": "media", "streamSid": SID, "media": {"payload": payload}})


def strict_b64decode(text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


b64_alphabet = st.text(alphabet=string.ascii_letters + string.digits + "+/=", max_size=40)
b64_like = (
    b64_alphabet | st.text(max_size=40) | payloads.map(lambda b: base64.b64encode(b).decode())
)


@PROPS
@given(payloads)
def test_any_bytes_base64_encoded_decode_to_themselves(data: bytes) -> None:
    text = base64.b64encode(data).decode("ascii")
    for parse, wire in ((parse_inbound, media_payload), (parse_outbound, outbound_payload)):
        msg = parse(wire(text))
        assert isinstance(msg, Media | OutMedia) and msg.payload == data


@PROPS
@given(b64_like)
@example("/w")  # missing padding
@example("/w=")
@example("/w==/w==")  # padding in the middle
@example("A")  # a length no base64 has
@example("/w==\n")
@example("-_8=")  # the URL-safe alphabet is not Twilio's
def test_payload_is_what_strict_base64_decodes_or_a_protocol_error(text: str) -> None:
    expected = strict_b64decode(text)
    for parse, wire in ((parse_inbound, media_payload), (parse_outbound, outbound_payload)):
        try:
            msg = parse(wire(text))
        except ProtocolError as exc:
            assert expected is None, exc.reason
            assert "payload" in exc.reason
        else:
            assert isinstance(msg, Media | OutMedia) and msg.payload == expected


@PROPS
@given(payloads.filter(bool), st.integers(1, 3))
def test_truncated_base64_is_a_protocol_error(data: bytes, cut: int) -> None:
    text = base64.b64encode(data).decode("ascii")
    truncated = text[:-cut]
    assume(len(truncated) % 4)
    try:
        parse_inbound(media_payload(truncated))
    except ProtocolError as exc:
        assert "payload" in exc.reason
    else:
        raise AssertionError(f"truncated payload {truncated!r} accepted")


# --- the stream: arbitrary frame sequences ---------------------------------------------------


def good_start(seq: int = 1) -> str:
    encoding, rate, channels = EXPECTED_FORMAT
    return encode_inbound(Start(seq, SID, "CA1", "AC1", ("inbound",), {}, encoding, rate, channels))


@PROPS
@given(st.lists(payloads, max_size=30))
def test_a_well_formed_stream_delivers_every_payload_in_order(frames: list[bytes]) -> None:
    stream = TwilioStream()
    stream.receive_text(encode_inbound(Connected("Call", "1.0.0")))
    stream.receive_text(good_start())
    received: list[bytes] = []
    for i, frame in enumerate(frames):
        media = Media(2 + i, SID, "inbound", 1 + i, 20 * i, frame)
        for event in stream.receive_text(encode_inbound(media)):
            assert isinstance(event, AudioReceived)
            received.append(event.audio)
    stream.receive_text(encode_inbound(Stop(2 + len(frames), SID, "AC1", "CA1")))
    assert received == frames
    assert (stream.sequence_gaps, stream.lost_chunks, stream.stopped) == (0, 0, True)


frames = st.one_of(
    inbound_messages().map(encode_inbound),
    mangled_messages(),
    st.just(good_start()),
    st.builds(Media, counters, st.just(SID), st.just("inbound"), counters, counters, payloads).map(
        encode_inbound
    ),
    st.text(max_size=40),
)


@PROPS
@given(st.lists(frames, max_size=12))
def test_any_frame_sequence_gives_events_or_a_protocol_error(texts_in: list[str]) -> None:
    stream = TwilioStream()
    for text in texts_in:
        try:
            stream.receive_text(text)
        except ProtocolError as exc:
            assert exc.reason
            return  # the websocket shell closes the stream with 1008 here
    assert stream.sequence_gaps >= 0 and stream.lost_chunks >= 0


# --- the media fast path (compact Twilio text) agrees with the general parser ----------------

base64_ish = st.text(alphabet=string.ascii_letters + string.digits + "+/=", max_size=60)


@st.composite
def media_texts(draw: st.DrawFn) -> dict[str, Any]:
    """Twilio-shaped media frames, some with broken payloads, numbers or odd sids."""
    obj = draw(twilio_media_wire())
    if draw(st.booleans()):
        obj["streamSid"] = draw(st.text(alphabet=string.ascii_letters + string.digits + "_-"))
    if draw(st.booleans()):
        obj["media"]["payload"] = draw(base64_ish)  # often invalid (padding, length)
    if draw(st.booleans()):
        obj["media"]["chunk"] = draw(st.sampled_from(["", "1" * 19, "-1", "0", "007"]))
    return obj


def outcome(text: str) -> object:
    try:
        return parse_inbound(text)
    except ProtocolError as exc:
        return ("error", exc.reason)


@PROPS
@given(media_texts())
def test_compact_media_text_parses_as_the_general_parser_would(obj: dict[str, Any]) -> None:
    compact = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    spaced = json.dumps(obj, indent=1, ensure_ascii=False)  # never matches the fast path
    assert outcome(compact) == outcome(spaced)


@PROPS
@given(st.builds(OutMedia, texts, payloads))
def test_outbound_media_text_is_the_compact_json_of_its_fields(msg: OutMedia) -> None:
    expected = {
        "event": "media",
        "streamSid": msg.stream_sid,
        "media": {"payload": base64.b64encode(msg.payload).decode("ascii")},
    }
    assert encode_outbound(msg) == json.dumps(expected, separators=(",", ":"), ensure_ascii=False)
