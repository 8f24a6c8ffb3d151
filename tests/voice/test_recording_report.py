"""The end-of-call report names a recorded call's recording (stable download routes)."""

from __future__ import annotations

from voice.call_messages import CallMessages
from voice.events import CallEnded, CallStarted
from voice.recording_urls import RECORDING_BASE_URL
from voice.types import EndedReason


def report(metadata: dict[str, str]) -> dict[str, object]:
    messages = CallMessages("call_9", frozenset({"end-of-call-report"}))
    messages.on(CallStarted("call_9", 0.0, 1000.0, "twilio", "A", metadata), 1000.0)
    out = messages.on(CallEnded("call_9", 5.0, EndedReason.CUSTOMER_ENDED_CALL, ""), 1005.0)
    [(kind, fields)] = out
    assert kind == "end-of-call-report"
    return fields


def test_a_recorded_calls_report_has_vapis_recording_fields() -> None:
    fields = report({RECORDING_BASE_URL: "https://ava.example"})
    base = "https://ava.example/call/call_9"
    artifact = fields["artifact"]
    assert isinstance(artifact, dict)
    assert artifact["recordingUrl"] == fields["recordingUrl"] == f"{base}/mono-recording"
    assert artifact["stereoRecordingUrl"] == fields["stereoRecordingUrl"]
    assert fields["stereoRecordingUrl"] == f"{base}/stereo-recording"
    assert artifact["recording"]["stereoUrl"] == f"{base}/stereo-recording"


def test_an_unrecorded_calls_report_names_no_recording() -> None:
    fields = report({})
    artifact = fields["artifact"]
    assert isinstance(artifact, dict)
    assert "recordingUrl" not in fields and "recordingUrl" not in artifact
