"""E-mail call summaries (`notificationPlan.email`) delivered to a local SMTP server (aiosmtpd on
127.0.0.1, which parses and checks each message): after the analysis, with its summary, the
transcript and a signed recording link; an unreachable server recorded as a failure while the
report goes on; bad plans refused with 422; and one whole call through the app, the plan on its
phone number, the outcome in the call's record."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from control.email_summaries import (
    EmailSummaries,
    SmtpServer,
    running_emails,
    signed_recording_link,
    smtp_server,
)
from control.metrics import Metrics
from control.post_call import CloudModels, PostCallAnalyzer, running_analysis
from control.recordings import _token_tenant
from media.twilio.caller import CallScript, place_call
from storage import TwilioCredentials
from tests.conftest import AssistantFactory, settings_for
from tests.control.conftest import Api, running_api
from tests.control.test_post_call_analysis import (
    HISTORY,
    KEY,
    SAID,
    SPEECH,
    SUMMARY,
    app_for,
    cloud_model,
    ended,
    fake_openai,
)
from tests.control.test_post_call_analysis import (
    Session as LiveSession,
)
from tests.control.webhook_receiver import receiver
from voice.assistant import Assistant
from voice.recording_urls import RECORDING_BASE_URL

pytestmark = pytest.mark.timeout(60)

SENDER = "ava@calls.example.com"
TO = ["desk@example.com", "owner@example.com"]
BASE = "https://ava.example.com"


@dataclass
class Received:
    sender: str
    recipients: list[str]
    message: EmailMessage


@dataclass
class Mailbox:
    """What the local SMTP server accepted, each message parsed and checked on arrival."""

    port: int
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address.startswith("nobody@"):
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.content if isinstance(envelope.content, bytes) else b""
        message = message_from_bytes(raw, policy=policy.default)
        assert isinstance(message, EmailMessage)
        # What a receiving server would refuse: a mail without these, or To: not the envelope's.
        if not (message["Message-ID"] and message["Date"] and message["From"] == SENDER):
            return "554 missing or wrong headers"
        if sorted(a.addr_spec for a in message["To"].addresses) != sorted(envelope.rcpt_tos):
            return "554 To: is not the envelope's recipients"
        with self.lock:
            self.received.append(
                Received(str(envelope.mail_from), list(envelope.rcpt_tos), message)
            )
        return "250 OK"

    async def wait(self, count: int = 1, seconds: float = 10.0) -> list[Received]:
        async with asyncio.timeout(seconds):
            while True:
                with self.lock:
                    if len(self.received) >= count:
                        return list(self.received)
                await asyncio.sleep(0.01)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def mailbox() -> Iterator[Mailbox]:
    box = Mailbox(free_port())
    controller = Controller(box, hostname="127.0.0.1", port=box.port)
    controller.start()
    try:
        yield box
    finally:
        controller.stop()


def server_at(port: int) -> SmtpServer:
    return SmtpServer("127.0.0.1", port, sender=SENDER, start_tls=False, timeout_seconds=5)


def bodies(message: EmailMessage) -> tuple[str, str]:
    text, markup = message.get_body(("plain",)), message.get_body(("html",))
    assert text is not None and markup is not None
    return text.get_content(), markup.get_content()


@dataclass
class Sent:
    outcomes: dict[str, dict[str, Any]] = field(default_factory=dict)
    reports: list[Mapping[str, Any]] = field(default_factory=list)


@asynccontextmanager
async def post_call(
    tmp_path: Path, server: SmtpServer, assistant: Assistant, metadata: dict[str, str]
) -> AsyncIterator[tuple[PostCallAnalyzer, EmailSummaries, Sent, Metrics]]:
    """The analyzer (asking the fake OpenAI) and the e-mail sender for one live call "c1", as
    the app runs them; the report the webhook sender would hold is collected in `reports`."""
    sent, metrics = Sent(), Metrics()

    async def record(tenant: str | None, call_id: str, outcome: dict[str, Any]) -> None:
        sent.outcomes[call_id] = outcome

    async def save(call_id: str, analysis: dict[str, Any]) -> None:
        pass

    async with fake_openai(first_token_latency=0.01) as (_, url):
        settings = settings_for(tmp_path / "a.json", tmp_path, OPENAI_API_KEY=KEY,
                                OPENAI_BASE_URL=url)  # fmt: skip
        # The analyzer without the tenant: it would look up the tenant's keys, in no database.
        untenanted = {"c1": LiveSession(assistant)}
        models = CloudModels(settings, stores=None)  # type: ignore[arg-type]
        analyzer = PostCallAnalyzer(untenanted, models, save)
        emails = EmailSummaries(
            {"c1": LiveSession(assistant, metadata)},
            server,
            record,
            recording_link=signed_recording_link(settings),
            on_outcome=metrics.email,
            backoff_seconds=(0.05, 0.1),
        )
        emails.hold_analysis = analyzer.hold
        async with running_emails(emails), running_analysis(analyzer):
            yield analyzer, emails, sent, metrics


def planned(**email: Any) -> Assistant:
    plan = {"email": {"to": TO, **email}}
    return Assistant.model_validate(
        {"name": "Front desk", "model": cloud_model(), "notificationPlan": plan}
    )


def end_call(analyzer: PostCallAnalyzer, emails: EmailSummaries, sent: Sent) -> None:
    """What the FanOut does with CallEnded: the analyzer, the mail, the webhook sender's hold."""
    event = ended("c1", HISTORY)
    analyzer.emit(event)
    emails.emit(event)
    assert analyzer.hold("c1", sent.reports.append)


