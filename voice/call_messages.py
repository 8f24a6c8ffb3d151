"""One call's Vapi server messages, from its events (sans-I/O: the sender delivers them).

`CallMessages.on(event)` returns the messages the event causes, in order, each `(type,
fields)` for `voice.server_messages.envelope`, already filtered by the assistant's
`serverMessages`:

- CallStarted: `status-update` `in-progress`;
- SpeechStarted / SpeechStopped: `speech-update` `{status: started|stopped, role: user, turn}`;
- AssistantSpeechStarted / …Stopped: `speech-update` `{…, role: assistant, turn}`;
- TranscriptReceived: `transcript` `{role: user, transcriptType: partial|final, transcript}`;
- MessageAdded: `conversation-update` `{messages, messagesOpenAIFormatted}`; a bot message also
  gives `transcript` `{role: assistant, transcriptType: final}` (what the caller heard);
- BargeIn: `user-interrupted` `{turnId}`;
- CallEnded: `status-update` `forwarding` (a transferred call, with `destination`), then
  `status-update` `ended`, then `end-of-call-report`.

`transcript` is off in Vapi's default list; `transcript[transcriptType="final"]` in
`serverMessages` asks for final transcripts only. `hang` is the caller's side of a stall: the
sender arms a timer while `hang_armed` (a committed user turn the assistant has not started
answering) and calls `hang()` when it fires; one `hang` per turn. `turn` counts from 0 per role.

Costs: the report shows the call's `costs[]` and `costBreakdown` as priced when it ended
(`summary["costs"]` and `summary["costBreakdown"]`, set by the app with `voice.pricing`: the same
list the stored call keeps), and `cost`, their total; a call nobody priced reports `costs: []`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from voice.events import (
    AssistantSpeechStarted,
    AssistantSpeechStopped,
    BargeIn,
    CallEnded,
    CallEvent,
    CallStarted,
    MessageAdded,
    SpeechStarted,
    SpeechStopped,
    TranscriptReceived,
)
from voice.recording_urls import RECORDING_BASE_URL, recording_artifact
from voice.server_messages import iso_time
from voice.types import EndedReason

__all__ = ["FINAL_TRANSCRIPTS", "MAX_MESSAGES", "CallMessages", "Outgoing"]

MAX_MESSAGES = 2000  # per call kept for updates and the report; a longer call keeps the first
FINAL_TRANSCRIPTS = 'transcript[transcriptType="final"]'
_TRANSFERRED = re.compile(r"transferred to (\S+)")
# Endings that hand the caller to someone else (their detail says "transferred to +1…").
_TRANSFERS = frozenset(
    {EndedReason.ASSISTANT_FORWARDED_CALL, EndedReason.CALL_ENDING_HOOK_EXECUTED_TRANSFER}
)

Outgoing = tuple[str, dict[str, Any]]


@dataclass(slots=True)
class CallMessages:
    call_id: str
    wanted: frozenset[str]
    system_prompts: tuple[str, ...] = ()  # the assistant's system messages, for OpenAI's format
    metadata: dict[str, str] = field(default_factory=dict)
    started_wall: float | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    hang_armed: bool = False
    _turns: dict[str, int] = field(default_factory=lambda: {"user": -1, "assistant": -1})

    def on(self, event: CallEvent, wall_now: float) -> list[Outgoing]:
        out: list[Outgoing] = []
        if isinstance(event, CallStarted):
            self.metadata = dict(event.metadata)
            self.started_wall = event.wall - event.at
            self._add(out, "status-update", status="in-progress")
        elif isinstance(event, SpeechStarted | AssistantSpeechStarted):
            role = "user" if isinstance(event, SpeechStarted) else "assistant"
            self._turns[role] += 1
            if role == "assistant":
                self.hang_armed = False
            self._add(out, "speech-update", status="started", role=role, turn=self._turns[role])
        elif isinstance(event, SpeechStopped | AssistantSpeechStopped):
            role = "user" if isinstance(event, SpeechStopped) else "assistant"
            turn = max(self._turns[role], 0)
            self._add(out, "speech-update", status="stopped", role=role, turn=turn)
        elif isinstance(event, TranscriptReceived):
            self._transcript(out, "user", event.text, event.is_final)
        elif isinstance(event, MessageAdded):
            self._message_added(out, event)
        elif isinstance(event, BargeIn):
            self._add(out, "user-interrupted", turnId=f"{self.call_id}.{self._turns['assistant']}")
        elif isinstance(event, CallEnded):
            self.hang_armed = False
            self._ended(out, event, wall_now)
        return out

    def hang(self) -> list[Outgoing]:
        """The hang timer fired: the assistant has not answered the caller's turn."""
        if not self.hang_armed:
            return []
        self.hang_armed = False  # one per turn
        out: list[Outgoing] = []
        self._add(out, "hang")
        return out

    # --- the pieces ------------------------------------------------------------------------

    def _add(self, out: list[Outgoing], kind: str, **fields: Any) -> None:
        if kind in self.wanted:
            out.append((kind, fields))

    def _transcript(self, out: list[Outgoing], role: str, text: str, final: bool) -> None:
        if "transcript" in self.wanted or (final and FINAL_TRANSCRIPTS in self.wanted):
            out.append(
                ("transcript", {
                    "role": role,
                    "transcriptType": "final" if final else "partial",
                    "transcript": text,
                })
            )  # fmt: skip

    def _message_added(self, out: list[Outgoing], event: MessageAdded) -> None:
        if len(self.messages) >= MAX_MESSAGES:
            return
        self.messages.append(_message(event, self.started_wall))
        if event.role == "user":
            self.hang_armed = True
        elif event.role == "bot" and event.content:
            self._transcript(out, "assistant", event.content, True)
        if "conversation-update" in self.wanted:
            out.append(
                ("conversation-update", {
                    "messages": list(self.messages),
                    "messagesOpenAIFormatted": self.openai_messages(),
                })
            )  # fmt: skip

    def openai_messages(self) -> list[dict[str, Any]]:
        """The conversation as OpenAI's `{role, content}` list (Vapi's
        `messagesOpenAIFormatted`)."""
        out: list[dict[str, Any]] = [{"role": "system", "content": p} for p in self.system_prompts]
        for m in self.messages:
            role = m["role"]
            if role == "user":
                out.append({"role": "user", "content": m["message"]})
            elif role == "bot":
                out.append({"role": "assistant", "content": m["message"]})
            elif role == "tool_calls":
                out.append({"role": "assistant", "content": None, "tool_calls": m["toolCalls"]})
            elif role == "tool_call_result":
                out.append(
                    {"role": "tool", "tool_call_id": m["toolCallId"], "content": m["result"]}
                )
        return out

    def transcript_text(self) -> str:
        return "\n".join(
            f"{'AI' if m['role'] == 'bot' else 'User'}: {m['message']}"
            for m in self.messages
            if m["role"] in ("bot", "user") and m["message"]
        )

    def _ended(self, out: list[Outgoing], event: CallEnded, wall_now: float) -> None:
        reason = event.reason.value
        transcript = self.transcript_text()
        if event.reason in _TRANSFERS:
            match = _TRANSFERRED.search(event.detail)
            destination = {"type": "number", "number": match.group(1)} if match else None
            self._add(
                out, "status-update", status="forwarding", destination=destination,
                messages=list(self.messages), transcript=transcript, summary="",
            )  # fmt: skip
        self._add(out, "status-update", status="ended", endedReason=reason)
        if "end-of-call-report" not in self.wanted:
            return
        started = self.started_wall if self.started_wall is not None else wall_now - event.at
        summary = event.summary if isinstance(event.summary, Mapping) else {}
        openai = summary.get("messages") or self.openai_messages()
        priced, breakdown = summary.get("costs"), summary.get("costBreakdown")
        costs = list(priced) if isinstance(priced, list) else []
        breakdown = dict(breakdown) if isinstance(breakdown, Mapping) else {"total": 0}
        artifact: dict[str, Any] = {
            "messages": self.messages,
            "messagesOpenAIFormatted": openai,
            "transcript": transcript,
        }
        recording: dict[str, Any] = {}
        if self.metadata.get(RECORDING_BASE_URL):  # the call records: its stable download URLs
            recording = recording_artifact(self.metadata[RECORDING_BASE_URL], self.call_id)
            artifact |= recording
        out.append(
            ("end-of-call-report", {
                "endedReason": reason, "endedMessage": event.detail,
                "startedAt": iso_time(started), "endedAt": iso_time(started + event.at),
                "durationSeconds": round(event.at, 3), "durationMs": round(event.at * 1000),
                "cost": breakdown["total"], "costs": costs, "costBreakdown": breakdown,
                "messages": self.messages, "transcript": transcript,
                "summary": "", "artifact": artifact, "analysis": {},
                **{k: recording[k] for k in ("recordingUrl", "stereoRecordingUrl") if recording},
            })
        )  # fmt: skip


def _message(event: MessageAdded, started_wall: float | None) -> dict[str, Any]:
    """A Vapi `messages[]` entry (role bot/user/tool_calls/tool_call_result)."""
    message: dict[str, Any] = {
        "role": event.role,
        "message": event.content,
        "secondsFromStart": round(event.at, 3),
    }
    if started_wall is not None:
        message["time"] = round((started_wall + event.at) * 1000)
    if event.duration:
        message["duration"] = round(event.duration * 1000)
    if event.role == "tool_calls":
        message["toolCalls"] = list(event.tool_calls)
    elif event.role == "tool_call_result":
        message |= {"toolCallId": event.tool_call_id, "name": event.name, "result": event.content}
    return message
