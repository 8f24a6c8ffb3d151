"""One session, several listeners: the live records (/dev/calls) and the database recorder."""

from __future__ import annotations

import logging

from voice.events import CallEvent
from voice.ports import EventSink

__all__ = ["FanOut"]

log = logging.getLogger("ava.calls")


class FanOut:
    """An `EventSink` that hands each event to every sink, in order."""

    def __init__(self, *sinks: EventSink) -> None:
        self.sinks = sinks

    def emit(self, event: CallEvent) -> None:
        for sink in self.sinks:
            # One listener's bug must not stop the others (or the call) from seeing the event.
            try:
                sink.emit(event)
            except Exception:
                log.exception("event sink %r failed on %s", sink, type(event).__name__)
