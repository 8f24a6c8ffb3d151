"""Twilio Media Streams messages: the one translation point between Twilio JSON and Python.

Parsing is strict about what we rely on (types, numbers, base64, sizes) because a malformed
stream ends the call with a distinct endedReason rather than limping on; it is tolerant where
Twilio may grow (unknown events become `Unknown`, extra fields are ignored). Encoding produces
exactly what Twilio sends, numbers as strings, so simulated callers and fixtures are faithful.

Exceptions:

    ValueError
    └── ProtocolError   bad input on the wire; `.reason` says what
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DTMF_DIGITS",
    "MAX_MESSAGE_BYTES",
    "Connected",
    "Dtmf",
    "InboundMessage",
    "Mark",
    "Media",
    "OutClear",
    "OutMark",
    "OutMedia",
    "OutboundMessage",
    "ProtocolError",
    "Start",
    "Stop",
    "Unknown",
    "encode_inbound",
    "encode_outbound",
    "parse_inbound",
    "parse_outbound",
]

# A 20 ms frame is ~300 bytes of JSON; anything near this limit is not Twilio.
MAX_MESSAGE_BYTES = 65536
DTMF_DIGITS = frozenset("0123456789*#")

# Bounded so a hostile "sequenceNumber" cannot make int() do quadratic work.
_DIGITS = re.compile(r"[0-9]{1,18}")
# The same range for a JSON integer, so both spellings of a number mean the same thing.
_MAX_INT = 10**18 - 1

# A media message exactly as Twilio writes it (compact, Twilio's key order), 50 times a second
# per call: matched as text, it skips json.loads and the dict walk. Every captured group admits
# only characters that JSON would leave unescaped, so what it yields is what the general path
# would; any other spelling (spaces, other key order, escapes) takes the general path.
_MEDIA = re.compile(
    r'\{"event":"media","sequenceNumber":"([0-9]{1,18})",'
    r'"media":\{"track":"([a-z_]{1,32})","chunk":"([0-9]{1,18})","timestamp":"([0-9]{1,18})",'
    r'"payload":"([A-Za-z0-9+/]*={0,2})"\},"streamSid":"([A-Za-z0-9_-]{1,128})"\}'
)


class ProtocolError(ValueError):
    """The peer broke the Media Streams protocol."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- Twilio → server -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connected:
    protocol: str
    version: str


@dataclass(frozen=True, slots=True)
class Start:
    sequence_number: int
    stream_sid: str
    call_sid: str
    account_sid: str
    tracks: tuple[str, ...]
    custom_parameters: dict[str, str]
    encoding: str
    sample_rate: int
    channels: int


@dataclass(frozen=True, slots=True)
class Media:
    sequence_number: int
    stream_sid: str
    track: str
    chunk: int
    timestamp: int  # ms since the stream started
    payload: bytes  # raw μ-law, base64-decoded


@dataclass(frozen=True, slots=True)
class Dtmf:
    sequence_number: int
    stream_sid: str
    track: str
    digit: str


@dataclass(frozen=True, slots=True)
class Mark:
    sequence_number: int
    stream_sid: str
    name: str


@dataclass(frozen=True, slots=True)
class Stop:
    sequence_number: int
    stream_sid: str
    account_sid: str
    call_sid: str


@dataclass(frozen=True, slots=True)
class Unknown:
    """An event this code does not know; `data` is the message without its `event` key."""

    event: str
    data: dict[str, Any]


InboundMessage = Connected | Start | Media | Dtmf | Mark | Stop | Unknown


# --- server → Twilio -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutMedia:
    stream_sid: str
    payload: bytes  # raw μ-law


@dataclass(frozen=True, slots=True)
class OutMark:
    stream_sid: str
    name: str


@dataclass(frozen=True, slots=True)
class OutClear:
    stream_sid: str


OutboundMessage = OutMedia | OutMark | OutClear


# --- field access ----------------------------------------------------------------------------


