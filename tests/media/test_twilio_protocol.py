"""TwilioStream: the server side of one stream, fed captured and crafted message sequences."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from media.transport import AudioReceived, DtmfReceived, MarkReceived, StreamStopped
from media.twilio.messages import (
    Dtmf,
    Mark,
    Media,
    ProtocolError,
    Start,
    Stop,
    Unknown,
    encode_inbound,
    parse_outbound,
)
from media.twilio.protocol import Started, StreamEvent, TwilioStream

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "twilio"
SID = "MZ00000000000000000000000000000001"
FRAME = b"\x01" * 160


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def start_text(seq: int = 1, **changes: Any) -> str:
    fields: dict[str, Any] = {
        "sequence_number": seq,
        "stream_sid": SID,
        "call_sid": "CA1",
        "account_sid": "AC1",
        "tracks": ("inbound",),
        "custom_parameters": {"ava_token": "tok"},
        "encoding": "audio/x-mulaw",
        "sample_rate": 8000,
        "channels": 1,
    }
    fields.update(changes)
    return encode_inbound(Start(**fields))


def media_text(seq: int, chunk: int, *, sid: str = SID, track: str = "inbound") -> str:
    return encode_inbound(Media(seq, sid, track, chunk, (chunk - 1) * 20, FRAME))


def started_stream() -> TwilioStream:
    stream = TwilioStream()
    stream.receive_text(fixture("connected.json"))
    stream.receive_text(start_text())
    return stream


def test_captured_call_sequence() -> None:
    stream = TwilioStream()
    events: list[StreamEvent] = []
    for line in fixture("call.jsonl").splitlines():
        events += stream.receive_text(line)
    assert [type(e) for e in events] == [
        Started,
        AudioReceived,
        AudioReceived,
        AudioReceived,
        DtmfReceived,
        MarkReceived,
        AudioReceived,
        StreamStopped,
    ]
    first = events[0]
    assert isinstance(first, Started) and first.start.call_sid.startswith("CA")
    assert all(len(e.audio) == 160 for e in events if isinstance(e, AudioReceived))
    assert events[4] == DtmfReceived("#")
    assert events[5] == MarkReceived("utt-1-chunk-1")
    assert stream.stopped
    assert (stream.sequence_gaps, stream.lost_chunks, stream.unknown_events) == (0, 0, 0)


def test_start_exposes_the_call() -> None:
    stream = TwilioStream()
    assert not stream.started and stream.stream_sid is None and stream.call_sid is None
    assert stream.custom_parameters == {}
    assert stream.receive_text(fixture("connected.json")) == []
    [event] = stream.receive_text(fixture("start.json"))
    assert isinstance(event, Started)
    assert stream.started and not stream.stopped
    assert stream.stream_sid == SID
    assert stream.call_sid == "CA00000000000000000000000000000001"
    assert stream.custom_parameters == {"tenant": "acme", "from_number": "+15551230000"}
    assert stream.start == event.start


def test_missing_connected_is_tolerated() -> None:
    stream = TwilioStream()
    assert isinstance(stream.receive_text(start_text())[0], Started)
    assert stream.receive_text(media_text(2, 1)) == [AudioReceived(FRAME)]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (media_text(2, 1), "media before start"),
        (encode_inbound(Dtmf(2, SID, "inbound_track", "1")), "dtmf before start"),
        (encode_inbound(Mark(2, SID, "m")), "mark before start"),
        (encode_inbound(Stop(2, SID, "AC1", "CA1")), "stop before start"),
    ],
)
def test_messages_before_start_are_errors(text: str, reason: str) -> None:
    stream = TwilioStream()
    stream.receive_text(fixture("connected.json"))
    with pytest.raises(ProtocolError, match=reason):
        stream.receive_text(text)


def test_second_start_is_an_error() -> None:
    stream = started_stream()
    with pytest.raises(ProtocolError, match="second start"):
        stream.receive_text(start_text(2))


def test_connected_after_start_is_an_error() -> None:
    stream = started_stream()
    with pytest.raises(ProtocolError, match="connected"):
        stream.receive_text(fixture("connected.json"))


@pytest.mark.parametrize(
    "text",
    [
        media_text(2, 1, sid="MZ_other"),
        encode_inbound(Dtmf(2, "MZ_other", "inbound_track", "1")),
        encode_inbound(Mark(2, "MZ_other", "m")),
        encode_inbound(Stop(2, "MZ_other", "AC1", "CA1")),
    ],
)
def test_foreign_stream_sid_is_an_error(text: str) -> None:
    with pytest.raises(ProtocolError, match="unknown streamSid"):
        started_stream().receive_text(text)


@pytest.mark.parametrize(
    "change",
    [
        {"encoding": "audio/x-alaw"},
        {"encoding": "audio/l16"},
        {"sample_rate": 16000},
        {"channels": 2},
    ],
)
def test_unsupported_media_format_is_an_error(change: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError, match="unsupported media format"):
        TwilioStream().receive_text(start_text(**change))


@pytest.mark.parametrize(
    "text",
    [
        media_text(3, 1),
        encode_inbound(Mark(3, SID, "m")),
        encode_inbound(Dtmf(3, SID, "inbound_track", "1")),
        encode_inbound(Stop(3, SID, "AC1", "CA1")),
    ],
)
def test_anything_after_stop_is_an_error(text: str) -> None:
    stream = started_stream()
    assert stream.receive_text(encode_inbound(Stop(2, SID, "AC1", "CA1"))) == [StreamStopped()]
    with pytest.raises(ProtocolError, match="after stop"):
        stream.receive_text(text)


def test_malformed_text_propagates_as_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        started_stream().receive_text("{")


def test_unknown_events_are_ignored_and_counted() -> None:
    stream = started_stream()
    unknown = encode_inbound(Unknown("transcription", {"sequenceNumber": "2", "streamSid": SID}))
    assert stream.receive_text(unknown) == []
    assert stream.receive_text(media_text(3, 1)) == [AudioReceived(FRAME)]
    assert stream.unknown_events == 1
    assert stream.sequence_gaps == 0  # the unknown event's number was accounted for


def test_unknown_event_before_start_is_tolerated() -> None:
    stream = TwilioStream()
    assert stream.receive_text(json.dumps({"event": "hello"})) == []
    assert stream.unknown_events == 1


def test_other_tracks_are_ignored() -> None:
    stream = started_stream()
    assert stream.receive_text(media_text(2, 1, track="outbound")) == []
    assert stream.receive_text(media_text(3, 1)) == [AudioReceived(FRAME)]
    assert stream.ignored_media == 1
    assert stream.lost_chunks == 0


def test_gaps_are_counted_not_fatal() -> None:
    stream = started_stream()
    stream.receive_text(media_text(2, 1))
    stream.receive_text(media_text(3, 2))
    stream.receive_text(media_text(6, 5))  # seq 4-5 and chunks 3-4 lost upstream
    stream.receive_text(media_text(7, 6))
    stream.receive_text(media_text(9, 9))  # seq 8 and chunks 7-8 lost
    assert stream.sequence_gaps == 2
    assert stream.lost_chunks == 4


def test_marks_and_dtmf_take_sequence_numbers_but_not_chunks() -> None:
    stream = started_stream()
    stream.receive_text(media_text(2, 1))
    assert stream.receive_text(encode_inbound(Mark(3, SID, "a"))) == [MarkReceived("a")]
    assert stream.receive_text(encode_inbound(Dtmf(4, SID, "inbound_track", "*"))) == [
        DtmfReceived("*")
    ]
    stream.receive_text(media_text(5, 2))
    assert (stream.sequence_gaps, stream.lost_chunks) == (0, 0)


def test_repeated_or_backward_sequence_is_a_gap() -> None:
    stream = started_stream()
    stream.receive_text(media_text(2, 1))
    stream.receive_text(media_text(2, 2))
    assert stream.sequence_gaps == 1
    assert stream.lost_chunks == 0


# --- outbound --------------------------------------------------------------------------------


def test_outbound_before_start_is_an_error() -> None:
    stream = TwilioStream()
    with pytest.raises(ProtocolError, match="before start"):
        stream.send_media(FRAME)
    with pytest.raises(ProtocolError, match="before start"):
        stream.send_mark("m")
    with pytest.raises(ProtocolError, match="before start"):
        stream.send_clear()


def test_outbound_text_is_addressed_to_the_stream() -> None:
    stream = started_stream()
    media = json.loads(stream.send_media(b"\xff\x00"))
    assert media == {"event": "media", "streamSid": SID, "media": {"payload": "/wA="}}
    assert json.loads(stream.send_mark("1.1")) == {
        "event": "mark",
        "streamSid": SID,
        "mark": {"name": "1.1"},
    }
    assert json.loads(stream.send_clear()) == {"event": "clear", "streamSid": SID}


def test_outbound_parses_back() -> None:
    stream = started_stream()
    out = parse_outbound(stream.send_media(FRAME))
    assert out.stream_sid == SID
