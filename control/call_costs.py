"""Each call priced once, when it ends, for everyone who listens to its events.

`PricedEvents` sits in front of the app's sinks: on a live call's `CallEnded` it prices the
call (`voice.pricing.price_call`, with the operator's table built once from settings) and
hands on the event with `summary["costs"]` and `summary["costBreakdown"]` set. The webhook's
end-of-call-report and the stored call (`calls.costs`) both show that list, so the report and
the record cannot disagree.
A call ended by anything other than its session (an orphan sweep, a refused stream) has no
usage to price and keeps `costs: []`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from storage.vapi import cost_breakdown
from voice.events import CallEnded, CallEvent
from voice.ports import EventSink
from voice.pricing import PriceTable, price_call
from voice.session import CallSession

__all__ = ["PricedEvents"]

log = logging.getLogger("ava.calls")


class PricedEvents:
    """An `EventSink`: `inner` gets every event, a live call's `CallEnded` with its costs."""

    def __init__(
        self, inner: EventSink, prices: PriceTable, live: Mapping[str, CallSession]
    ) -> None:
        self.inner = inner
        self.prices = prices
        self._live = live  # the CallManager's: the session is there until its run returns

    def emit(self, event: CallEvent) -> None:
        if isinstance(event, CallEnded):
            session = self._live.get(event.call_id)
            if session is not None:
                event = self._priced(event, session)
        self.inner.emit(event)

    def _priced(self, event: CallEnded, session: CallSession) -> CallEnded:
        summary: Mapping[str, Any] = event.summary if isinstance(event.summary, Mapping) else {}
        usage = summary.get("usage")
        assistant = session.assistant
        metadata = session.metadata
        outbound = any(
            str(metadata.get(key, "")).startswith("outbound") for key in ("type", "direction")
        )
        try:
            costs = price_call(
                self.prices,
                seconds=event.at,
                usage=usage if isinstance(usage, Mapping) else {},
                transport=session.transport.kind,
                direction="outbound" if outbound else "inbound",
                transcriber=assistant.transcriber.to_json(),
                model=assistant.model.to_json(),
                voice=assistant.voice.to_json(),
            )
        except (TypeError, ValueError, AttributeError):
            # Pricing is bookkeeping: a bug in it must not cost the call its end.
            log.exception("call %s: pricing failed; its costs stay empty", event.call_id)
            return event
        priced = {**summary, "costs": costs, "costBreakdown": cost_breakdown(costs)}
        return dataclasses.replace(event, summary=priced)
