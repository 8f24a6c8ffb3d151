"""Browser calls over WebRTC: audio conversion and playout with marks (sans-I/O), offer checks.

Everything re-exported here is pure; the aiortc shell (`media.webrtc.peer`) is imported on its
own so this package never pulls in a WebRTC stack.
"""

from media.webrtc.audio import (
    AUDIO_FORMAT,
    FRAME_SECONDS,
    FrameSchedule,
    InboundAudio,
    Playout,
    Tick,
)
from media.webrtc.sdp import MAX_SDP_BYTES, OfferError, OfferSummary, check_offer

__all__ = [
    "AUDIO_FORMAT",
    "FRAME_SECONDS",
    "MAX_SDP_BYTES",
    "FrameSchedule",
    "InboundAudio",
    "OfferError",
    "OfferSummary",
    "Playout",
    "Tick",
    "check_offer",
]
