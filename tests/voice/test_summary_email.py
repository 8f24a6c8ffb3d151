"""The e-mail summary message (sans-I/O) and `notificationPlan` validation and merging."""

from __future__ import annotations

from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import pytest
from pydantic import ValidationError

from voice.assistant import Assistant
from voice.notification_plan import NotificationPlan, merged_email
from voice.summary_email import MAX_TRANSCRIPT_CHARS, CallSummary, summary_email, transcript_lines

NOW = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
LINK = "https://ava.example.com/call/c1/mono-recording?token=abc&x=1"
HISTORY: list[dict[str, Any]] = [
    {"role": "system", "content": "You are Ava."},
    {"role": "assistant", "content": "Hello, this is Ava."},
    {"role": "user", "content": "I'd like a cleaning <b>Tuesday</b> & Wednesday."},
    {"role": "assistant", "content": None, "tool_calls": [{"id": "t1"}]},
    {"role": "tool", "tool_call_id": "t1", "content": "booked"},
    {"role": "assistant", "content": "You're booked."},
]


def call(**fields: Any) -> CallSummary:
    base: dict[str, Any] = {
        "call_id": "c1",
        "assistant_name": "Front desk",
        "ended_reason": "customer-ended-call",
        "duration_seconds": 75.4,
        "started_at": NOW,
        "customer_number": "+15551234567",
        "summary": "The caller booked a cleaning.",
        "transcript": transcript_lines(HISTORY),
        "recording_url": LINK,
        "structured_data": {"day": "Tuesday", "booked": True},
    }
    return CallSummary(**(base | fields))


def parts(message: EmailMessage) -> tuple[str, str]:
    """The text and HTML bodies, read back as a mail client would (from the wire bytes)."""
    parsed = message_from_bytes(message.as_bytes(), policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    assert parsed.get_content_type() == "multipart/alternative"
    text, markup = parsed.get_body(("plain",)), parsed.get_body(("html",))
    assert text is not None and markup is not None
    return text.get_content(), markup.get_content()


def build(summary: CallSummary, include: list[str] | None = None) -> EmailMessage:
    every = ["summary", "transcript", "recordingUrl", "structuredData"]
    return summary_email(
        summary, sender="ava@example.com", to=["a@example.com", "b@example.com"],
        include=every if include is None else include, now=NOW,
    )  # fmt: skip


def test_the_transcript_is_the_conversation_only() -> None:
    assert transcript_lines(HISTORY) == [
        ("AI", "Hello, this is Ava."),
        ("User", "I'd like a cleaning <b>Tuesday</b> & Wednesday."),
        ("AI", "You're booked."),
    ]


def test_every_part_in_text_and_escaped_html() -> None:
    message = build(call())
    text, markup = parts(message)
    assert message["Subject"] == "Call summary: Front desk · +15551234567"
    assert message["To"] == "a@example.com, b@example.com"
    assert message["From"] == "ava@example.com"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["Message-ID"].endswith("@example.com>")
    for expected in (
        "The caller booked a cleaning.",
        "User: I'd like a cleaning <b>Tuesday</b> & Wednesday.",
        "AI: You're booked.",
        LINK,
        '"day": "Tuesday"',
        "Duration: 1 min 15 s",
        "Ended: customer-ended-call",
    ):
        assert expected in text
    # The caller's words are text in the HTML, never markup.
    assert "&lt;b&gt;Tuesday&lt;/b&gt; &amp; Wednesday" in markup and "<b>" not in markup
    assert 'href="https://ava.example.com/call/c1/mono-recording?token=abc&amp;x=1"' in markup
    assert "The caller booked a cleaning." in markup
    assert "&quot;day&quot;: &quot;Tuesday&quot;" in markup


def test_only_the_included_parts() -> None:
    text, markup = parts(build(call(), include=["summary"]))
    assert "The caller booked a cleaning." in text
    for absent in ("You're booked", "mono-recording", "Tuesday"):
        assert absent not in text and absent not in markup


def test_a_failed_summary_says_why_and_absent_parts_are_left_out() -> None:
    errors = {"summary": {"kind": "timeout", "detail": "no answer within 5 s"}}
    summary = call(summary=None, analysis_errors=errors, recording_url=None, structured_data=None)
    text, _ = parts(build(summary))
    assert "(no summary: timeout)" in text
    assert "Recording" not in text and "Structured data" not in text


def test_tenant_text_cannot_break_the_headers() -> None:
    message = build(call(assistant_name="Desk\r\nBcc: victim@example.com"))
    parsed = message_from_bytes(message.as_bytes(), policy=policy.default)
    assert parsed["Bcc"] is None and parsed["To"] == "a@example.com, b@example.com"
    assert message["Subject"].startswith("Call summary: Desk Bcc: victim@example.com")


def test_a_long_transcript_is_cut() -> None:
    lines = [("User", "x" * 1000)] * (MAX_TRANSCRIPT_CHARS // 1000 + 10)
    text, _ = parts(build(call(transcript=lines), include=["transcript"]))
    assert len(text) < MAX_TRANSCRIPT_CHARS + 2000
    assert "the rest of the transcript is in the call's record" in text


@pytest.mark.parametrize(
    "to",
    [
        "not-an-address",
        "a@localhost",
        "a@b.co\r\nBcc: c@d.co",
        "Someone <a@b.co>",
        "a@-b.co",
        ["ok@example.com", "a b@example.com"],
    ],
)
def test_a_bad_address_is_refused_naming_the_field(to: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        Assistant.model_validate({"notificationPlan": {"email": {"to": to}}})
    (error,) = caught.value.errors()
    assert error["loc"][:3] == ("notificationPlan", "email", "to")


def test_plan_shapes() -> None:
    plan = NotificationPlan.model_validate({"email": {"to": "a@example.com"}})
    assert plan.email is not None and plan.email.to == ["a@example.com"]
    assert plan.email.include == ["summary", "transcript", "recordingUrl", "structuredData"]
    assert plan.email.active
    with pytest.raises(ValidationError):
        NotificationPlan.model_validate({"email": {"to": [], "include": ["audio"]}})
    with pytest.raises(ValidationError):  # a typo is not silently ignored
        NotificationPlan.model_validate({"email": {"too": "a@example.com"}})
    assert not NotificationPlan.model_validate({"email": {"enabled": True}}).email.active  # type: ignore[union-attr]


def test_the_numbers_plan_wins_field_by_field() -> None:
    assistant = NotificationPlan.model_validate(
        {"email": {"to": ["desk@example.com"], "include": ["summary"]}}
    )
    number = NotificationPlan.model_validate({"email": {"to": "owner@example.com"}})
    merged = merged_email(assistant, number)
    assert merged is not None
    assert merged.to == ["owner@example.com"] and merged.include == ["summary"]
    off = merged_email(assistant, NotificationPlan.model_validate({"email": {"enabled": False}}))
    assert off is not None and not off.active and off.to == ["desk@example.com"]
    assert merged_email(assistant, None) is assistant.email
    assert merged_email(NotificationPlan(), number) is number.email
    assert merged_email(None, None) is None
