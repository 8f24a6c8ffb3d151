"""What a call's session loop is told: one bounded inbox, one consumer.

Every collaborator of a `CallSession` (the transport reader, the transcriber, the turn model, the
reply tasks, timers) posts one of these instead of calling into the session, so the turn state
and the replies are only ever touched by the session's own loop task, one event at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from voice.errors import ProviderError
from voice.fallback import Stage
from voice.types import EndedReason, Transcript

if TYPE_CHECKING:
    from voice.playout import Playing
    from voice.reply import Reply

__all__ = [
    "AddMessage",
    "Audible",
    "CallerAudio",
    "CallerGone",
    "ControlRefused",
    "ControlEvent",
    "Dtmf",
    "HandoffFailed",
    "InboxEvent",
    "MarkEchoed",
    "Mute",
    "Played",
    "Say",
    "StageExhausted",
    "TimerDue",
    "TranscriptArrived",
    "Transfer",
    "Verdict",
]


@dataclass(frozen=True, slots=True)
class CallerAudio:
    """One frame of caller audio as the transport delivered it (μ-law 8 kHz)."""

    audio: bytes


@dataclass(frozen=True, slots=True)
class MarkEchoed:
    name: str


@dataclass(frozen=True, slots=True)
class Dtmf:
    digit: str


@dataclass(frozen=True, slots=True)
class CallerGone:
    """The media connection ended (stop, a closed socket, or bad input)."""

    reason: EndedReason
    detail: str


@dataclass(frozen=True, slots=True)
class TranscriptArrived:
    result: Transcript


@dataclass(frozen=True, slots=True)
class Verdict:
    """The end-of-turn model's answer about the silence that began at `speech_end`."""

    probability: float
    speech_end: float


@dataclass(frozen=True, slots=True)
class Audible:
    """The reply's first audio went to the caller at `at`."""

    reply: Reply
    at: float

    def __repr__(self) -> str:  # the reply itself is too big for a debug line
        return f"Audible(reply={self.reply.index}, at={self.at:.3f})"


@dataclass(frozen=True, slots=True)
class Played:
    """All of the reply's audio was played (its last mark came back), or there was none."""

    playing: Playing

    def __repr__(self) -> str:
        return f"Played(reply={self.playing.reply.index})"


@dataclass(frozen=True, slots=True)
class StageExhausted:
    """No provider of `stage` is left: apologise, then end the call."""

    stage: Stage
    error: ProviderError


@dataclass(frozen=True, slots=True)
class HandoffFailed:
    """The telephony side refused a transfer the caller was told about."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class TimerDue:
    """A deadline passed while nothing else arrived (turn decision, silence, max duration)."""


# --- live control (`POST /call/{id}/control`, posted by the session's public methods) ----------


class ControlRefused(Exception):
    """A control command was not taken: the call has ended, it cannot do that (`reason`), or
    its inbox is full. Raised by the posting method, never inside the loop."""

    def __init__(self, message: str, *, reason: Literal["ended", "unsupported", "busy"]) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Say:
    """Speak `text` now: after what the assistant is saying, or instead of it (`interrupt`)."""

    text: str
    end_call_after: bool = False
    interruptible: bool = True
    interrupt: bool = False
    # With end_call_after: why the call ended (None: manually-canceled, an API `say`).
    end_reason: tuple[EndedReason, str] | None = None


@dataclass(frozen=True, slots=True)
class AddMessage:
    """Put a message in the model's context; `trigger`: the assistant answers now."""

    role: Literal["system", "user", "assistant"]
    content: str
    trigger: bool = True


@dataclass(frozen=True, slots=True)
class Mute:
    """Stop (or resume) sending the assistant's audio to the caller."""

    muted: bool


@dataclass(frozen=True, slots=True)
class Transfer:
    """Redirect the call to `number` through the session's `CallControl`, after `message`."""

    number: str
    message: str = ""


ControlEvent = Say | AddMessage | Mute | Transfer

InboxEvent = (
    CallerAudio
    | MarkEchoed
    | Dtmf
    | CallerGone
    | TranscriptArrived
    | Verdict
    | Audible
    | Played
    | StageExhausted
    | HandoffFailed
    | TimerDue
    | ControlEvent
)
