"""Vapi's `voicemailDetection`, as AVA runs it: Twilio's answering-machine detection (AMD).

On an outbound call whose assistant asks for it, the call is placed with Twilio's asynchronous
AMD (the media stream starts at once; Twilio reports `AnsweredBy` a few seconds in). When that
names one of `voicemailDetectionTypes`, the assistant stops what it is saying, leaves
`voicemailMessage` whole (the machine's beep or silence must not cut it) and hangs up with
ended reason `voicemail`; without a message it hangs up at once.

Vapi's other providers (google, openai, vapi: audio-LLM detectors) are accepted when stored —
tenants migrate assistants that name them — but refused when an assistant is created or
changed (`problems`), and a call with one runs without detection.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

__all__ = [
    "ANSWERED_BY",
    "MACHINE_TYPES",
    "VoicemailDetection",
    "is_voicemail",
    "problems",
    "twilio_amd",
]

# Twilio's AnsweredBy values (async AMD with DetectMessageEnd).
ANSWERED_BY = (
    "human",
    "machine_start",
    "machine_end_beep",
    "machine_end_silence",
    "machine_end_other",
    "fax",
    "unknown",
)
MachineType = Literal[
    "machine_start", "machine_end_beep", "machine_end_silence", "machine_end_other", "fax"
]
MACHINE_TYPES: tuple[MachineType, ...] = (
    "machine_start",
    "machine_end_beep",
    "machine_end_silence",
    "machine_end_other",
    "fax",
)

_DEFAULT_TYPES: tuple[MachineType, ...] = ("machine_end_beep", "machine_end_silence")


class VoicemailDetection(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    provider: Literal["twilio", "google", "openai", "vapi"]
    # Vapi's defaults (and Twilio's bounds) for the twilio provider
    voicemail_detection_types: list[MachineType] = Field(
        default_factory=lambda: list(_DEFAULT_TYPES),
        min_length=1,
        max_length=len(MACHINE_TYPES),
    )
    machine_detection_timeout: int = Field(default=30, ge=3, le=59)
    machine_detection_speech_threshold: int = Field(default=2400, ge=1000, le=6000)
    machine_detection_speech_end_threshold: int = Field(default=1200, ge=500, le=5000)
    machine_detection_silence_timeout: int = Field(default=5000, ge=2000, le=10000)


def problems(detection: VoicemailDetection | None) -> list[str]:
    """What AVA cannot run, named by field (a 422 at configuration time)."""
    if detection is None or detection.provider == "twilio":
        return []
    return [
        f"voicemailDetection.provider: AVA detects voicemail with Twilio's AMD only "
        f"(provider twilio), not {detection.provider}"
    ]


def twilio_amd(detection: VoicemailDetection | None, callback_url: str) -> dict[str, Any]:
    """The `calls.create` arguments (twilio-python's names) asking for asynchronous AMD that
    reports to `callback_url`; empty when the assistant asks for none AVA can run."""
    if detection is None or detection.provider != "twilio":
        return {}
    # Waiting for the end of the greeting (the beep) only matters for the machine_end types.
    ends = any(t.startswith("machine_end") for t in detection.voicemail_detection_types)
    return {
        "machine_detection": "DetectMessageEnd" if ends else "Enable",
        "machine_detection_timeout": detection.machine_detection_timeout,
        "machine_detection_speech_threshold": detection.machine_detection_speech_threshold,
        "machine_detection_speech_end_threshold": (
            detection.machine_detection_speech_end_threshold
        ),
        "machine_detection_silence_timeout": detection.machine_detection_silence_timeout,
        "async_amd": "true",
        "async_amd_status_callback": callback_url,
        "async_amd_status_callback_method": "POST",
    }


def is_voicemail(detection: VoicemailDetection | None, answered_by: str) -> bool:
    """Whether Twilio's `AnsweredBy` is one the assistant treats as voicemail."""
    if detection is None or detection.provider != "twilio":
        return False
    return answered_by in detection.voicemail_detection_types
