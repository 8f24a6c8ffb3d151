"""Vapi's live-control messages (`POST /call/{id}/control`), validated, and carried out on a
session of this process.

Accepted, in Vapi's shapes (`ClientInboundMessage*`):

- `{"type": "say", "content", "endCallAfterSpoken", "interruptionsEnabled",
  "interruptAssistantEnabled"}`: said after what the assistant is saying now, or instead of it
  with `interruptAssistantEnabled` (Vapi's default is false: it waits). The caller may barge in
  unless `interruptionsEnabled` is false or the call ends after it.
- `{"type": "add-message", "message": {"role", "content"}, "triggerResponseEnabled"}`: into the
  model's context; the assistant answers now unless `triggerResponseEnabled` is false.
- `{"type": "end-call"}`.
- `{"type": "transfer", "destination": {"type": "number", "number"}, "content"}`: `content` (or
  the destination's `message`, else "Transferring the call now") is said, then Twilio dials
  the number.
- `{"type": "control", "control": "mute-assistant" | "unmute-assistant"}`, and the shorthands
  `{"type": "mute-assistant"}` / `{"type": "unmute-assistant"}`.

Unknown fields are refused (a misspelt flag must not be silently ignored on a live call).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from pydantic.alias_generators import to_camel

from voice.session import CallSession
from voice.session_events import ControlRefused
from voice.types import EndedReason

__all__ = [
    "END_CALL_DETAIL",
    "MAX_MESSAGE_CHARS",
    "MAX_SAY_CHARS",
    "AddMessageCommand",
    "ControlCommand",
    "ControlOutcome",
    "EndCallCommand",
    "MuteCommand",
    "NodeCommand",
    "SayCommand",
    "TransferCommand",
    "VoicemailCommand",
    "apply_command",
    "dump_command",
    "parse_command",
]

MAX_SAY_CHARS = 1000  # about a minute of speech
MAX_MESSAGE_CHARS = 10_000  # a system instruction, a pasted record
END_CALL_DETAIL = "ended through the API"
_E164 = r"^\+[1-9]\d{1,14}$"


@dataclass(frozen=True, slots=True)
class ControlOutcome:
    """What became of a control command: an HTTP status and a sentence for the client."""

    status: int
    message: str

    @property
    def ok(self) -> bool:
        return self.status == 200


class _Command(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class SayCommand(_Command):
    type: Literal["say"]
    content: str = Field(min_length=1, max_length=MAX_SAY_CHARS)
    end_call_after_spoken: bool = False
    interruptions_enabled: bool = True
    interrupt_assistant_enabled: bool = False


class ChatMessageIn(_Command):
    role: Literal["system", "user", "assistant"]
    content: str = Field(min_length=1, max_length=MAX_MESSAGE_CHARS)


class AddMessageCommand(_Command):
    type: Literal["add-message"]
    message: ChatMessageIn
    trigger_response_enabled: bool = True


class EndCallCommand(_Command):
    type: Literal["end-call"]


class NumberDestination(_Command):
    type: Literal["number"]
    number: str = Field(pattern=_E164)
    message: str | None = Field(default=None, max_length=MAX_SAY_CHARS)


class TransferCommand(_Command):
    type: Literal["transfer"]
    destination: NumberDestination
    content: str | None = Field(default=None, max_length=MAX_SAY_CHARS)


class MuteCommand(_Command):
    type: Literal["control", "mute-assistant", "unmute-assistant"]
    control: Literal["mute-assistant", "unmute-assistant"] | None = None

    @property
    def muted(self) -> bool:
        return (self.control or self.type) == "mute-assistant"


class VoicemailCommand(_Command):
    """AVA's own, never the API's: Twilio's AMD found an answering machine (control/voicemail.py);
    leave `content` (default: the call's `voicemailMessage`) whole and hang up with ended reason
    `voicemail`; with neither, hang up at once."""

    type: Literal["voicemail"]
    content: str | None = Field(default=None, max_length=MAX_SAY_CHARS)
    answered_by: str = Field(max_length=32)


ControlCommand = Annotated[
    SayCommand | AddMessageCommand | EndCallCommand | TransferCommand | MuteCommand,
    Field(discriminator="type"),
]
# What nodes send each other: the API's commands and AVA's own.
NodeCommand = Annotated[
    SayCommand
    | AddMessageCommand
    | EndCallCommand
    | TransferCommand
    | MuteCommand
    | VoicemailCommand,
    Field(discriminator="type"),
]
_ADAPTER: TypeAdapter[ControlCommand] = TypeAdapter(ControlCommand)
_NODE_ADAPTER: TypeAdapter[NodeCommand] = TypeAdapter(NodeCommand)


def parse_command(body: Any, *, internal: bool = False) -> NodeCommand:
    """Raises ValidationError (each error names its field) or ValueError. `internal`: a
    command from another node, which may also be AVA's own (`VoicemailCommand`)."""
    command: NodeCommand = (_NODE_ADAPTER if internal else _ADAPTER).validate_python(body)
    if isinstance(command, MuteCommand) and (command.type == "control") != (
        command.control is not None
    ):
        raise ValueError(
            "control: give `control` (mute-assistant or unmute-assistant) with type control, "
            "and only then"
        )
    return command


def dump_command(command: NodeCommand) -> dict[str, Any]:
    """The command as the client would have sent it (it crosses Redis this way)."""
    return command.model_dump(by_alias=True, exclude_none=True)


def apply_command(session: CallSession, command: NodeCommand) -> ControlOutcome:
    """Post `command` to the live `session` (never waits on the call)."""
    try:
        if isinstance(command, VoicemailCommand):
            detail = f"Twilio's answering-machine detection: {command.answered_by}"
            # The call's own message: its assistant's, {{variables}} rendered for this call.
            content = command.content or session.assistant.voicemail_message
            if content:
                # Instead of whatever it was saying; the machine's beep must not cut it.
                end = (EndedReason.VOICEMAIL, detail)
                session.say(content, end_call_after=True, interruptible=False,
                            interrupt=True, end_reason=end)  # fmt: skip
            else:
                session.hang_up(EndedReason.VOICEMAIL, detail)
        elif isinstance(command, SayCommand):
            session.say(
                command.content,
                end_call_after=command.end_call_after_spoken,
                interruptible=command.interruptions_enabled,
                interrupt=command.interrupt_assistant_enabled,
            )
        elif isinstance(command, AddMessageCommand):
            message = command.message
            session.add_message(
                message.role, message.content, trigger=command.trigger_response_enabled
            )
        elif isinstance(command, EndCallCommand):
            session.hang_up(EndedReason.MANUALLY_CANCELED, END_CALL_DETAIL)
        elif isinstance(command, TransferCommand):
            said = command.content or command.destination.message or ""
            session.transfer(command.destination.number, said)
        else:
            session.set_muted(command.muted)
    except ControlRefused as exc:
        status = {"ended": 409, "unsupported": 409, "busy": 503}[exc.reason]
        return ControlOutcome(status, str(exc))
    return ControlOutcome(200, f"{command.type} sent to call {session.call_id}")
