"""Prometheus metrics: what the calls' events say, plus how late paced audio leaves.

`Metrics` is an `EventSink` on the app's FanOut and owns its own `CollectorRegistry` (one per
app, so tests can build many). Frame lateness is measured without the call loop's help: the
session paces each outbound chunk with `clock.sleep_until(scheduled time)` and then sends it,
so `pacing()` hands the session a clock that notes how late each of those sleeps woke up and a
transport that files that lateness when the chunk is sent. The note travels in a context
variable, which is private to the task that slept, so concurrent calls (and a call's other
timers) cannot mix their notes up.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import fields

from fastapi import APIRouter, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from control.calls import Refusal
from control.errors import ApiError
from media.transport import CallTransport, InboundEvent
from voice.clock import Clock, MonotonicClock
from voice.events import (
    BargeIn,
    CallEnded,
    CallEvent,
    CallStarted,
    ProviderFailed,
    TurnCompleted,
    TurnLatency,
)

__all__ = [
    "LATENESS_BUCKETS",
    "LATENCY_BUCKETS",
    "LOOP_LAG_BUCKETS",
    "LatenessClock",
    "Metrics",
    "ObservedTransport",
    "metrics_router",
]

# Voice turns: tens of ms (our own overhead, a fast TTS) to seconds (endpointing, a slow LLM).
# The three buckets under 10 ms resolve the server's own share, which budgets at 10–30 ms.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8,
    1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0,
)  # fmt: skip
# Twilio buffers ~200 ms ahead of playout; lateness that eats into that is what matters.
LATENESS_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.06, 0.1, 0.2, 0.5,
)  # fmt: skip
# Event-loop lag: ~0 on a loop with room to spare; tens of ms is where shedding starts
# (AVA_SHED_LOOP_LAG_MS); seconds is a node far past its capacity.
LOOP_LAG_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.045, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
STAGES = tuple(stage.name for stage in fields(TurnLatency))

# Lateness of this task's last paced sleep, waiting for the send it released.
_LATENESS: ContextVar[float | None] = ContextVar("ava_pacing_lateness", default=None)


class Metrics:
    def __init__(
        self,
        live_calls: Callable[[], int] | None = None,
        saturated: Callable[[], bool] | None = None,
    ) -> None:
        self.registry = r = CollectorRegistry()
        self.active_calls = Gauge("ava_active_calls", "Calls live in this process", registry=r)
        if live_calls is not None:
            # Read at scrape time from the call manager: exact, whatever path a call ended by.
            self.active_calls.set_function(lambda: float(live_calls()))
        self.loop_lag = Histogram(
            "ava_event_loop_lag_seconds",
            "How late the event loop ran a timer due every 50 ms (control/loop_lag.py)",
            buckets=LOOP_LAG_BUCKETS,
            registry=r,
        )
        self.saturated = Gauge(
            "ava_event_loop_saturated",
            "1 while this node sheds new calls for event-loop lag (AVA_SHED_LOOP_LAG_MS)",
            registry=r,
        )
        if saturated is not None:
            self.saturated.set_function(lambda: float(saturated()))
        self.calls_refused = Counter(
            "ava_calls_refused",
            "New calls this node refused (a Twilio call redirected to the service URL, or 503), "
            "by reason: draining, max_calls (AVA_MAX_CALLS) or saturated (event-loop lag)",
            ["reason"],
            registry=r,
        )
        for refusal in Refusal:  # at zero before the first refusal, for rate()
            self.calls_refused.labels(reason=refusal.value)
        self.calls_started = Counter(
            "ava_calls_started", "Calls started", ["transport"], registry=r
        )
        self.calls_ended = Counter(
            "ava_calls_ended", "Calls ended, by Vapi endedReason", ["reason"], registry=r
        )
        self.turns = Counter("ava_turns", "Assistant turns completed", ["interrupted"], registry=r)
        self.turn_latency = Histogram(
            "ava_turn_latency_seconds",
            "Per-turn latency by stage (see voice.events.TurnLatency)",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.barge_ins = Counter("ava_barge_ins", "Caller barge-ins", registry=r)
        self.provider_errors = Counter(
            "ava_provider_errors",
            "Provider failures, by provider, stage and whether retryable",
            ["provider", "stage", "retryable"],
            registry=r,
        )
        self.provider_reconnects = Counter(
            "ava_provider_reconnects",
            "Dropped provider sockets the adapter reconnected by itself (also provider errors)",
            ["provider", "stage"],
            registry=r,
        )
        self.frame_lateness = Histogram(
            "ava_outbound_frame_lateness_seconds",
            "How long after its pacing schedule each outbound audio chunk was released",
            buckets=LATENESS_BUCKETS,
            registry=r,
        )
        self.rate_limited = Counter(
            "ava_rate_limited_requests", "API requests refused by the per-key rate limit",
            registry=r,
        )  # fmt: skip
        self.rate_limiter_errors = Counter(
            "ava_rate_limiter_errors",
            "Rate-limit checks that failed (Redis unreachable); those requests were let through",
            registry=r,
        )
        self.bodies_too_large = Counter(
            "ava_request_body_too_large", "Requests refused with 413", registry=r
        )
        self.analysis_parts = Counter(
            "ava_call_analysis_parts",
            "Post-call analysis parts (summary, structuredData, successEvaluation), by outcome: "
            "ok or why it failed (timeout, model-error, invalid-answer, schema-mismatch, …)",
            ["part", "outcome"],
            registry=r,
        )
        self.emails = Counter(
            "ava_call_emails",
            "E-mail call summaries (notificationPlan.email), by outcome: sent, or failed (after "
            "its retries; the call's metadata.notifications.email says why)",
            ["outcome"],
            registry=r,
        )
        for outcome in ("sent", "failed"):  # at zero before the first call, for rate()
            self.emails.labels(outcome=outcome)
        self.recording_failures = Counter(
            "ava_recording_failures",
            "Call recordings that failed, by stage: write (the spool file, e.g. a full disk) or "
            "upload (keeping it in its store; retried each purge round). The call goes on; its "
            "recording description says why",
            ["stage"],
            registry=r,
        )
        for failed in ("write", "upload"):  # at zero before the first failure, for rate()
            self.recording_failures.labels(stage=failed)
        for stage in STAGES:  # exported at zero before the first turn, so rate() has a base
            self.turn_latency.labels(stage=stage)

    def emit(self, event: CallEvent) -> None:
        if isinstance(event, TurnCompleted):
            self.turns.labels(interrupted=str(event.interrupted).lower()).inc()
            if event.latency is not None:
                for stage in STAGES:
                    seconds = getattr(event.latency, stage)
                    self.turn_latency.labels(stage=stage).observe(max(0.0, seconds))
        elif isinstance(event, BargeIn):
            self.barge_ins.inc()
        elif isinstance(event, ProviderFailed):
            self.provider_errors.labels(
                provider=event.provider,
                stage=event.stage,
                retryable=str(event.retryable).lower(),
            ).inc()
            if event.recovered:
                self.provider_reconnects.labels(provider=event.provider, stage=event.stage).inc()
        elif isinstance(event, CallStarted):
            self.calls_started.labels(transport=event.transport).inc()
        elif isinstance(event, CallEnded):
            self.calls_ended.labels(reason=str(event.reason)).inc()

    def analysis_part(self, part: str, outcome: str) -> None:
        self.analysis_parts.labels(part=part, outcome=outcome).inc()

    def email(self, outcome: str) -> None:
        self.emails.labels(outcome=outcome).inc()

    def recording_failure(self, stage: str) -> None:
        self.recording_failures.labels(stage=stage).inc()

    def pacing(
        self, transport: CallTransport, clock: Clock | None = None
    ) -> tuple[LatenessClock, ObservedTransport]:
        """A clock and transport for one session that record its outbound frames' lateness."""
        return (
            LatenessClock(clock or MonotonicClock()),
            ObservedTransport(transport, self.frame_lateness.observe),
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class LatenessClock:
    """A `Clock` that notes, for the task that slept, how late `sleep_until` returned: after the
    deadline, or after the call if the deadline had already passed (the chunk was due at once)."""

    def __init__(self, inner: Clock) -> None:
        self._inner = inner

    def now(self) -> float:
        return self._inner.now()

    async def sleep_until(self, deadline: float) -> None:
        due = max(deadline, self._inner.now())
        await self._inner.sleep_until(deadline)
        _LATENESS.set(max(0.0, self._inner.now() - due))


class ObservedTransport:
    """A `CallTransport` that files the sending task's last sleep lateness with each chunk of
    audio it sends. A chunk not released by a paced sleep records nothing."""

    def __init__(self, inner: CallTransport, observe: Callable[[float], None]) -> None:
        self.inner = inner
        self.kind = inner.kind
        self.audio_format = inner.audio_format
        self._observe = observe

    async def send_audio(self, audio: bytes) -> None:
        lateness = _LATENESS.get()
        if lateness is not None:
            _LATENESS.set(None)
            self._observe(lateness)
        await self.inner.send_audio(audio)

    async def receive(self) -> InboundEvent:
        return await self.inner.receive()

    async def send_mark(self, name: str) -> None:
        await self.inner.send_mark(name)

    async def send_clear(self) -> None:
        await self.inner.send_clear()

    async def close(self, reason: str) -> None:
        await self.inner.close(reason)


metrics_router = APIRouter()


@metrics_router.get("/metrics", include_in_schema=False)
async def metrics_endpoint(request: Request) -> Response:
    """Prometheus text format. With `AVA_METRICS_TOKEN` set, only for `Authorization: Bearer
    <token>`; without one, open in dev mode and refused otherwise (call volumes, error rates and
    provider names are not for the public internet, which the Twilio webhooks face)."""
    settings = request.app.state.ava.settings
    expected: str = settings.metrics_token.get_secret_value()
    if expected:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), expected.encode()
        )
        if not ok:
            raise ApiError(401, "send the metrics token: `Authorization: Bearer <token>`")
    elif not settings.dev_mode:
        raise ApiError(403, "metrics are off: set AVA_METRICS_TOKEN and scrape with it")
    metrics: Metrics = request.app.state.metrics
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)