async def test_an_email_per_call_with_summary_transcript_and_link(tmp_path: Path) -> None:
    metadata = {"tenant_id": "t1", "from": "+15551234567", RECORDING_BASE_URL: BASE}
    with mailbox() as box:
        async with post_call(tmp_path, server_at(box.port), planned(), metadata) as running:
            analyzer, emails, sent, metrics = running
            end_call(analyzer, emails, sent)
            (mail,) = await box.wait()
            await emails.idle()
            settings = settings_for(tmp_path / "a.json", tmp_path)
    message = mail.message
    assert mail.sender == SENDER and sorted(mail.recipients) == sorted(TO)
    assert message["Subject"] == "Call summary: Front desk · +15551234567"
    assert message["X-AVA-Call-ID"] == "c1"
    text, markup = bodies(message)
    for part in (text, markup):
        assert SUMMARY in part  # the analysis' summary: the mail waited for it
        assert "Hello, this is Ava." in part
    assert f"User: {SAID}" in text
    assert "You are Ava." not in text  # the system prompt is not the conversation
    # The link is the call's mono recording, signed for this call and tenant.
    (link,) = [line for line in text.splitlines() if line.startswith(BASE)]
    url = urlsplit(link)
    assert f"{url.scheme}://{url.netloc}{url.path}" == f"{BASE}/call/c1/mono-recording"
    (token,) = parse_qs(url.query)["token"]
    assert _token_tenant(settings, token, "c1") == "t1"
    assert f'href="{link}"' in markup
    outcome = sent.outcomes["c1"]
    assert outcome["status"] == "sent" and outcome["attempts"] == 1
    assert outcome["to"] == TO and outcome["sentAt"].endswith("Z")
    assert sent.reports and sent.reports[0]["summary"] == SUMMARY
    assert metrics.emails.labels(outcome="sent")._value.get() == 1


async def test_an_unreachable_smtp_server_is_a_recorded_failure(tmp_path: Path) -> None:
    """Nothing listens on the port: three quick attempts, the failure on the call and in the
    metric; the report was released with the analysis all the same."""
    server = server_at(free_port())
    started = time.monotonic()
    async with post_call(tmp_path, server, planned(), {"tenant_id": "t1"}) as running:
        analyzer, emails, sent, metrics = running
        end_call(analyzer, emails, sent)
        await analyzer.idle()
        reported = list(sent.reports)
        await emails.idle()
    outcome = sent.outcomes["c1"]
    assert outcome["status"] == "failed" and outcome["attempts"] == 3
    assert "connect" in outcome["error"].lower(), outcome
    assert "sentAt" not in outcome
    assert reported and reported[0]["summary"] == SUMMARY  # the report did not wait for mail
    assert metrics.emails.labels(outcome="failed")._value.get() == 1
    assert metrics.emails.labels(outcome="sent")._value.get() == 0
    assert time.monotonic() - started < 10


