"""E-mail call summaries (`notificationPlan.email`, an AVA extension), sent after a call ends.

`EmailSummaries` is an `EventSink` on the app's FanOut, after the analyzer. On `CallEnded` it
reads what the mail needs from the live session (its assistant, metadata, transcript) and
starts a job in its own TaskGroup; `emit` only starts it, so the call never waits. The job:

1. waits for the call's analysis if one is running (`hold_analysis`: the analyzer's `hold`,
   which hands over the summary and analysis when they are done — within the plan's timeouts);
2. works out the plan: the call's phone number's plan merged over its assistant's
   (`voice.notification_plan.merged_email`); nothing to do unless it is enabled with recipients;
3. builds the message (`voice.summary_email`, text and HTML), with a signed recording link
   (valid `AVA_EMAIL_RECORDING_URL_TTL_SECONDS`) when the call records;
4. sends it through the operator's SMTP server (`AVA_SMTP_URL`, aiosmtplib), `attempts` times
   with backoff on failure;
5. records the outcome on the call, `metadata.notifications.email` = {status: sent|failed,
   to, attempts, sentAt | error}, and counts it in `ava_call_emails{outcome}`.

A failure of any step is recorded and logged; it never reaches the call, its webhooks or its
report (those went out, or were released by the analyzer, without waiting for the mail). At
shutdown (`running_emails`) the last jobs get `grace_seconds`, then are cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import aiosmtplib

from control.call_jobs import CallJobs, running_jobs
from control.post_call import LiveCall, ReportRelease
from control.recordings import sign_recording
from control.settings import Settings
from voice.events import CallEnded, CallEvent
from voice.notification_plan import EmailNotification, NotificationPlan, merged_email
from voice.recording_urls import RECORDING_BASE_URL, recording_artifact
from voice.summary_email import CallSummary, summary_email, transcript_lines

if TYPE_CHECKING:
    from control.metrics import Metrics
    from control.stores import Stores
    from storage import CallRecorder

__all__ = [
    "EmailSummaries",
    "SmtpServer",
    "email_summaries",
    "running_emails",
    "signed_recording_link",
    "smtp_server",
]

log = logging.getLogger("ava.email")

Send = Callable[[EmailMessage], Awaitable[None]]
NumberPlan = Callable[[str, str], Awaitable[NotificationPlan | None]]  # (tenant, number id)
Record = Callable[[str | None, str, dict[str, Any]], Awaitable[object]]
RecordingLink = Callable[[str, str | None, Mapping[str, str]], str | None]
Outcome = Callable[[str], None]  # "sent" or "failed"

ATTEMPTS = 3
BACKOFF_SECONDS = (2.0, 8.0)  # before the 2nd and the 3rd attempt
_ANALYSIS_WAIT_SECONDS = 300.0  # the analyzer's own timeouts end it far sooner
_RECORD_SECONDS = 10.0
_MAX_ERROR_CHARS = 300


@dataclass(frozen=True, slots=True)
class SmtpServer:
    """Where and how to send: AVA_SMTP_URL, parsed."""

    hostname: str
    port: int
    sender: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    use_tls: bool = False  # smtps://: TLS from the start
    start_tls: bool | None = None  # None: when the server offers it
    timeout_seconds: float = 30.0

    async def send(self, message: EmailMessage) -> None:
        """Raises when the server takes the mail for none of its recipients."""
        refused, _ = await aiosmtplib.send(
            message,
            sender=self.sender,
            hostname=self.hostname,
            port=self.port,
            username=self.username,
            password=self.password,
            use_tls=self.use_tls,
            start_tls=None if self.use_tls else self.start_tls,
            timeout=self.timeout_seconds,
        )
        if refused:  # taken for the others: sent, and the refused ones logged
            log.warning("SMTP server refused %s", ", ".join(sorted(refused)))


def smtp_server(settings: Settings) -> SmtpServer | None:
    """The operator's SMTP server, or None when AVA_SMTP_URL is empty. ValueError naming the
    setting (never its password) when it is not usable."""
    url = settings.smtp_url.get_secret_value()
    if not url:
        return None
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise ValueError("AVA_SMTP_URL: the port is not a number") from None
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise ValueError("AVA_SMTP_URL must be smtp://[user:password@]host[:port] or smtps://…")
    if not settings.smtp_from:
        raise ValueError("AVA_SMTP_URL needs AVA_SMTP_FROM (the sender address)")
    tls = parts.scheme == "smtps"
    start_tls = {"auto": None, "required": True, "off": False}[settings.smtp_starttls]
    return SmtpServer(
        hostname=parts.hostname,
        port=port or (465 if tls else 587),
        sender=settings.smtp_from,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        use_tls=tls,
        start_tls=start_tls,
        timeout_seconds=settings.smtp_timeout_seconds,
    )


@dataclass(slots=True)
class _Job:
    call_id: str
    tenant_id: str | None
    number_id: str | None
    plan: NotificationPlan
    call: CallSummary
    recording_url: str | None
    analysis: asyncio.Future[Mapping[str, Any]] | None = None


class EmailSummaries(CallJobs[_Job]):
    """Sends the e-mail summaries of ended calls (see the module docstring)."""

    def __init__(
        self,
        live: Mapping[str, LiveCall],
        server: SmtpServer | None,
        record: Record,
        *,
        number_plan: NumberPlan | None = None,
        recording_link: RecordingLink | None = None,
        send: Send | None = None,
        on_outcome: Outcome | None = None,
        attempts: int = ATTEMPTS,
        backoff_seconds: Sequence[float] = BACKOFF_SECONDS,
        max_jobs: int = 1000,
    ) -> None:
        super().__init__("e-mail summary", max_jobs)
        self._live = live
        self.server = server
        self._record = record
        self._number_plan = number_plan
        self._recording_link = recording_link
        self._send = send if send is not None else (server.send if server is not None else None)
        self._on_outcome = on_outcome
        self.attempts = attempts
        self.backoff_seconds = tuple(backoff_seconds)
        # `control.post_call.PostCallAnalyzer.hold` (set by the app): the mail waits for the
        # call's summary and analysis.
        self.hold_analysis: Callable[[str, ReportRelease], bool] | None = None

    # --- the sink side (never blocks, never raises) ---------------------------------------------

    def emit(self, event: CallEvent) -> None:
        if not isinstance(event, CallEnded) or not self.accepting:
            return
        session = self._live.get(event.call_id)
        if session is None:
            return
        assistant, metadata = session.assistant, session.metadata
        number_id = metadata.get("phone_number_id") or None
        tenant = metadata.get("tenant_id") or None
        # Without a plan on the assistant, only a tenant's number can still ask for a mail.
        plan = assistant.notification_plan
        if plan.email is None and not (number_id and tenant and self._number_plan):
            return
        if not self._room_for(event.call_id):
            return
        history = event.summary.get("messages") if isinstance(event.summary, Mapping) else None
        outbound = metadata.get("type") == "outboundPhoneCall"
        customer = metadata.get("to" if outbound else "from") or None
        call = CallSummary(
            call_id=event.call_id,
            assistant_name=assistant.name,
            ended_reason=event.reason.value,
            duration_seconds=event.at,
            started_at=datetime.fromtimestamp(time.time() - event.at, UTC),
            customer_number=customer,
            transcript=transcript_lines(history or []),
        )
        link = None
        if self._recording_link is not None:
            link = self._recording_link(event.call_id, tenant, metadata)
        job = _Job(event.call_id, tenant, number_id, plan, call, link)
        if self.hold_analysis is not None:
            waiting: asyncio.Future[Mapping[str, Any]] = asyncio.get_running_loop().create_future()

            def release(fields: Mapping[str, Any]) -> None:
                if not waiting.done():
                    waiting.set_result(fields)

            if self.hold_analysis(event.call_id, release):
                job.analysis = waiting
        self._start(event.call_id, job, self._deliver(job))

    # --- the jobs -------------------------------------------------------------------------------

    async def _deliver(self, job: _Job) -> None:
        analysis: Mapping[str, Any] = {}
        if job.analysis is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_ANALYSIS_WAIT_SECONDS):
                    analysis = await job.analysis
        email = await self._plan(job)
        if email is None or not email.active:
            return
        outcome: dict[str, Any] = {"to": list(email.to)}
        if self._send is None or self.server is None:
            await self._finish(job, outcome | _failed("AVA_SMTP_URL is not set on this server", 0))
            return
        message = summary_email(
            _completed(job.call, analysis, job.recording_url),
            sender=self.server.sender,
            to=email.to,
            include=email.include,
            now=datetime.now(UTC),
        )
        error, attempt = "", 0
        while attempt < self.attempts:
            attempt += 1
            try:
                await self._send(message)
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                error = _describe(exc)
                log.warning(
                    "call %s: e-mail attempt %d/%d failed: %s",
                    job.call_id,
                    attempt,
                    self.attempts,
                    error,
                )
                if _permanent(exc):
                    break  # the server said no for good (5xx): the same mail gets the same no
                if attempt < self.attempts:
                    delays = self.backoff_seconds or (0.0,)
                    await asyncio.sleep(delays[min(attempt - 1, len(delays) - 1)])
                continue
            sent = {"status": "sent", "attempts": attempt, "sentAt": _now_iso()}
            await self._finish(job, outcome | sent)
            return
        await self._finish(job, outcome | _failed(error, attempt))

    async def _plan(self, job: _Job) -> EmailNotification | None:
        number: NotificationPlan | None = None
        if job.number_id and job.tenant_id and self._number_plan is not None:
            try:
                number = await self._number_plan(job.tenant_id, job.number_id)
            except Exception:
                # The number's plan unreadable (database down): the assistant's still holds.
                log.exception("call %s: the phone number's notificationPlan", job.call_id)
        return merged_email(job.plan, number)

    async def _finish(self, job: _Job, outcome: dict[str, Any]) -> None:
        status = str(outcome["status"])
        if status == "sent":
            log.info("call %s: e-mail summary sent to %d", job.call_id, len(outcome["to"]))
        else:
            log.error("call %s: e-mail summary not sent: %s", job.call_id, outcome.get("error"))
        if self._on_outcome is not None:
            self._on_outcome(status)
        try:
            async with asyncio.timeout(_RECORD_SECONDS):
                await self._record(job.tenant_id, job.call_id, outcome)
        except Exception:
            log.exception("call %s: the e-mail outcome was not recorded", job.call_id)


def _failed(error: str, attempts: int) -> dict[str, Any]:
    return {"status": "failed", "attempts": attempts, "error": error[:_MAX_ERROR_CHARS]}


def _permanent(exc: BaseException) -> bool:
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return all(500 <= r.code < 600 for r in exc.recipients)
    return isinstance(exc, aiosmtplib.SMTPResponseException) and 500 <= exc.code < 600


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "the SMTP server did not answer in time"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _completed(
    call: CallSummary, analysis: Mapping[str, Any], recording_url: str | None
) -> CallSummary:
    """`call` with what the analysis gave (the released report's `summary` and `analysis`)."""
    details = analysis.get("analysis")
    details = details if isinstance(details, Mapping) else {}
    summary, errors = analysis.get("summary"), details.get("errors")
    return replace(
        call,
        summary=summary if isinstance(summary, str) and summary else None,
        structured_data=details.get("structuredData"),
        analysis_errors=errors if isinstance(errors, Mapping) else {},
        recording_url=recording_url,
    )


def signed_recording_link(settings: Settings) -> RecordingLink:
    """The call's mono recording download, signed (`?token=`) for
    AVA_EMAIL_RECORDING_URL_TTL_SECONDS: whoever gets the mail has no API key. None for a call
    that does not record."""
    signing = settings.model_copy(
        update={"recording_url_ttl_seconds": settings.email_recording_url_ttl_seconds}
    )

    def link(call_id: str, tenant: str | None, metadata: Mapping[str, str]) -> str | None:
        base = metadata.get(RECORDING_BASE_URL)
        if not base:
            return None
        token, _ = sign_recording(signing, call_id, tenant, time.time())
        return f"{recording_artifact(base, call_id)['recordingUrl']}?token={token}"

    return link


@asynccontextmanager
async def running_emails(
    emails: EmailSummaries, grace_seconds: float = 10.0
) -> AsyncIterator[EmailSummaries]:
    """The sender's jobs for the app's lifetime; at the end, mails still going get
    `grace_seconds`, then are cancelled (logged; the call's record keeps no outcome)."""
    async with running_jobs(emails, grace_seconds):
        yield emails


def email_summaries(
    settings: Settings,
    stores: Stores,
    live: Mapping[str, LiveCall],
    recorder: CallRecorder,
    metrics: Metrics,
) -> EmailSummaries:
    """The app's sender: AVA_SMTP_URL, the numbers' plans from the store, recording links
    signed for AVA_EMAIL_RECORDING_URL_TTL_SECONDS, outcomes recorded on the call (once the
    recorder has written its row) and counted in `metrics`."""

    async def number_plan(tenant: str, number_id: str) -> NotificationPlan | None:
        number = await stores.phone_numbers.get(tenant, number_id)
        plan = getattr(number, "notification_plan", None)
        return NotificationPlan.model_validate(plan) if plan else None

    async def record(tenant: str | None, call_id: str, outcome: dict[str, Any]) -> None:
        await recorder.flush()
        await stores.calls.add_metadata(tenant, call_id, {"notifications": {"email": outcome}})

    return EmailSummaries(
        live,
        smtp_server(settings),
        record,
        number_plan=number_plan,
        recording_link=signed_recording_link(settings),
        on_outcome=metrics.email,
        max_jobs=max(100, 2 * settings.max_calls),
    )
