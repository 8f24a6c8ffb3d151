"""The e-mail summary of one call (`notificationPlan.email`), built without I/O.

`summary_email` makes a multipart/alternative message (plain text and HTML) with the parts
the plan includes: the analysis' summary, the transcript, the recording link and the structured
data. Everything in it but AVA's own words comes from a tenant or a caller (the assistant's
name, what was said, the model's summary), so the HTML is escaped throughout and header values
are made single-line; the transcript is bounded so a long call cannot make a huge mail.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any

__all__ = [
    "MAX_TRANSCRIPT_CHARS",
    "CallSummary",
    "summary_email",
    "transcript_lines",
]

MAX_TRANSCRIPT_CHARS = 100_000
_SUBJECT_CHARS = 120
_SPEAKERS = {"assistant": "AI", "bot": "AI", "user": "User"}
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class CallSummary:
    """What the mail says about the call."""

    call_id: str
    assistant_name: str
    ended_reason: str
    duration_seconds: float
    started_at: datetime | None = None  # aware; None when unknown
    customer_number: str | None = None
    summary: str | None = None
    transcript: Sequence[tuple[str, str]] = ()  # (speaker, what was said)
    recording_url: str | None = None
    structured_data: Any = None
    analysis_errors: Mapping[str, Any] = field(default_factory=dict)


def transcript_lines(history: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(speaker, text) for the caller's and the assistant's messages of an OpenAI-format
    history (system prompts and tool traffic are not the conversation)."""
    lines: list[tuple[str, str]] = []
    for message in history:
        speaker = _SPEAKERS.get(str(message.get("role")))
        content = message.get("content")
        if speaker is not None and isinstance(content, str) and content.strip():
            lines.append((speaker, content.strip()))
    return lines


def _one_line(text: str, limit: int) -> str:
    flat = _SPACE.sub(" ", text).strip()
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _bounded_transcript(lines: Sequence[tuple[str, str]]) -> tuple[list[tuple[str, str]], bool]:
    kept: list[tuple[str, str]] = []
    size = 0
    for speaker, text in lines:
        size += len(text) + len(speaker) + 3
        if size > MAX_TRANSCRIPT_CHARS:
            return kept, True
        kept.append((speaker, text))
    return kept, False


def _duration(seconds: float) -> str:
    whole = max(0, round(seconds))
    minutes, secs = divmod(whole, 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def summary_email(
    call: CallSummary,
    *,
    sender: str,
    to: Sequence[str],
    include: Sequence[str],
    now: datetime,
) -> EmailMessage:
    """The message for `call` from `sender` to `to`, with the `include`d parts (`now`: an aware
    datetime for the Date header)."""
    parts = set(include)
    who = call.customer_number or "unknown caller"
    subject = _one_line(f"Call summary: {call.assistant_name} · {who}", _SUBJECT_CHARS)
    facts = [
        ("Assistant", call.assistant_name),
        ("Caller", who),
        ("Call ID", call.call_id),
        ("Duration", _duration(call.duration_seconds)),
        ("Ended", call.ended_reason),
    ]
    if call.started_at is not None:
        facts.insert(3, ("Started", call.started_at.isoformat(timespec="seconds")))

    facts = [(name, _one_line(value, 200)) for name, value in facts]
    text: list[str] = [f"{name}: {value}" for name, value in facts]
    body: list[str] = [
        "<table>"
        + "".join(
            f"<tr><th align='left'>{html.escape(name)}</th><td>{html.escape(value)}</td></tr>"
            for name, value in facts
        )
        + "</table>"
    ]

    def section(title: str, plain: str, markup: str) -> None:
        text.extend(["", title, "-" * len(title), plain])
        body.append(f"<h2>{html.escape(title)}</h2>{markup}")

    if "summary" in parts:
        if call.summary:
            section("Summary", call.summary, f"<p>{_paragraphs(call.summary)}</p>")
        else:
            why = _missing(call.analysis_errors.get("summary"))
            section("Summary", why, f"<p><em>{html.escape(why)}</em></p>")
    if "transcript" in parts:
        lines, cut = _bounded_transcript(call.transcript)
        plain = "\n".join(f"{speaker}: {said}" for speaker, said in lines) or "(nothing said)"
        markup = (
            "".join(
                f"<p><strong>{html.escape(speaker)}:</strong> {_paragraphs(said)}</p>"
                for speaker, said in lines
            )
            or "<p><em>(nothing said)</em></p>"
        )
        if cut:
            plain += "\n[… the rest of the transcript is in the call's record]"
            markup += "<p><em>[… the rest of the transcript is in the call's record]</em></p>"
        section("Transcript", plain, markup)
    if "recordingUrl" in parts and call.recording_url:
        link = html.escape(call.recording_url, quote=True)
        section("Recording", call.recording_url, f'<p><a href="{link}">Listen to the call</a></p>')
    if "structuredData" in parts and call.structured_data is not None:
        data = json.dumps(call.structured_data, indent=2, ensure_ascii=False, sort_keys=True)
        section("Structured data", data, f"<pre>{html.escape(data)}</pre>")

    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = sender
    message["To"] = ", ".join(to)
    message["Date"] = format_datetime(now)
    message["Message-ID"] = make_msgid("ava-call", domain=sender.rpartition("@")[2])
    message["X-AVA-Call-ID"] = _one_line(call.call_id, 100)
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to it
    message.set_content("\n".join(text) + "\n")
    title = html.escape(subject)
    message.add_alternative(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head>"
        f"<body>{''.join(body)}</body></html>\n",
        subtype="html",
    )
    return message


def _paragraphs(text: str) -> str:
    return "<br>".join(html.escape(line) for line in text.splitlines())


def _missing(error: Any) -> str:
    if isinstance(error, Mapping) and error.get("kind"):
        return f"(no summary: {error.get('kind')})"
    return "(no summary)"