async def test_no_plan_no_mail_and_no_smtp_server_is_a_recorded_failure(tmp_path: Path) -> None:
    with mailbox() as box:
        plain = Assistant.model_validate({"model": cloud_model()})
        async with post_call(tmp_path, server_at(box.port), plain, {}) as (a, emails, sent, _):
            end_call(a, emails, sent)
            await a.idle()
            await emails.idle()
        assert box.received == [] and sent.outcomes == {}
        async with post_call(tmp_path, server_at(box.port), planned(enabled=False), {}) as run:
            end_call(*run[:3])
            await run[1].idle()
        assert box.received == [] and run[2].outcomes == {}

    outcomes: dict[str, dict[str, Any]] = {}
    unconfigured = EmailSummaries({"c1": LiveSession(planned())}, None, _keep(outcomes))
    async with running_emails(unconfigured):
        unconfigured.emit(ended("c1", HISTORY))
        await unconfigured.idle()
    assert outcomes["c1"]["status"] == "failed"
    assert outcomes["c1"]["error"] == "AVA_SMTP_URL is not set on this server"


async def test_a_refused_recipient_is_not_retried(tmp_path: Path) -> None:
    with mailbox() as box:
        server = server_at(box.port)
        async with post_call(tmp_path, server, planned(to="nobody@example.com"), {}) as running:
            end_call(*running[:3])
            await running[1].idle()
            outcomes = running[2].outcomes
    assert box.received == []
    assert outcomes["c1"]["status"] == "failed" and outcomes["c1"]["attempts"] == 1
    assert "no such mailbox" in outcomes["c1"]["error"]


def _keep(into: dict[str, dict[str, Any]]) -> Callable[[str | None, str, dict[str, Any]], Any]:
    async def record(tenant: str | None, call_id: str, outcome: dict[str, Any]) -> None:
        into[call_id] = outcome

    return record


def test_the_smtp_url_setting(tmp_path: Path) -> None:
    def parsed(url: str, **more: Any) -> SmtpServer | None:
        settings = settings_for(tmp_path / "a.json", tmp_path, smtp_url=url, **more)
        return smtp_server(settings)

    assert parsed("") is None
    server = parsed("smtps://user%40x:p%3Ass@mail.example.com", smtp_from=SENDER)
    assert server is not None
    assert (server.hostname, server.port, server.use_tls) == ("mail.example.com", 465, True)
    assert (server.username, server.password) == ("user@x", "p:ss")
    assert "p:ss" not in repr(server)
    server = parsed("smtp://mail.example.com", smtp_from=SENDER, smtp_starttls="required")
    assert server is not None and (server.port, server.start_tls) == (587, True)
    for bad, says in [
        ("http://u:secret@mail.example.com", "AVA_SMTP_URL must be"),
        ("smtp://u:secret@mail.example.com:x", "the port is not a number"),
        ("smtp://u:secret@mail.example.com", "needs AVA_SMTP_FROM"),
    ]:
        with pytest.raises(ValueError, match=says) as caught:
            parsed(bad, smtp_from=SENDER if "needs" not in says else "")
        assert "secret" not in str(caught.value)


