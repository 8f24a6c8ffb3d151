"""Twilio Media Streams: wire messages, the sans-I/O stream, a simulated phone line, request
signatures and TwiML. Everything re-exported here is pure; the websocket shell
(`media.twilio.websocket`) is imported on its own so this package never pulls in a web stack.
"""

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
from media.twilio.phone import PhoneLine, PlayedSegment
from media.twilio.protocol import Started, StreamEvent, TwilioStream
from media.twilio.signature import compute_signature, public_url, validate_signature
from media.twilio.twiml import connect_stream, say_and_hangup

__all__ = [
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
    "PhoneLine",
    "PlayedSegment",
    "ProtocolError",
    "Start",
    "Started",
    "Stop",
    "StreamEvent",
    "TwilioStream",
    "Unknown",
    "compute_signature",
    "connect_stream",
    "encode_inbound",
    "encode_outbound",
    "parse_inbound",
    "parse_outbound",
    "public_url",
    "say_and_hangup",
    "validate_signature",
]