def _load(text: str) -> tuple[str, dict[str, Any]]:
    # Each UTF-8 character is at most 4 bytes, so short texts skip the encode.
    if len(text) * 4 > MAX_MESSAGE_BYTES and len(text.encode("utf-8", "surrogatepass")) > (
        MAX_MESSAGE_BYTES
    ):
        raise ProtocolError(f"message over {MAX_MESSAGE_BYTES} bytes")
    try:
        obj = json.loads(text)
    # ValueError, not just JSONDecodeError: CPython's int() refuses over 4300 digits with a
    # plain ValueError from inside json.loads, and a 5 KB number fits in a message.
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"malformed JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ProtocolError(f"message is a JSON {type(obj).__name__}, not an object")
    return _str(obj, "event", "message"), obj


def _obj(parent: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = parent.get(key)
    if not isinstance(value, dict):
        raise ProtocolError(_bad(parent, key, where, "an object"))
    return value


def _str(parent: dict[str, Any], key: str, where: str) -> str:
    value = parent.get(key)
    if not isinstance(value, str):
        raise ProtocolError(_bad(parent, key, where, "a string"))
    return value


def _int(parent: dict[str, Any], key: str, where: str) -> int:
    """A non-negative integer; Twilio sends these as strings, a JSON integer is also accepted."""
    value = parent.get(key)
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        return int(value)
    # bool is an int subclass; True is not a sequence number.
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_INT:
        return value
    raise ProtocolError(_bad(parent, key, where, "a non-negative integer"))


def _bad(parent: dict[str, Any], key: str, where: str, expected: str) -> str:
    if key not in parent:
        return f"{where}: missing {key!r}"
    return f"{where}: {key!r} must be {expected}, got {parent[key]!r:.40}"


def _b64(parent: dict[str, Any], key: str, where: str) -> bytes:
    text = _str(parent, key, where)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError(f"{where}: {key!r} is not valid base64") from exc


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


# --- inbound ---------------------------------------------------------------------------------


def parse_inbound(text: str) -> InboundMessage:
    """Parse one Twilio → server text frame. Raises `ProtocolError` on anything malformed."""
    if len(text) <= MAX_MESSAGE_BYTES and (match := _MEDIA.fullmatch(text)) is not None:
        seq, track, chunk, timestamp, payload, stream_sid = match.groups()
        try:
            audio = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ProtocolError("media: 'payload' is not valid base64") from exc
        return Media(int(seq), stream_sid, track, int(chunk), int(timestamp), audio)
    event, obj = _load(text)
    if event == "connected":
        return Connected(_str(obj, "protocol", event), _str(obj, "version", event))
    if event == "start":
        return _parse_start(obj)
    if event == "media":
        media = _obj(obj, "media", event)
        return Media(
            _int(obj, "sequenceNumber", event),
            _str(obj, "streamSid", event),
            _str(media, "track", "media"),
            _int(media, "chunk", "media"),
            _int(media, "timestamp", "media"),
            _b64(media, "payload", "media"),
        )
    if event == "dtmf":
        dtmf = _obj(obj, "dtmf", event)
        digit = _str(dtmf, "digit", "dtmf")
        if len(digit) != 1 or digit not in DTMF_DIGITS:
            raise ProtocolError(f"dtmf: digit must be one of 0-9 * #, got {digit!r:.20}")
        return Dtmf(
            _int(obj, "sequenceNumber", event),
            _str(obj, "streamSid", event),
            _str(dtmf, "track", "dtmf"),
            digit,
        )
    if event == "mark":
        return Mark(
            _int(obj, "sequenceNumber", event),
            _str(obj, "streamSid", event),
            _str(_obj(obj, "mark", event), "name", "mark"),
        )
    if event == "stop":
        stop = _obj(obj, "stop", event)
        return Stop(
            _int(obj, "sequenceNumber", event),
            _str(obj, "streamSid", event),
            _str(stop, "accountSid", "stop"),
            _str(stop, "callSid", "stop"),
        )
    return Unknown(event, {k: v for k, v in obj.items() if k != "event"})


def _parse_start(obj: dict[str, Any]) -> Start:
    start = _obj(obj, "start", "start")
    stream_sid = _str(start, "streamSid", "start")
    # The top-level streamSid is redundant; old captures lack it, but it must not disagree.
    if "streamSid" in obj and _str(obj, "streamSid", "start") != stream_sid:
        raise ProtocolError("start: top-level streamSid differs from start.streamSid")
    tracks = start.get("tracks")
    if not isinstance(tracks, list) or not all(isinstance(t, str) for t in tracks):
        raise ProtocolError(_bad(start, "tracks", "start", "a list of strings"))
    params = start.get("customParameters", {})
    if not isinstance(params, dict) or not all(isinstance(v, str) for v in params.values()):
        raise ProtocolError(_bad(start, "customParameters", "start", "an object of strings"))
    fmt = _obj(start, "mediaFormat", "start")
    return Start(
        _int(obj, "sequenceNumber", "start"),
        stream_sid,
        _str(start, "callSid", "start"),
        _str(start, "accountSid", "start"),
        tuple(tracks),
        dict(params),
        _str(fmt, "encoding", "mediaFormat"),
        _int(fmt, "sampleRate", "mediaFormat"),
        _int(fmt, "channels", "mediaFormat"),
    )


def encode_inbound(msg: InboundMessage) -> str:
    """The JSON text Twilio would send for `msg` (key order and string numbers as Twilio's)."""
    obj: dict[str, Any]
    if isinstance(msg, Connected):
        obj = {"event": "connected", "protocol": msg.protocol, "version": msg.version}
    elif isinstance(msg, Start):
        obj = {
            "event": "start",
            "sequenceNumber": str(msg.sequence_number),
            "start": {
                "accountSid": msg.account_sid,
                "streamSid": msg.stream_sid,
                "callSid": msg.call_sid,
                "tracks": list(msg.tracks),
                "customParameters": dict(msg.custom_parameters),
                # Twilio sends these two as JSON numbers, unlike every other number.
                "mediaFormat": {
                    "encoding": msg.encoding,
                    "sampleRate": msg.sample_rate,
                    "channels": msg.channels,
                },
            },
            "streamSid": msg.stream_sid,
        }
    elif isinstance(msg, Media):
        obj = {
            "event": "media",
            "sequenceNumber": str(msg.sequence_number),
            "media": {
                "track": msg.track,
                "chunk": str(msg.chunk),
                "timestamp": str(msg.timestamp),
                "payload": _b64encode(msg.payload),
            },
            "streamSid": msg.stream_sid,
        }
    elif isinstance(msg, Dtmf):
        obj = {
            "event": "dtmf",
            "streamSid": msg.stream_sid,
            "sequenceNumber": str(msg.sequence_number),
            "dtmf": {"track": msg.track, "digit": msg.digit},
        }
    elif isinstance(msg, Mark):
        obj = {
            "event": "mark",
            "sequenceNumber": str(msg.sequence_number),
            "streamSid": msg.stream_sid,
            "mark": {"name": msg.name},
        }
    elif isinstance(msg, Stop):
        obj = {
            "event": "stop",
            "sequenceNumber": str(msg.sequence_number),
            "streamSid": msg.stream_sid,
            "stop": {"accountSid": msg.account_sid, "callSid": msg.call_sid},
        }
    else:
        obj = {"event": msg.event, **msg.data}
    return _dumps(obj)


# --- outbound --------------------------------------------------------------------------------


def parse_outbound(text: str) -> OutboundMessage:
    """Parse one server → Twilio text frame (what a fake Twilio receives). Strict: an event
    other than media/mark/clear is a `ProtocolError`, since it would be a bug in our server."""
    event, obj = _load(text)
    stream_sid = _str(obj, "streamSid", event)
    if event == "media":
        return OutMedia(stream_sid, _b64(_obj(obj, "media", event), "payload", "media"))
    if event == "mark":
        return OutMark(stream_sid, _str(_obj(obj, "mark", event), "name", "mark"))
    if event == "clear":
        return OutClear(stream_sid)
    raise ProtocolError(f"unknown outbound event {event!r:.40}")


def encode_outbound(msg: OutboundMessage) -> str:
    obj: dict[str, Any]
    if isinstance(msg, OutMedia):
        # The hot one (every outbound chunk): formatted directly, byte for byte what `_dumps`
        # makes of the same dict (base64 needs no escaping; the sid is escaped by json).
        sid = json.dumps(msg.stream_sid, ensure_ascii=False)
        payload = _b64encode(msg.payload)
        return f'{{"event":"media","streamSid":{sid},"media":{{"payload":"{payload}"}}}}'
    if isinstance(msg, OutMark):
        obj = {"event": "mark", "streamSid": msg.stream_sid, "mark": {"name": msg.name}}
    else:
        obj = {"event": "clear", "streamSid": msg.stream_sid}
    return _dumps(obj)