@pytest.mark.parametrize(
    ("plan", "expected"),
    [
        ({"email": {"to": "nobody"}}, "notificationPlan.email.to: Value error, not an e-mail"),
        ({"email": {"to": ["a@example.com", "x@y"]}}, "notificationPlan.email.to: Value error"),
        ({"email": {"to": "a@b.co", "include": ["audio"]}}, "notificationPlan.email.include.0"),
    ],
)
async def test_a_bad_plan_is_a_422_naming_the_field(
    api: Api, plan: dict[str, Any], expected: str
) -> None:
    response = await api.a.post("/assistant", json={"name": "x", "notificationPlan": plan})
    assert response.status_code == 422
    (message,) = response.json()["message"]
    assert message.startswith(expected), message
    number = {
        "number": "+14155550100",
        "twilioAccountSid": "AC" + "a" * 32,
        "twilioAuthToken": "token",
        "notificationPlan": plan,
    }
    response = await api.a.post("/phone-number", json=number)
    assert response.status_code == 422
    assert response.json()["message"][0].startswith(expected)


async def test_a_numbers_plan_is_kept_and_changed(api: Api) -> None:
    number = {"number": "+14155550100", "twilioAccountSid": "AC" + "a" * 32,
              "twilioAuthToken": "token"}  # fmt: skip
    created = (await api.a.post("/phone-number", json=number)).json()
    assert "notificationPlan" not in created
    plan = {"email": {"to": ["owner@example.com"]}}
    patched = await api.a.patch(f"/phone-number/{created['id']}", json={"notificationPlan": plan})
    assert patched.status_code == 200
    assert patched.json()["notificationPlan"] == plan  # as given: only what the number sets
    got = (await api.a.get(f"/phone-number/{created['id']}")).json()
    assert got["notificationPlan"] == plan
    renamed = await api.a.patch(f"/phone-number/{created['id']}", json={"name": "Main"})
    assert renamed.json()["notificationPlan"] == plan
    cleared = await api.a.patch(f"/phone-number/{created['id']}", json={"notificationPlan": None})
    assert "notificationPlan" not in cleared.json()


async def test_a_whole_call_mails_the_numbers_plan_and_records_it(
    tmp_path: Path, assistant_file: AssistantFactory
) -> None:
    """The one real-time call: Twilio's side simulated, through the app's own wiring."""
    with mailbox() as box:
        async with fake_openai(first_token_latency=0.01) as (_, url), receiver() as hooks:
            app = app_for(
                tmp_path, assistant_file, url, {"smtp_url": f"smtp://127.0.0.1:{box.port}",
                "smtp_from": SENDER, "smtp_starttls": "off"},
            )  # fmt: skip
            async with running_api(app) as api:
                stores = api.stores
                await stores.credentials.create(api.tenant_a, provider="openai", api_key=KEY)
                config = {"name": "Dental", "model": cloud_model(), "server": hooks.server()}
                assistant = await stores.assistants.create(api.tenant_a, config)
                token, number = "number-auth-token", "+15557654321"
                await stores.phone_numbers.create(
                    api.tenant_a, number=number, assistant_id=assistant.id,
                    credentials=TwilioCredentials("AC" + "1" * 32, auth_token=token),
                    notification_plan={"email": {"to": TO[0]}},
                )  # fmt: skip
                script = CallScript([SPEECH], hang_up_after=1.0)
                report = await place_call(api.base, script, auth_token=token, to_number=number,
                                          fetch_record=False)  # fmt: skip
                assert report.error is None, report.error
                record = await stores.calls.find_by_twilio_sid(api.tenant_a, report.call_sid)
                assert record is not None
                eocr = await hooks.wait_for(lambda m: m["type"] == "end-of-call-report")
                (mail,) = await box.wait()
                await app.state.analysis.idle()
                async with asyncio.timeout(10):
                    while True:  # the outcome is written just after the mail went
                        call = (await api.a.get(f"/call/{record.id}")).json()
                        if "notifications" in call.get("metadata", {}):
                            break
                        await asyncio.sleep(0.05)
                counted = app.state.metrics.emails.labels(outcome="sent")._value.get()
    assert mail.recipients == [TO[0]]
    text, _ = bodies(mail.message)
    assert SUMMARY in text and f"User: {SAID}" in text
    assert f"/call/{record.id}/mono-recording?token=" in text
    assert eocr["summary"] == SUMMARY
    email = call["metadata"]["notifications"]["email"]
    assert email["status"] == "sent" and email["to"] == [TO[0]]
    assert counted == 1
