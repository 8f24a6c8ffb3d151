"""`TwilioStream`: the server side of one Media Streams websocket, sans-I/O.

Text frames go in through `receive_text` and come out as `media.transport` events; outbound
audio, marks and clears come back as the JSON text to write. No socket, no clock, no asyncio:
the websocket shell owns those. Ordering violations that would make the call meaningless
(media before `start`, a foreign streamSid, a second `start`) raise `ProtocolError`; things
that only degrade it (lost frames, unknown events) are counted for the call record.
"""

from __future__ import annotations

from dataclasses import dataclass

from media.transport import AudioReceived, DtmfReceived, MarkReceived, StreamStopped
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
    Unknown,
    encode_outbound,
    parse_inbound,
)

__all__ = ["EXPECTED_FORMAT", "INBOUND_TRACK", "StreamEvent", "Started", "TwilioStream"]

EXPECTED_FORMAT = ("audio/x-mulaw", 8000, 1)
INBOUND_TRACK = "inbound"


@dataclass(frozen=True, slots=True)
class Started:
    """The stream's `start`: the call's identity and custom parameters."""

    start: Start


StreamEvent = Started | AudioReceived | MarkReceived | DtmfReceived | StreamStopped

_EVENT_NAMES = {Media: "media", Dtmf: "dtmf", Mark: "mark", Stop: "stop"}


class TwilioStream:
    def __init__(self) -> None:
        self._start: Start | None = None
        self._connected = False
        self._stopped = False
        self._last_sequence: int | None = None
        self._last_chunk: int | None = None
        self.unknown_events = 0
        self.sequence_gaps = 0  # discontinuities in sequenceNumber, of any size
        self.lost_chunks = 0  # inbound media chunks missing between the ones received
        self.ignored_media = 0  # media on a track other than inbound

    @property
    def start(self) -> Start | None:
        return self._start

    @property
    def stream_sid(self) -> str | None:
        return self._start.stream_sid if self._start else None

    @property
    def call_sid(self) -> str | None:
        return self._start.call_sid if self._start else None

    @property
    def custom_parameters(self) -> dict[str, str]:
        return dict(self._start.custom_parameters) if self._start else {}

    @property
    def started(self) -> bool:
        return self._start is not None

    @property
    def stopped(self) -> bool:
        return self._stopped

    # --- inbound -----------------------------------------------------------------------------

    def receive_text(self, text: str) -> list[StreamEvent]:
        """Feed one text frame; returns the events it carries (often none or one)."""
        msg = parse_inbound(text)
        if isinstance(msg, Unknown):
            # Twilio may add events; they still take a sequence number.
            self.unknown_events += 1
            seq = msg.data.get("sequenceNumber")
            if isinstance(seq, str) and seq.isascii() and seq.isdigit() and len(seq) <= 18:
                self._track_sequence(int(seq))
            return []
        if isinstance(msg, Connected):
            if self._connected or self._start is not None:
                raise ProtocolError("unexpected connected after the stream began")
            self._connected = True
            return []
        if isinstance(msg, Start):
            return [self._on_start(msg)]
        start = self._start
        name = _EVENT_NAMES[type(msg)]
        if start is None:
            raise ProtocolError(f"{name} before start")
        if self._stopped:
            raise ProtocolError(f"{name} after stop")
        if msg.stream_sid != start.stream_sid:
            raise ProtocolError(f"unknown streamSid {msg.stream_sid!r:.60} in {name}")
        self._track_sequence(msg.sequence_number)
        if isinstance(msg, Media):
            return self._on_media(msg)
        if isinstance(msg, Dtmf):
            return [DtmfReceived(msg.digit)]
        if isinstance(msg, Mark):
            return [MarkReceived(msg.name)]
        self._stopped = True
        return [StreamStopped()]

    def _on_start(self, msg: Start) -> Started:
        if self._start is not None:
            raise ProtocolError("second start on one stream")
        media_format = (msg.encoding, msg.sample_rate, msg.channels)
        if media_format != EXPECTED_FORMAT:
            raise ProtocolError(
                "unsupported media format {}/{}/{} (expected {}/{}/{})".format(
                    *media_format, *EXPECTED_FORMAT
                )
            )
        self._start = msg
        self._track_sequence(msg.sequence_number)
        return Started(msg)

    def _on_media(self, msg: Media) -> list[StreamEvent]:
        if msg.track != INBOUND_TRACK:
            self.ignored_media += 1
            return []
        last = self._last_chunk
        if last is not None and msg.chunk != last + 1:
            self.lost_chunks += max(0, msg.chunk - last - 1)
        self._last_chunk = msg.chunk
        return [AudioReceived(msg.payload)]

    def _track_sequence(self, seq: int) -> None:
        last = self._last_sequence
        if last is not None and seq != last + 1:
            self.sequence_gaps += 1
        self._last_sequence = seq

    # --- outbound ----------------------------------------------------------------------------

    def send_media(self, audio: bytes) -> str:
        """Text that plays `audio` (raw μ-law 8 kHz) after what is already queued."""
        return encode_outbound(OutMedia(self._require_sid("media"), audio))

    def send_mark(self, name: str) -> str:
        return encode_outbound(OutMark(self._require_sid("mark"), name))

    def send_clear(self) -> str:
        return encode_outbound(OutClear(self._require_sid("clear")))

    def _require_sid(self, what: str) -> str:
        # Twilio has no stream to address before `start`.
        if self._start is None:
            raise ProtocolError(f"cannot send {what} before start")
        return self._start.stream_sid
