"""The transport reader of one call: what the caller's side sends, posted to the session inbox.

Split from `voice.session` because it is one task that only translates transport events into
inbox events (`voice.session_events`); posting waits when the inbox is full, so a busy loop
stops the reading, which is backpressure on the socket.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from media.transport import (
    AudioReceived,
    CallTransport,
    DtmfReceived,
    MarkReceived,
    StreamStopped,
    TransportClosed,
)
from voice.session_events import CallerAudio, CallerGone, Dtmf, InboxEvent, MarkEchoed
from voice.types import EndedReason

__all__ = ["read_transport"]


async def read_transport(
    transport: CallTransport, post: Callable[[InboxEvent], Awaitable[None]]
) -> None:
    """Until the caller's side is gone (stop, a closed socket, bad input), posted last."""
    while True:
        try:
            event = await transport.receive()
        except TransportClosed as exc:
            reason = (
                EndedReason.MALFORMED_STREAM if exc.malformed else EndedReason.CUSTOMER_ENDED_CALL
            )
            await post(CallerGone(reason, exc.detail))
            return
        if isinstance(event, AudioReceived):
            await post(CallerAudio(event.audio))
        elif isinstance(event, MarkReceived):
            await post(MarkEchoed(event.name))
        elif isinstance(event, StreamStopped):
            await post(CallerGone(EndedReason.CUSTOMER_ENDED_CALL, "stream stopped"))
            return
        elif isinstance(event, DtmfReceived):
            await post(Dtmf(event.digit))
