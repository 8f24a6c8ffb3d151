"""PhoneLine: Twilio's numbering and playback model, driven with explicit times."""

from __future__ import annotations

import json
from typing import Any

import pytest

from media.twilio.messages import (
    Connected,
    Dtmf,
    Mark,
    Media,
    OutClear,
    OutMark,
    OutMedia,
    ProtocolError,
    Start,
    Stop,
    encode_inbound,
    encode_outbound,
    parse_inbound,
)
from media.twilio.phone import DEFAULT_STREAM_SID, PhoneLine
from media.twilio.protocol import Started, TwilioStream

SID = DEFAULT_STREAM_SID
FRAME = b"\x01" * 160


def audio(seconds: float, byte: int = 0x11) -> str:
    return encode_outbound(OutMedia(SID, bytes([byte]) * round(seconds * 8000)))


def mark(name: str) -> str:
    return encode_outbound(OutMark(SID, name))


CLEAR = encode_outbound(OutClear(SID))


def echoed(messages: list[str]) -> list[str]:
    names = []
    for text in messages:
        msg = parse_inbound(text)
        assert isinstance(msg, Mark)
        names.append(msg.name)
    return names


def receive_and_due(line: PhoneLine, text: str, now: float) -> list[str]:
    assert line.receive_text(text, now) == b""
    return line.due_messages(now)


def started_line(now: float = 0.0, **kwargs: Any) -> PhoneLine:
    line = PhoneLine(**kwargs)
    line.connected(now)
    line.start(now)
    return line


# --- what the phone sends --------------------------------------------------------------------


def test_connected_and_start() -> None:
    line = PhoneLine(
        stream_sid="MZ9", call_sid="CA9", account_sid="AC9", custom_parameters={"ava_token": "t"}
    )
    assert parse_inbound(line.connected(0.0)) == Connected("Call", "1.0.0")
    start = parse_inbound(line.start(0.0))
    assert start == Start(
        1, "MZ9", "CA9", "AC9", ("inbound",), {"ava_token": "t"}, "audio/x-mulaw", 8000, 1
    )
    assert line.started and line.sequence_number == 1


def test_media_numbering_and_timestamps() -> None:
    line = started_line()
    frames = [parse_inbound(line.media(FRAME, 0.02 * i)) for i in range(3)]
    assert frames == [
        Media(2, SID, "inbound", 1, 0, FRAME),
        Media(3, SID, "inbound", 2, 20, FRAME),
        Media(4, SID, "inbound", 3, 40, FRAME),
    ]


def test_sequence_numbers_are_shared_across_message_types() -> None:
    line = started_line()
    seqs = [
        parse_inbound(line.media(FRAME, 0.0)),
        # nothing queued, so the echo is due at once
        *[parse_inbound(t) for t in receive_and_due(line, mark("m1"), 0.0)],
        parse_inbound(line.dtmf("#", 0.01)),
        parse_inbound(line.media(FRAME, 0.02)),
        parse_inbound(line.stop(0.03)),
    ]
    assert seqs == [
        Media(2, SID, "inbound", 1, 0, FRAME),
        Mark(3, SID, "m1"),
        Dtmf(4, SID, "inbound_track", "#"),
        Media(5, SID, "inbound", 2, 20, FRAME),
        Stop(6, SID, "AC00000000000000000000000000000001", "CA00000000000000000000000000000001"),
    ]


def test_the_phone_stream_satisfies_the_server_stream() -> None:
    line, server = PhoneLine(), TwilioStream()
    texts = [line.connected(0.0), line.start(0.0)]
    texts += [line.media(FRAME, 0.02 * i) for i in range(10)]
    texts += [line.dtmf("5", 0.2), line.stop(0.25)]
    events = [e for t in texts for e in server.receive_text(t)]
    assert isinstance(events[0], Started)
    assert server.sequence_gaps == 0 and server.lost_chunks == 0
    assert server.stopped


def test_misuse_is_refused() -> None:
    line = PhoneLine()
    with pytest.raises(RuntimeError):
        line.media(FRAME, 0.0)
    line.start(0.0)
    with pytest.raises(RuntimeError):
        line.start(0.0)
    with pytest.raises(ValueError):
        line.dtmf("A", 0.0)
    line.stop(1.0)
    with pytest.raises(RuntimeError):
        line.media(FRAME, 1.0)


# --- playback --------------------------------------------------------------------------------


def test_mark_is_echoed_exactly_when_its_audio_finishes() -> None:
    line = started_line()
    assert line.receive_text(audio(0.5), 1.0) == b"\x11" * 4000
    assert line.receive_text(mark("a"), 1.0) == b""
    assert line.due_messages(1.0) == []
    assert line.next_due() == pytest.approx(1.5)
    assert line.due_messages(1.499) == []
    assert echoed(line.due_messages(1.5)) == ["a"]
    assert line.due_messages(2.0) == []


def test_marks_after_consecutive_frames_fire_on_frame_edges() -> None:
    line = started_line()
    for i in range(50):
        line.receive_text(audio(0.02), 0.0)
        line.receive_text(mark(f"f{i}"), 0.0)
    # Float sums of 20 ms would drift; edges computed from the byte count do not.
    for i in range(50):
        assert echoed(line.due_messages(0.02 * (i + 1))) == [f"f{i}"]


