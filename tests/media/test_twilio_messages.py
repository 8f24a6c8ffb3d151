"""Twilio message parsing and encoding against the protocols.md examples, both directions."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from media.twilio.messages import (
    MAX_MESSAGE_BYTES,
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

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "twilio"
SID = "MZ00000000000000000000000000000001"
ACCOUNT = "AC00000000000000000000000000000001"
CALL = "CA00000000000000000000000000000001"
CAPTURED_PAYLOAD = json.loads((FIXTURES / "media.json").read_text())["media"]["payload"]


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def compact(text: str) -> str:
    """The fixture as one compact line, keys in the fixture's (Twilio's) order."""
    return json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False)


def message(**fields: Any) -> str:
    return json.dumps(fields)


INBOUND_FIXTURES = ["connected", "start", "media", "dtmf", "mark", "stop"]
OUTBOUND_FIXTURES = ["out_media", "out_mark", "out_clear"]


# --- fixtures --------------------------------------------------------------------------------


def test_connected_fixture() -> None:
    assert parse_inbound(fixture("connected.json")) == Connected("Call", "1.0.0")


def test_start_fixture() -> None:
    assert parse_inbound(fixture("start.json")) == Start(
        sequence_number=1,
        stream_sid=SID,
        call_sid=CALL,
        account_sid=ACCOUNT,
        tracks=("inbound",),
        custom_parameters={"tenant": "acme", "from_number": "+15551230000"},
        encoding="audio/x-mulaw",
        sample_rate=8000,
        channels=1,
    )


def test_media_fixture_is_the_captured_160_byte_frame() -> None:
    msg = parse_inbound(fixture("media.json"))
    assert isinstance(msg, Media)
    assert (msg.sequence_number, msg.stream_sid, msg.track) == (2, SID, "inbound")
    assert (msg.chunk, msg.timestamp) == (1, 52)
    assert len(CAPTURED_PAYLOAD) == 216
    assert len(msg.payload) == 160


def test_dtmf_mark_stop_fixtures() -> None:
    assert parse_inbound(fixture("dtmf.json")) == Dtmf(5, SID, "inbound_track", "1")
    assert parse_inbound(fixture("mark.json")) == Mark(103, SID, "Repeat message 0")
    assert parse_inbound(fixture("stop.json")) == Stop(212, SID, ACCOUNT, CALL)


def test_outbound_fixtures() -> None:
    media = parse_outbound(fixture("out_media.json"))
    assert isinstance(media, OutMedia) and media.stream_sid == SID
    assert len(media.payload) == 160
    assert parse_outbound(fixture("out_mark.json")) == OutMark(SID, "utt-42-chunk-7")
    assert parse_outbound(fixture("out_clear.json")) == OutClear(SID)


@pytest.mark.parametrize("name", INBOUND_FIXTURES)
def test_inbound_encodes_to_exactly_the_fixture(name: str) -> None:
    text = fixture(f"{name}.json")
    assert encode_inbound(parse_inbound(text)) == compact(text)


@pytest.mark.parametrize("name", OUTBOUND_FIXTURES)
def test_outbound_encodes_to_exactly_the_fixture(name: str) -> None:
    text = fixture(f"{name}.json")
    assert encode_outbound(parse_outbound(text)) == compact(text)


def test_call_sequence_fixture_parses() -> None:
    lines = fixture("call.jsonl").splitlines()
    kinds = [type(parse_inbound(line)).__name__ for line in lines]
    media3 = ["Media"] * 3
    assert kinds == ["Connected", "Start", *media3, "Dtmf", "Mark", "Media", "Stop"]


# --- round trips -----------------------------------------------------------------------------


def random_inbound(rng: random.Random) -> InboundMessage:
    seq = rng.randrange(1, 10**9)
    sid = "MZ" + "".join(rng.choices("0123456789abcdef", k=32))
    text = "".join(rng.choices('abcé€ "\\/\n\t<>&😀', k=rng.randrange(0, 12)))
    payload = rng.randbytes(rng.choice([0, 1, 2, 3, 159, 160, 161]))
    choices: list[InboundMessage] = [
        Connected(text, "1.0.0"),
        Start(seq, sid, "CA1", "AC1", ("in",), {text: text, "k": ""}, "audio/x-mulaw", 8000, 1),
        Media(seq, sid, rng.choice(["inbound", "outbound"]), rng.randrange(1, 10**6), seq, payload),
        Dtmf(seq, sid, "inbound_track", rng.choice("0123456789*#")),
        Mark(seq, sid, text),
        Stop(seq, sid, "AC1", "CA1"),
        Unknown("future-event", {"sequenceNumber": str(seq), "streamSid": sid, "x": [1, {}]}),
    ]
    return rng.choice(choices)


def random_outbound(rng: random.Random) -> OutboundMessage:
    sid = "MZ" + "".join(rng.choices("0123456789abcdef", k=32))
    name = "".join(rng.choices('abc.-é€ "\\😀', k=rng.randrange(0, 12)))
    choices: list[OutboundMessage] = [
        OutMedia(sid, rng.randbytes(rng.randrange(0, 400))),
        OutMark(sid, name),
        OutClear(sid),
    ]
    return rng.choice(choices)


def test_inbound_round_trip() -> None:
    rng = random.Random(1)
    for _ in range(2000):
        msg = random_inbound(rng)
        assert parse_inbound(encode_inbound(msg)) == msg


def test_outbound_round_trip() -> None:
    rng = random.Random(2)
    for _ in range(2000):
        msg = random_outbound(rng)
        assert parse_outbound(encode_outbound(msg)) == msg


@pytest.mark.parametrize("name", INBOUND_FIXTURES)
def test_text_round_trip_through_objects(name: str) -> None:
    text = compact(fixture(f"{name}.json"))
    assert encode_inbound(parse_inbound(text)) == text


def test_numbers_are_encoded_as_strings() -> None:
    obj = json.loads(encode_inbound(Media(7, SID, "inbound", 3, 40, b"\xff")))
    assert obj["sequenceNumber"] == "7"
    assert obj["media"]["chunk"] == "3" and obj["media"]["timestamp"] == "40"


# --- tolerance -------------------------------------------------------------------------------


def test_unknown_event_is_kept_not_rejected() -> None:
    msg = parse_inbound(message(event="transcription", sequenceNumber="9", data={"a": 1}))
    assert msg == Unknown("transcription", {"sequenceNumber": "9", "data": {"a": 1}})


def test_extra_fields_are_ignored() -> None:
    obj = json.loads(fixture("mark.json"))
    obj["extra"] = {"anything": True}
    obj["mark"]["also"] = 1
    assert parse_inbound(json.dumps(obj)) == Mark(103, SID, "Repeat message 0")


def test_integer_numbers_and_missing_custom_parameters_are_accepted() -> None:
    obj = json.loads(fixture("start.json"))
    obj["sequenceNumber"] = 1
    del obj["start"]["customParameters"]
    del obj["streamSid"]
    msg = parse_inbound(json.dumps(obj))
    assert isinstance(msg, Start)
    assert msg.sequence_number == 1 and msg.custom_parameters == {}


# --- strictness ------------------------------------------------------------------------------


def mutated(name: str, path: tuple[str, ...], value: Any) -> str:
    """The fixture with one field replaced (`...` deletes it)."""
    obj = json.loads(fixture(name))
    target = obj
    for key in path[:-1]:
        target = target[key]
    if value is ...:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return json.dumps(obj)


BAD_INBOUND = {
    "not json": "{not json",
    "truncated": fixture("media.json")[:-5],
    "array": "[1, 2]",
    "string": '"media"',
    "null": "null",
    "no event": '{"streamSid": "MZ1"}',
    "event not a string": '{"event": 5}',
    "connected without version": '{"event": "connected", "protocol": "Call"}',
    "start without start": mutated("start.json", ("start",), ...),
    "start object is a list": mutated("start.json", ("start",), []),
    "start without callSid": mutated("start.json", ("start", "callSid"), ...),
    "start streamSids differ": mutated("start.json", ("streamSid",), "MZ2"),
    "tracks not a list": mutated("start.json", ("start", "tracks"), "inbound"),
    "tracks of numbers": mutated("start.json", ("start", "tracks"), [1]),
    "params not strings": mutated("start.json", ("start", "customParameters"), {"a": 1}),
    "params a list": mutated("start.json", ("start", "customParameters"), ["a"]),
    "no mediaFormat": mutated("start.json", ("start", "mediaFormat"), ...),
    "sampleRate text": mutated("start.json", ("start", "mediaFormat", "sampleRate"), "8k"),
    "sequenceNumber missing": mutated("media.json", ("sequenceNumber",), ...),
    "sequenceNumber word": mutated("media.json", ("sequenceNumber",), "two"),
    "sequenceNumber empty": mutated("media.json", ("sequenceNumber",), ""),
    "sequenceNumber negative": mutated("media.json", ("sequenceNumber",), "-2"),
    "sequenceNumber float": mutated("media.json", ("sequenceNumber",), "2.0"),
    "sequenceNumber padded": mutated("media.json", ("sequenceNumber",), " 2"),
    "sequenceNumber unicode digits": mutated("media.json", ("sequenceNumber",), "٢"),
    "sequenceNumber huge": mutated("media.json", ("sequenceNumber",), "9" * 5000),
    "sequenceNumber bool": mutated("media.json", ("sequenceNumber",), True),
    "sequenceNumber json float": mutated("media.json", ("sequenceNumber",), 2.0),
    "sequenceNumber null": mutated("media.json", ("sequenceNumber",), None),
    "chunk word": mutated("media.json", ("media", "chunk"), "one"),
    "timestamp hex": mutated("media.json", ("media", "timestamp"), "0x34"),
    "media without streamSid": mutated("media.json", ("streamSid",), ...),
    "streamSid number": mutated("media.json", ("streamSid",), 1),
    "media without media": mutated("media.json", ("media",), ...),
    "media without payload": mutated("media.json", ("media", "payload"), ...),
    "media without track": mutated("media.json", ("media", "track"), ...),
    "payload not base64": mutated("media.json", ("media", "payload"), "not base64!"),
    "payload bad padding": mutated("media.json", ("media", "payload"), "/w="),
    "payload with newline": mutated("media.json", ("media", "payload"), "/w==\n/w=="),
    "payload non-ascii": mutated("media.json", ("media", "payload"), "é"),
    "payload number": mutated("media.json", ("media", "payload"), 255),
    "dtmf digit letter": mutated("dtmf.json", ("dtmf", "digit"), "A"),
    "dtmf two digits": mutated("dtmf.json", ("dtmf", "digit"), "12"),
    "dtmf empty digit": mutated("dtmf.json", ("dtmf", "digit"), ""),
    "dtmf digit number": mutated("dtmf.json", ("dtmf", "digit"), 1),
    "mark without name": mutated("mark.json", ("mark", "name"), ...),
    "mark name number": mutated("mark.json", ("mark", "name"), 7),
    "stop without callSid": mutated("stop.json", ("stop", "callSid"), ...),
    "stop without stop": mutated("stop.json", ("stop",), ...),
    "deeply nested": '{"event": "x", "a": ' + "[" * 20000 + "]" * 20000 + "}",
}


@pytest.mark.parametrize("text", BAD_INBOUND.values(), ids=BAD_INBOUND.keys())
def test_malformed_inbound_is_a_protocol_error(text: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_inbound(text)
    assert info.value.reason and str(info.value) == info.value.reason


def test_message_size_limit_is_in_bytes() -> None:
    base = json.loads(fixture("mark.json"))
    overhead = len(json.dumps({**base, "mark": {"name": ""}}).encode())
    base["mark"]["name"] = "x" * (MAX_MESSAGE_BYTES - overhead)
    at_limit = json.dumps(base)
    assert len(at_limit.encode()) == MAX_MESSAGE_BYTES
    assert isinstance(parse_inbound(at_limit), Mark)
    base["mark"]["name"] += "x"
    with pytest.raises(ProtocolError, match="bytes"):
        parse_inbound(json.dumps(base))
    # 16 Ki four-byte characters: few characters, too many bytes.
    base["mark"]["name"] = "😀" * (MAX_MESSAGE_BYTES // 4)
    with pytest.raises(ProtocolError, match="bytes"):
        parse_inbound(json.dumps(base, ensure_ascii=False))


def test_missing_field_reason_names_the_field() -> None:
    with pytest.raises(ProtocolError, match="missing 'callSid'"):
        parse_inbound(mutated("start.json", ("start", "callSid"), ...))


BAD_OUTBOUND = {
    "not json": "nope",
    "array": "[]",
    "unknown event": '{"event": "play", "streamSid": "MZ1"}',
    "no streamSid": '{"event": "clear"}',
    "media without payload": '{"event": "media", "streamSid": "MZ1", "media": {}}',
    "media bad base64": '{"event": "media", "streamSid": "MZ1", "media": {"payload": "%%"}}',
    "mark without name": '{"event": "mark", "streamSid": "MZ1", "mark": {}}',
    "mark not object": '{"event": "mark", "streamSid": "MZ1", "mark": "m"}',
    "too big": '{"event": "clear", "streamSid": "' + "M" * MAX_MESSAGE_BYTES + '"}',
}


@pytest.mark.parametrize("text", BAD_OUTBOUND.values(), ids=BAD_OUTBOUND.keys())
def test_malformed_outbound_is_a_protocol_error(text: str) -> None:
    with pytest.raises(ProtocolError):
        parse_outbound(text)