def test_audio_queues_behind_audio_and_restarts_after_underrun() -> None:
    line = started_line()
    line.receive_text(audio(0.2), 0.0)
    line.receive_text(audio(0.2), 0.1)  # queued: plays 0.2 .. 0.4
    assert line.queued_seconds(0.1) == pytest.approx(0.3)
    line.receive_text(mark("b"), 0.1)
    assert line.next_due() == pytest.approx(0.4)
    line.receive_text(audio(0.1), 1.0)  # ran dry at 0.4: plays 1.0 .. 1.1
    assert [s.start for s in line.played_segments(2.0)] == pytest.approx([0.0, 0.2, 1.0])
    assert line.queued_seconds(1.05) == pytest.approx(0.05)


def test_mark_with_nothing_queued_is_echoed_at_once() -> None:
    line = started_line()
    assert echoed(receive_and_due(line, mark("now"), 3.0)) == ["now"]
    assert line.marks_received == 1 and line.marks_echoed == 1


def test_clear_drops_audio_and_echoes_pending_marks_at_once() -> None:
    line = started_line()
    for name in ("c1", "c2", "c3"):
        line.receive_text(audio(0.2), 0.0)
        line.receive_text(mark(name), 0.0)
    assert echoed(line.due_messages(0.25)) == ["c1"]
    assert echoed(receive_and_due(line, CLEAR, 0.3)) == ["c2", "c3"]
    assert line.clears_received == 1
    assert line.queued_seconds(0.3) == 0.0
    # The caller heard 0.3 s: the first chunk and half of the second.
    assert line.played_seconds(10.0) == pytest.approx(0.3)
    assert [len(s.audio) for s in line.played_segments(10.0)] == [1600, 800]
    # Audio after the clear plays at once.
    line.receive_text(audio(0.1), 0.3)
    line.receive_text(mark("d"), 0.3)
    assert line.next_due() == pytest.approx(0.4)


def test_sequence_numbers_of_echoes_follow_the_order_they_are_emitted() -> None:
    line = started_line()
    line.receive_text(audio(0.02), 0.0)
    line.receive_text(mark("x"), 0.0)
    line.media(FRAME, 0.0)  # seq 2
    [text] = line.due_messages(0.02)
    assert parse_inbound(text) == Mark(3, SID, "x")
    assert json.loads(text)["sequenceNumber"] == "3"


def test_played_audio_and_timeline() -> None:
    line = started_line()
    line.receive_text(audio(0.1, 0x22), 1.0)  # 1.0 .. 1.1
    line.receive_text(audio(0.1, 0x33), 1.3)  # 1.3 .. 1.4
    assert line.played_audio(1.05) == b"\x22" * 400
    assert line.played_audio(5.0) == b"\x22" * 800 + b"\x33" * 800
    heard = line.timeline(0.9, 1.5)
    assert len(heard) == 4800
    assert heard[:800] == b"\xff" * 800
    assert heard[800:1600] == b"\x22" * 800
    assert heard[1600:3200] == b"\xff" * 1600
    assert heard[3200:4000] == b"\x33" * 800
    assert heard[4000:] == b"\xff" * 800
    # A window starting inside a segment shows only its remainder.
    assert line.timeline(1.05, 1.1) == b"\x22" * 400


def test_stop_drops_pending_marks_and_later_server_text() -> None:
    line = started_line()
    line.receive_text(audio(1.0), 0.0)
    line.receive_text(mark("never"), 0.0)
    line.stop(0.5)
    assert line.stopped
    assert line.due_messages(2.0) == []
    assert line.receive_text(audio(0.1), 0.6) == b""
    assert line.ignored_after_stop == 1


def test_server_text_before_start_or_for_another_stream_is_an_error() -> None:
    line = PhoneLine()
    with pytest.raises(ProtocolError, match="before start"):
        line.receive_text(audio(0.1), 0.0)
    line.start(0.0)
    with pytest.raises(ProtocolError, match="unknown streamSid"):
        line.receive_text(encode_outbound(OutClear("MZ_other")), 0.0)
    with pytest.raises(ProtocolError):
        line.receive_text(json.dumps({"event": "play", "streamSid": SID}), 0.0)


def test_counters() -> None:
    line = started_line()
    line.receive_text(audio(0.1), 0.0)
    line.receive_text(audio(0.1), 0.0)
    line.receive_text(mark("m"), 0.0)
    line.receive_text(CLEAR, 0.05)
    assert (line.media_received, line.marks_received, line.clears_received) == (2, 1, 1)
    assert line.marks_echoed == 0
    assert len(line.due_messages(0.05)) == 1
    assert line.marks_echoed == 1


def test_media_text_is_exactly_what_encode_inbound_makes() -> None:
    """`media()` builds its JSON from a template for speed; it must not drift from the codec."""
    line = PhoneLine(stream_sid="MZ" + "ab" * 16)
    line.start(0.0)
    for n, frame in enumerate([bytes(range(160)), b"\xff" * 160, b"\x00" * 80]):
        text = line.media(frame, 0.02 * n)
        parsed = parse_inbound(text)
        assert isinstance(parsed, Media) and parsed.payload == frame
        assert text == encode_inbound(parsed)
